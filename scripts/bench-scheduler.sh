#!/usr/bin/env bash
# The TTL scheduler benchmark: 1,000,000 entries persisted on driver-fs
# (adds and refreshes per second, memory per entry, reload time) and
# 100,000 entries expiring at once while requests run. Prints each figure
# with its target. BENCH_ENTRIES and BENCH_DUE change the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_rust
cargo bench -p registry-proxy --bench scheduler
