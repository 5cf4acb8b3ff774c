//! hulld's errors, and the one place where they become gRPC statuses.

use std::error::Error as _;

use tonic::{Code, Status};

use crate::store::StoreError;

/// Why a CRI request failed.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("{field} is required")]
    MissingField { field: &'static str },
    #[error("{field} is invalid: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("{what} is not supported by hull: {why}")]
    Unsupported {
        what: &'static str,
        why: &'static str,
    },
    #[error("{what} is not available in this build of hulld yet: {why}")]
    NotYetAvailable {
        what: &'static str,
        why: &'static str,
    },
    #[error("this host cannot run pod VMs: {reason}")]
    KvmUnusable { reason: String },
    #[error("{kind} {id} is {state}; cannot {action}")]
    WrongState {
        kind: &'static str,
        id: String,
        state: &'static str,
        action: &'static str,
    },
    #[error("image {reference:?} not found")]
    ImageNotFound { reference: String },
    #[error("{kind} name {name:?} is already used by {id}")]
    NameInUse {
        kind: &'static str,
        name: String,
        id: String,
    },
    #[error("pod sandbox {pod}: {source}")]
    PodVm {
        pod: String,
        #[source]
        source: crate::pod::vm::VmError,
    },
    #[error("pod sandbox {pod}: network: {source}")]
    PodNetwork {
        pod: String,
        #[source]
        source: Box<crate::server::PodNetworkError>,
    },
    #[error("pod sandbox {pod}: host cgroup: {source}")]
    Cgroup {
        pod: String,
        #[source]
        source: crate::pod::cgroup::CgroupError,
    },
    #[error("pod sandbox {pod}: the guest agent failed to {action}: {message}")]
    Agent {
        pod: String,
        action: &'static str,
        code: Code,
        message: String,
    },
    #[error("container {container}: {source}")]
    HostMount {
        container: String,
        #[source]
        source: crate::pod::host_mounts::HostMountError,
    },
    #[error("container {container}: log file: {source}")]
    Log {
        container: String,
        #[source]
        source: crate::pod::logs::LogError,
    },
    #[error("container {container}: cannot build its OCI spec: {source}")]
    Spec {
        container: String,
        #[source]
        source: hull_proto::spec::SpecError,
    },
    #[error("{what} timed out after {seconds} s")]
    Timeout { what: String, seconds: u64 },
    #[error("internal error while {what}")]
    Internal { what: &'static str },
    #[error("the streaming server is not running, so {what} cannot be served")]
    StreamingUnavailable { what: &'static str },
    #[error("cannot hand out a streaming URL: {0}")]
    StreamToken(#[from] crate::stream::TokenError),
    #[error(transparent)]
    Image(#[from] image_service::ImageError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CriError {
    fn code(&self) -> Code {
        match self {
            CriError::MissingField { .. } | CriError::InvalidField { .. } => Code::InvalidArgument,
            CriError::Unsupported { .. } | CriError::NotYetAvailable { .. } => Code::Unimplemented,
            CriError::KvmUnusable { .. } | CriError::WrongState { .. } => Code::FailedPrecondition,
            CriError::ImageNotFound { .. } => Code::NotFound,
            // The kubelet reads DeadlineExceeded as a probe timeout.
            CriError::Timeout { .. } => Code::DeadlineExceeded,
            CriError::NameInUse { .. } => Code::AlreadyExists,
            CriError::StreamingUnavailable { .. } => Code::Unavailable,
            CriError::StreamToken(_) => Code::ResourceExhausted,
            CriError::PodVm { .. }
            | CriError::Cgroup { .. }
            | CriError::PodNetwork { .. }
            | CriError::Log { .. }
            | CriError::Internal { .. } => Code::Internal,
            CriError::HostMount { .. } | CriError::Spec { .. } => Code::InvalidArgument,
            // The agent's own verdict on a bad request stands; anything else
            // from inside the guest is the pod's failure, not the caller's.
            CriError::Agent { code, .. } => match code {
                Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition => *code,
                Code::DeadlineExceeded => Code::DeadlineExceeded,
                _ => Code::Unknown,
            },
            CriError::Image(err) => image_error_code(err),
            CriError::Store(err) => match err {
                StoreError::NotFound { .. } => Code::NotFound,
                StoreError::Ambiguous { .. } => Code::InvalidArgument,
                StoreError::AlreadyExists { .. } => Code::AlreadyExists,
                _ => Code::Internal,
            },
        }
    }
}

fn image_error_code(err: &image_service::ImageError) -> Code {
    use image_service::ErrorKind;
    match err.kind() {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Internal => Code::Internal,
    }
}

/// The message of `err` followed by each of its sources: "a: b: c".
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

impl From<CriError> for Status {
    fn from(err: CriError) -> Self {
        let code = err.code();
        let message = match &err {
            // `transparent` variants already show their inner message; the
            // chain adds the inner error's own sources.
            CriError::Image(inner) => error_chain(inner),
            CriError::Store(inner) => error_chain(inner),
            other => match other.source() {
                Some(_) => error_chain(other),
                None => other.to_string(),
            },
        };
        if code == Code::Internal {
            tracing::error!(error = %message, "request failed inside hulld");
        }
        Status::new(code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn codes_follow_what_failed() {
        let status: Status = CriError::MissingField {
            field: "image.image",
        }
        .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "image.image is required");

        let status: Status = CriError::Store(StoreError::NotFound {
            kind: "container",
            id: "abc".into(),
        })
        .into();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "container abc not found");

        let status: Status = CriError::KvmUnusable {
            reason: "no /dev/kvm".into(),
        }
        .into();
        assert_eq!(status.code(), Code::FailedPrecondition);
    }

    #[test]
    fn internal_errors_carry_their_causes_not_debug_output() {
        let status: Status = CriError::Store(StoreError::Write {
            path: PathBuf::from("/var/lib/hull/sandboxes/x.json"),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        })
        .into();
        assert_eq!(status.code(), Code::Internal);
        assert!(
            status.message().starts_with(
                "cannot write state record /var/lib/hull/sandboxes/x.json: No space left on device"
            ),
            "{}",
            status.message()
        );
    }
}
