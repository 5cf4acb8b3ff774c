//! virtio-net (virtio 1.2 §5.1) on a host tap device: one rx and one tx
//! queue, frames passed with the 12-byte `virtio_net_hdr_v1` the tap speaks
//! (IFF_VNET_HDR), no offloads.

pub mod device;
pub mod event_handler;
pub mod frame;
pub mod metrics;
pub mod tap;

pub use device::Net;
pub use metrics::NetMetrics;
pub use tap::{Tap, TapError};

/// Queue size of both queues.
pub const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1` (with `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame with its header the device moves (64 KiB IP packet + Ethernet header).
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65_550;
