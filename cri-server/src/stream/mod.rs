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

// pub mod http;
pub mod idle;
// pub mod port_forward;
pub mod remote_command;
pub mod spdy;
pub mod status;
pub mod tokens;
pub mod websocket;

pub use tokens::{StreamKind, TokenError, Tokens};

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
