//! virtio-net counters.

use std::sync::atomic::AtomicU64;

use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct NetMetrics {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames from the tap that did not fit the guest's buffer.
    pub rx_dropped: AtomicU64,
    /// Frames the tap refused (full) or the guest sent malformed.
    pub tx_dropped: AtomicU64,
    pub malformed_chains: AtomicU64,
}
