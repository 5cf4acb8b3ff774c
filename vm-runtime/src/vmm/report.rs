//! The `status` and `metrics` answers of the control socket.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use super::builder::VmHandle;
use super::timeline::since_start_us;
use crate::devices::bus::lock;

/// Memory use of this process from `/proc/self/status`, in KiB.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MemoryUse {
    pub vm_rss_kib: u64,
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    /// Guest RAM is a memfd, so touched guest pages count here.
    pub rss_shmem_kib: u64,
    /// What the VMM itself uses: anonymous + file-backed resident pages.
    pub vmm_overhead_kib: u64,
}

/// Parses the `Rss*` lines of a `/proc/<pid>/status` text.
pub fn parse_memory_use(status: &str) -> MemoryUse {
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let rss_anon_kib = field("RssAnon:");
    let rss_file_kib = field("RssFile:");
    MemoryUse {
        vm_rss_kib: field("VmRSS:"),
        rss_anon_kib,
        rss_file_kib,
        rss_shmem_kib: field("RssShmem:"),
        vmm_overhead_kib: rss_anon_kib + rss_file_kib,
    }
}

/// This process's memory use.
pub fn memory_use() -> MemoryUse {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| parse_memory_use(&s))
        .unwrap_or_default()
}

/// The `status` result before any VM runs.
pub fn waiting_status() -> Value {
    json!({
        "state": "waiting_for_boot",
        "pid": std::process::id(),
        "vmm_uptime_ms": since_start_us() / 1000,
    })
}

/// The `status` result of a running VM.
pub fn status(vm: &VmHandle, stopping: bool) -> Value {
    let drives: Vec<Value> = vm
        .drives
        .iter()
        .map(|d| {
            let d = lock(d);
            json!({
                "id": d.id(),
                "read_only": d.read_only(),
                "path": d.backing_path(),
                "sectors": d.capacity(),
            })
        })
        .collect();
    let devices: Vec<Value> = vm
        .devices
        .iter()
        .map(|d| json!({"id": d.id, "kind": d.kind, "mmio_base": d.mmio_base, "irq": d.irq}))
        .collect();
    json!({
        "state": if stopping { "stopping" } else { "running" },
        "pid": std::process::id(),
        "vmm_uptime_ms": since_start_us() / 1000,
        "guest_uptime_ms": vm.timeline.guest_uptime_us().map(|us| us / 1000),
        "vcpus": vm.config.vcpus,
        "memory_mib": vm.config.memory_mib,
        "kvm": vm.caps,
        "cmdline": vm.cmdline,
        "boot_timeline_us": &*vm.timeline,
        "devices": devices,
        "drives": drives,
        "threads": vm.thread_count(),
    })
}

/// The `metrics` result.
pub fn metrics(vm: &VmHandle) -> Value {
    let devices: Vec<Value> = vm
        .devices
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "kind": d.kind,
                "transport": &*d.transport,
                "device": (d.metrics)(),
            })
        })
        .collect();
    let console = lock(&vm.console_watch);
    json!({
        "vcpu": &*vm.vcpu_metrics,
        "devices": devices,
        "console_bytes": console.bytes,
        "memory": memory_use(),
        "guest_uptime_ms": vm.timeline.guest_uptime_us().map(|us| us / 1000),
        "first_vcpu_run_us": vm.timeline.first_vcpu_run_us.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_use_separates_guest_ram() {
        let status = "Name:\thull-vmm\nVmRSS:\t  140000 kB\nRssAnon:\t    3000 kB\nRssFile:\t    2000 kB\nRssShmem:\t  135000 kB\n";
        let m = parse_memory_use(status);
        assert_eq!(m.vm_rss_kib, 140000);
        assert_eq!(m.rss_shmem_kib, 135000);
        assert_eq!(m.vmm_overhead_kib, 5000);
    }

    #[test]
    fn own_memory_use_is_readable() {
        assert!(memory_use().vm_rss_kib > 0);
    }
}
