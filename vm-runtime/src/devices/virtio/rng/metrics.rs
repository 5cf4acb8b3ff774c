//! virtio-rng counters.

use std::sync::atomic::AtomicU64;

use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct RngMetrics {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    /// Chains with no device-writable buffer, or buffers outside guest RAM.
    pub failed_requests: AtomicU64,
}
