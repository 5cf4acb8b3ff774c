//! One virtio-rng request: device-writable buffers to fill.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::MAX_REQUEST_BYTES;

/// Why a chain is not a valid rng request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RngRequestError {
    #[error("the chain has a device-readable descriptor")]
    ReadableDescriptor,
    #[error("a buffer at {addr:#x}+{len:#x} is not in guest memory")]
    OutOfGuestMemory { addr: u64, len: u32 },
    #[error("cannot get random bytes from the host")]
    Entropy,
}

/// Buffers to fill, capped at [`MAX_REQUEST_BYTES`] in total.
pub fn parse<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
) -> Result<Vec<(GuestAddress, u32)>, RngRequestError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut left = MAX_REQUEST_BYTES;
    let mut buffers = Vec::new();
    for desc in chain {
        if !desc.is_write_only() {
            return Err(RngRequestError::ReadableDescriptor);
        }
        let len = desc.len().min(left);
        if len > 0 && !GuestMemoryBackend::check_range(mem, desc.addr(), len as usize) {
            return Err(RngRequestError::OutOfGuestMemory {
                addr: desc.addr().raw_value(),
                len: desc.len(),
            });
        }
        if len > 0 {
            buffers.push((desc.addr(), len));
        }
        left -= len;
        if left == 0 {
            break;
        }
    }
    Ok(buffers)
}

/// Fills `buffers` with random bytes; returns the bytes written.
pub fn fill(
    mem: &GuestMemoryMmap,
    buffers: &[(GuestAddress, u32)],
) -> Result<u32, RngRequestError> {
    let mut written = 0;
    let mut scratch = vec![0u8; 4096];
    for (addr, len) in buffers {
        let mut done = 0u32;
        while done < *len {
            let n = (*len - done).min(scratch.len() as u32) as usize;
            getrandom(&mut scratch[..n])?;
            mem.write_slice(&scratch[..n], addr.unchecked_add(u64::from(done)))
                .map_err(|_| RngRequestError::OutOfGuestMemory {
                    addr: addr.raw_value(),
                    len: *len,
                })?;
            done += n as u32;
        }
        written += len;
    }
    Ok(written)
}

fn getrandom(buf: &mut [u8]) -> Result<(), RngRequestError> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes
        // for the duration of the call; getrandom writes at most that many.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(RngRequestError::Entropy);
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    const WRITE: u16 = VRING_DESC_F_WRITE as u16;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn run(
        m: &GuestMemoryMmap,
        descs: &[(u64, u32, u16)],
    ) -> Result<Vec<(GuestAddress, u32)>, RngRequestError> {
        let q = MockSplitQueue::new(m, 16);
        let raw: Vec<_> = descs
            .iter()
            .map(|(a, l, f)| RawDescriptor::from(SplitDescriptor::new(*a, *l, *f, 0)))
            .collect();
        parse(q.build_desc_chain(&raw).unwrap(), m)
    }

    #[test]
    fn fills_writable_buffers() {
        let m = mem();
        let bufs = run(&m, &[(0x2_0000, 64, WRITE), (0x3_0000, 64, WRITE)]).unwrap();
        assert_eq!(fill(&m, &bufs).unwrap(), 128);
        let mut out = [0u8; 64];
        m.read_slice(&mut out, GuestAddress(0x2_0000)).unwrap();
        assert!(
            out.iter().any(|b| *b != 0),
            "64 random bytes are not all zero"
        );
    }

    #[test]
    fn refuses_readable_and_out_of_range_buffers() {
        let m = mem();
        assert_eq!(
            run(&m, &[(0x2_0000, 64, 0)]),
            Err(RngRequestError::ReadableDescriptor)
        );
        assert!(matches!(
            run(&m, &[(0xf_fff0, 64, WRITE)]),
            Err(RngRequestError::OutOfGuestMemory { .. })
        ));
    }

    #[test]
    fn caps_oversized_requests_and_skips_empty_ones() {
        let m = mem();
        let bufs = run(&m, &[(0x1_0000, 0, WRITE), (0x2_0000, 0x8_0000, WRITE)]).unwrap();
        assert_eq!(bufs, vec![(GuestAddress(0x2_0000), MAX_REQUEST_BYTES)]);
    }
}
