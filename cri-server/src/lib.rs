//! hulld: the CRI v1 RuntimeService and ImageService of hull.
//!
//! `main.rs` parses the command line; [`daemon::serve`] opens the state,
//! binds the socket and serves until SIGTERM or SIGINT.

pub mod config;
pub mod daemon;
pub mod error;
pub mod host;
pub mod metrics;
pub mod network;
pub mod notify;
pub mod pod;
pub mod runtime_state;
pub mod server;
pub mod socket;
pub mod store;
pub mod stream;
pub mod vm_config;
