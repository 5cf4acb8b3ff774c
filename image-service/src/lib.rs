//! Pulls OCI images from registries, stores their blobs by digest, and unpacks
//! each image once into a read-only EROFS filesystem image that pod VMs attach
//! as a block device.
//!
//! The entry point is [`ImageStore`]: `open` it on a folder, then `pull`,
//! `list`, `get`, `remove` images and ask for `fs_usage`, as the CRI
//! ImageService does. Errors carry an [`ErrorKind`] for the gRPC status.
//! `docs/images.md` describes the store layout, the conversion and why it is
//! EROFS, crash safety and garbage collection.

pub mod config;
mod convert;
pub mod digest;
pub mod erofs;
mod error;
mod gc;
mod pull;
pub mod reference;
pub mod registry;
mod store;
pub mod unpack;

pub use config::{PullAuth, RegistryConfig, RegistryHost, UnpackLimits};
pub use error::{ErrorKind, ImageError};
pub use gc::GcStats;
pub use reference::{ImageRef, ReferenceError};
pub use registry::RegistryError;
pub use store::{BlockImageFormat, FsUsage, Image, ImageStore, StoreError};
pub use unpack::UnpackError;
