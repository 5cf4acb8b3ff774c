//! The virtio-blk device: config space, activation, queue processing and
//! backing-file swaps.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::backing::{BackingError, Disk};
use super::metrics::BlockMetrics;
use super::request::{
    ParseFailure, Request, RequestError, RequestType, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
};
use super::{DEVICE_ID_LEN, QUEUE_SIZE};
use crate::devices::virtio::{
    ActivateError, Activation, FEATURE_VERSION_1, InterruptKind, VirtioDevice, VirtioInterrupt,
    device_id, read_config_bytes,
};

/// Size of `struct virtio_blk_config` that the guest may read.
const CONFIG_SPACE_LEN: usize = 60;

/// Why a drive operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot create the queue eventfd")]
    EventFd(#[source] std::io::Error),
    #[error(transparent)]
    Backing(#[from] BackingError),
}

struct ActiveQueue {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// One virtio-blk device (a drive or a drive slot).
pub struct Block {
    id: String,
    device_id: [u8; DEVICE_ID_LEN],
    read_only: bool,
    disk: Option<Disk>,
    queue_events: Vec<EventFd>,
    active: Option<ActiveQueue>,
    /// Interrupt kept across resets for config-change notices.
    interrupt: Option<Arc<VirtioInterrupt>>,
    config_generation: u32,
    metrics: Arc<BlockMetrics>,
}

impl Block {
    /// A drive backed by `path`, or an empty slot when `path` is `None`.
    pub fn new(id: &str, path: Option<&Path>, read_only: bool) -> Result<Self, BlockError> {
        let disk = path.map(|p| Disk::open(p, read_only)).transpose()?;
        let mut device_id = [0u8; DEVICE_ID_LEN];
        let n = id.len().min(DEVICE_ID_LEN);
        device_id[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            id: id.to_string(),
            device_id,
            read_only,
            disk,
            queue_events: vec![EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::EventFd)?],
            active: None,
            interrupt: None,
            config_generation: 0,
            metrics: Arc::new(BlockMetrics::default()),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    /// Capacity in sectors (0 for an empty slot).
    pub fn capacity(&self) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.sectors)
    }

    /// Path of the current backing file.
    pub fn backing_path(&self) -> Option<&Path> {
        self.disk.as_ref().map(|d| d.path.as_path())
    }

    /// Sets, replaces or (with `None`) empties the backing file. The new
    /// capacity is visible in config space at once and the driver gets a
    /// config-change interrupt. In-flight requests finished before the swap
    /// (the device thread holds the same lock while it processes a queue).
    pub fn set_backing(&mut self, path: Option<&Path>) -> Result<u64, BlockError> {
        let disk = path.map(|p| Disk::open(p, self.read_only)).transpose()?;
        if let Some(old) = &self.disk
            && !self.read_only
            && let Err(error) = old.file.sync_all()
        {
            tracing::warn!(drive = %self.id, %error, "cannot sync the replaced backing file");
        }
        self.disk = disk;
        self.config_generation = self.config_generation.wrapping_add(1);
        self.metrics.backing_swaps.fetch_add(1, Ordering::Relaxed);
        if let Some(interrupt) = &self.interrupt
            && let Err(error) = interrupt.trigger(InterruptKind::Config)
        {
            tracing::warn!(drive = %self.id, %error, "cannot raise the config-change interrupt");
        }
        tracing::info!(drive = %self.id, path = ?path, sectors = self.capacity(), "drive backing file set");
        Ok(self.capacity())
    }

    /// Syncs a read-write backing file (VMM exit).
    pub fn sync(&self) {
        if let Some(disk) = &self.disk
            && !self.read_only
            && let Err(error) = disk.file.sync_all()
        {
            tracing::warn!(drive = %self.id, %error, "cannot sync the backing file");
        }
    }

    fn config_space(&self) -> [u8; CONFIG_SPACE_LEN] {
        let mut config = [0u8; CONFIG_SPACE_LEN];
        config[..8].copy_from_slice(&self.capacity().to_le_bytes());
        config
    }

    /// Processes every available request; returns whether the guest must be interrupted.
    pub fn process_queue(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mut used_any = false;
        while let Some(chain) = active.queue.pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            let (status_addr, status, written) = match Request::parse(chain, &active.mem) {
                Ok(request) => {
                    let result = request.execute(
                        &active.mem,
                        self.disk.as_mut(),
                        self.read_only,
                        &self.device_id,
                    );
                    let status = account(&self.metrics, &request, &result);
                    (Some(request.status), status, result.unwrap_or(0))
                }
                Err(ParseFailure { error, status }) => {
                    tracing::debug!(drive = %self.id, %error, "malformed virtio-blk request");
                    self.metrics.failed_requests.fetch_add(1, Ordering::Relaxed);
                    if status.is_none() {
                        self.metrics.dropped_chains.fetch_add(1, Ordering::Relaxed);
                    }
                    (status, VIRTIO_BLK_S_IOERR, 0)
                }
            };
            let mut used_len = written;
            if let Some(addr) = status_addr
                && active.mem.write_obj(status, addr).is_ok()
            {
                used_len += 1;
            }
            if let Err(error) = active.queue.add_used(&active.mem, head, used_len) {
                tracing::warn!(drive = %self.id, %error, "cannot return a request to the guest");
                break;
            }
            used_any = true;
        }
        used_any && active.queue.needs_notification(&active.mem).unwrap_or(true)
    }

    /// Raises the queue interrupt.
    pub fn signal_used(&self) {
        if let Some(active) = &self.active
            && let Err(error) = active.interrupt.trigger(InterruptKind::Queue)
        {
            tracing::warn!(drive = %self.id, %error, "cannot raise the queue interrupt");
        }
    }
}

/// Counts a request in the metrics and picks its status byte.
fn account(metrics: &BlockMetrics, request: &Request, result: &Result<u32, RequestError>) -> u8 {
    let (count, bytes) = match request.request_type {
        RequestType::In => (&metrics.read_requests, Some(&metrics.read_bytes)),
        RequestType::Out => (&metrics.write_requests, Some(&metrics.write_bytes)),
        RequestType::Flush => (&metrics.flushes, None),
        RequestType::GetId => (&metrics.read_requests, None),
        RequestType::Unsupported(_) => {
            metrics.unsupported_requests.fetch_add(1, Ordering::Relaxed);
            return VIRTIO_BLK_S_UNSUPP;
        }
    };
    match result {
        Ok(_) => {
            count.fetch_add(1, Ordering::Relaxed);
            if let Some(bytes) = bytes {
                bytes.fetch_add(request.data_len(), Ordering::Relaxed);
            }
            VIRTIO_BLK_S_OK
        }
        Err(error) => {
            tracing::debug!(%error, "virtio-blk request failed");
            metrics.failed_requests.fetch_add(1, Ordering::Relaxed);
            VIRTIO_BLK_S_IOERR
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_id::BLOCK
    }

    fn avail_features(&self) -> u64 {
        let mut features = FEATURE_VERSION_1 | (1 << VIRTIO_BLK_F_FLUSH);
        if self.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn config_generation(&self) -> u32 {
        self.config_generation
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Some(queue) = activation.queues.into_iter().next() else {
            return Err(ActivateError::InvalidQueue(0));
        };
        self.interrupt = Some(activation.interrupt.clone());
        self.active = Some(ActiveQueue {
            mem: activation.mem,
            queue,
            interrupt: activation.interrupt,
        });
        // Requests queued before activation (none in practice) are picked up now.
        let _ = self.queue_events[0].write(1);
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
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    const WRITE: u16 = VRING_DESC_F_WRITE as u16;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn activate(
        block: &mut Block,
        m: &GuestMemoryMmap,
        q: &MockSplitQueue<GuestMemoryMmap>,
    ) -> EventFd {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        block
            .activate(Activation {
                mem: m.clone(),
                queues: vec![q.create_queue().unwrap()],
                interrupt: Arc::new(VirtioInterrupt::new(irq.try_clone().unwrap())),
                acked_features: block.avail_features(),
            })
            .unwrap();
        irq
    }

    /// A chain to be placed at descriptor index `first`.
    fn chain(first: u16, descs: &[(u64, u32, u16)]) -> Vec<RawDescriptor> {
        let n = descs.len();
        descs
            .iter()
            .enumerate()
            .map(|(i, (addr, len, flags))| {
                let next = if i + 1 < n {
                    virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16
                } else {
                    0
                };
                RawDescriptor::from(SplitDescriptor::new(
                    *addr,
                    *len,
                    flags | next,
                    first + i as u16 + 1,
                ))
            })
            .collect()
    }

    fn header(m: &GuestMemoryMmap, addr: u64, t: u32, sector: u64) {
        m.write_obj(t.to_le(), GuestAddress(addr)).unwrap();
        m.write_obj(sector.to_le(), GuestAddress(addr + 8)).unwrap();
    }

    #[test]
    fn empty_slot_reports_zero_capacity_until_filled() {
        let m = mem();
        let mut block = Block::new("slot0", None, true).unwrap();
        assert_eq!(block.capacity(), 0);
        let mut cap = [0u8; 8];
        block.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 0);
        assert_ne!(block.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);

        let q = MockSplitQueue::new(&m, 16);
        let irq = activate(&mut block, &m, &q);

        // A read from the empty slot fails with IOERR.
        header(&m, 0x1_0000, 0, 0);
        q.add_desc_chains(
            &chain(
                0,
                &[
                    (0x1_0000, 16, 0),
                    (0x2_0000, 512, WRITE),
                    (0x3_0000, 1, WRITE),
                ],
            ),
            0,
        )
        .unwrap();
        assert!(block.process_queue());
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0x3_0000)).unwrap(),
            VIRTIO_BLK_S_IOERR
        );

        // Fill the slot: capacity and generation change, config interrupt raised.
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), vec![0x77u8; 4096]).unwrap();
        let gen_before = block.config_generation();
        assert_eq!(block.set_backing(Some(f.path())).unwrap(), 8);
        assert_ne!(block.config_generation(), gen_before);
        block.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);
        assert!(irq.read().unwrap() >= 1);

        // The same read now returns the new file's content.
        q.add_desc_chains(
            &chain(
                3,
                &[
                    (0x1_0000, 16, 0),
                    (0x2_0000, 512, WRITE),
                    (0x3_0000, 1, WRITE),
                ],
            ),
            3,
        )
        .unwrap();
        assert!(block.process_queue());
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0x3_0000)).unwrap(),
            VIRTIO_BLK_S_OK
        );
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x2_0000)).unwrap(), 0x77);
        let metrics = block.metrics();
        assert_eq!(metrics.read_requests.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.failed_requests.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.backing_swaps.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn malformed_chains_fail_without_touching_the_disk() {
        let m = mem();
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(4096).unwrap();
        let mut block = Block::new("rw", Some(f.path()), false).unwrap();
        let q = MockSplitQueue::new(&m, 16);
        activate(&mut block, &m, &q);
        // Write whose data descriptor is device-writable: wrong direction.
        header(&m, 0x1_0000, 1, 0);
        q.add_desc_chains(
            &chain(
                0,
                &[
                    (0x1_0000, 16, 0),
                    (0x2_0000, 512, WRITE),
                    (0x3_0000, 1, WRITE),
                ],
            ),
            0,
        )
        .unwrap();
        // Chain whose status byte is outside guest memory: dropped, used with length 0.
        q.add_desc_chains(&chain(3, &[(0x1_0000, 16, 0), (0x20_0000, 1, WRITE)]), 3)
            .unwrap();
        assert!(block.process_queue());
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0x3_0000)).unwrap(),
            VIRTIO_BLK_S_IOERR
        );
        let metrics = block.metrics();
        assert_eq!(metrics.failed_requests.load(Ordering::Relaxed), 2);
        assert_eq!(metrics.dropped_chains.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.write_requests.load(Ordering::Relaxed), 0);
        assert!(std::fs::read(f.path()).unwrap().iter().all(|b| *b == 0));
    }

    #[test]
    fn unsupported_requests_get_unsupp() {
        let m = mem();
        let mut block = Block::new("x", None, false).unwrap();
        let q = MockSplitQueue::new(&m, 16);
        activate(&mut block, &m, &q);
        header(&m, 0x1_0000, 13, 0);
        q.add_desc_chains(&chain(0, &[(0x1_0000, 16, 0), (0x3_0000, 1, WRITE)]), 0)
            .unwrap();
        block.process_queue();
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0x3_0000)).unwrap(),
            VIRTIO_BLK_S_UNSUPP
        );
    }

    #[test]
    fn inactive_device_processes_nothing() {
        let mut block = Block::new("x", None, false).unwrap();
        assert!(!block.process_queue());
        assert!(!block.is_activated());
    }
}
