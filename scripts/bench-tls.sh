#!/usr/bin/env bash
# What TLS costs on warm hits: registry-proxy over https and http against
# nginx serving the same blob file with the same certificate; prints each
# rate (median of BENCH_ROUNDS interleaved rounds) and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_rust
ensure_apt docker-registry:docker-registry wrk:wrk nginx:nginx-light
cargo bench -p registry-proxy --bench tls
