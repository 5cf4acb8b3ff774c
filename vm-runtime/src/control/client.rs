//! A blocking client for the control socket (hulld, tests, benchmarks).

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::api::{ControlErrorBody, ControlRequest, ControlResponse};
use super::wire::{LineStream, WireError};

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlClientError {
    #[error("cannot connect to the VMM control socket {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket I/O failed")]
    Wire(#[from] WireError),
    #[error("the VMM closed the control connection")]
    Closed,
    #[error("the VMM's answer is not a valid response")]
    Decode(#[from] serde_json::Error),
    #[error("the VMM refused the request ({:?}): {}", .0.kind, .0.message)]
    Refused(ControlErrorBody),
}

/// One connection to a VMM.
pub struct ControlClient {
    stream: LineStream,
}

impl ControlClient {
    pub fn connect(path: &Path) -> Result<Self, ControlClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ControlClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            stream: LineStream::new(stream),
        })
    }

    /// Sends `request` (with `fds`) and returns the `result` of a successful answer.
    pub fn request_with_fds(
        &mut self,
        request: &ControlRequest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<serde_json::Value, ControlClientError> {
        let line = serde_json::to_string(request)?;
        self.stream.write_line(&line, fds)?;
        let (answer, _) = self.stream.read_line()?.ok_or(ControlClientError::Closed)?;
        let response: ControlResponse = serde_json::from_str(&answer)?;
        match (response.ok, response.error) {
            (true, _) => Ok(response.result.unwrap_or(serde_json::Value::Null)),
            (false, Some(error)) => Err(ControlClientError::Refused(error)),
            (false, None) => Err(ControlClientError::Closed),
        }
    }

    pub fn request(
        &mut self,
        request: &ControlRequest,
    ) -> Result<serde_json::Value, ControlClientError> {
        self.request_with_fds(request, &[])
    }
}
