#!/bin/sh
# Runs each fuzz target for a short while (default 60 s each):
#   vm-runtime/fuzz/run.sh [SECONDS]
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -eu
cd "$(dirname "$0")"
seconds=${1:-60}
for target in virtio_blk_request vsock_packet; do
    cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -max_len=65536
done
