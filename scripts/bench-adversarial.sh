#!/usr/bin/env bash
# Chosen digests against the scheduler's entry table: 100,000 upserts of
# digests sharing their first 16 bytes, and of one digest in 100,000
# repositories, each against random ones in the same run; prints the
# ratios (target <= 1.5). BENCH_DIGESTS changes the count.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_rust
cargo bench -p registry-proxy --bench adversarial
