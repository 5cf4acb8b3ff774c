//! The VMM: builds a VM from a [`config::VmConfig`] and owns its lifetime.

pub mod config;
pub mod events;
pub mod timeline;
