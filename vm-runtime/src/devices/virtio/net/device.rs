//! The virtio-net device.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::frame::{ChainBuffers, TxError};
use super::metrics::NetMetrics;
use super::tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, Tap};
use super::{GSO_TYPE_OFFSET, MAX_FRAME_LEN, NUM_BUFFERS_OFFSET, QUEUE_SIZE, VNET_HDR_LEN};
use crate::devices::virtio::{
    ActivateError, Activation, FEATURE_VERSION_1, VirtioDevice, VirtioInterrupt, device_id,
    read_config_bytes,
};

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;

/// Device features beyond VERSION_1: the MAC in config space, checksum and
/// TCP segmentation offload both ways (the tap takes and gives frames in
/// the same `virtio_net_hdr_v1` format), and event-index notification
/// suppression (the transport sets it on the queues; the device keeps the
/// avail event up to date with `enable_notification`).
const OFFERED_FEATURES: u64 = FEATURE_VERSION_1
    | (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6)
    | (1 << VIRTIO_RING_F_EVENT_IDX);

/// The tap offloads (`TUN_F_*`) for a driver that acked `acked`: only what
/// the driver can receive. TSO needs checksum offload (the virtio spec
/// makes GUEST_TSO* depend on GUEST_CSUM, and the tap ignores TSO flags
/// without TUN_F_CSUM).
pub fn tap_offloads(acked: u64) -> u32 {
    let has = |bit: u32| acked & (1 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= TUN_F_TSO6;
    }
    flags
}

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
    /// Tap offloads the devices thread still has to set: activation and
    /// reset run on a vCPU thread, whose seccomp filter allows no tap
    /// ioctl, so they only record the wish and wake the devices thread.
    offloads_to_set: Option<u32>,
    /// Offloads the tap has now.
    tap_offloads: u32,
    /// Frames read from the tap land here (the largest GSO frame fits).
    rx_buf: Vec<u8>,
    /// Length of the frame in `rx_buf` that waits for a guest buffer.
    rx_pending: Option<usize>,
    /// The checked buffers of the chain in hand, reused from chain to chain.
    rx_chain: ChainBuffers,
    tx_chain: ChainBuffers,
    /// Holds a tx frame whose chain has too many pieces for one writev.
    tx_spill: Vec<u8>,
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
            offloads_to_set: None,
            tap_offloads: 0,
            rx_buf: vec![0u8; MAX_FRAME_LEN],
            rx_pending: None,
            rx_chain: ChainBuffers::default(),
            tx_chain: ChainBuffers::default(),
            tx_spill: Vec::new(),
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
        self.active.is_some() && self.rx_pending.is_none()
    }

    /// Sets the tap offloads that activation or reset asked for. Runs on
    /// the devices thread (its seccomp filter allows TUNSETOFFLOAD) before
    /// any frame is read for the new driver.
    pub(super) fn apply_tap_offloads(&mut self) {
        let Some(flags) = self.offloads_to_set.take() else {
            return;
        };
        if flags == self.tap_offloads {
            return;
        }
        match self.tap.set_offloads(flags) {
            Ok(()) => {
                tracing::info!(net = %self.id, flags, "tap offloads set");
                self.tap_offloads = flags;
                self.metrics
                    .tap_offloads
                    .store(u64::from(flags), Ordering::Relaxed);
            }
            Err(error) => {
                // The guest then gets plain frames only if the tap still
                // has none: what it had stays, and is logged.
                tracing::warn!(net = %self.id, flags, %error, "cannot set the tap offloads");
                add(&self.metrics.offload_errors, 1);
            }
        }
    }

    /// Sends every frame the guest queued; one interrupt for the batch.
    pub fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let queue = &mut active.queues[TX_QUEUE];
        let mut used_any = false;
        // Set when the driver re-notified while we were re-enabling kicks:
        // a round that then finds nothing means a broken ring, not a race.
        let mut expect_more = false;
        'rounds: loop {
            // No kicks while we are draining the ring anyway.
            let _ = queue.disable_notification(&active.mem);
            let mut popped = 0usize;
            while let Some(chain) = queue.pop_descriptor_chain(&active.mem) {
                popped += 1;
                let head = chain.head_index();
                let sent = self
                    .tx_chain
                    .load_tx(chain, &active.mem)
                    .map_err(TxError::from);
                match sent.and_then(|()| {
                    self.tx_chain
                        .send_to_tap(&active.mem, &mut self.tap, &mut self.tx_spill)
                }) {
                    Ok(true) => {
                        add(&self.metrics.tx_frames, 1);
                        if self.tx_chain.gso_type(&active.mem) != 0 {
                            add(&self.metrics.tx_gso_frames, 1);
                        }
                        add(
                            &self.metrics.tx_bytes,
                            (self.tx_chain.len() - VNET_HDR_LEN) as u64,
                        );
                    }
                    Ok(false) => add(&self.metrics.tx_dropped, 1),
                    Err(TxError::Tap(error)) => {
                        tracing::debug!(net = %self.id, %error, "tap write failed");
                        add(&self.metrics.tx_dropped, 1);
                    }
                    Err(TxError::Frame(error)) => {
                        tracing::debug!(net = %self.id, %error, "malformed tx chain");
                        add(&self.metrics.malformed_chains, 1);
                    }
                }
                if queue.add_used(&active.mem, head, 0).is_err() {
                    break 'rounds;
                }
                used_any = true;
            }
            if expect_more && popped == 0 {
                tracing::debug!(net = %self.id, "tx ring claims buffers it does not have");
                break;
            }
            // Ask for a kick on the next frame; go on if one came meanwhile.
            match queue.enable_notification(&active.mem) {
                Ok(true) => expect_more = true,
                Ok(false) | Err(_) => break,
            }
        }
        if used_any {
            active.interrupt.notify_used(queue, &active.mem, "net");
        }
    }

    /// Reads the next frame from the tap into `rx_buf`; its length, or
    /// `None` when the tap has none (or failed).
    fn read_tap_frame(&mut self) -> Option<usize> {
        loop {
            match self.tap.read_frame(&mut self.rx_buf) {
                Ok(Some(n)) if n >= VNET_HDR_LEN => {
                    // The tap leaves num_buffers alone; without
                    // MRG_RXBUF every frame is in one buffer (chain).
                    self.rx_buf[NUM_BUFFERS_OFFSET..VNET_HDR_LEN]
                        .copy_from_slice(&1u16.to_le_bytes());
                    return Some(n);
                }
                Ok(Some(n)) => {
                    tracing::debug!(net = %self.id, n, "tap frame shorter than its header");
                    add(&self.metrics.rx_dropped, 1);
                }
                Ok(None) => return None,
                Err(error) => {
                    tracing::debug!(net = %self.id, %error, "tap read failed");
                    return None;
                }
            }
        }
    }

    /// Moves frames from the tap into guest buffers while both have some;
    /// one interrupt for the batch.
    pub fn process_rx(&mut self) {
        if self.active.is_none() {
            return;
        }
        let mut used_any = false;
        let mut expect_more = false;
        {
            let Some(active) = self.active.as_mut() else {
                return;
            };
            // The tap drives rx: kicks are wanted only when out of buffers.
            let _ = active.queues[RX_QUEUE].disable_notification(&active.mem);
        }
        loop {
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.read_tap_frame() {
                    Some(len) => len,
                    None => break,
                },
            };
            self.rx_pending = Some(len);
            let Some(active) = self.active.as_mut() else {
                return;
            };
            let queue = &mut active.queues[RX_QUEUE];
            let Some(chain) = queue.pop_descriptor_chain(&active.mem) else {
                if expect_more {
                    tracing::debug!(net = %self.id, "rx ring claims buffers it does not have");
                    break;
                }
                // Out of buffers: ask for a kick when the driver adds some;
                // try again if it did meanwhile.
                match queue.enable_notification(&active.mem) {
                    Ok(true) => {
                        expect_more = true;
                        continue;
                    }
                    Ok(false) | Err(_) => break,
                }
            };
            expect_more = false;
            let head = chain.head_index();
            let frame = &self.rx_buf[..len];
            let used_len = match self.rx_chain.load_rx(chain, &active.mem) {
                Ok(()) => match self.rx_chain.write_frame(&active.mem, frame) {
                    Ok(n) => {
                        add(&self.metrics.rx_frames, 1);
                        if frame[GSO_TYPE_OFFSET] != 0 {
                            add(&self.metrics.rx_gso_frames, 1);
                        }
                        add(&self.metrics.rx_bytes, (len - VNET_HDR_LEN) as u64);
                        n
                    }
                    Err(error) => {
                        tracing::debug!(net = %self.id, %error, "frame dropped");
                        add(&self.metrics.rx_dropped, 1);
                        0
                    }
                },
                Err(error) => {
                    tracing::debug!(net = %self.id, %error, "frame dropped: malformed rx chain");
                    add(&self.metrics.malformed_chains, 1);
                    add(&self.metrics.rx_dropped, 1);
                    0
                }
            };
            if queue.add_used(&active.mem, head, used_len).is_err() {
                queue.go_to_previous_position();
                break;
            }
            self.rx_pending = None;
            used_any = true;
        }
        if used_any && let Some(active) = self.active.as_mut() {
            active
                .interrupt
                .notify_used(&mut active.queues[RX_QUEUE], &active.mem, "net");
        }
    }

    /// Wakes the devices thread (it then sets offloads and watches the tap).
    fn wake_devices_thread(&self) {
        let _ = self.queue_events[RX_QUEUE].write(1);
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_id::NET
    }

    fn avail_features(&self) -> u64 {
        OFFERED_FEATURES
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
        self.offloads_to_set = Some(tap_offloads(activation.acked_features));
        self.active = Some(Active {
            mem: activation.mem,
            queues: activation.queues,
            interrupt: activation.interrupt,
        });
        self.wake_devices_thread();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_pending = None;
        // The next driver may take fewer offloads: none until it says.
        self.offloads_to_set = Some(0);
        self.wake_devices_thread();
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::sync::Mutex;
    use virtio_bindings::virtio_net::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const QSIZE: u16 = 32;
    const PAGE: u32 = 4096;

    struct Rig<'a> {
        net: Net,
        host: UnixDatagram,
        rx: MockSplitQueue<'a, GuestMemoryMmap>,
        tx: MockSplitQueue<'a, GuestMemoryMmap>,
        irq: EventFd,
        offloads: Arc<Mutex<Vec<u32>>>,
    }

    fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn setup(mem: &GuestMemoryMmap, acked_features: u64) -> Rig<'_> {
        let (dev_end, host) = UnixDatagram::pair().unwrap();
        dev_end.set_nonblocking(true).unwrap();
        // A frame that never came fails the test instead of hanging it.
        host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(dev_end));
        let offloads = Arc::new(Mutex::new(Vec::new()));
        let tap = Tap::from_file_for_test(file, offloads.clone());
        let mut net = Net::new("eth0", tap, [2, 0, 0, 0, 0, 1]).unwrap();
        let rx = MockSplitQueue::create(mem, GuestAddress(0x1_0000), QSIZE);
        let tx = MockSplitQueue::create(mem, GuestAddress(0x2_0000), QSIZE);
        let event_idx = acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues: Vec<Queue> = vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()];
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        net.activate(Activation {
            mem: mem.clone(),
            queues,
            interrupt: Arc::new(VirtioInterrupt::new(irq.try_clone().unwrap())),
            acked_features,
        })
        .unwrap();
        Rig {
            net,
            host,
            rx,
            tx,
            irq,
            offloads,
        }
    }

    /// Puts one chain of `bufs` (addr, len, flags) at descriptor `first`.
    fn add_chain(q: &MockSplitQueue<'_, GuestMemoryMmap>, first: u16, bufs: &[(u64, u32, u16)]) {
        let raw: Vec<_> = bufs
            .iter()
            .enumerate()
            .map(|(i, (addr, len, flags))| {
                let i = i as u16;
                let (flags, next) = if usize::from(i) + 1 < bufs.len() {
                    (flags | VRING_DESC_F_NEXT as u16, first + i + 1)
                } else {
                    (*flags, 0)
                };
                RawDescriptor::from(SplitDescriptor::new(*addr, *len, flags, next))
            })
            .collect();
        q.add_desc_chains(&raw, first).unwrap();
    }

    /// The chain a Linux driver with GUEST_TSO and no MRG_RXBUF posts: the
    /// header, the rest of its page, 17 more pages.
    fn big_rx_chain(base: u64) -> Vec<(u64, u32, u16)> {
        let mut bufs = vec![(base, 12, W), (base + 16, PAGE - 16, W)];
        bufs.extend((1..=17).map(|i| (base + u64::from(i * PAGE), PAGE, W)));
        bufs
    }

    fn used_len(mem: &GuestMemoryMmap, q: &MockSplitQueue<'_, GuestMemoryMmap>, n: u64) -> u32 {
        mem.read_obj(q.used_addr().unchecked_add(4 + 8 * n + 4))
            .unwrap()
    }

    fn all_offered() -> u64 {
        Net::new(
            "x",
            Tap::from_file_for_test(tempfile::tempfile().unwrap(), Arc::default()),
            [0; 6],
        )
        .unwrap()
        .avail_features()
    }

    #[test]
    fn checksum_and_segmentation_offloads_are_offered() {
        let offered = all_offered();
        for bit in [
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_RING_F_EVENT_IDX,
        ] {
            assert_ne!(offered & (1 << bit), 0, "feature bit {bit}");
        }
        assert_ne!(offered & FEATURE_VERSION_1, 0);
        // Nothing the device does not implement (MRG_RXBUF, UFO, ECN, ...).
        for bit in [
            virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF,
            virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_UFO,
            virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_ECN,
            virtio_bindings::virtio_net::VIRTIO_NET_F_HOST_UFO,
            virtio_bindings::virtio_net::VIRTIO_NET_F_CTRL_VQ,
        ] {
            assert_eq!(offered & (1 << bit), 0, "feature bit {bit}");
        }
    }

    #[test]
    fn tap_offloads_follow_what_the_driver_can_receive() {
        let f = |bits: &[u32]| bits.iter().fold(0u64, |acc, b| acc | (1 << b));
        assert_eq!(tap_offloads(FEATURE_VERSION_1), 0);
        // Sending offloads need nothing of the tap.
        assert_eq!(
            tap_offloads(f(&[VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4])),
            0
        );
        assert_eq!(tap_offloads(f(&[VIRTIO_NET_F_GUEST_CSUM])), TUN_F_CSUM);
        assert_eq!(
            tap_offloads(f(&[
                VIRTIO_NET_F_GUEST_CSUM,
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6
            ])),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
        );
        // TSO without checksum offload (a spec violation) gets nothing.
        assert_eq!(tap_offloads(f(&[VIRTIO_NET_F_GUEST_TSO4])), 0);
    }

    #[test]
    fn offloads_are_set_on_the_devices_thread_and_cleared_on_reset() {
        let mem = guest_memory();
        let mut rig = setup(&mem, all_offered());
        // Activation only records the wish (it runs on a vCPU thread).
        assert!(rig.offloads.lock().unwrap().is_empty());
        rig.net.apply_tap_offloads();
        assert_eq!(
            *rig.offloads.lock().unwrap(),
            [TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6]
        );
        assert_eq!(rig.net.metrics().tap_offloads.load(Ordering::Relaxed), 7);
        rig.net.apply_tap_offloads();
        assert_eq!(rig.offloads.lock().unwrap().len(), 1);
        rig.net.reset();
        rig.net.apply_tap_offloads();
        assert_eq!(
            *rig.offloads.lock().unwrap(),
            [TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, 0]
        );
        // A driver without offloads after a reset: the tap stays plain.
        let plain = setup(&mem, FEATURE_VERSION_1 | (1 << VIRTIO_NET_F_MAC));
        let mut net = plain.net;
        net.apply_tap_offloads();
        assert!(plain.offloads.lock().unwrap().is_empty());
    }

    #[test]
    fn frames_flow_both_ways_and_wait_for_buffers() {
        let mem = guest_memory();
        let mut rig = setup(&mem, FEATURE_VERSION_1);
        let mut mac = [0u8; 6];
        rig.net.read_config(0, &mut mac);
        assert_eq!(mac, [2, 0, 0, 0, 0, 1]);

        // Guest -> tap.
        mem.write_slice(&[0xab; 74], GuestAddress(0x4_0000))
            .unwrap();
        add_chain(&rig.tx, 0, &[(0x4_0000, 74, 0)]);
        rig.net.process_tx();
        let mut buf = [0u8; 100];
        assert_eq!(rig.host.recv(&mut buf).unwrap(), 74);

        // Tap -> guest: no buffer yet, the frame waits.
        rig.host.send(&[0xcd; 60]).unwrap();
        rig.net.process_rx();
        assert!(!rig.net.wants_tap());
        add_chain(&rig.rx, 0, &[(0x5_0000, 1526, W)]);
        rig.net.process_rx();
        assert!(rig.net.wants_tap());
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x5_0000 + 59)).unwrap(),
            0xcd
        );
        // num_buffers is 1, whatever the tap left there.
        assert_eq!(mem.read_obj::<u16>(GuestAddress(0x5_0000 + 10)).unwrap(), 1);
        assert_eq!(used_len(&mem, &rig.rx, 0), 60);
        let m = rig.net.metrics();
        assert_eq!(m.tx_frames.load(Ordering::Relaxed), 1);
        assert_eq!(m.rx_frames.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_64k_gso_frame_goes_to_the_tap_with_its_header() {
        let mem = guest_memory();
        let mut rig = setup(&mem, all_offered());
        // Header: NEEDS_CSUM, TCPv4 GSO, hdr_len 66, gso_size 1448,
        // csum_start 34, csum_offset 16, num_buffers 0.
        let mut header = [0u8; 12];
        header[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
        header[1] = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
        header[2..4].copy_from_slice(&66u16.to_le_bytes());
        header[4..6].copy_from_slice(&1448u16.to_le_bytes());
        header[6..8].copy_from_slice(&34u16.to_le_bytes());
        header[8..10].copy_from_slice(&16u16.to_le_bytes());
        // As Linux sends it: header + linear part in one buffer, then pages.
        let base = 0x10_0000u64;
        mem.write_slice(&header, GuestAddress(base)).unwrap();
        mem.write_slice(&[0x45; 66], GuestAddress(base + 12))
            .unwrap();
        let mut bufs = vec![(base, 12 + 66, 0)];
        // 15 full pages and a partial one: a 65,418-byte frame, about the
        // largest a Linux guest sends.
        for i in 0..16u64 {
            let page = base + 0x1000 * (i + 1);
            mem.write_slice(&[i as u8; PAGE as usize], GuestAddress(page))
                .unwrap();
            bufs.push((page, if i < 15 { PAGE } else { 3_900 }, 0));
        }
        let total = 12 + 66 + 15 * PAGE as usize + 3_900;
        assert!(total > 65_000 && total <= MAX_FRAME_LEN);
        add_chain(&rig.tx, 0, &bufs);
        rig.net.process_tx();
        let mut got = vec![0u8; 80_000];
        assert_eq!(rig.host.recv(&mut got).unwrap(), total);
        assert_eq!(got[..12], header);
        assert_eq!(got[12], 0x45);
        assert_eq!(got[total - 1], 15);
        let m = rig.net.metrics();
        assert_eq!(m.tx_frames.load(Ordering::Relaxed), 1);
        assert_eq!(m.tx_bytes.load(Ordering::Relaxed), (total - 12) as u64);
        assert_eq!(m.tx_gso_frames.load(Ordering::Relaxed), 1);
        assert_eq!(m.malformed_chains.load(Ordering::Relaxed), 0);
        // One interrupt for the batch.
        assert_eq!(rig.irq.read().unwrap(), 1);
    }

    #[test]
    fn a_64k_frame_from_the_tap_fills_a_big_rx_chain() {
        let mem = guest_memory();
        let mut rig = setup(&mem, all_offered());
        let len = 12 + 65_534;
        let mut frame: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        frame[..12].copy_from_slice(&[1, 4, 66, 0, 0xa8, 5, 34, 0, 16, 0, 0, 0]);
        rig.host.send(&frame).unwrap();
        let base = 0x20_0000u64;
        add_chain(&rig.rx, 0, &big_rx_chain(base));
        rig.net.process_rx();
        assert_eq!(used_len(&mem, &rig.rx, 0), len as u32);
        let mut header = [0u8; 12];
        mem.read_slice(&mut header, GuestAddress(base)).unwrap();
        assert_eq!(header, [1, 4, 66, 0, 0xa8, 5, 34, 0, 16, 0, 1, 0]);
        // Byte 12 onwards starts in the second buffer, the last bytes in
        // the 16th page.
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(base + 16)).unwrap(),
            frame[12]
        );
        let last = len - 12 - (PAGE as usize - 16) - 1;
        let page = 1 + last / PAGE as usize;
        let at = base + (page * PAGE as usize + last % PAGE as usize) as u64;
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(at)).unwrap(),
            frame[len - 1]
        );
        assert_eq!(rig.net.metrics().rx_frames.load(Ordering::Relaxed), 1);
        assert_eq!(rig.net.metrics().rx_gso_frames.load(Ordering::Relaxed), 1);
        assert_eq!(rig.irq.read().unwrap(), 1);
    }

    #[test]
    fn too_small_rx_chains_drop_the_frame_and_count_it() {
        let mem = guest_memory();
        let mut rig = setup(&mem, all_offered());
        rig.host.send(&[3u8; 12 + 20_000]).unwrap();
        rig.host.send(&[4u8; 12 + 50]).unwrap();
        // A 1526-byte chain for the big frame, then one for the small.
        add_chain(&rig.rx, 0, &[(0x5_0000, 1526, W)]);
        add_chain(&rig.rx, 1, &[(0x6_0000, 1526, W)]);
        rig.net.process_rx();
        let m = rig.net.metrics();
        assert_eq!(m.rx_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(m.rx_frames.load(Ordering::Relaxed), 1);
        assert_eq!(used_len(&mem, &rig.rx, 0), 0);
        assert_eq!(used_len(&mem, &rig.rx, 1), 62);
        // Nothing of the dropped frame reached the guest.
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x5_0000 + 12)).unwrap(), 0);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x6_0000 + 12)).unwrap(), 4);
    }

    #[test]
    fn bad_chains_are_dropped_not_fatal() {
        let mem = guest_memory();
        let mut rig = setup(&mem, all_offered());
        // A writable tx descriptor, one outside guest memory, one that
        // wraps the address space, and a chain longer than any frame.
        add_chain(&rig.tx, 0, &[(0x4_0000, 74, W)]);
        add_chain(&rig.tx, 1, &[(0xff0_0000, 74, 0)]);
        add_chain(&rig.tx, 2, &[(u64::MAX - 16, 74, 0)]);
        add_chain(
            &rig.tx,
            3,
            &[(0x10_0000, 0x1_0000, 0), (0x20_0000, 0x1_0000, 0)],
        );
        add_chain(&rig.tx, 5, &[(0x10_0000, u32::MAX, 0)]);
        rig.net.process_tx();
        let m = rig.net.metrics();
        assert_eq!(m.malformed_chains.load(Ordering::Relaxed), 5);
        assert_eq!(m.tx_frames.load(Ordering::Relaxed), 0);
        let mut buf = [0u8; 16];
        rig.host.set_nonblocking(true).unwrap();
        assert!(rig.host.recv(&mut buf).is_err(), "nothing reached the tap");
        // Every chain was still returned to the driver.
        let used_idx: u16 = mem.read_obj(rig.tx.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used_idx, 5);

        // rx: a read-only chain and one outside memory; each drops a frame.
        rig.host.send(&[1u8; 100]).unwrap();
        rig.host.send(&[1u8; 100]).unwrap();
        add_chain(&rig.rx, 0, &[(0x5_0000, 1526, 0)]);
        add_chain(&rig.rx, 1, &[(0xff0_0000, 1526, W)]);
        rig.net.process_rx();
        assert_eq!(m.rx_dropped.load(Ordering::Relaxed), 2);
        assert_eq!(m.malformed_chains.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn event_index_asks_for_the_next_kick_and_skips_unwanted_interrupts() {
        let mem = guest_memory();
        let mut rig = setup(&mem, all_offered());
        // The driver wants an interrupt only after the 3rd used buffer.
        let used_event_addr = rig.tx.avail_addr().unchecked_add(4 + 2 * u64::from(QSIZE));
        mem.write_obj(2u16, used_event_addr).unwrap();
        mem.write_slice(&[0u8; 60], GuestAddress(0x4_0000)).unwrap();
        add_chain(&rig.tx, 0, &[(0x4_0000, 60, 0)]);
        rig.net.process_tx();
        assert!(rig.irq.read().is_err(), "no interrupt before used_event");
        // The device asks for a kick at the next avail index.
        let avail_event_addr = rig.tx.used_addr().unchecked_add(4 + 8 * u64::from(QSIZE));
        assert_eq!(mem.read_obj::<u16>(avail_event_addr).unwrap(), 1);
        add_chain(&rig.tx, 1, &[(0x4_0000, 60, 0)]);
        add_chain(&rig.tx, 2, &[(0x4_0000, 60, 0)]);
        rig.net.process_tx();
        assert_eq!(rig.irq.read().unwrap(), 1);
        assert_eq!(mem.read_obj::<u16>(avail_event_addr).unwrap(), 3);

        // rx: one buffer for two frames; out of buffers with a frame
        // waiting, the device asks for a kick at the next avail index.
        rig.host.send(&[5u8; 60]).unwrap();
        rig.host.send(&[6u8; 60]).unwrap();
        add_chain(&rig.rx, 0, &[(0x5_0000, 1526, W)]);
        rig.net.process_rx();
        let rx_avail_event = rig.rx.used_addr().unchecked_add(4 + 8 * u64::from(QSIZE));
        assert_eq!(mem.read_obj::<u16>(rx_avail_event).unwrap(), 1);
        assert!(!rig.net.wants_tap());
    }
}
