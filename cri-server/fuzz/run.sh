#!/bin/sh
# Runs the fuzz target for a short while (default 60 s):
#   cri-server/fuzz/run.sh [SECONDS]
# Needs the nightly toolchain and a C++ compiler (libFuzzer). Uses cargo-fuzz
# when installed; otherwise builds with the same instrumentation flags.
set -eu
cd "$(dirname "$0")"
seconds=${1:-60}
targets="spdy_frames"
if cargo fuzz --version >/dev/null 2>&1; then
    for target in $targets; do
        cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -max_len=65536
    done
    exit 0
fi
target_dir=../../target/fuzz
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
    cargo +nightly build --release --target x86_64-unknown-linux-gnu --target-dir "$target_dir"
for target in $targets; do
    mkdir -p "corpus/$target"
    "$target_dir/x86_64-unknown-linux-gnu/release/$target" \
        -max_total_time="$seconds" -max_len=65536 "corpus/$target"
done
