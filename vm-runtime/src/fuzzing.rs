//! Fuzzing entry points: guest memory filled from the fuzzer's bytes
//! (descriptor table, rings and buffers alike), one queue over it, and the
//! device's own request parsing and handling on every chain it yields.
//! Used by the cargo-fuzz targets in `fuzz/` and by the unit tests below.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::virtio::block::request::Request;
use crate::devices::virtio::block::{DEVICE_ID_LEN, Disk};
use crate::devices::virtio::vsock::packet::{self, RxBuffers};

/// Guest RAM of a fuzz case.
const MEM_SIZE: usize = 0x1_0000;
const QUEUE_SIZE: u16 = 16;
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x200;
const USED_RING: u64 = 0x400;
/// Most chains handled per case (the avail index is fuzzer-chosen).
const MAX_CHAINS: usize = 64;

fn memory_from(data: &[u8]) -> Option<(GuestMemoryMmap, Queue)> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).ok()?;
    let n = data.len().min(MEM_SIZE);
    mem.write_slice(&data[..n], GuestAddress(0)).ok()?;
    let mut queue = Queue::new(QUEUE_SIZE).ok()?;
    queue.set_size(QUEUE_SIZE);
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
    queue.set_ready(true);
    queue.is_valid(&mem).then_some((mem, queue))
}

/// Parses and runs every virtio-blk request the bytes describe, against a
/// small scratch disk.
pub fn blk_requests(data: &[u8]) {
    let Some((mem, mut queue)) = memory_from(data) else {
        return;
    };
    let Some(path) = scratch_disk() else { return };
    let Ok(mut disk) = Disk::open(path, false) else {
        return;
    };
    let id = [b'f'; DEVICE_ID_LEN];
    for _ in 0..MAX_CHAINS {
        let Some(chain) = queue.pop_descriptor_chain(&mem) else {
            break;
        };
        let head = chain.head_index();
        if let Ok(request) = Request::parse(chain, &mem) {
            let _ = request.execute(&mem, Some(&mut disk), head % 2 == 0, &id);
        }
        if queue.add_used(&mem, head, 0).is_err() {
            break;
        }
    }
}

/// Parses every vsock packet the bytes describe, as tx and as rx chains.
pub fn vsock_packets(data: &[u8]) {
    let Some((mem, mut queue)) = memory_from(data) else {
        return;
    };
    for i in 0..MAX_CHAINS {
        let Some(chain) = queue.pop_descriptor_chain(&mem) else {
            break;
        };
        let head = chain.head_index();
        if i % 2 == 0 {
            if let Ok((header, payload)) = packet::parse_tx(chain, &mem) {
                assert!(payload.len() == header.len as usize);
            }
        } else if let Ok(rx) = RxBuffers::parse(chain, &mem) {
            let header = packet::Header {
                len: 8,
                ..Default::default()
            };
            let _ = rx.write(&mem, &header, b"fuzzdata");
        }
        if queue.add_used(&mem, head, 0).is_err() {
            break;
        }
    }
}

/// A 4 KiB scratch disk per process, reused by every case.
fn scratch_disk() -> Option<&'static std::path::Path> {
    static PATH: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("hull-fuzz-disk-{}.img", std::process::id()));
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(4096))
            .ok()?;
        Some(path)
    })
    .as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift: reproducible pseudo-random cases without a dependency.
    fn cases(seed: u64, count: usize) -> impl Iterator<Item = Vec<u8>> {
        let mut state = seed;
        (0..count).map(move |_| {
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let mut data = vec![0u8; 0x800];
            for chunk in data.chunks_mut(8) {
                let v = next().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
            // Keep descriptor addresses mostly inside the 64 KiB of RAM and
            // the avail index small, so cases reach the parsers.
            for d in 0..QUEUE_SIZE as usize {
                data[d * 16 + 2..d * 16 + 8].fill(0);
                data[d * 16 + 1] &= 0xff;
                data[d * 16 + 9..d * 16 + 12].fill(0);
                data[d * 16 + 12] &= 0x07; // flags: NEXT | WRITE | INDIRECT
                data[d * 16 + 14] &= 0x0f;
                data[d * 16 + 15] = 0;
            }
            let avail = AVAIL_RING as usize;
            data[avail + 2] &= 0x0f;
            data[avail + 3] = 0;
            for i in 0..QUEUE_SIZE as usize {
                data[avail + 4 + 2 * i] &= 0x0f;
                data[avail + 5 + 2 * i] = 0;
            }
            data
        })
    }

    #[test]
    fn random_blk_chains_never_panic() {
        for case in cases(0x9e37_79b9_7f4a_7c15, 3000) {
            blk_requests(&case);
        }
    }

    #[test]
    fn random_vsock_chains_never_panic() {
        for case in cases(0x2545_f491_4f6c_dd1d, 3000) {
            vsock_packets(&case);
        }
    }

    #[test]
    fn short_and_empty_inputs_are_fine() {
        blk_requests(&[]);
        vsock_packets(&[1, 2, 3]);
    }
}
