//! The protocol between hulld (host) and the guest agent (PID 1 in each pod VM).
//!
//! The wire format is `agent/v1/agent.proto` (package `hull.agent.v1`), gRPC
//! over virtio-vsock; that file documents every RPC. This crate holds:
//!
//! - [`v1`]: the generated messages, client and server;
//! - [`validate`]: checks hulld applies to everything the agent sends (the
//!   host does not trust the guest);
//! - `client` (feature `client`): connecting to an agent over AF_VSOCK or a
//!   hybrid-vsock unix socket;
//! - `spec` (feature `spec`): building a container's OCI runtime spec from
//!   CRI-like inputs, including the RuntimeDefault seccomp profile.

pub mod limits;
pub mod validate;

#[cfg(feature = "client")]
pub mod client;

#[cfg(feature = "spec")]
pub mod spec;

/// Generated code of package `hull.agent.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("hull.agent.v1");
}

/// The minor version of protocol v1 this crate speaks, reported by the agent
/// in `HealthResponse.protocol_version`. Bump on every additive change.
///
/// - 1: the first version.
/// - 2: `ReadFile` and `RemoveFile`.
/// - 3: `ExecProcess.process_json` is merged over the container's own process.
/// - 4: output offsets and acknowledgements (`ReadOutput` resumes,
///   `AcknowledgeOutput`).
/// - 5: `PortForward`.
pub const PROTOCOL_VERSION: u32 = 5;

/// The vsock port the agent listens on unless `hull.vsock_port=` says otherwise.
pub const DEFAULT_AGENT_PORT: u32 = 1024;
