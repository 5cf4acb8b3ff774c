//! hulld's streaming server: the URLs that Exec, Attach and PortForward
//! return, and the protocols the kubelet and crictl speak on them.
//!
//! - [`tokens`]: each RPC leaves its request under an unguessable one-time
//!   token that expires; the URL is `http://<address>:<port>/<kind>/<token>`.
//! - [`http`]: the HTTP/1.1 server; it redeems the token, negotiates the
//!   protocol and upgrades the connection to SPDY/3.1 or WebSocket.
//! - [`spdy`]: SPDY/3.1 framing and sessions (what the kubelet and crictl's
//!   default transport speak).
//! - [`websocket`]: the Kubernetes channel protocols over WebSocket
//!   (`v5.channel.k8s.io` … `channel.k8s.io`).
//! - [`remote_command`]: exec and attach on top of either transport, through
//!   the pod's agent.
//! - [`port_forward`]: port-forward on top of either transport, through the
//!   agent to the port inside the pod's network namespace.
//!
//! docs/streaming.md describes the protocols and limits.

pub mod http;
pub mod idle;
pub mod over_spdy;
pub mod port_forward;
pub mod remote_command;
pub mod spdy;
pub mod status;
pub mod tokens;
pub mod websocket;

pub use tokens::{StreamKind, TokenError, Tokens};

use std::sync::OnceLock;
use std::time::Duration;

use crate::config::StreamSettings;
use crate::error::CriError;

/// The streaming server as the RPCs see it: where it listens, and the
/// requests waiting for their clients.
pub struct Streaming {
    pub tokens: Tokens,
    /// `http://<address>:<port>`, once the server listens.
    base_url: OnceLock<String>,
}

impl Streaming {
    pub fn new(settings: &StreamSettings) -> Self {
        Self {
            tokens: Tokens::new(Duration::from_secs(settings.token_ttl_secs)),
            base_url: OnceLock::new(),
        }
    }

    /// Records where the server listens (once).
    pub fn set_listening(&self, address: std::net::SocketAddr) {
        let _ = self.base_url.set(format!("http://{address}"));
    }

    /// A one-time URL for `request`.
    pub fn url_for(&self, request: StreamRequest, what: &'static str) -> Result<String, CriError> {
        let base = self
            .base_url
            .get()
            .ok_or(CriError::StreamingUnavailable { what })?;
        let kind = request.kind();
        let token = self.tokens.issue(request)?;
        Ok(format!("{base}/{}/{token}", kind.path_segment()))
    }
}

/// An Exec request, kept until its URL is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecTarget {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// An Attach request, kept until its URL is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachTarget {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// A PortForward request, kept until its URL is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortForwardTarget {
    pub pod_id: String,
    /// The ports the request named: the WebSocket protocol forwards these
    /// when its URL names none; SPDY clients name a port per stream.
    pub ports: Vec<u16>,
}

/// What a streaming URL stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamRequest {
    Exec(ExecTarget),
    Attach(AttachTarget),
    PortForward(PortForwardTarget),
}

impl StreamRequest {
    pub fn kind(&self) -> StreamKind {
        match self {
            StreamRequest::Exec(_) => StreamKind::Exec,
            StreamRequest::Attach(_) => StreamKind::Attach,
            StreamRequest::PortForward(_) => StreamKind::PortForward,
        }
    }
}
