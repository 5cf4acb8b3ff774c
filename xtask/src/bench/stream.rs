//! `cargo xtask bench stream`: hulld's streaming server end to end — the
//! latency of `exec true` and the throughput of exec stdout and of a
//! port-forward connection, with hull's SPDY client — in one test VM boot
//! (or directly on a host whose KVM boots standard guests). The measuring
//! is `integration/benches/stream.rs`, which prints `RESULT stream
//! exec_latency_ms=… exec_mbps=… portforward_mbps=…`.

use anyhow::Result;

/// Entry point of `cargo xtask bench stream`.
pub fn run_bench() -> Result<()> {
    super::run_integration_bench_in_test_vm("stream")
}
