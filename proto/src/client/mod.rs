//! Host side: connecting hulld to a guest agent.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hull_proto::client::ConnectError> {
//! use hull_proto::client::{AgentAddress, connect};
//! let address: AgentAddress = "hvsock:///run/hull/pods/p1/vsock.sock:1024".parse()?;
//! let mut agent = connect(&address, std::time::Duration::from_secs(5)).await?;
//! let health = agent.health(hull_proto::v1::HealthRequest {}).await;
//! # Ok(()) }
//! ```

mod address;
mod connector;

pub use address::{AddressError, AgentAddress};
pub use connector::{AgentStream, ConnectError, connect, connect_stream};

/// The generated client over a tonic channel.
pub type AgentClient = crate::v1::agent_client::AgentClient<tonic::transport::Channel>;
