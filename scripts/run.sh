#!/usr/bin/env bash
# The main job on the embedded default: registry-proxy with filesystem
# storage in ./data, listening on 127.0.0.1:5000, caching Docker Hub.
# Extra arguments are passed to `registry-proxy serve` (e.g. a config.yml).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_rust
exec cargo run --release -p registry-proxy -- serve "$@"
