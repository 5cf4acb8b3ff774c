//! Boot phase timestamps, measured from VMM process start.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

/// The moment `main` started, set once at process start.
static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// Records the process start; call first thing in `main`.
pub fn mark_process_start() {
    PROCESS_START.get_or_init(Instant::now);
}

/// Microseconds since process start.
pub fn since_start_us() -> u64 {
    PROCESS_START
        .get_or_init(Instant::now)
        .elapsed()
        .as_micros() as u64
}

/// Phases of a boot, in order.
#[derive(Debug, Clone, Copy)]
pub enum BootPhase {
    /// `boot` request received (or config file read).
    BootRequested,
    /// KVM VM with irqchip and memory created.
    KvmReady,
    /// Kernel, initramfs and boot parameters are in guest memory.
    KernelLoaded,
    /// Devices created and vCPUs configured.
    DevicesReady,
    /// The boot vCPU entered KVM_RUN for the first time.
    FirstVcpuRun,
}

/// Microseconds since VMM start at which each phase was reached (0 = not yet).
#[derive(Debug, Default, Serialize)]
pub struct BootTimeline {
    pub boot_requested_us: AtomicU64,
    pub kvm_ready_us: AtomicU64,
    pub kernel_loaded_us: AtomicU64,
    pub devices_ready_us: AtomicU64,
    pub first_vcpu_run_us: AtomicU64,
}

/// A copy of the timeline for the exit record (microseconds since VMM
/// start; 0 = phase not reached).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootPhases {
    pub boot_requested_us: u64,
    pub kvm_ready_us: u64,
    pub kernel_loaded_us: u64,
    pub devices_ready_us: u64,
    pub first_vcpu_run_us: u64,
}

impl BootTimeline {
    /// The phases reached so far.
    pub fn snapshot(&self) -> BootPhases {
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        BootPhases {
            boot_requested_us: get(&self.boot_requested_us),
            kvm_ready_us: get(&self.kvm_ready_us),
            kernel_loaded_us: get(&self.kernel_loaded_us),
            devices_ready_us: get(&self.devices_ready_us),
            first_vcpu_run_us: get(&self.first_vcpu_run_us),
        }
    }

    /// Records that `phase` was reached now (only the first time).
    pub fn mark(&self, phase: BootPhase) {
        let slot = match phase {
            BootPhase::BootRequested => &self.boot_requested_us,
            BootPhase::KvmReady => &self.kvm_ready_us,
            BootPhase::KernelLoaded => &self.kernel_loaded_us,
            BootPhase::DevicesReady => &self.devices_ready_us,
            BootPhase::FirstVcpuRun => &self.first_vcpu_run_us,
        };
        let now = since_start_us().max(1);
        let _ = slot.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Microseconds since the guest first ran, if it has.
    pub fn guest_uptime_us(&self) -> Option<u64> {
        let first = self.first_vcpu_run_us.load(Ordering::SeqCst);
        (first != 0).then(|| since_start_us().saturating_sub(first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_recorded_once_and_in_order() {
        mark_process_start();
        let t = BootTimeline::default();
        assert_eq!(t.guest_uptime_us(), None);
        t.mark(BootPhase::KvmReady);
        let first = t.kvm_ready_us.load(Ordering::SeqCst);
        assert!(first > 0);
        std::thread::sleep(std::time::Duration::from_millis(2));
        t.mark(BootPhase::KvmReady);
        assert_eq!(t.kvm_ready_us.load(Ordering::SeqCst), first);
        t.mark(BootPhase::FirstVcpuRun);
        assert!(t.first_vcpu_run_us.load(Ordering::SeqCst) > first);
        assert!(t.guest_uptime_us().is_some());
        let phases = t.snapshot();
        assert_eq!(phases.kvm_ready_us, first);
        assert_eq!(phases.kernel_loaded_us, 0);
    }
}
