//! `cargo xtask bench net`: TCP throughput between a pod and the node and
//! between two pods (iperf3 through the CNI bridge, the tap and each pod's
//! VM) next to the same between two network namespaces joined by a veth
//! pair, without VMs; in one test VM boot (or directly on a host whose KVM
//! boots standard guests).
//!
//! On the host: builds the guest kernel, the agent initramfs, release
//! `hulld` and `hull-vmm`, and the `net` bench of `hull-integration`
//! (`integration/benches/net.rs`, which does the measuring and prints
//! `RESULT net pod_host_gbps=… netns_gbps=… ratio=…`), then runs it under
//! `vm-run`.

use anyhow::Result;

/// Entry point of `cargo xtask bench net`.
pub fn run_bench() -> Result<()> {
    super::run_integration_bench_in_test_vm("net")
}
