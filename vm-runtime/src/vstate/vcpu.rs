//! One thread per vCPU: `KVM_RUN`, then port I/O and MMIO exits dispatched to
//! the buses; exits that end the VM are reported to the VMM's main thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::Serialize;

use crate::devices::bus::Bus;
use crate::vmm::events::{GuestEvent, VmmEvent};
use crate::vmm::timeline::{BootPhase, BootTimeline};

/// Exit counters of all vCPUs together.
#[derive(Debug, Default, Serialize)]
pub struct VcpuMetrics {
    pub exits_io_in: AtomicU64,
    pub exits_io_out: AtomicU64,
    pub exits_mmio_read: AtomicU64,
    pub exits_mmio_write: AtomicU64,
    /// Accesses to addresses where no device lives (answered with zeros).
    pub unhandled_accesses: AtomicU64,
    pub exits_other: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A vCPU ready to run on its own thread.
pub struct Vcpu {
    pub index: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub events: Sender<VmmEvent>,
    pub metrics: Arc<VcpuMetrics>,
    pub timeline: Arc<BootTimeline>,
}

/// What one exit means for the run loop.
enum Next {
    Run,
    Stop(GuestEvent),
}

impl Vcpu {
    /// Runs the guest until an exit ends the VM, then reports it.
    pub fn run(mut self) {
        if self.index == 0 {
            self.timeline.mark(BootPhase::FirstVcpuRun);
        }
        let event = loop {
            match self.run_once() {
                Next::Run => {}
                Next::Stop(event) => break event,
            }
        };
        tracing::info!(vcpu = self.index, ?event, "vCPU stopped");
        // The receiver is gone only when the VMM is already exiting.
        let _ = self.events.send(VmmEvent::Guest(event));
    }

    fn run_once(&mut self) -> Next {
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => return Next::Run,
            Err(e) => {
                return Next::Stop(GuestEvent::Failed(format!(
                    "KVM_RUN failed on vCPU {}: {e}",
                    self.index
                )));
            }
        };
        match exit {
            VcpuExit::IoIn(port, data) => {
                count(&self.metrics.exits_io_in);
                if !self.pio.read(u64::from(port), data) {
                    count(&self.metrics.unhandled_accesses);
                    data.fill(0xff);
                }
                Next::Run
            }
            VcpuExit::IoOut(port, data) => {
                count(&self.metrics.exits_io_out);
                if !self.pio.write(u64::from(port), data) {
                    count(&self.metrics.unhandled_accesses);
                }
                Next::Run
            }
            VcpuExit::MmioRead(addr, data) => {
                count(&self.metrics.exits_mmio_read);
                if !self.mmio.read(addr, data) {
                    count(&self.metrics.unhandled_accesses);
                    data.fill(0);
                }
                Next::Run
            }
            VcpuExit::MmioWrite(addr, data) => {
                count(&self.metrics.exits_mmio_write);
                if !self.mmio.write(addr, data) {
                    count(&self.metrics.unhandled_accesses);
                }
                Next::Run
            }
            VcpuExit::Shutdown => Next::Stop(GuestEvent::TripleFault),
            VcpuExit::SystemEvent(kind, _) => match kind {
                KVM_SYSTEM_EVENT_RESET => Next::Stop(GuestEvent::Reset),
                KVM_SYSTEM_EVENT_SHUTDOWN => Next::Stop(GuestEvent::PowerOff),
                KVM_SYSTEM_EVENT_CRASH => Next::Stop(GuestEvent::CrashReported),
                other => {
                    count(&self.metrics.exits_other);
                    tracing::debug!(vcpu = self.index, kind = other, "ignored system event");
                    Next::Run
                }
            },
            VcpuExit::Hlt => {
                // With the in-kernel irqchip HLT stays in KVM; an exit here
                // means the vCPU halted for good.
                Next::Stop(GuestEvent::PowerOff)
            }
            VcpuExit::FailEntry(reason, cpu) => Next::Stop(GuestEvent::Failed(format!(
                "KVM could not enter vCPU {} (hardware reason {reason:#x}, cpu {cpu})",
                self.index
            ))),
            VcpuExit::InternalError => Next::Stop(GuestEvent::Failed(format!(
                "KVM internal error on vCPU {}",
                self.index
            ))),
            other => {
                count(&self.metrics.exits_other);
                tracing::debug!(vcpu = self.index, exit = ?other, "ignored vCPU exit");
                Next::Run
            }
        }
    }
}
