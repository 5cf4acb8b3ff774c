//! virtio-rng (virtio 1.2 §5.4): entropy for the guest from the host's
//! `getrandom(2)`.

pub mod device;
pub mod event_handler;
pub mod metrics;
pub mod request;

pub use device::Rng;
pub use metrics::RngMetrics;

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 64;
/// Most bytes handed out per request.
pub const MAX_REQUEST_BYTES: u32 = 64 * 1024;
