#!/usr/bin/env bash
# Byte and request hit ratios of the eviction policy (S3-FIFO) against LRU
# on a seeded synthetic registry trace at budgets of 5, 10, 25 and 50% of
# its working set. BENCH_IMAGES, BENCH_PULLS, BENCH_ZIPF, BENCH_SEED tune
# the trace.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_rust
cargo bench -p registry-proxy --bench eviction
