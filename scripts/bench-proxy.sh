#!/usr/bin/env bash
# registry-proxy side by side with Debian's docker-registry as a proxy of the
# same upstream (warm blob throughput, cold pulls, upstream bytes for
# concurrent cold pulls, peak RSS); prints each figure for both and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_rust
ensure_apt docker-registry:docker-registry wrk:wrk
cargo bench -p registry-proxy --bench side_by_side
