//! virtio-vsock counters.

use std::sync::atomic::AtomicU64;

use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct VsockMetrics {
    pub tx_packets: AtomicU64,
    pub rx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub host_connections: AtomicU64,
    pub guest_connections: AtomicU64,
    /// Guest connections to a host port nobody listens on.
    pub refused_connections: AtomicU64,
    pub resets_sent: AtomicU64,
    /// Packets that broke the rules (bad header, wrong CID, too long,
    /// credit exceeded); each ends its connection or is dropped.
    pub malformed_packets: AtomicU64,
    pub active_connections: AtomicU64,
}
