//! The virtio-net device.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::frame::{self, RxChain};
use super::metrics::NetMetrics;
use super::tap::Tap;
use super::{MAX_FRAME_LEN, QUEUE_SIZE};
use crate::devices::virtio::{
    ActivateError, Activation, FEATURE_VERSION_1, VirtioDevice, VirtioInterrupt, device_id,
    read_config_bytes,
};

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;

pub(super) struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<VirtioInterrupt>,
}

/// One network interface.
pub struct Net {
    pub(super) id: String,
    mac: [u8; 6],
    pub(super) tap: Tap,
    queue_events: Vec<EventFd>,
    active: Option<Active>,
    /// A frame read from the tap that waits for a guest buffer.
    pending: Option<Vec<u8>>,
    scratch: Vec<u8>,
    /// Whether the tap fd is in the device thread's epoll set.
    pub(super) tap_watched: bool,
    metrics: Arc<NetMetrics>,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Net {
    pub fn new(id: &str, tap: Tap, mac: [u8; 6]) -> std::io::Result<Self> {
        Ok(Self {
            id: id.to_string(),
            mac,
            tap,
            queue_events: vec![
                EventFd::new(libc::EFD_NONBLOCK)?,
                EventFd::new(libc::EFD_NONBLOCK)?,
            ],
            active: None,
            pending: None,
            scratch: vec![0u8; MAX_FRAME_LEN],
            tap_watched: false,
            metrics: Arc::new(NetMetrics::default()),
        })
    }

    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    pub fn tap_fd(&self) -> i32 {
        self.tap.as_raw_fd()
    }

    /// Whether the tap should be watched: only while a guest buffer could take a frame.
    pub(super) fn wants_tap(&self) -> bool {
        self.active.is_some() && self.pending.is_none()
    }

    /// Sends every frame the guest queued.
    pub fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used_any = false;
        while let Some(chain) = active.queues[TX_QUEUE].pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            match frame::read_tx(chain, &active.mem) {
                Ok(data) => match self.tap.write_frame(&data) {
                    Ok(true) => {
                        add(&self.metrics.tx_frames, 1);
                        add(&self.metrics.tx_bytes, data.len() as u64);
                    }
                    Ok(false) => add(&self.metrics.tx_dropped, 1),
                    Err(error) => {
                        tracing::debug!(net = %self.id, %error, "tap write failed");
                        add(&self.metrics.tx_dropped, 1);
                    }
                },
                Err(error) => {
                    tracing::debug!(net = %self.id, %error, "malformed tx chain");
                    add(&self.metrics.malformed_chains, 1);
                }
            }
            if active.queues[TX_QUEUE]
                .add_used(&active.mem, head, 0)
                .is_err()
            {
                break;
            }
            used_any = true;
        }
        if used_any {
            active
                .interrupt
                .notify_used(&mut active.queues[TX_QUEUE], &active.mem, "net");
        }
    }

    /// Moves frames from the tap into guest buffers while both have some.
    pub fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used_any = false;
        loop {
            let frame = match self.pending.take() {
                Some(frame) => frame,
                None => match self.tap.read_frame(&mut self.scratch) {
                    Ok(Some(n)) => self.scratch[..n].to_vec(),
                    Ok(None) => break,
                    Err(error) => {
                        tracing::debug!(net = %self.id, %error, "tap read failed");
                        break;
                    }
                },
            };
            let Some(chain) = active.queues[RX_QUEUE].pop_descriptor_chain(&active.mem) else {
                self.pending = Some(frame);
                break;
            };
            let head = chain.head_index();
            let len = match RxChain::parse(chain, &active.mem)
                .and_then(|rx| rx.write(&active.mem, &frame))
            {
                Ok(n) => {
                    add(&self.metrics.rx_frames, 1);
                    add(&self.metrics.rx_bytes, u64::from(n));
                    n
                }
                Err(error) => {
                    tracing::debug!(net = %self.id, %error, "frame dropped: unusable rx buffer");
                    add(&self.metrics.rx_dropped, 1);
                    0
                }
            };
            if active.queues[RX_QUEUE]
                .add_used(&active.mem, head, len)
                .is_err()
            {
                active.queues[RX_QUEUE].go_to_previous_position();
                break;
            }
            used_any = true;
        }
        if used_any {
            active
                .interrupt
                .notify_used(&mut active.queues[RX_QUEUE], &active.mem, "net");
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_id::NET
    }

    fn avail_features(&self) -> u64 {
        FEATURE_VERSION_1 | (1 << VIRTIO_NET_F_MAC)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac);
        read_config_bytes(&config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if activation.queues.len() != 2 {
            return Err(ActivateError::InvalidQueue(activation.queues.len()));
        }
        self.active = Some(Active {
            mem: activation.mem,
            queues: activation.queues,
            interrupt: activation.interrupt,
        });
        // Wake the device thread so it starts watching the tap.
        let _ = self.queue_events[RX_QUEUE].write(1);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending = None;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    fn setup(
        mem: &GuestMemoryMmap,
    ) -> (
        Net,
        UnixDatagram,
        MockSplitQueue<'_, GuestMemoryMmap>,
        MockSplitQueue<'_, GuestMemoryMmap>,
    ) {
        let (dev_end, host_end) = UnixDatagram::pair().unwrap();
        dev_end.set_nonblocking(true).unwrap();
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(dev_end));
        let mut net = Net::new("eth0", Tap::from_file_for_test(file), [2, 0, 0, 0, 0, 1]).unwrap();
        let rx = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 16);
        let tx = MockSplitQueue::create(mem, GuestAddress(0x2_0000), 16);
        net.activate(Activation {
            mem: mem.clone(),
            queues: vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()],
            interrupt: Arc::new(VirtioInterrupt::new(
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            )),
            acked_features: FEATURE_VERSION_1,
        })
        .unwrap();
        (net, host_end, rx, tx)
    }

    #[test]
    fn frames_flow_both_ways_and_wait_for_buffers() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let (mut net, host, rx, tx) = setup(&mem);
        let mut mac = [0u8; 6];
        net.read_config(0, &mut mac);
        assert_eq!(mac, [2, 0, 0, 0, 0, 1]);

        // Guest -> tap.
        mem.write_slice(&[0xab; 74], GuestAddress(0x4_0000))
            .unwrap();
        tx.add_desc_chains(
            &[RawDescriptor::from(SplitDescriptor::new(
                0x4_0000, 74, 0, 0,
            ))],
            0,
        )
        .unwrap();
        net.process_tx();
        let mut buf = [0u8; 100];
        assert_eq!(host.recv(&mut buf).unwrap(), 74);

        // Tap -> guest: no buffer yet, the frame waits.
        host.send(&[0xcd; 60]).unwrap();
        net.process_rx();
        assert!(!net.wants_tap());
        let w = VRING_DESC_F_WRITE as u16;
        rx.add_desc_chains(
            &[RawDescriptor::from(SplitDescriptor::new(
                0x5_0000, 1526, w, 0,
            ))],
            0,
        )
        .unwrap();
        net.process_rx();
        assert!(net.wants_tap());
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x5_0000 + 59)).unwrap(),
            0xcd
        );
        let used_len: u32 = mem.read_obj(rx.used_addr().unchecked_add(8)).unwrap();
        assert_eq!(used_len, 60);
        let m = net.metrics();
        assert_eq!(m.tx_frames.load(Ordering::Relaxed), 1);
        assert_eq!(m.rx_frames.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn bad_chains_are_dropped_not_fatal() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let (mut net, host, rx, tx) = setup(&mem);
        let w = VRING_DESC_F_WRITE as u16;
        // Writable tx descriptor and an out-of-memory one.
        tx.add_desc_chains(
            &[
                RawDescriptor::from(SplitDescriptor::new(0x4_0000, 74, w, 0)),
                RawDescriptor::from(SplitDescriptor::new(0xff_0000, 74, 0, 0)),
            ],
            0,
        )
        .unwrap();
        net.process_tx();
        assert_eq!(net.metrics().malformed_chains.load(Ordering::Relaxed), 2);
        // An rx buffer too small for the frame: the frame is dropped.
        host.send(&[1u8; 100]).unwrap();
        rx.add_desc_chains(
            &[RawDescriptor::from(SplitDescriptor::new(
                0x5_0000, 50, w, 0,
            ))],
            0,
        )
        .unwrap();
        net.process_rx();
        assert_eq!(net.metrics().rx_dropped.load(Ordering::Relaxed), 1);
    }
}
