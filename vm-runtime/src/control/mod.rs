//! The control socket: hulld ⇄ VMM, one JSON object per line each way.
//! The API is documented in `docs/vmm.md`.

pub mod api;
pub mod client;
pub mod server;
pub mod wire;

pub use api::{ControlErrorKind, ControlRequest, ControlResponse, StopKind};
pub use client::{ControlClient, ControlClientError};
