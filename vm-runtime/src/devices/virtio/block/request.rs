//! Parsing and running one virtio-blk request.
//!
//! A request is a descriptor chain: a device-readable 16-byte header
//! (`type`, reserved, `sector`), data descriptors (device-writable for reads
//! and GET_ID, device-readable for writes), and a final device-writable
//! status byte. Everything in it comes from the guest and is checked here
//! before any I/O: direction of every descriptor, that every buffer lies in
//! guest RAM, that the transfer is whole sectors within the disk.

use std::io::{Seek, SeekFrom};
use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, Le32, Le64,
};

use super::backing::Disk;
use super::{DEVICE_ID_LEN, SECTOR_SIZE};

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O error (also: malformed request).
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: request type not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Most data descriptors one request may carry (Linux uses at most its
/// `seg_max`, 126 by default; the queue size bounds chains anyway).
pub const MAX_DATA_SEGMENTS: usize = 256;

/// The request header as it lies in guest memory.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct RequestHeader {
    request_type: Le32,
    reserved: Le32,
    sector: Le64,
}

// SAFETY: `RequestHeader` is `repr(C)` made of little-endian integer
// wrappers with no padding (4 + 4 + 8 bytes); every bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

const HEADER_LEN: u32 = std::mem::size_of::<RequestHeader>() as u32;

/// What the request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(value: u32) -> Self {
        match value {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            other => RequestType::Unsupported(other),
        }
    }
}

/// Why a chain is not a valid request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the chain has no descriptors")]
    EmptyChain,
    #[error("the chain has {0} data descriptors, more than the device accepts")]
    TooManySegments(usize),
    #[error("the header descriptor is device-writable")]
    HeaderWriteOnly,
    #[error("the header descriptor is shorter than 16 bytes")]
    HeaderTooShort,
    #[error("a buffer at {addr:#x}+{len:#x} is not in guest memory")]
    OutOfGuestMemory { addr: u64, len: u32 },
    #[error("the chain has no device-writable status byte at its end")]
    NoStatus,
    #[error("a data descriptor has the wrong direction for this request")]
    WrongDirection,
    #[error("the data length {0} is not a whole number of sectors")]
    PartialSector(u64),
    #[error("sectors {sector}+{count} lie beyond the disk's {capacity} sectors")]
    BeyondCapacity {
        sector: u64,
        count: u64,
        capacity: u64,
    },
    #[error("the drive is read-only")]
    ReadOnly,
    #[error("the drive slot is empty")]
    EmptySlot,
    #[error("host I/O failed: {0}")]
    Io(String),
}

/// A validated request: every address is in guest memory, every direction right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub request_type: RequestType,
    pub sector: u64,
    pub data: Vec<(GuestAddress, u32)>,
    pub status: GuestAddress,
}

/// A chain that is not a valid request, and where to report that (when the
/// chain ends in a usable status byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseFailure {
    pub error: RequestError,
    pub status: Option<GuestAddress>,
}

fn in_memory(mem: &GuestMemoryMmap, addr: GuestAddress, len: u32) -> Result<(), RequestError> {
    if len == 0 || GuestMemoryBackend::check_range(mem, addr, len as usize) {
        Ok(())
    } else {
        Err(RequestError::OutOfGuestMemory {
            addr: addr.raw_value(),
            len,
        })
    }
}

impl Request {
    /// Parses the chain `chain` (the queue's view of guest memory) with `mem`.
    pub fn parse<M>(chain: DescriptorChain<M>, mem: &GuestMemoryMmap) -> Result<Self, ParseFailure>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        // The chain iterator stops at loops (it yields at most queue-size
        // descriptors) and at chains longer than 4 GiB in total.
        let descriptors: Vec<_> = chain.take(MAX_DATA_SEGMENTS + 3).collect();
        let fail = |error, status| ParseFailure { error, status };

        let last = descriptors
            .last()
            .ok_or(fail(RequestError::EmptyChain, None))?;
        let status = (descriptors.len() >= 2
            && last.is_write_only()
            && last.len() >= 1
            && in_memory(mem, last.addr(), 1).is_ok())
        .then_some(last.addr());
        let Some(status_addr) = status else {
            return Err(fail(RequestError::NoStatus, None));
        };
        if descriptors.len() > MAX_DATA_SEGMENTS + 2 {
            return Err(fail(
                RequestError::TooManySegments(descriptors.len() - 2),
                status,
            ));
        }

        let header_desc = descriptors[0];
        if header_desc.is_write_only() {
            return Err(fail(RequestError::HeaderWriteOnly, status));
        }
        if header_desc.len() < HEADER_LEN {
            return Err(fail(RequestError::HeaderTooShort, status));
        }
        let header: RequestHeader = mem.read_obj(header_desc.addr()).map_err(|_| {
            fail(
                RequestError::OutOfGuestMemory {
                    addr: header_desc.addr().raw_value(),
                    len: HEADER_LEN,
                },
                status,
            )
        })?;
        let request_type = RequestType::from(header.request_type.to_native());

        let data_descs = &descriptors[1..descriptors.len() - 1];
        let mut data = Vec::with_capacity(data_descs.len());
        for desc in data_descs {
            let wrong_direction = match request_type {
                RequestType::In | RequestType::GetId => !desc.is_write_only(),
                RequestType::Out => desc.is_write_only(),
                RequestType::Flush => true,
                RequestType::Unsupported(_) => false,
            };
            if wrong_direction {
                return Err(fail(RequestError::WrongDirection, status));
            }
            in_memory(mem, desc.addr(), desc.len()).map_err(|e| fail(e, status))?;
            data.push((desc.addr(), desc.len()));
        }
        if matches!(request_type, RequestType::In | RequestType::Out) {
            let total: u64 = data.iter().map(|(_, len)| u64::from(*len)).sum();
            if !total.is_multiple_of(SECTOR_SIZE) {
                return Err(fail(RequestError::PartialSector(total), status));
            }
        }
        Ok(Request {
            request_type,
            sector: header.sector.to_native(),
            data,
            status: status_addr,
        })
    }

    /// Bytes of data the request moves.
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|(_, len)| u64::from(*len)).sum()
    }

    fn check_range(&self, disk: &Disk) -> Result<u64, RequestError> {
        let count = self.data_len() / SECTOR_SIZE;
        match self.sector.checked_add(count) {
            Some(end) if end <= disk.sectors => Ok(self.sector * SECTOR_SIZE),
            _ => Err(RequestError::BeyondCapacity {
                sector: self.sector,
                count,
                capacity: disk.sectors,
            }),
        }
    }

    /// Runs the request against `disk`; returns how many bytes it wrote to
    /// guest buffers (the status byte not counted).
    pub fn execute(
        &self,
        mem: &GuestMemoryMmap,
        disk: Option<&mut Disk>,
        read_only: bool,
        device_id: &[u8; DEVICE_ID_LEN],
    ) -> Result<u32, RequestError> {
        let io = |e: std::io::Error| RequestError::Io(e.to_string());
        let mem_io = |e: vm_memory::GuestMemoryError| RequestError::Io(e.to_string());
        match self.request_type {
            RequestType::In => {
                let disk = disk.ok_or(RequestError::EmptySlot)?;
                let offset = self.check_range(disk)?;
                disk.file.seek(SeekFrom::Start(offset)).map_err(io)?;
                for (addr, len) in &self.data {
                    mem.read_exact_volatile_from(*addr, &mut disk.file, *len as usize)
                        .map_err(mem_io)?;
                }
                Ok(self.data_len() as u32)
            }
            RequestType::Out => {
                if read_only {
                    return Err(RequestError::ReadOnly);
                }
                let disk = disk.ok_or(RequestError::EmptySlot)?;
                let offset = self.check_range(disk)?;
                disk.file.seek(SeekFrom::Start(offset)).map_err(io)?;
                for (addr, len) in &self.data {
                    mem.write_all_volatile_to(*addr, &mut disk.file, *len as usize)
                        .map_err(mem_io)?;
                }
                Ok(0)
            }
            RequestType::Flush => {
                if let Some(disk) = disk
                    && !read_only
                {
                    disk.file.sync_data().map_err(io)?;
                }
                Ok(0)
            }
            RequestType::GetId => {
                let mut written = 0usize;
                for (addr, len) in &self.data {
                    let n = (*len as usize).min(DEVICE_ID_LEN - written);
                    mem.write_slice(&device_id[written..written + n], *addr)
                        .map_err(mem_io)?;
                    written += n;
                    if written == DEVICE_ID_LEN {
                        break;
                    }
                }
                Ok(written as u32)
            }
            RequestType::Unsupported(_) => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const HDR: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x3_0000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn header(m: &GuestMemoryMmap, t: u32, sector: u64) {
        m.write_obj(
            RequestHeader {
                request_type: t.into(),
                reserved: 0.into(),
                sector: sector.into(),
            },
            GuestAddress(HDR),
        )
        .unwrap();
    }

    fn parse(m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Result<Request, ParseFailure> {
        let q = MockSplitQueue::new(m, 16);
        let chain = q.build_desc_chain(descs).unwrap();
        Request::parse(chain, m)
    }

    fn disk(sectors: u64) -> (tempfile::NamedTempFile, Disk) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(sectors * SECTOR_SIZE).unwrap();
        let d = Disk::open(f.path(), false).unwrap();
        (f, d)
    }

    #[test]
    fn well_formed_read_and_write_round_trip() {
        let m = mem();
        let (f, mut d) = disk(8);
        m.write_slice(&[0x5a; 1024], GuestAddress(DATA)).unwrap();
        header(&m, VIRTIO_BLK_T_OUT, 2);
        let w = parse(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(DATA, 1024, 0),
                desc(STATUS, 1, WRITE),
            ],
        )
        .unwrap();
        assert_eq!(w.request_type, RequestType::Out);
        assert_eq!(w.execute(&m, Some(&mut d), false, &[0; 20]).unwrap(), 0);
        let mut on_disk = vec![0u8; 8 * 512];
        std::fs::File::open(f.path())
            .unwrap()
            .read_exact(&mut on_disk)
            .unwrap();
        assert!(on_disk[1024..2048].iter().all(|b| *b == 0x5a));
        assert!(on_disk[..1024].iter().all(|b| *b == 0));

        m.write_slice(&[0; 1024], GuestAddress(DATA)).unwrap();
        header(&m, VIRTIO_BLK_T_IN, 2);
        let r = parse(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(DATA, 512, WRITE),
                desc(DATA + 512, 512, WRITE),
                desc(STATUS, 1, WRITE),
            ],
        )
        .unwrap();
        assert_eq!(r.execute(&m, Some(&mut d), false, &[0; 20]).unwrap(), 1024);
        let mut back = [0u8; 1024];
        m.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        assert!(back.iter().all(|b| *b == 0x5a));
    }

    #[test]
    fn flush_and_get_id() {
        let m = mem();
        let (_f, mut d) = disk(1);
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let fl = parse(&m, &[desc(HDR, 16, 0), desc(STATUS, 1, WRITE)]).unwrap();
        assert_eq!(fl.execute(&m, Some(&mut d), false, &[0; 20]).unwrap(), 0);
        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        let id = parse(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(DATA, 64, WRITE),
                desc(STATUS, 1, WRITE),
            ],
        )
        .unwrap();
        let mut dev_id = [0u8; 20];
        dev_id[..6].copy_from_slice(b"rootfs");
        assert_eq!(id.execute(&m, Some(&mut d), false, &dev_id).unwrap(), 20);
        let mut back = [0u8; 6];
        m.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        assert_eq!(&back, b"rootfs");
    }

    #[test]
    fn out_of_range_addresses_are_refused() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let e = parse(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(0xf_ff00, 512, WRITE),
                desc(STATUS, 1, WRITE),
            ],
        )
        .unwrap_err();
        assert!(matches!(e.error, RequestError::OutOfGuestMemory { .. }));
        assert_eq!(e.status, Some(GuestAddress(STATUS)));
        let e = parse(&m, &[desc(u64::MAX - 8, 16, 0), desc(STATUS, 1, WRITE)]).unwrap_err();
        assert!(matches!(e.error, RequestError::OutOfGuestMemory { .. }));
        // Status byte outside guest memory: nowhere to report.
        let e = parse(&m, &[desc(HDR, 16, 0), desc(0x10_0000, 1, WRITE)]).unwrap_err();
        assert_eq!(
            e,
            ParseFailure {
                error: RequestError::NoStatus,
                status: None
            }
        );
    }

    #[test]
    fn wrong_directions_are_refused() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let e = parse(
            &m,
            &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, WRITE)],
        )
        .unwrap_err();
        assert_eq!(e.error, RequestError::WrongDirection);
        header(&m, VIRTIO_BLK_T_OUT, 0);
        let e = parse(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(DATA, 512, WRITE),
                desc(STATUS, 1, WRITE),
            ],
        )
        .unwrap_err();
        assert_eq!(e.error, RequestError::WrongDirection);
        let e = parse(&m, &[desc(HDR, 16, WRITE), desc(STATUS, 1, WRITE)]).unwrap_err();
        assert_eq!(e.error, RequestError::HeaderWriteOnly);
        let e = parse(&m, &[desc(HDR, 16, 0), desc(STATUS, 1, 0)]).unwrap_err();
        assert_eq!(e.error, RequestError::NoStatus);
    }

    #[test]
    fn zero_length_and_short_buffers() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let e = parse(&m, &[desc(HDR, 8, 0), desc(STATUS, 1, WRITE)]).unwrap_err();
        assert_eq!(e.error, RequestError::HeaderTooShort);
        let e = parse(&m, &[desc(HDR, 16, 0), desc(STATUS, 0, WRITE)]).unwrap_err();
        assert_eq!(e.error, RequestError::NoStatus);
        let e = parse(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(DATA, 100, WRITE),
                desc(STATUS, 1, WRITE),
            ],
        )
        .unwrap_err();
        assert_eq!(e.error, RequestError::PartialSector(100));
        // A zero-length data descriptor is harmless.
        let r = parse(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(DATA, 0, WRITE),
                desc(STATUS, 1, WRITE),
            ],
        )
        .unwrap();
        assert_eq!(r.data_len(), 0);
        let e = parse(&m, &[desc(HDR, 16, 0)]).unwrap_err();
        assert_eq!(e.error, RequestError::NoStatus);
    }

    #[test]
    fn oversized_and_beyond_capacity_transfers_fail_before_io() {
        let m = mem();
        let (_f, mut d) = disk(4);
        header(&m, VIRTIO_BLK_T_IN, 3);
        let r = parse(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(DATA, 1024, WRITE),
                desc(STATUS, 1, WRITE),
            ],
        )
        .unwrap();
        assert!(matches!(
            r.execute(&m, Some(&mut d), false, &[0; 20]),
            Err(RequestError::BeyondCapacity {
                sector: 3,
                count: 2,
                capacity: 4
            })
        ));
        header(&m, VIRTIO_BLK_T_IN, u64::MAX);
        let r = parse(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(DATA, 512, WRITE),
                desc(STATUS, 1, WRITE),
            ],
        )
        .unwrap();
        assert!(matches!(
            r.execute(&m, Some(&mut d), false, &[0; 20]),
            Err(RequestError::BeyondCapacity { .. })
        ));
        // A data descriptor longer than guest memory.
        let e = parse(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(DATA, u32::MAX - 511, WRITE),
                desc(STATUS, 1, WRITE),
            ],
        )
        .unwrap_err();
        assert!(matches!(e.error, RequestError::OutOfGuestMemory { .. }));
    }

    #[test]
    fn read_only_and_empty_slots_refuse_io() {
        let m = mem();
        let (_f, mut d) = disk(4);
        header(&m, VIRTIO_BLK_T_OUT, 0);
        let w = parse(
            &m,
            &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, WRITE)],
        )
        .unwrap();
        assert_eq!(
            w.execute(&m, Some(&mut d), true, &[0; 20]),
            Err(RequestError::ReadOnly)
        );
        header(&m, VIRTIO_BLK_T_IN, 0);
        let r = parse(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(DATA, 512, WRITE),
                desc(STATUS, 1, WRITE),
            ],
        )
        .unwrap();
        assert_eq!(
            r.execute(&m, None, false, &[0; 20]),
            Err(RequestError::EmptySlot)
        );
    }

    #[test]
    fn descriptor_loops_end() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let q = MockSplitQueue::new(&m, 4);
        // 0 -> 1 -> 0 -> ... : the chain iterator stops after the queue size.
        let next = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(HDR, 16, next, 1)),
            RawDescriptor::from(SplitDescriptor::new(STATUS, 1, next | WRITE, 0)),
        ];
        let chain = q.build_multiple_desc_chains(&descs).unwrap();
        // Whatever the loop yields, parsing ends and never panics.
        let _ = Request::parse(chain, &m);
    }

    #[test]
    fn unsupported_types_parse_for_an_unsupp_answer() {
        let m = mem();
        header(&m, 11, 0); // DISCARD
        let r = parse(
            &m,
            &[desc(HDR, 16, 0), desc(DATA, 16, 0), desc(STATUS, 1, WRITE)],
        )
        .unwrap();
        assert_eq!(r.request_type, RequestType::Unsupported(11));
    }
}
