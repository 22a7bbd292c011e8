#!/usr/bin/env bash
# registry-proxy side by side with Debian's docker-registry as a proxy of the
# same upstream, and nginx serving the same blob file as the machine's limit
# (warm blob throughput, cold pulls, upstream bytes for concurrent cold
# pulls, manifests by tag and the upstream requests they cause, skopeo pulls
# of a 5-layer image cold and warm, peak RSS); prints each figure for both
# and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_rust
ensure_apt docker-registry:docker-registry wrk:wrk nginx:nginx-light skopeo:skopeo
cargo bench -p registry-proxy --bench side_by_side
