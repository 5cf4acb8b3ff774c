//! Frames in descriptor chains: a tx chain is device-readable buffers
//! holding header + frame; an rx chain is device-writable buffers to fill.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{MAX_FRAME_LEN, VNET_HDR_LEN};

/// Why a chain cannot carry a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a descriptor has the wrong direction")]
    WrongDirection,
    #[error("a buffer at {addr:#x}+{len:#x} is not in guest memory")]
    OutOfGuestMemory { addr: u64, len: u32 },
    #[error("the frame ({0} bytes) is shorter than the virtio-net header")]
    TooShort(usize),
    #[error("the frame ({0} bytes) is longer than {MAX_FRAME_LEN}")]
    TooLong(usize),
}

fn collect<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    writable: bool,
) -> Result<Vec<(GuestAddress, u32)>, FrameError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut out = Vec::new();
    let mut total = 0usize;
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
        total += desc.len() as usize;
        if !writable && total > MAX_FRAME_LEN {
            return Err(FrameError::TooLong(total));
        }
        out.push((desc.addr(), desc.len()));
    }
    Ok(out)
}

/// Copies a tx chain's header + frame out of guest memory.
pub fn read_tx<M>(chain: DescriptorChain<M>, mem: &GuestMemoryMmap) -> Result<Vec<u8>, FrameError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let bufs = collect(chain, mem, false)?;
    let total: usize = bufs.iter().map(|(_, l)| *l as usize).sum();
    if total < VNET_HDR_LEN {
        return Err(FrameError::TooShort(total));
    }
    let mut frame = vec![0u8; total];
    let mut at = 0;
    for (addr, len) in bufs {
        let len = len as usize;
        mem.read_slice(&mut frame[at..at + len], addr)
            .map_err(|_| FrameError::OutOfGuestMemory {
                addr: addr.raw_value(),
                len: len as u32,
            })?;
        at += len;
    }
    Ok(frame)
}

/// An rx chain's buffers.
pub struct RxChain {
    bufs: Vec<(GuestAddress, u32)>,
    pub capacity: usize,
}

impl RxChain {
    pub fn parse<M>(chain: DescriptorChain<M>, mem: &GuestMemoryMmap) -> Result<Self, FrameError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let bufs = collect(chain, mem, true)?;
        let capacity = bufs.iter().map(|(_, l)| *l as usize).sum();
        if capacity < VNET_HDR_LEN {
            return Err(FrameError::TooShort(capacity));
        }
        Ok(Self { bufs, capacity })
    }

    /// Writes `frame` (header included); it must fit in `capacity`.
    pub fn write(&self, mem: &GuestMemoryMmap, frame: &[u8]) -> Result<u32, FrameError> {
        if frame.len() > self.capacity {
            return Err(FrameError::TooLong(frame.len()));
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
        Ok(at as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn tx_gathers_header_and_frame() {
        let m = mem();
        m.write_slice(&[1u8; 12], GuestAddress(0x1000)).unwrap();
        m.write_slice(&[2u8; 60], GuestAddress(0x2000)).unwrap();
        let q = MockSplitQueue::new(&m, 16);
        let f = read_tx(chain(&q, &[(0x1000, 12, 0), (0x2000, 60, 0)]), &m).unwrap();
        assert_eq!(f.len(), 72);
        assert_eq!(f[12], 2);
    }

    #[test]
    fn tx_refuses_bad_chains() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        assert_eq!(
            read_tx(chain(&q, &[(0x1000, 8, 0)]), &m),
            Err(FrameError::TooShort(8))
        );
        assert_eq!(
            read_tx(chain(&q, &[(0x1000, 64, W)]), &m),
            Err(FrameError::WrongDirection)
        );
        assert!(matches!(
            read_tx(chain(&q, &[(0xf_ff00, 0x200, 0)]), &m),
            Err(FrameError::OutOfGuestMemory { .. })
        ));
        assert!(matches!(
            read_tx(
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
    }

    #[test]
    fn rx_writes_across_buffers_and_refuses_overflow() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let rx = RxChain::parse(chain(&q, &[(0x1000, 16, W), (0x2000, 16, W)]), &m).unwrap();
        assert_eq!(rx.write(&m, &[9u8; 20]).unwrap(), 20);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x2003)).unwrap(), 9);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x2004)).unwrap(), 0);
        assert_eq!(rx.write(&m, &[0u8; 33]), Err(FrameError::TooLong(33)));
        assert!(matches!(
            RxChain::parse(chain(&q, &[(0x1000, 16, 0)]), &m),
            Err(FrameError::WrongDirection)
        ));
    }
}
