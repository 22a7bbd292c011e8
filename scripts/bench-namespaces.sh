#!/usr/bin/env bash
# What namespaces cost: warm manifest and blob throughput of a request
# routed to an isolated namespace among four (by path prefix and by ?ns=,
# then with client authentication) against a single-namespace registry:2
# config, in the same run; prints each figure and the ratio to the single
# namespace (target: routing and policy checks keep >= 0.95).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_rust
ensure_apt docker-registry:docker-registry wrk:wrk
cargo bench -p registry-proxy --bench namespaces
