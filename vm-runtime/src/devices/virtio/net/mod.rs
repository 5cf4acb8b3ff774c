//! virtio-net (virtio 1.2 §5.1) on a host tap device: one rx and one tx
//! queue, frames passed with the 12-byte `virtio_net_hdr_v1` the tap speaks
//! (IFF_VNET_HDR), unchanged in both directions.
//!
//! Offloads: the guest may send frames with a partial checksum
//! (`VIRTIO_NET_F_CSUM`) and TCP segments of up to 64 KiB
//! (`HOST_TSO4/6`), which the tap accepts as they are; it may receive them
//! (`GUEST_CSUM`, `GUEST_TSO4/6`), which the device asks of the tap with
//! `TUNSETOFFLOAD` for exactly the features the driver acked. Without
//! `MRG_RXBUF` a Linux driver that takes TSO posts ~72 KiB rx chains.
//! `EVENT_IDX` lets both sides skip notifications the other does not need.

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
/// Offset of `gso_type` in `virtio_net_hdr_v1`.
pub const GSO_TYPE_OFFSET: usize = 1;
/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// Largest frame with its header the device moves: a 64 KiB IP packet (an
/// IPv6 payload of 65,535 bytes plus its 40-byte header), an Ethernet
/// header with a VLAN tag, the vnet header.
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 18 + 40 + 65_535;
