//! A virtio-mmio device's interrupt: the InterruptStatus register and the
//! irqfd that raises its IOAPIC line.

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Why the device interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// A queue has new used buffers.
    Queue,
    /// The config space changed.
    Config,
}

/// InterruptStatus plus the irqfd.
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl VirtioInterrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Sets the status bit and raises the line.
    pub fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        let bit = match kind {
            InterruptKind::Queue => VIRTIO_MMIO_INT_VRING,
            InterruptKind::Config => VIRTIO_MMIO_INT_CONFIG,
        };
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    /// After buffers were put in `queue`'s used ring: raises the queue
    /// interrupt unless the driver asked not to be notified (event index).
    /// A failure is logged with `device` named; the guest then sees the
    /// buffers on its next interrupt or poll.
    pub fn notify_used(&self, queue: &mut Queue, mem: &GuestMemoryMmap, device: &'static str) {
        if queue.needs_notification(mem).unwrap_or(true)
            && let Err(error) = self.trigger(InterruptKind::Queue)
        {
            tracing::warn!(%error, device, "cannot raise the queue interrupt");
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears everything (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_sets_bits_and_signals() {
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = VirtioInterrupt::new(fd.try_clone().unwrap());
        irq.trigger(InterruptKind::Queue).unwrap();
        irq.trigger(InterruptKind::Config).unwrap();
        assert_eq!(irq.status(), 3);
        assert_eq!(fd.read().unwrap(), 2);
        irq.ack(1);
        assert_eq!(irq.status(), 2);
        irq.clear();
        assert_eq!(irq.status(), 0);
    }
}
