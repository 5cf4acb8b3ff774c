//! The one place where agent errors become gRPC statuses.

use tonic::{Code, Status};

use crate::container::ContainerError;
use crate::network::NetworkError;
use crate::port_forward::PortForwardError;
use crate::sandbox::SandboxError;
use crate::stdio::StdioError;
use crate::storage::StorageError;

/// The message of an error and its sources, joined with ": ".
fn chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

fn storage_code(err: &StorageError) -> Code {
    match err {
        StorageError::PathOutsideBase { .. }
        | StorageError::Missing { .. }
        | StorageError::UnsupportedFsType(_)
        | StorageError::TooLarge { .. }
        | StorageError::ReadTooLarge { .. } => Code::InvalidArgument,
        StorageError::NoSuchSerial(_)
        | StorageError::NoSuchDevice(_)
        | StorageError::NoSuchFile { .. } => Code::NotFound,
        StorageError::Symlink { .. }
        | StorageError::NotADirectory { .. }
        | StorageError::NotRegularFile { .. } => Code::FailedPrecondition,
        StorageError::Mount { .. }
        | StorageError::Unmount { .. }
        | StorageError::Io { .. }
        | StorageError::FileIo { .. } => Code::Internal,
    }
}

fn stdio_code(err: &StdioError) -> Code {
    match err {
        StdioError::ReaderAttached
        | StdioError::NoStdin
        | StdioError::StdinClosed
        | StdioError::NoTerminal => Code::FailedPrecondition,
        StdioError::OffsetBeyondOutput { .. } => Code::OutOfRange,
        _ => Code::Internal,
    }
}

impl From<ContainerError> for Status {
    fn from(err: ContainerError) -> Self {
        let code = match &err {
            ContainerError::NotFound(_) | ContainerError::ExecNotFound { .. } => Code::NotFound,
            ContainerError::AlreadyExists(_) | ContainerError::ExecExists { .. } => {
                Code::AlreadyExists
            }
            ContainerError::BadState { .. } => Code::FailedPrecondition,
            ContainerError::Invalid(_) => Code::InvalidArgument,
            ContainerError::User(_) => Code::InvalidArgument,
            ContainerError::Storage(e) => storage_code(e),
            ContainerError::Stdio(e) => stdio_code(e),
            ContainerError::Runtime { .. }
            | ContainerError::Io { .. }
            | ContainerError::Cgroup { .. }
            | ContainerError::Stats(_) => Code::Internal,
        };
        log(code, &err);
        Status::new(code, chain(&err))
    }
}

impl From<SandboxError> for Status {
    fn from(err: SandboxError) -> Self {
        let code = match &err {
            SandboxError::BadHostname(_)
            | SandboxError::BadSysctl(_)
            | SandboxError::BadConfigLine { .. } => Code::InvalidArgument,
            SandboxError::Storage(e) => storage_code(e),
            SandboxError::Network(NetworkError::Invalid { .. }) => Code::InvalidArgument,
            SandboxError::Network(NetworkError::NoSuchMac { .. }) => Code::NotFound,
            SandboxError::Network(NetworkError::Netlink { .. }) => Code::Internal,
            SandboxError::Sysctl { .. }
            | SandboxError::Namespace { .. }
            | SandboxError::Io { .. } => Code::Internal,
        };
        log(code, &err);
        Status::new(code, chain(&err))
    }
}

impl From<StorageError> for Status {
    fn from(err: StorageError) -> Self {
        let code = storage_code(&err);
        log(code, &err);
        Status::new(code, chain(&err))
    }
}

impl From<StdioError> for Status {
    fn from(err: StdioError) -> Self {
        let code = stdio_code(&err);
        log(code, &err);
        Status::new(code, chain(&err))
    }
}

impl From<PortForwardError> for Status {
    fn from(err: PortForwardError) -> Self {
        let code = match &err {
            PortForwardError::Input(status) => return status.clone(),
            PortForwardError::NoFirstMessage | PortForwardError::Invalid(_) => {
                Code::InvalidArgument
            }
            PortForwardError::Connect { .. } => Code::Unavailable,
            PortForwardError::Connection { .. } => Code::Aborted,
        };
        if code == Code::InvalidArgument {
            log(code, &err);
        } else {
            // The pod's server refused or broke the connection: nothing the
            // guest did wrong.
            tracing::info!(?code, error = %chain(&err), "port forward failed");
        }
        Status::new(code, chain(&err))
    }
}

/// A request that failed is an `error` when the guest failed, a `warn` when
/// the request was wrong (see docs/agent.md, logging).
fn log(code: Code, err: &dyn std::error::Error) {
    let message = chain(err);
    if code == Code::Internal {
        tracing::error!(?code, error = %message, "request failed");
    } else {
        tracing::warn!(?code, error = %message, "request refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_errors_to_codes_with_their_causes() {
        let status = Status::from(ContainerError::NotFound("c1".into()));
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "container c1 does not exist");
        let status = Status::from(ContainerError::BadState {
            id: "c1".into(),
            state: "stopped",
            action: "start",
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        let status = Status::from(StorageError::Io {
            path: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        });
        assert_eq!(status.code(), Code::Internal);
        assert!(
            status.message().starts_with("cannot write /x: "),
            "{}",
            status.message()
        );
        let status = Status::from(StorageError::Symlink {
            path: "/run/hull/files/c1/x".into(),
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(
            Status::from(StorageError::NoSuchFile {
                path: "/run/hull/files/c1/x".into()
            })
            .code(),
            Code::NotFound
        );
        let status = Status::from(SandboxError::Network(NetworkError::Invalid {
            field: "routes[0].gateway".into(),
            value: "fd00::1".into(),
            reason: "is not of the destination's address family (0.0.0.0/0)".into(),
        }));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("routes[0].gateway \"fd00::1\": "),
            "{}",
            status.message()
        );
        let status = Status::from(SandboxError::Network(NetworkError::Netlink {
            action: "bring eth0 up".into(),
            source: std::io::Error::from_raw_os_error(libc::EPERM),
        }));
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().starts_with("cannot bring eth0 up: "));
        assert_eq!(
            Status::from(StdioError::ReaderAttached).code(),
            Code::FailedPrecondition
        );
    }
}
