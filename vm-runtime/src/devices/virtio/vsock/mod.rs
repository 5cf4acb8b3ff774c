//! virtio-vsock (virtio 1.2 §5.10) with a host side on unix sockets, in the
//! style of Firecracker's "hybrid vsock":
//!
//! - host → guest: connect to the device's unix socket `uds_path`, write
//!   `CONNECT <port>\n`, read `OK <host_port>\n`; the stream is then joined
//!   to the guest's listener on `<port>`. A refused or reset connection is
//!   closed without an `OK` line.
//! - guest → host: a guest connection to host (CID 2) port `P` is joined to
//!   a new connection to the unix socket `<uds_path>_P`; if nothing listens
//!   there the guest gets a reset.
//!
//! Only stream sockets are offered. Flow control follows the spec's credit
//! scheme per connection: the guest never has more than [`CONN_BUF_ALLOC`]
//! bytes in flight towards a host socket, and the device never sends more
//! than the guest's advertised buffer.

pub mod connection;
pub mod device;
pub mod event_handler;
pub mod metrics;
pub mod muxer;
pub mod packet;

pub use device::Vsock;
pub use metrics::VsockMetrics;

/// The host's context id.
pub const HOST_CID: u64 = 2;
/// Receive buffer the device advertises per connection (bytes).
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Largest payload of one packet, either way.
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// Queue size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
/// First port handed out to host-initiated connections.
pub const FIRST_HOST_PORT: u32 = 1 << 30;
