#!/usr/bin/env bash
# Runs every test of the workspace: formatting, lints, unit tests, the
# conformance suite against every driver, and the broken-driver checks.
# Installs nothing it finds already present.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_rust
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
