//! hull's virtual machine monitor: one process per pod sandbox, booting hull's
//! guest kernel under KVM with virtio-mmio devices.

pub mod host_check;
