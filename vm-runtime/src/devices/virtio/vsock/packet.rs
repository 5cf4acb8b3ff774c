//! vsock packet headers and reading/writing packets from/to descriptor chains.
//!
//! Every header field comes from the guest; [`parse_tx`] checks the chain's
//! shape (device-readable, in guest RAM, header complete, payload no longer
//! than announced and than [`MAX_PAYLOAD`]) and copies the payload out, so
//! later code never touches guest memory on the guest's say-so.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, Le16, Le32, Le64,
};

use super::MAX_PAYLOAD;

pub const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
/// SHUTDOWN flag: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;

/// `struct virtio_vsock_hdr`, as it lies in guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed)]
pub struct RawHeader {
    src_cid: Le64,
    dst_cid: Le64,
    src_port: Le32,
    dst_port: Le32,
    len: Le32,
    type_: Le16,
    op: Le16,
    flags: Le32,
    buf_alloc: Le32,
    fwd_cnt: Le32,
}

// SAFETY: `RawHeader` is `repr(C, packed)` and made only of little-endian
// integer wrappers, so it has no padding and every bit pattern is valid.
unsafe impl ByteValued for RawHeader {}

/// Size of the header on the wire.
pub const HEADER_LEN: usize = std::mem::size_of::<RawHeader>();

/// A header in host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl From<RawHeader> for Header {
    fn from(r: RawHeader) -> Self {
        Header {
            src_cid: { r.src_cid }.to_native(),
            dst_cid: { r.dst_cid }.to_native(),
            src_port: { r.src_port }.to_native(),
            dst_port: { r.dst_port }.to_native(),
            len: { r.len }.to_native(),
            type_: { r.type_ }.to_native(),
            op: { r.op }.to_native(),
            flags: { r.flags }.to_native(),
            buf_alloc: { r.buf_alloc }.to_native(),
            fwd_cnt: { r.fwd_cnt }.to_native(),
        }
    }
}

impl From<Header> for RawHeader {
    fn from(h: Header) -> Self {
        RawHeader {
            src_cid: h.src_cid.into(),
            dst_cid: h.dst_cid.into(),
            src_port: h.src_port.into(),
            dst_port: h.dst_port.into(),
            len: h.len.into(),
            type_: h.type_.into(),
            op: h.op.into(),
            flags: h.flags.into(),
            buf_alloc: h.buf_alloc.into(),
            fwd_cnt: h.fwd_cnt.into(),
        }
    }
}

impl Header {
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let raw = RawHeader::from(self);
        let mut out = [0u8; HEADER_LEN];
        out.copy_from_slice(raw.as_slice());
        out
    }
}

/// Why a chain is not a valid vsock packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("a tx descriptor is device-writable")]
    WritableInTx,
    #[error("an rx descriptor is device-readable")]
    ReadableInRx,
    #[error("a buffer at {addr:#x}+{len:#x} is not in guest memory")]
    OutOfGuestMemory { addr: u64, len: u32 },
    #[error("the chain is shorter than a header ({0} bytes)")]
    ShortHeader(usize),
    #[error("the header announces {0} bytes of payload, more than {MAX_PAYLOAD}")]
    PayloadTooLong(u32),
    #[error("the header announces {announced} bytes but the chain has {present}")]
    PayloadTruncated { announced: u32, present: usize },
}

fn buffers<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    writable: bool,
) -> Result<Vec<(GuestAddress, u32)>, PacketError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut out = Vec::new();
    for desc in chain {
        if desc.is_write_only() != writable {
            return Err(if writable {
                PacketError::ReadableInRx
            } else {
                PacketError::WritableInTx
            });
        }
        if desc.len() == 0 {
            continue;
        }
        if !GuestMemoryBackend::check_range(mem, desc.addr(), desc.len() as usize) {
            return Err(PacketError::OutOfGuestMemory {
                addr: desc.addr().raw_value(),
                len: desc.len(),
            });
        }
        out.push((desc.addr(), desc.len()));
    }
    Ok(out)
}

/// Copies up to `limit` bytes from the buffers into a vector.
fn gather(mem: &GuestMemoryMmap, bufs: &[(GuestAddress, u32)], limit: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(limit.min(4096));
    for (addr, len) in bufs {
        if out.len() >= limit {
            break;
        }
        let n = (*len as usize).min(limit - out.len());
        let start = out.len();
        out.resize(start + n, 0);
        // The range was checked when the buffers were collected.
        if mem.read_slice(&mut out[start..], *addr).is_err() {
            out.truncate(start);
            break;
        }
    }
    out
}

/// A packet from the guest's tx queue: header and payload.
pub fn parse_tx<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
) -> Result<(Header, Vec<u8>), PacketError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let bufs = buffers(chain, mem, false)?;
    let total: usize = bufs.iter().map(|(_, l)| *l as usize).sum();
    if total < HEADER_LEN {
        return Err(PacketError::ShortHeader(total));
    }
    let bytes = gather(mem, &bufs, HEADER_LEN + MAX_PAYLOAD as usize);
    let raw = RawHeader::from_slice(&bytes[..HEADER_LEN])
        .copied()
        .ok_or(PacketError::ShortHeader(bytes.len()))?;
    let header = Header::from(raw);
    if header.len > MAX_PAYLOAD {
        return Err(PacketError::PayloadTooLong(header.len));
    }
    let present = bytes.len() - HEADER_LEN;
    if (header.len as usize) > present {
        return Err(PacketError::PayloadTruncated {
            announced: header.len,
            present,
        });
    }
    let payload = bytes[HEADER_LEN..HEADER_LEN + header.len as usize].to_vec();
    Ok((header, payload))
}

/// The guest's rx buffers for one packet.
pub struct RxBuffers {
    bufs: Vec<(GuestAddress, u32)>,
    capacity: usize,
}

impl RxBuffers {
    /// Validates an rx chain (device-writable, in guest RAM, room for a header).
    pub fn parse<M>(chain: DescriptorChain<M>, mem: &GuestMemoryMmap) -> Result<Self, PacketError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let bufs = buffers(chain, mem, true)?;
        let capacity = bufs.iter().map(|(_, l)| *l as usize).sum();
        if capacity < HEADER_LEN {
            return Err(PacketError::ShortHeader(capacity));
        }
        Ok(Self { bufs, capacity })
    }

    /// Payload bytes that fit after the header.
    pub fn payload_room(&self) -> usize {
        (self.capacity - HEADER_LEN).min(MAX_PAYLOAD as usize)
    }

    /// Writes header and payload; returns the bytes written.
    pub fn write(
        &self,
        mem: &GuestMemoryMmap,
        header: &Header,
        payload: &[u8],
    ) -> Result<u32, PacketError> {
        let head = header.to_bytes();
        let mut data = head.iter().chain(payload.iter());
        let mut written = 0usize;
        let total = HEADER_LEN + payload.len().min(self.payload_room());
        for (addr, len) in &self.bufs {
            if written >= total {
                break;
            }
            let n = (*len as usize).min(total - written);
            let chunk: Vec<u8> = data.by_ref().take(n).copied().collect();
            mem.write_slice(&chunk, *addr)
                .map_err(|_| PacketError::OutOfGuestMemory {
                    addr: addr.raw_value(),
                    len: *len,
                })?;
            written += n;
        }
        Ok(written as u32)
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

    fn hdr(len: u32, op: u16) -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1000,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 0,
        }
    }

    fn chain<'a>(
        q: &'a MockSplitQueue<'a, GuestMemoryMmap>,
        descs: &[(u64, u32, u16)],
    ) -> DescriptorChain<&'a GuestMemoryMmap> {
        let raw: Vec<_> = descs
            .iter()
            .map(|(a, l, f)| RawDescriptor::from(SplitDescriptor::new(*a, *l, *f, 0)))
            .collect();
        q.build_desc_chain(&raw).unwrap()
    }

    #[test]
    fn header_layout_is_44_bytes_little_endian() {
        assert_eq!(HEADER_LEN, 44);
        let b = hdr(5, OP_RW).to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[24..28], &5u32.to_le_bytes());
        assert_eq!(&b[30..32], &OP_RW.to_le_bytes());
        assert_eq!(
            Header::from(*RawHeader::from_slice(&b).unwrap()),
            hdr(5, OP_RW)
        );
    }

    #[test]
    fn tx_packet_with_split_header_and_payload() {
        let m = mem();
        m.write_slice(&hdr(5, OP_RW).to_bytes(), GuestAddress(0x1000))
            .unwrap();
        m.write_slice(b"hello", GuestAddress(0x2000)).unwrap();
        let q = MockSplitQueue::new(&m, 16);
        let (h, p) = parse_tx(chain(&q, &[(0x1000, 44, 0), (0x2000, 5, 0)]), &m).unwrap();
        assert_eq!(h.op, OP_RW);
        assert_eq!(p, b"hello");
    }

    #[test]
    fn tx_rejects_lies_and_bad_buffers() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        m.write_slice(&hdr(100, OP_RW).to_bytes(), GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            parse_tx(chain(&q, &[(0x1000, 44, 0), (0x2000, 5, 0)]), &m),
            Err(PacketError::PayloadTruncated {
                announced: 100,
                present: 5
            })
        );
        m.write_slice(&hdr(u32::MAX, OP_RW).to_bytes(), GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            parse_tx(chain(&q, &[(0x1000, 44, 0)]), &m),
            Err(PacketError::PayloadTooLong(u32::MAX))
        );
        assert_eq!(
            parse_tx(chain(&q, &[(0x1000, 20, 0)]), &m),
            Err(PacketError::ShortHeader(20))
        );
        assert_eq!(
            parse_tx(chain(&q, &[(0x1000, 44, W)]), &m),
            Err(PacketError::WritableInTx)
        );
        assert!(matches!(
            parse_tx(chain(&q, &[(0xf_fff0, 44, 0)]), &m),
            Err(PacketError::OutOfGuestMemory { .. })
        ));
        assert_eq!(
            parse_tx(chain(&q, &[(0x1000, 0, 0)]), &m),
            Err(PacketError::ShortHeader(0))
        );
    }

    #[test]
    fn rx_write_spans_descriptors_and_truncates_to_room() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let rx = RxBuffers::parse(chain(&q, &[(0x1000, 40, W), (0x2000, 10, W)]), &m).unwrap();
        assert_eq!(rx.payload_room(), 6);
        let n = rx.write(&m, &hdr(6, OP_RW), b"abcdefgh").unwrap();
        assert_eq!(n, 50);
        let mut back = [0u8; 10];
        m.read_slice(&mut back, GuestAddress(0x2000)).unwrap();
        assert_eq!(&back[4..], b"abcdef");
        assert!(matches!(
            RxBuffers::parse(chain(&q, &[(0x1000, 40, 0)]), &m),
            Err(PacketError::ReadableInRx)
        ));
        assert!(matches!(
            RxBuffers::parse(chain(&q, &[(0x1000, 40, W)]), &m),
            Err(PacketError::ShortHeader(40))
        ));
    }
}
