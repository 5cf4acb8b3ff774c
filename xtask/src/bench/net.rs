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

use anyhow::{Result, bail};

use crate::kernel;
use crate::testvm::{self, RunOptions, suite};
use crate::util::workspace_root;

/// Entry point of `cargo xtask bench net`.
pub fn run_bench() -> Result<()> {
    let kernel = kernel::build()?;
    let initramfs = crate::initramfs::build(false)?;
    crate::util::build_release_runtime()?;
    let binary = suite::build_vm_bench("net")?;
    let command = vec![
        "sh".to_string(),
        "-c".to_string(),
        format!(
            "cd {} && exec env HULL_GUEST_VMLINUX={} HULL_GUEST_BZIMAGE={} HULL_AGENT_INITRAMFS={} {}",
            testvm::shell_quote(&workspace_root().join("integration").display().to_string()),
            testvm::shell_quote(&kernel.vmlinux.display().to_string()),
            testvm::shell_quote(&kernel.bzimage.display().to_string()),
            testvm::shell_quote(&initramfs.display().to_string()),
            testvm::shell_quote(&binary.display().to_string()),
        ),
    ];
    let code = testvm::run(&command, &RunOptions::default())?;
    if code != 0 {
        bail!("the net benchmark failed inside the test VM (exit status {code})");
    }
    Ok(())
}
