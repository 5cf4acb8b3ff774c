//! virtio-blk (virtio 1.2 §5.2): read-only or read-write disks backed by
//! host files (sparse files welcome), flush, GET_ID, and drive *slots*
//! whose backing file is set or replaced while the guest runs.

pub mod backing;
pub mod device;
pub mod event_handler;
pub mod metrics;
pub mod request;

pub use backing::{BackingError, Disk};
pub use device::{Block, BlockError};
pub use metrics::BlockMetrics;

/// Bytes per virtio-blk sector (fixed by the spec).
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID answer.
pub const DEVICE_ID_LEN: usize = 20;
/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
