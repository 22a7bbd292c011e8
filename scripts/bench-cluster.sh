#!/usr/bin/env bash
# What coordinating replicas through etcd costs, on loopback with Garage,
# etcd and Debian's docker-registry: etcd requests made by warm hits
# (counted from etcd's metrics), warm blob throughput of three replicas
# against one (target >= 0.9x), and the cold-miss time to first byte with
# and without etcd (target: at most 10 ms more).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_rust
ensure_apt docker-registry:docker-registry wrk:wrk etcd:etcd-server
use_s3_server
cargo bench -p registry-proxy --bench cluster
