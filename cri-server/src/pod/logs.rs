//! Container log files in the CRI log format, the one the kubelet,
//! `kubectl logs` and `crictl logs` read:
//!
//! ```text
//! 2026-11-22T10:00:00.123456789Z stdout F a whole line
//! 2026-11-22T10:00:00.2Z stderr P the first part of a long line
//! 2026-11-22T10:00:00.2Z stderr F and its end
//! ```
//!
//! A container's stdout and stderr reach hulld from the agent as a
//! `ReadOutput` stream of tagged chunks; a [`LogPump`] writes them to the file
//! the kubelet named (`log_directory` joined with `log_path`) and reopens that
//! file when the kubelet rotates it (`ReopenContainerLog`).
//!
//! The records are the ones containerd's CRI plugin writes, so tools that read
//! containerd's logs read hull's:
//!
//! - `F` ends a line; the `\n` (and a `\r` just before it) is not content.
//! - A line longer than the maximum line size (16 KiB by default, containerd's
//!   `max_container_log_line_size`) is cut into `P` records of exactly that
//!   size and a last `F` record holding the rest (1 byte up to the maximum).
//! - When the stream ends, a line without its `\n` is written as `P`: readers
//!   then show exactly the bytes the container wrote, without a newline it
//!   never printed.
//! - Timestamps are Go's RFC3339Nano (trailing zeros of the fraction dropped,
//!   no fraction on a whole second), in UTC, taken when hulld receives the
//!   chunk that completes the record.
//! - stdout and stderr keep separate partial lines; records never mix them.
//!
//! Where hull differs from containerd:
//!
//! - The parent directory is not created. The kubelet creates every container's
//!   log directory before it creates the container, so a missing directory
//!   means the pod's logs were removed; opening (and reopening) then fails with
//!   an error that names the path rather than bringing the directory back.
//! - A partial line waiting for its end moves to the new file on a reopen
//!   (containerd writes it to the old file as a `P` record).
//! - A file that does not end with `\n` (hulld was killed in the middle of a
//!   write) gets one before anything is appended, so the torn record stays a
//!   line of its own that the kubelet skips, instead of gluing onto the next.

mod cursor;
mod file;
mod format;
mod pump;
#[cfg(test)]
mod testing;

use std::path::{Path, PathBuf};

pub use cursor::{OutputCursor, StreamOffsets};
pub use file::ContainerLog;
pub use format::{CriLogFormatter, DEFAULT_MAX_LINE_SIZE, LogTag, format_timestamp};
pub use pump::{LogPump, PumpEnd, spawn_log_pump};

/// One of a container's two output streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    /// The stream's name in a CRI log record.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            LogStream::Stdout => 0,
            LogStream::Stderr => 1,
        }
    }
}

/// Why a container's output could not be written to its log file.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open the container log {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write to the container log {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent's output stream for the container log {path} failed")]
    Stream {
        path: PathBuf,
        #[source]
        source: Box<tonic::Status>,
    },
    #[error("the agent sent an invalid output chunk for the container log {path}")]
    BadChunk {
        path: PathBuf,
        #[source]
        source: hull_proto::validate::ValidationError,
    },
    #[error("cannot open the output offsets file {path}")]
    Offsets {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the task writing the container log {path} did not finish")]
    Task {
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl LogError {
    /// The log file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            LogError::Open { path, .. }
            | LogError::Write { path, .. }
            | LogError::Stream { path, .. }
            | LogError::BadChunk { path, .. }
            | LogError::Offsets { path, .. }
            | LogError::Task { path, .. } => path,
        }
    }
}
