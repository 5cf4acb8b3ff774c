//! Messages to the VMM's main thread, which owns the VM's lifetime.

use std::sync::Arc;
use std::sync::mpsc::Sender;

use super::builder::{BootRequest, VmHandle};
use crate::exit_record::StopMode;

/// What the guest did that ends the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestEvent {
    /// CPU reset: i8042 0xfe or a KVM reset event.
    Reset,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// The guest powered off (console `reboot: Power down`, KVM shutdown event).
    PowerOff,
    /// The guest reported a crash (KVM crash event, pvpanic-style).
    CrashReported,
    /// Running the guest failed in KVM or the VMM.
    Failed(String),
}

/// A request to end the VM from the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopRequest {
    pub mode: StopMode,
    /// For a graceful stop: how long to wait for the guest before forcing.
    pub timeout_ms: u64,
}

/// Everything the main thread waits for.
pub enum VmmEvent {
    /// Build and start the VM; the answer goes back on the sender.
    Boot(Box<BootRequest>, Sender<Result<Arc<VmHandle>, String>>),
    Guest(GuestEvent),
    Stop(StopRequest),
}

/// The sending side handed to vCPUs, devices and the control thread.
pub type EventSender = Sender<VmmEvent>;
