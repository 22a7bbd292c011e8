#!/usr/bin/env bash
# Driver benchmarks: prints MB/s per driver and ratios to references
# measured in the same run (dd for driver-fs). See README "Benchmarks".
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_rust
cargo bench -p conformance --bench drivers
