//! Shared helpers for hull's end-to-end tests: starting hulld, a CRI client
//! over its unix socket, a local registry, and waiting with deadlines.

pub mod cpio;
pub mod disk;
pub mod guest;
pub mod hulld;
pub mod pod_node;
pub mod qemu;
pub mod registry;
pub mod streaming;
pub mod test_image;
