//! virtio-blk counters.

use std::sync::atomic::AtomicU64;

use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct BlockMetrics {
    pub read_requests: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_requests: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flushes: AtomicU64,
    /// Requests answered with VIRTIO_BLK_S_IOERR (bad chains, out-of-range
    /// sectors, writes to read-only drives, I/O errors, empty slot).
    pub failed_requests: AtomicU64,
    /// Requests of a type the device does not implement.
    pub unsupported_requests: AtomicU64,
    /// Chains so broken no status byte could be written.
    pub dropped_chains: AtomicU64,
    /// Backing file swaps.
    pub backing_swaps: AtomicU64,
}
