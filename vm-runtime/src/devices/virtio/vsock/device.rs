//! The virtio-vsock device: config space (guest CID), queues, and moving
//! packets between the queues and the [`Muxer`].

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use event_manager::EventOps;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::QUEUE_SIZE;
use super::metrics::VsockMetrics;
use super::muxer::Muxer;
use super::packet::{self, RxBuffers};
use crate::devices::virtio::{
    ActivateError, Activation, FEATURE_VERSION_1, VirtioDevice, VirtioInterrupt, device_id,
    read_config_bytes,
};

/// Queue indexes.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;

pub(super) struct Active {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    pub interrupt: Arc<VirtioInterrupt>,
}

/// The vsock device.
pub struct Vsock {
    guest_cid: u64,
    queue_events: Vec<EventFd>,
    pub(super) active: Option<Active>,
    pub(super) muxer: Muxer,
    /// The driver reset the device; connections are dropped on the device thread.
    pub(super) reset_pending: bool,
    metrics: Arc<VsockMetrics>,
}

impl Vsock {
    pub fn new(guest_cid: u32, uds_path: &Path) -> std::io::Result<Self> {
        let metrics = Arc::new(VsockMetrics::default());
        Ok(Self {
            guest_cid: u64::from(guest_cid),
            queue_events: (0..3)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK))
                .collect::<Result<_, _>>()?,
            active: None,
            muxer: Muxer::new(u64::from(guest_cid), uds_path, metrics.clone())?,
            reset_pending: false,
            metrics,
        })
    }

    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    /// Takes every packet the guest queued for transmission.
    pub(super) fn process_tx(&mut self, ops: &mut EventOps) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used_any = false;
        while let Some(chain) = active.queues[TX_QUEUE].pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            match packet::parse_tx(chain, &active.mem) {
                Ok((header, payload)) => self.muxer.handle_guest_packet(header, payload, ops),
                Err(error) => {
                    tracing::debug!(%error, "malformed vsock packet from the guest");
                    self.metrics
                        .malformed_packets
                        .fetch_add(1, Ordering::Relaxed);
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
                .notify_used(&mut active.queues[TX_QUEUE], &active.mem, "vsock");
        }
    }

    /// Fills the guest's rx buffers with what the muxer has for it.
    pub(super) fn process_rx(&mut self, ops: &mut EventOps) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used_any = false;
        while self.muxer.has_rx() {
            let Some(chain) = active.queues[RX_QUEUE].pop_descriptor_chain(&active.mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match RxBuffers::parse(chain, &active.mem) {
                Ok(buffers) => match self.muxer.next_rx(buffers.payload_room(), ops) {
                    Some((header, payload)) => {
                        tracing::trace!(
                            op = header.op,
                            src_port = header.src_port,
                            dst_port = header.dst_port,
                            len = header.len,
                            "vsock packet to the guest"
                        );
                        buffers.write(&active.mem, &header, &payload).unwrap_or(0)
                    }
                    None => {
                        // Nothing after all (a socket had no data): give the buffer back.
                        active.queues[RX_QUEUE].go_to_previous_position();
                        break;
                    }
                },
                Err(error) => {
                    tracing::debug!(%error, "unusable vsock rx buffer from the guest");
                    self.metrics
                        .malformed_packets
                        .fetch_add(1, Ordering::Relaxed);
                    0
                }
            };
            if active.queues[RX_QUEUE]
                .add_used(&active.mem, head, len)
                .is_err()
            {
                break;
            }
            used_any = true;
        }
        if used_any {
            active
                .interrupt
                .notify_used(&mut active.queues[RX_QUEUE], &active.mem, "vsock");
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_id::VSOCK
    }

    fn avail_features(&self) -> u64 {
        FEATURE_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if activation.queues.len() != 3 {
            return Err(ActivateError::InvalidQueue(activation.queues.len()));
        }
        self.active = Some(Active {
            mem: activation.mem,
            queues: activation.queues,
            interrupt: activation.interrupt,
        });
        // Host connections may have queued requests before the driver was ready.
        let _ = self.queue_events[RX_QUEUE].write(1);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.reset_pending = true;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::packet::{
        HEADER_LEN, Header, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, TYPE_STREAM,
    };
    use crate::devices::virtio::vsock::{CONN_BUF_ALLOC, HOST_CID};
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::Mutex;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    const GUEST_CID: u32 = 3;
    const W: u16 = VRING_DESC_F_WRITE as u16;

    /// A fake guest driver: rx and tx queues in guest memory.
    struct Guest<'a> {
        mem: &'a GuestMemoryMmap,
        rx: MockSplitQueue<'a, GuestMemoryMmap>,
        tx: MockSplitQueue<'a, GuestMemoryMmap>,
        rx_next: u16,
        tx_next: u16,
        rx_used_seen: u16,
    }

    impl<'a> Guest<'a> {
        fn new(mem: &'a GuestMemoryMmap) -> Self {
            Self {
                mem,
                rx: MockSplitQueue::create(mem, GuestAddress(0x1_0000), 16),
                tx: MockSplitQueue::create(mem, GuestAddress(0x2_0000), 16),
                rx_next: 0,
                tx_next: 0,
                rx_used_seen: 0,
            }
        }

        fn post_rx_buffer(&mut self) {
            let addr = 0x10_0000 + u64::from(self.rx_next) * 0x1_0000;
            self.rx
                .add_desc_chains(
                    &[RawDescriptor::from(SplitDescriptor::new(addr, 4096, W, 0))],
                    self.rx_next,
                )
                .unwrap();
            self.rx_next += 1;
        }

        fn send(&mut self, header: Header, payload: &[u8]) {
            let addr = 0x30_0000 + u64::from(self.tx_next) * 0x1_0000;
            let mut bytes = header.to_bytes().to_vec();
            bytes.extend_from_slice(payload);
            self.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
            self.tx
                .add_desc_chains(
                    &[RawDescriptor::from(SplitDescriptor::new(
                        addr,
                        bytes.len() as u32,
                        0,
                        0,
                    ))],
                    self.tx_next,
                )
                .unwrap();
            self.tx_next += 1;
        }

        /// Packets the device put in rx buffers since the last call.
        fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
            let used_idx: u16 = self
                .mem
                .read_obj(self.rx.used_addr().unchecked_add(2))
                .unwrap();
            let mut out = Vec::new();
            while self.rx_used_seen < used_idx {
                let elem = self
                    .rx
                    .used_addr()
                    .unchecked_add(4 + 8 * u64::from(self.rx_used_seen % 16));
                let id: u32 = self.mem.read_obj(elem).unwrap();
                let len: u32 = self.mem.read_obj(elem.unchecked_add(4)).unwrap();
                let addr = 0x10_0000 + u64::from(id) * 0x1_0000;
                let mut buf = vec![0u8; len as usize];
                self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
                let raw = *packet::RawHeader::from_slice(&buf[..HEADER_LEN]).unwrap();
                out.push((Header::from(raw), buf[HEADER_LEN..].to_vec()));
                self.rx_used_seen += 1;
            }
            out
        }
    }

    fn guest_header(op: u16, src_port: u32, dst_port: u32, len: u32) -> Header {
        Header {
            src_cid: u64::from(GUEST_CID),
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 0,
        }
    }

    use vm_memory::ByteValued;

    type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

    fn setup(dir: &Path) -> (GuestMemoryMmap, Arc<Mutex<Vsock>>, Manager) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        let vsock = Arc::new(Mutex::new(
            Vsock::new(GUEST_CID, &dir.join("v.sock")).unwrap(),
        ));
        let mut em = Manager::new().unwrap();
        em.add_subscriber(vsock.clone());
        (mem, vsock, em)
    }

    fn activate(vsock: &Arc<Mutex<Vsock>>, guest: &Guest) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let queues = vec![
            guest.rx.create_queue().unwrap(),
            guest.tx.create_queue().unwrap(),
            MockSplitQueue::create(guest.mem, GuestAddress(0x3000), 16)
                .create_queue()
                .unwrap(),
        ];
        vsock
            .lock()
            .unwrap()
            .activate(Activation {
                mem: guest.mem.clone(),
                queues,
                interrupt: Arc::new(VirtioInterrupt::new(irq)),
                acked_features: FEATURE_VERSION_1,
            })
            .unwrap();
    }

    fn pump(
        em: &mut EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
        vsock: &Arc<Mutex<Vsock>>,
    ) {
        for _ in 0..20 {
            for evt in vsock.lock().unwrap().queue_events() {
                evt.write(1).unwrap();
            }
            em.run_with_timeout(10).unwrap();
        }
    }

    #[test]
    fn host_initiated_connection_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (mem, vsock, mut em) = setup(dir.path());
        let mut guest = Guest::new(&mem);
        activate(&vsock, &guest);
        for _ in 0..8 {
            guest.post_rx_buffer();
        }

        let mut host = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        host.write_all(b"CONNECT 52\n").unwrap();
        pump(&mut em, &vsock);
        let got = guest.received();
        assert_eq!(got.len(), 1, "{got:?}");
        let (req, _) = got[0];
        assert_eq!(req.op, OP_REQUEST);
        assert_eq!(req.dst_port, 52);
        assert_eq!(req.dst_cid, u64::from(GUEST_CID));
        let host_port = req.src_port;

        guest.send(guest_header(OP_RESPONSE, 52, host_port, 0), &[]);
        pump(&mut em, &vsock);
        let mut reader = BufReader::new(host.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, format!("OK {host_port}\n"));

        // host -> guest
        host.write_all(b"ping").unwrap();
        pump(&mut em, &vsock);
        let got = guest.received();
        let data: Vec<u8> = got
            .iter()
            .filter(|(h, _)| h.op == OP_RW)
            .flat_map(|(_, p)| p.clone())
            .collect();
        assert_eq!(data, b"ping");
        assert!(got.iter().all(|(h, _)| h.buf_alloc == CONN_BUF_ALLOC));
        // The OK line is not guest data: the guest owes no credit for it.
        assert!(got.iter().all(|(h, _)| h.fwd_cnt == 0), "{got:?}");

        // guest -> host
        guest.send(guest_header(OP_RW, 52, host_port, 4), b"pong");
        pump(&mut em, &vsock);
        let mut buf = [0u8; 4];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");

        // Host closes: the guest is told to shut down.
        drop(reader);
        drop(host);
        pump(&mut em, &vsock);
        let got = guest.received();
        assert!(
            got.iter().any(|(h, _)| h.op == packet::OP_SHUTDOWN),
            "{got:?}"
        );
    }

    #[test]
    fn guest_initiated_connection_reaches_the_port_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (mem, vsock, mut em) = setup(dir.path());
        let listener = UnixListener::bind(dir.path().join("v.sock_1024")).unwrap();
        let mut guest = Guest::new(&mem);
        activate(&vsock, &guest);
        for _ in 0..8 {
            guest.post_rx_buffer();
        }
        guest.send(guest_header(OP_REQUEST, 5000, 1024, 0), &[]);
        guest.send(guest_header(OP_RW, 5000, 1024, 5), b"hello");
        pump(&mut em, &vsock);
        let got = guest.received();
        assert_eq!(got[0].0.op, OP_RESPONSE);
        assert_eq!((got[0].0.src_port, got[0].0.dst_port), (1024, 5000));
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        conn.write_all(b"world").unwrap();
        pump(&mut em, &vsock);
        let data: Vec<u8> = guest
            .received()
            .into_iter()
            .filter(|(h, _)| h.op == OP_RW)
            .flat_map(|(_, p)| p)
            .collect();
        assert_eq!(data, b"world");
    }

    #[test]
    fn malformed_and_unknown_packets_get_resets_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let (mem, vsock, mut em) = setup(dir.path());
        let mut guest = Guest::new(&mem);
        activate(&vsock, &guest);
        for _ in 0..8 {
            guest.post_rx_buffer();
        }
        // Nobody listens on port 7: refused.
        guest.send(guest_header(OP_REQUEST, 6000, 7, 0), &[]);
        // Data for a connection that does not exist.
        guest.send(guest_header(OP_RW, 6001, 8, 3), b"abc");
        // Spoofed source CID.
        let mut spoofed = guest_header(OP_REQUEST, 6002, 9, 0);
        spoofed.src_cid = 99;
        guest.send(spoofed, &[]);
        // Header claiming a payload longer than the buffer.
        guest.send(guest_header(OP_RW, 6003, 10, 60000), b"x");
        pump(&mut em, &vsock);
        let got = guest.received();
        assert_eq!(
            got.iter().filter(|(h, _)| h.op == OP_RST).count(),
            3,
            "{got:?}"
        );
        let m = vsock.lock().unwrap().metrics();
        assert_eq!(m.refused_connections.load(Ordering::Relaxed), 1);
        assert!(m.malformed_packets.load(Ordering::Relaxed) >= 2);
    }

    #[test]
    fn bad_connect_lines_are_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (mem, vsock, mut em) = setup(dir.path());
        let guest = Guest::new(&mem);
        activate(&vsock, &guest);
        let mut host = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        host.write_all(b"HELLO there\n").unwrap();
        pump(&mut em, &vsock);
        let mut buf = [0u8; 8];
        assert_eq!(
            host.read(&mut buf).unwrap(),
            0,
            "connection closed without an answer"
        );
    }
}
