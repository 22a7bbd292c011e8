#!/usr/bin/env bash
# Runs every cargo-fuzz target for FUZZ_SECONDS each (default 600), starting
# from the seeds in fuzz/seeds/<target>. A crash fails the run and leaves its
# input in fuzz/artifacts/<target>/; turn it into a regression test.
# Installs cargo-fuzz when missing. Usage: scripts/fuzz.sh [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_rust
seconds=${FUZZ_SECONDS:-600}
if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi
# cargo fuzz needs nightly flags; without a nightly toolchain, the stable
# compiler is allowed them.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cd fuzz && "${fuzz[@]}" list)
cd fuzz
"${fuzz[@]}" build -O
for target in "${targets[@]}"; do
    corpus=$(mktemp -d)
    echo "fuzz: $target for ${seconds}s"
    # -rss_limit_mb bounds memory; -max_len covers a 64 KiB manifest.
    set +e
    "${fuzz[@]}" run -O "$target" "$corpus" "seeds/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 2>&1 |
        grep -E 'stat::number_of_executed_units|Done|ERROR|panicked|SUMMARY'
    status=${PIPESTATUS[0]}
    set -e
    rm -rf "$corpus"
    if [ "$status" -ne 0 ]; then
        echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
