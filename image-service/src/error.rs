//! The crate's error, rolled up from each module's own error enum.
//!
//! hulld maps an [`ImageError`] to a gRPC status in one place, through
//! [`ImageError::kind`]; the variants are named for what failed so that the
//! mapping needs no string matching.

use crate::erofs::ErofsError;
use crate::reference::ReferenceError;
use crate::registry::RegistryError;
use crate::store::StoreError;
use crate::unpack::UnpackError;

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image reference could not be parsed.
    #[error(transparent)]
    InvalidReference(#[from] ReferenceError),
    /// Talking to the registry failed (unreachable, refused credentials,
    /// unknown manifest, unexpected answer).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A layer could not be unpacked into the filesystem image (hostile
    /// entry, corrupt archive, digest mismatch of the uncompressed layer).
    #[error("cannot unpack layer {layer} of image {reference}")]
    Unpack {
        /// The reference being pulled.
        reference: String,
        /// The digest of the layer that failed.
        layer: String,
        /// What was wrong with it.
        #[source]
        source: UnpackError,
    },
    /// Writing the filesystem image failed.
    #[error("cannot build the filesystem image of {reference}")]
    Convert {
        /// The reference being pulled.
        reference: String,
        #[source]
        source: ErofsError,
    },
    /// The content store on disk failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The background task that ran a pull ended without an answer (it
    /// panicked or the runtime is shutting down).
    #[error("the pull of {reference} ended without a result")]
    PullAborted {
        /// The reference being pulled.
        reference: String,
    },
}

/// The class of an [`ImageError`], for mapping to a gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong (bad reference): `InvalidArgument`.
    InvalidArgument,
    /// The registry refused the credentials: `Unauthenticated`.
    Unauthenticated,
    /// The image or manifest does not exist: `NotFound`.
    NotFound,
    /// The registry could not be reached or answered with a server error:
    /// `Unavailable` (the kubelet retries).
    Unavailable,
    /// The image content is unusable (digest mismatch, hostile layer,
    /// unsupported media type, no linux/amd64 manifest): `FailedPrecondition`.
    FailedPrecondition,
    /// A local failure (disk, I/O): `Internal`.
    Internal,
}

impl ImageError {
    /// The class of this error, for mapping to a gRPC status.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImageError::InvalidReference(_) => ErrorKind::InvalidArgument,
            ImageError::Registry(err) => err.kind(),
            ImageError::Unpack { source, .. } => source.kind(),
            ImageError::Convert { source, .. } => match source {
                ErofsError::TooLarge(_) => ErrorKind::FailedPrecondition,
                ErofsError::Write(_) => ErrorKind::Internal,
            },
            ImageError::Store(_) | ImageError::PullAborted { .. } => ErrorKind::Internal,
        }
    }
}
