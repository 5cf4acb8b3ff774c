//! Virtio devices over the MMIO transport (virtio 1.2, §4.2).
//!
//! A device is a folder with the same files: `device.rs` (state, config
//! space, activation), `event_handler.rs` (what the device thread does when
//! a queue or a host fd is ready), `request.rs` or `packet.rs` (parsing
//! guest-supplied buffers; the part the fuzz targets reach), `metrics.rs`.

pub mod block;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use interrupt::{InterruptKind, VirtioInterrupt};

/// `VIRTIO_F_VERSION_1`: every hull device is a modern (1.x) device.
pub const FEATURE_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// Device ids (virtio 1.2 §5).
pub mod device_id {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const RNG: u32 = 4;
    pub const VSOCK: u32 = 19;
}

/// Why a device could not start after the driver said DRIVER_OK.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {0} is not ready or its rings are not in guest memory")]
    InvalidQueue(usize),
    #[error("the driver did not accept VIRTIO_F_VERSION_1")]
    LegacyDriver,
    #[error("the device cannot start: {0}")]
    Device(String),
}

/// What a device gets when the driver finishes initialization.
pub struct Activation {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    pub interrupt: Arc<VirtioInterrupt>,
    pub acked_features: u64,
}

/// A virtio device behind an MMIO transport.
pub trait VirtioDevice: Send {
    /// Virtio device id.
    fn device_type(&self) -> u32;
    /// Feature bits the device offers.
    fn avail_features(&self) -> u64;
    /// Largest size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// One eventfd per queue, written when the driver notifies that queue.
    fn queue_events(&self) -> &[EventFd];
    /// Reads device config space at `offset` (any width, bounds-checked).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space; most devices ignore writes.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Changes each time the config space changes (for ConfigGeneration).
    fn config_generation(&self) -> u32 {
        0
    }
    /// Starts processing queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops processing and forgets the queues (driver wrote status 0).
    fn reset(&mut self);
    /// Whether the device is processing queues.
    fn is_activated(&self) -> bool;
}

/// Copies `data.len()` bytes of `config` from `offset` into `data`; bytes
/// past the end read as zero (a guest reading beyond config space gets
/// zeros, never VMM memory).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(offset) = usize::try_from(offset) else {
        return;
    };
    if offset >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - offset);
    data[..n].copy_from_slice(&config[offset..offset + n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let config = [1u8, 2, 3, 4];
        let mut d = [9u8; 4];
        read_config_bytes(&config, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&config, 100, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
