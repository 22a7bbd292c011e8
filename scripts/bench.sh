#!/usr/bin/env bash
# All driver benchmarks, each printing its figures and the ratios to
# references measured in the same run:
#   - driver-fs and driver-memory (dd bs=1M on the same file as reference);
#   - driver-s3 on a real S3 server (object_store and boto3 as references),
#     on a private Garage unless S3_BUCKET is already set.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_rust
python3 -c 'import boto3' 2>/dev/null || python3 -m pip install --quiet boto3
cargo bench -p conformance --bench drivers
use_s3_server
cargo bench -p driver-s3 --bench s3
