//! Frames in descriptor chains: a tx chain is device-readable buffers
//! holding header + frame; an rx chain is device-writable buffers to fill.
//!
//! Every buffer of a chain is checked (direction, inside guest memory,
//! bounded total) before any byte moves, and the checked list is kept in a
//! [`ChainBuffers`] reused from chain to chain, so a frame costs no
//! allocation. A tx frame goes to the tap with one `writev` straight from
//! guest memory; an rx frame is copied from the device's tap buffer.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::tap::Tap;
use super::{GSO_TYPE_OFFSET, MAX_FRAME_LEN, VNET_HDR_LEN};

/// Most pieces a tx frame is sent in with one `writev` straight from guest
/// memory (a Linux guest uses at most 19: header, linear part, 17 page
/// fragments); a chain in more pieces is copied into a buffer first.
const MAX_TX_IOVECS: usize = 64;

/// Why a chain cannot carry a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a descriptor has the wrong direction")]
    WrongDirection,
    #[error("a buffer at {addr:#x}+{len:#x} is not in guest memory")]
    OutOfGuestMemory { addr: u64, len: u32 },
    #[error("the chain ({0} bytes) is shorter than the virtio-net header")]
    TooShort(usize),
    #[error("the frame ({0} bytes) is longer than {MAX_FRAME_LEN}")]
    TooLong(usize),
    #[error("the frame ({frame} bytes) does not fit the rx chain ({capacity} bytes)")]
    ChainTooSmall { frame: usize, capacity: usize },
}

/// Why a tx frame was not sent.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("tap write failed")]
    Tap(#[source] std::io::Error),
}

/// Which way a chain's buffers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// The device reads them (tx).
    DeviceReads,
    /// The device writes them (rx).
    DeviceWrites,
}

/// The checked buffers of one descriptor chain.
#[derive(Debug, Default)]
pub struct ChainBuffers {
    bufs: Vec<(GuestAddress, u32)>,
    len: usize,
}

impl ChainBuffers {
    /// Total length of the buffers (the frame's length for tx, the room
    /// for rx).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Replaces the contents with `chain`'s buffers, checked. `max_len`
    /// bounds the total (tx); rx chains may be longer than any frame.
    fn load<M>(
        &mut self,
        chain: DescriptorChain<M>,
        mem: &GuestMemoryMmap,
        direction: Direction,
        max_len: Option<usize>,
    ) -> Result<(), FrameError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        self.bufs.clear();
        self.len = 0;
        let writable = direction == Direction::DeviceWrites;
        for desc in chain {
            if desc.is_write_only() != writable {
                return Err(FrameError::WrongDirection);
            }
            if desc.len() == 0 {
                continue;
            }
            if !GuestMemoryBackend::check_range(mem, desc.addr(), desc.len() as usize) {
                return Err(FrameError::OutOfGuestMemory {
                    addr: desc.addr().raw_value(),
                    len: desc.len(),
                });
            }
            // A chain has at most queue-size descriptors of < 4 GiB each:
            // no overflow on 64-bit, but stay exact anyway.
            self.len = self.len.saturating_add(desc.len() as usize);
            if let Some(max) = max_len
                && self.len > max
            {
                return Err(FrameError::TooLong(self.len));
            }
            self.bufs.push((desc.addr(), desc.len()));
        }
        if self.len < VNET_HDR_LEN {
            return Err(FrameError::TooShort(self.len));
        }
        Ok(())
    }

    /// Loads a tx chain: device-readable buffers only, header + frame of at
    /// most [`MAX_FRAME_LEN`] bytes.
    pub fn load_tx<M>(
        &mut self,
        chain: DescriptorChain<M>,
        mem: &GuestMemoryMmap,
    ) -> Result<(), FrameError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        self.load(chain, mem, Direction::DeviceReads, Some(MAX_FRAME_LEN))
    }

    /// Loads an rx chain: device-writable buffers only, room for at least
    /// the header.
    pub fn load_rx<M>(
        &mut self,
        chain: DescriptorChain<M>,
        mem: &GuestMemoryMmap,
    ) -> Result<(), FrameError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        self.load(chain, mem, Direction::DeviceWrites, None)
    }

    /// The `gso_type` of the loaded frame's vnet header (0: not a GSO frame).
    pub fn gso_type(&self, mem: &GuestMemoryMmap) -> u8 {
        let mut header = [0u8; GSO_TYPE_OFFSET + 1];
        let mut at = 0;
        for (addr, len) in &self.bufs {
            let n = (*len as usize).min(header.len() - at);
            if mem.read_slice(&mut header[at..at + n], *addr).is_err() {
                return 0;
            }
            at += n;
            if at == header.len() {
                break;
            }
        }
        header[GSO_TYPE_OFFSET]
    }

    /// Copies the loaded (tx) buffers into `out`, which is resized to fit.
    pub fn read_into(&self, mem: &GuestMemoryMmap, out: &mut Vec<u8>) -> Result<(), FrameError> {
        out.resize(self.len, 0);
        let mut at = 0;
        for (addr, len) in &self.bufs {
            let len = *len as usize;
            mem.read_slice(&mut out[at..at + len], *addr).map_err(|_| {
                FrameError::OutOfGuestMemory {
                    addr: addr.raw_value(),
                    len: len as u32,
                }
            })?;
            at += len;
        }
        Ok(())
    }

    /// Sends the loaded tx buffers to `tap` as one frame: one `writev`
    /// from guest memory, or (a chain in more than [`MAX_TX_IOVECS`]
    /// pieces) a copy into `spill` and one write. `Ok(false)`: the tap was
    /// full and the frame is dropped.
    pub fn send_to_tap(
        &self,
        mem: &GuestMemoryMmap,
        tap: &mut Tap,
        spill: &mut Vec<u8>,
    ) -> Result<bool, TxError> {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut iovecs = [empty; MAX_TX_IOVECS];
        let mut count = 0;
        let mut too_many_pieces = false;
        'gather: for (addr, len) in &self.bufs {
            // A buffer may cross from one guest memory region into the next.
            for slice in GuestMemoryBackend::get_slices(mem, *addr, *len as usize) {
                let slice = slice.map_err(|_| FrameError::OutOfGuestMemory {
                    addr: addr.raw_value(),
                    len: *len,
                })?;
                if count == MAX_TX_IOVECS {
                    too_many_pieces = true;
                    break 'gather;
                }
                iovecs[count] = libc::iovec {
                    iov_base: slice.ptr_guard().as_ptr().cast_mut().cast(),
                    iov_len: slice.len(),
                };
                count += 1;
            }
        }
        if too_many_pieces {
            self.read_into(mem, spill)?;
            return tap.write_frame(spill).map_err(TxError::Tap);
        }
        // SAFETY: every iovec points into a region of `mem`, which this
        // borrow keeps mapped until writev returns, and covers only bytes
        // get_slices vouched for (inside one region). The pointer guards are
        // no-ops for plain mmap regions (no `xen` feature), so dropping them
        // early unmaps nothing. The guest may change the bytes meanwhile;
        // the kernel copies them once and checks the header it copied, so
        // that can only garble the guest's own frame.
        unsafe { tap.write_frame_vectored(&iovecs[..count]) }.map_err(TxError::Tap)
    }

    /// Writes `frame` (header included) into the loaded rx buffers;
    /// returns its length. A frame longer than the buffers is refused
    /// before anything is written.
    pub fn write_frame(&self, mem: &GuestMemoryMmap, frame: &[u8]) -> Result<u32, FrameError> {
        if frame.len() > self.len {
            return Err(FrameError::ChainTooSmall {
                frame: frame.len(),
                capacity: self.len,
            });
        }
        let mut at = 0;
        for (addr, len) in &self.bufs {
            if at == frame.len() {
                break;
            }
            let n = (*len as usize).min(frame.len() - at);
            mem.write_slice(&frame[at..at + n], *addr).map_err(|_| {
                FrameError::OutOfGuestMemory {
                    addr: addr.raw_value(),
                    len: *len,
                }
            })?;
            at += n;
        }
        // `frame` came from a buffer of MAX_FRAME_LEN bytes.
        u32::try_from(at).map_err(|_| FrameError::TooLong(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::sync::{Arc, Mutex};
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn chain<'a>(
        q: &'a MockSplitQueue<'a, GuestMemoryMmap>,
        d: &[(u64, u32, u16)],
    ) -> DescriptorChain<&'a GuestMemoryMmap> {
        let raw: Vec<_> = d
            .iter()
            .map(|(a, l, f)| RawDescriptor::from(SplitDescriptor::new(*a, *l, *f, 0)))
            .collect();
        q.build_desc_chain(&raw).unwrap()
    }

    fn tap_pair() -> (Tap, UnixDatagram) {
        let (dev_end, host_end) = UnixDatagram::pair().unwrap();
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(dev_end));
        let tap = Tap::from_file_for_test(file, Arc::new(Mutex::new(Vec::new())));
        host_end
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        (tap, host_end)
    }

    #[test]
    fn tx_gathers_header_and_frame() {
        let m = mem();
        m.write_slice(&[1u8; 12], GuestAddress(0x1000)).unwrap();
        m.write_slice(&[2u8; 60], GuestAddress(0x2000)).unwrap();
        let q = MockSplitQueue::new(&m, 16);
        let mut bufs = ChainBuffers::default();
        bufs.load_tx(chain(&q, &[(0x1000, 12, 0), (0x2000, 60, 0)]), &m)
            .unwrap();
        assert_eq!(bufs.len(), 72);
        let (mut tap, host) = tap_pair();
        assert!(bufs.send_to_tap(&m, &mut tap, &mut Vec::new()).unwrap());
        let mut got = [0u8; 100];
        assert_eq!(host.recv(&mut got).unwrap(), 72);
        assert_eq!(got[11], 1);
        assert_eq!(got[12], 2);
        let mut copy = Vec::new();
        bufs.read_into(&m, &mut copy).unwrap();
        assert_eq!(copy, got[..72]);
    }

    #[test]
    fn tx_in_many_pieces_is_copied_then_sent_whole() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 128);
        let pieces: Vec<(u64, u32, u16)> = (0..100u64).map(|i| (0x1000 + i * 16, 16, 0)).collect();
        for (i, (addr, _, _)) in pieces.iter().enumerate() {
            m.write_slice(&[i as u8; 16], GuestAddress(*addr)).unwrap();
        }
        let mut bufs = ChainBuffers::default();
        bufs.load_tx(chain(&q, &pieces), &m).unwrap();
        let (mut tap, host) = tap_pair();
        let mut spill = Vec::new();
        assert!(bufs.send_to_tap(&m, &mut tap, &mut spill).unwrap());
        let mut got = vec![0u8; 2000];
        assert_eq!(host.recv(&mut got).unwrap(), 1600);
        assert_eq!(got[1599], 99);
        assert_eq!(spill.len(), 1600);
    }

    #[test]
    fn tx_refuses_bad_chains() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let mut bufs = ChainBuffers::default();
        assert_eq!(
            bufs.load_tx(chain(&q, &[(0x1000, 8, 0)]), &m),
            Err(FrameError::TooShort(8))
        );
        assert_eq!(
            bufs.load_tx(chain(&q, &[(0x1000, 64, W)]), &m),
            Err(FrameError::WrongDirection)
        );
        assert!(matches!(
            bufs.load_tx(chain(&q, &[(0xf_ff00, 0x200, 0)]), &m),
            Err(FrameError::OutOfGuestMemory { .. })
        ));
        assert!(matches!(
            bufs.load_tx(chain(&q, &[(u64::MAX - 8, 64, 0)]), &m),
            Err(FrameError::OutOfGuestMemory { .. })
        ));
        // Three 32 KiB buffers: more than a 64 KiB GSO frame.
        assert!(matches!(
            bufs.load_tx(
                chain(
                    &q,
                    &[
                        (0x1_0000, 0x8000, 0),
                        (0x2_0000, 0x8000, 0),
                        (0x3_0000, 0x8000, 0)
                    ]
                ),
                &m
            ),
            Err(FrameError::TooLong(_))
        ));
        // One huge descriptor is refused as too long, not read.
        assert!(matches!(
            bufs.load_tx(chain(&q, &[(0x1000, u32::MAX, 0)]), &m),
            Err(FrameError::OutOfGuestMemory { .. } | FrameError::TooLong(_))
        ));
    }

    #[test]
    fn rx_writes_across_buffers_and_refuses_overflow() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let mut rx = ChainBuffers::default();
        rx.load_rx(chain(&q, &[(0x1000, 16, W), (0x2000, 16, W)]), &m)
            .unwrap();
        assert_eq!(rx.write_frame(&m, &[9u8; 20]).unwrap(), 20);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x2003)).unwrap(), 9);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x2004)).unwrap(), 0);
        assert_eq!(
            rx.write_frame(&m, &[7u8; 33]),
            Err(FrameError::ChainTooSmall {
                frame: 33,
                capacity: 32
            })
        );
        // Nothing of the refused frame was written.
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 9);
        assert!(matches!(
            rx.load_rx(chain(&q, &[(0x1000, 16, 0)]), &m),
            Err(FrameError::WrongDirection)
        ));
        assert!(matches!(
            rx.load_rx(chain(&q, &[(0xf_f000, 0x2000, W)]), &m),
            Err(FrameError::OutOfGuestMemory { .. })
        ));
        assert_eq!(
            rx.load_rx(chain(&q, &[(0x1000, 4, W)]), &m),
            Err(FrameError::TooShort(4))
        );
    }
}
