#!/usr/bin/env bash
# The main job on the embedded default, filesystem storage in ./data.
# Until the proxy exists, that is the conformance suite of the filesystem
# driver run against ./data (cases clean up after themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_rust
mkdir -p data
FS_ROOT_DIRECTORY="$PWD/data" cargo test -p driver-fs --test conformance -- "$@"
