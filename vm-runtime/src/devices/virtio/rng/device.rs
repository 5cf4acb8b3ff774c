//! The virtio-rng device.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::metrics::RngMetrics;
use super::{QUEUE_SIZE, request};
use crate::devices::virtio::{
    ActivateError, Activation, FEATURE_VERSION_1, VirtioDevice, VirtioInterrupt, device_id,
};

struct ActiveQueue {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// The entropy device.
pub struct Rng {
    queue_events: Vec<EventFd>,
    active: Option<ActiveQueue>,
    metrics: Arc<RngMetrics>,
}

impl Rng {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            queue_events: vec![EventFd::new(libc::EFD_NONBLOCK)?],
            active: None,
            metrics: Arc::new(RngMetrics::default()),
        })
    }

    pub fn metrics(&self) -> Arc<RngMetrics> {
        self.metrics.clone()
    }

    /// Answers every available request; interrupts the guest if needed.
    pub fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used_any = false;
        while let Some(chain) = active.queue.pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            let written = request::parse(chain, &active.mem)
                .and_then(|buffers| request::fill(&active.mem, &buffers));
            let len = match written {
                Ok(n) => {
                    self.metrics.requests.fetch_add(1, Ordering::Relaxed);
                    self.metrics
                        .bytes
                        .fetch_add(u64::from(n), Ordering::Relaxed);
                    n
                }
                Err(error) => {
                    tracing::debug!(%error, "malformed virtio-rng request");
                    self.metrics.failed_requests.fetch_add(1, Ordering::Relaxed);
                    0
                }
            };
            if let Err(error) = active.queue.add_used(&active.mem, head, len) {
                tracing::warn!(%error, "cannot return an rng request to the guest");
                break;
            }
            used_any = true;
        }
        if used_any {
            active
                .interrupt
                .notify_used(&mut active.queue, &active.mem, "rng");
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_id::RNG
    }

    fn avail_features(&self) -> u64 {
        FEATURE_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let queue = activation
            .queues
            .into_iter()
            .next()
            .ok_or(ActivateError::InvalidQueue(0))?;
        self.active = Some(ActiveQueue {
            mem: activation.mem,
            queue,
            interrupt: activation.interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    #[test]
    fn answers_good_and_bad_requests_and_interrupts() {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let q = MockSplitQueue::new(&m, 16);
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut rng = Rng::new().unwrap();
        rng.activate(Activation {
            mem: m.clone(),
            queues: vec![q.create_queue().unwrap()],
            interrupt: Arc::new(VirtioInterrupt::new(irq.try_clone().unwrap())),
            acked_features: FEATURE_VERSION_1,
        })
        .unwrap();
        let w = VRING_DESC_F_WRITE as u16;
        q.add_desc_chains(
            &[
                RawDescriptor::from(SplitDescriptor::new(0x2_0000, 32, w, 0)),
                RawDescriptor::from(SplitDescriptor::new(0x3_0000, 32, 0, 0)),
                RawDescriptor::from(SplitDescriptor::new(
                    0x4_0000,
                    32,
                    w | VRING_DESC_F_NEXT as u16,
                    3,
                )),
                RawDescriptor::from(SplitDescriptor::new(0xff_0000, 32, w, 0)),
            ],
            0,
        )
        .unwrap();
        rng.process_queue();
        assert_eq!(irq.read().unwrap(), 1);
        let m2 = rng.metrics();
        assert_eq!(m2.requests.load(Ordering::Relaxed), 1);
        assert_eq!(m2.bytes.load(Ordering::Relaxed), 32);
        assert_eq!(m2.failed_requests.load(Ordering::Relaxed), 2);
        // Three chains were returned: the used index is 3.
        let used_idx: u16 = m.read_obj(q.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used_idx, 3);
    }
}
