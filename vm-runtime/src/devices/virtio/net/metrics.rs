//! virtio-net counters.

use std::sync::atomic::AtomicU64;

use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct NetMetrics {
    /// Frames moved to and from the guest; a GSO frame counts once.
    pub rx_frames: AtomicU64,
    /// Bytes of those frames, without the vnet header.
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames from the tap that did not fit the guest's buffer (or came
    /// with a malformed one).
    pub rx_dropped: AtomicU64,
    /// Frames the tap refused (full or invalid).
    pub tx_dropped: AtomicU64,
    /// Chains refused: wrong direction, outside guest memory, too short,
    /// or (tx) longer than the largest frame.
    pub malformed_chains: AtomicU64,
    /// Frames that were TCP segments of more than one packet (GSO type in
    /// the vnet header): how much of the traffic used segmentation offload.
    pub rx_gso_frames: AtomicU64,
    pub tx_gso_frames: AtomicU64,
    /// The `TUN_F_*` offloads the tap has now.
    pub tap_offloads: AtomicU64,
    /// Times TUNSETOFFLOAD failed.
    pub offload_errors: AtomicU64,
}
