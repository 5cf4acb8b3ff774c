//! The KVM VM: capabilities, in-kernel irqchip (PIC + IOAPIC + LAPICs) and
//! PIT, guest memory slots.

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use super::layout::KVM_TSS_ADDRESS;
use super::memory::{self, MemoryError};

/// Why the KVM VM could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not 12")]
    ApiVersion(i32),
    #[error("KVM lacks a capability the VMM needs: {0:?}")]
    MissingCapability(Cap),
    #[error("KVM cannot {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("guest memory")]
    Memory(#[from] MemoryError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Capabilities the VMM cannot run without. XSAVE and XCRS are *not* here:
/// they are used when offered (see [`Capabilities`]).
const REQUIRED: &[Cap] = &[
    Cap::Irqchip,
    Cap::Ioeventfd,
    Cap::Irqfd,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::Pit2,
    Cap::PitState2,
    Cap::ExtCpuid,
    Cap::ImmediateExit,
];

/// Optional capabilities found on this host.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Capabilities {
    pub xsave: bool,
    pub xcrs: bool,
    pub tsc_deadline_timer: bool,
}

/// An open KVM with a VM that has its irqchip, PIT and memory.
pub struct Vm {
    pub kvm: Kvm,
    pub fd: VmFd,
    pub caps: Capabilities,
}

/// Opens KVM and checks it can run the VMM at all.
pub fn open_kvm() -> Result<(Kvm, Capabilities), VmError> {
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    let version = kvm.get_api_version();
    if version != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(VmError::ApiVersion(version));
    }
    if let Some(cap) = REQUIRED.iter().find(|c| !kvm.check_extension(**c)) {
        return Err(VmError::MissingCapability(*cap));
    }
    let caps = Capabilities {
        xsave: kvm.check_extension(Cap::Xsave),
        xcrs: kvm.check_extension(Cap::Xcrs),
        tsc_deadline_timer: kvm.check_extension(Cap::TscDeadlineTimer),
    };
    Ok((kvm, caps))
}

impl Vm {
    /// Creates the VM with its irqchip and PIT and maps `mem` into it.
    pub fn new(kvm: Kvm, caps: Capabilities, mem: &GuestMemoryMmap) -> Result<Self, VmError> {
        let fd = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("set the TSS address"))?;
        fd.create_irq_chip()
            .map_err(kvm_err("create the irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm_err("create the PIT"))?;
        memory::register_with_kvm(&fd, mem)?;
        Ok(Self { kvm, fd, caps })
    }
}
