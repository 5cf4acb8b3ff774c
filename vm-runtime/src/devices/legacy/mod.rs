//! Legacy port-I/O devices: the COM1 console and the i8042 controller.

pub mod console_log;
pub mod i8042;
pub mod serial;

use vmm_sys_util::eventfd::EventFd;

/// An eventfd that raises an interrupt line (registered as a KVM irqfd).
pub struct IrqLine(pub EventFd);

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
