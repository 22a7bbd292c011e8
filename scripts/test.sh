#!/usr/bin/env bash
# Runs every test of the workspace: formatting, lints, unit tests, the
# conformance suite against every driver (driver-s3 on a real S3 server), the
# broken-driver checks, driver-s3's own tests, the proxy's route, crash,
# fault and end-to-end tests, and every fuzz target for FUZZ_SECONDS.
#
# S3: with S3_BUCKET (and the AWS_* variables) already set, that server is
# used (MinIO, AWS, ...). Otherwise a private Garage is started on 127.0.0.1
# (installed once outside the repository) and stopped afterwards.
# REQUIRE_S3=1 (set by CI) turns a missing S3 server into a failure.
#
# End to end: Debian's docker-registry (upstream), skopeo, podman and
# containerd (clients), etcd-server (the replicas' coordination), curl,
# pebble (Let's Encrypt's
# test CA), buildah (the container image), systemd-analyze (the unit) and
# chromium (the status page, headless) and prometheus (the dashboard's
# queries) are installed with apt-get when missing, kubernetes-validate (the
# manifests) with pip into a virtualenv outside the repository;
# REQUIRE_E2E=1 (set by CI) turns their absence into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_rust
ensure_apt docker-registry:docker-registry skopeo:skopeo etcd:etcd-server curl:curl pebble:pebble \
    buildah:buildah systemd-analyze:systemd chromium:chromium \
    prometheus:prometheus podman:podman containerd:containerd
KUBERNETES_VALIDATE="$(ensure_kubernetes_validate)"
export KUBERNETES_VALIDATE
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

use_s3_server
cargo test --workspace

# Every fuzz target, briefly (FUZZ_SECONDS each, 30 by default; the README
# says how to run them for longer).
FUZZ_SECONDS=${FUZZ_SECONDS:-30} scripts/fuzz.sh
