//! Emulated devices: the legacy PIO devices (COM1, i8042) and the
//! virtio-mmio devices, all reached through a [`bus::Bus`].

pub mod bus;
pub mod legacy;
pub mod virtio;
