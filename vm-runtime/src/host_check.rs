//! Can this host's `/dev/kvm` run a standard guest kernel?
//!
//! Opening `/dev/kvm` and creating a VM is not enough of a test: a PVM host
//! (`kvm_pvm` module, a paravirtual KVM for hosts without hardware
//! virtualization) answers the whole KVM API and even runs real-mode code, yet
//! hangs any guest kernel not built with PVM's patches. So the check also asks
//! for hardware virtualization (`vmx` or `svm` in `/proc/cpuinfo`) and for the
//! absence of `kvm_pvm`.
//!
//! [`evaluate`] is pure and takes the facts as input; [`check`] gathers them
//! from this host. This file uses only `std`, so build tools can include it
//! without building the VMM.

use std::fmt;
use std::path::Path;

/// The KVM device node.
pub const KVM_DEVICE: &str = "/dev/kvm";
/// Present while the PVM flavour of KVM is loaded.
pub const PVM_MODULE_DIR: &str = "/sys/module/kvm_pvm";
/// Source of the CPU feature flags.
pub const CPUINFO: &str = "/proc/cpuinfo";

/// Whether hull can boot its guests here, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmSupport {
    /// `/dev/kvm` opens, hardware virtualization is exposed, and it is not PVM.
    Usable,
    /// Standard guests cannot run; the reason says what is missing.
    Unusable(KvmUnusable),
}

/// What stands between this host and a bootable standard guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmUnusable {
    /// There is no `/dev/kvm`.
    DeviceMissing,
    /// `/dev/kvm` exists but opening it read-write failed.
    DeviceNotOpenable {
        /// The operating system's error, e.g. "Permission denied (os error 13)".
        error: String,
    },
    /// The loaded KVM is PVM, which boots only PVM-patched guest kernels.
    Pvm,
    /// The CPU exposes neither VMX (Intel) nor SVM (AMD).
    NoHardwareVirtualization,
}

/// The facts [`evaluate`] decides on, as read from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// What opening `/dev/kvm` read-write gave.
    pub device: DeviceState,
    /// Whether `kvm_pvm` is loaded.
    pub pvm_loaded: bool,
    /// The text of `/proc/cpuinfo` (only the `flags` lines matter).
    pub cpuinfo: String,
}

/// Result of trying to open the KVM device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceState {
    /// The node does not exist.
    Missing,
    /// The node exists but `open(O_RDWR)` failed with this error.
    NotOpenable(String),
    /// The node opened read-write.
    Openable,
}

impl KvmSupport {
    /// True when hull can boot guests on this host.
    pub fn is_usable(&self) -> bool {
        matches!(self, KvmSupport::Usable)
    }
}

impl fmt::Display for KvmSupport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvmSupport::Usable => f.write_str(
                "KVM is usable: /dev/kvm opens and the CPU exposes hardware virtualization",
            ),
            KvmSupport::Unusable(reason) => reason.fmt(f),
        }
    }
}

const WHAT_TO_DO: &str = "run hull on bare metal or in a VM with nested virtualization enabled";

impl fmt::Display for KvmUnusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvmUnusable::DeviceMissing => write!(
                f,
                "{KVM_DEVICE} does not exist: load kvm_intel or kvm_amd, or {WHAT_TO_DO}"
            ),
            KvmUnusable::DeviceNotOpenable { error } => write!(
                f,
                "{KVM_DEVICE} cannot be opened read-write ({error}): run as root or as a member of the kvm group"
            ),
            KvmUnusable::Pvm => write!(
                f,
                "this host's KVM is PVM (kvm_pvm module loaded), which runs only PVM-patched guest kernels; {WHAT_TO_DO}"
            ),
            KvmUnusable::NoHardwareVirtualization => write!(
                f,
                "the CPU exposes neither VMX nor SVM, so KVM cannot run a standard guest; {WHAT_TO_DO}"
            ),
        }
    }
}

/// Decides from `facts` alone. The first missing requirement is reported.
pub fn evaluate(facts: &HostFacts) -> KvmSupport {
    let reason = match &facts.device {
        DeviceState::Missing => Some(KvmUnusable::DeviceMissing),
        DeviceState::NotOpenable(error) => Some(KvmUnusable::DeviceNotOpenable {
            error: error.clone(),
        }),
        DeviceState::Openable if facts.pvm_loaded => Some(KvmUnusable::Pvm),
        DeviceState::Openable if !has_hardware_virtualization(&facts.cpuinfo) => {
            Some(KvmUnusable::NoHardwareVirtualization)
        }
        DeviceState::Openable => None,
    };
    match reason {
        Some(reason) => KvmSupport::Unusable(reason),
        None => KvmSupport::Usable,
    }
}

/// Whether any `flags` line of a `/proc/cpuinfo` text has `vmx` or `svm`.
pub fn has_hardware_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| key.trim() == "flags")
        .any(|(_, flags)| {
            flags
                .split_whitespace()
                .any(|flag| flag == "vmx" || flag == "svm")
        })
}

/// Reads the facts from this host.
pub fn gather() -> HostFacts {
    let device = if !Path::new(KVM_DEVICE).exists() {
        DeviceState::Missing
    } else {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(KVM_DEVICE)
        {
            Ok(_) => DeviceState::Openable,
            Err(error) => DeviceState::NotOpenable(error.to_string()),
        }
    };
    HostFacts {
        device,
        pvm_loaded: Path::new(PVM_MODULE_DIR).exists(),
        cpuinfo: std::fs::read_to_string(CPUINFO).unwrap_or_default(),
    }
}

/// Whether this host's `/dev/kvm` can boot a standard guest.
pub fn check() -> KvmSupport {
    evaluate(&gather())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr vmx ept\n\nprocessor\t: 1\nflags\t\t: fpu vme de pse tsc msr vmx ept\n";
    const AMD: &str = "processor\t: 0\nflags\t\t: fpu sse2 svm npt\n";
    const NONE: &str = "processor\t: 0\nflags\t\t: fpu sse2 hypervisor\nvmx flags\t: ept\n";

    fn facts(device: DeviceState, pvm_loaded: bool, cpuinfo: &str) -> HostFacts {
        HostFacts {
            device,
            pvm_loaded,
            cpuinfo: cpuinfo.to_string(),
        }
    }

    #[test]
    fn intel_and_amd_hosts_are_usable() {
        assert_eq!(
            evaluate(&facts(DeviceState::Openable, false, INTEL)),
            KvmSupport::Usable
        );
        assert_eq!(
            evaluate(&facts(DeviceState::Openable, false, AMD)),
            KvmSupport::Usable
        );
    }

    #[test]
    fn pvm_is_reported_even_with_flags() {
        let support = evaluate(&facts(DeviceState::Openable, true, INTEL));
        assert_eq!(support, KvmSupport::Unusable(KvmUnusable::Pvm));
        assert!(support.to_string().contains("PVM"), "{support}");
    }

    #[test]
    fn only_the_flags_line_counts() {
        // "vmx flags" is a separate cpuinfo key; it must not count as VMX.
        assert!(!has_hardware_virtualization(NONE));
        assert_eq!(
            evaluate(&facts(DeviceState::Openable, false, NONE)),
            KvmSupport::Unusable(KvmUnusable::NoHardwareVirtualization)
        );
        assert!(!has_hardware_virtualization("flags: fpu svmx vmxe\n"));
    }

    #[test]
    fn device_problems_come_first() {
        assert_eq!(
            evaluate(&facts(DeviceState::Missing, true, NONE)),
            KvmSupport::Unusable(KvmUnusable::DeviceMissing)
        );
        let support = evaluate(&facts(
            DeviceState::NotOpenable("Permission denied (os error 13)".into()),
            false,
            INTEL,
        ));
        assert!(
            support.to_string().contains("Permission denied"),
            "{support}"
        );
        assert!(!support.is_usable());
    }

    #[test]
    fn this_host_agrees_with_its_facts() {
        let facts = gather();
        let support = evaluate(&facts);
        if Path::new(PVM_MODULE_DIR).exists() && facts.device == DeviceState::Openable {
            assert_eq!(support, KvmSupport::Unusable(KvmUnusable::Pvm), "{support}");
        }
        assert_eq!(
            support.is_usable(),
            facts.device == DeviceState::Openable
                && !facts.pvm_loaded
                && has_hardware_virtualization(&facts.cpuinfo),
            "{support}"
        );
    }
}
