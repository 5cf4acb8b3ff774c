//! hull's virtual machine monitor: one process per pod sandbox, booting hull's
//! guest kernel under KVM with virtio-mmio devices.

pub mod control;
pub mod devices;
pub mod exit_record;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod host_check;
pub mod privileges;
pub mod seccomp;
pub mod sigsys;
pub mod vmm;
pub mod vstate;
