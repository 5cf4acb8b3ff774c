//! Where an agent listens, as hulld names it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// How to reach one guest agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddress {
    /// AF_VSOCK: the guest's context id and the agent's port. Used with VMMs
    /// backed by vhost-vsock (e.g. QEMU `vhost-vsock-device`).
    Vsock { cid: u32, port: u32 },
    /// Firecracker-style hybrid vsock: the VMM's unix socket; the connector
    /// writes `CONNECT <port>\n` and expects `OK <host port>\n`.
    HybridVsock { socket: PathBuf, port: u32 },
}

/// A string that is not an agent address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("agent address {0:?} starts with neither vsock:// nor hvsock://")]
    UnknownScheme(String),
    #[error("agent address {0:?} has no :PORT at its end")]
    MissingPort(String),
    #[error("agent address {0:?} has a CID or port that is not a 32-bit number")]
    BadNumber(String),
    #[error("agent address {0:?} names a relative socket path")]
    RelativePath(String),
}

impl FromStr for AgentAddress {
    type Err = AddressError;

    /// Parses `vsock://CID:PORT` or `hvsock:///abs/path/to/socket:PORT`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (rest, hybrid) = if let Some(rest) = s.strip_prefix("vsock://") {
            (rest, false)
        } else if let Some(rest) = s.strip_prefix("hvsock://") {
            (rest, true)
        } else {
            return Err(AddressError::UnknownScheme(s.to_owned()));
        };
        let (head, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| AddressError::MissingPort(s.to_owned()))?;
        let port: u32 = port
            .parse()
            .map_err(|_| AddressError::BadNumber(s.to_owned()))?;
        if hybrid {
            if !head.starts_with('/') {
                return Err(AddressError::RelativePath(s.to_owned()));
            }
            Ok(Self::HybridVsock {
                socket: PathBuf::from(head),
                port,
            })
        } else {
            let cid = head
                .parse()
                .map_err(|_| AddressError::BadNumber(s.to_owned()))?;
            Ok(Self::Vsock { cid, port })
        }
    }
}

impl fmt::Display for AgentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            Self::HybridVsock { socket, port } => {
                write!(f, "hvsock://{}:{port}", socket.display())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_schemes_and_round_trips() {
        for text in ["vsock://3:1024", "hvsock:///run/hull/p/vsock.sock:1024"] {
            let address: AgentAddress = text.parse().unwrap();
            assert_eq!(address.to_string(), text);
        }
        assert_eq!(
            "vsock://42:5".parse(),
            Ok(AgentAddress::Vsock { cid: 42, port: 5 })
        );
    }

    #[test]
    fn rejects_malformed_addresses() {
        assert!(matches!(
            "tcp://1:2".parse::<AgentAddress>(),
            Err(AddressError::UnknownScheme(_))
        ));
        assert!(matches!(
            "vsock://3".parse::<AgentAddress>(),
            Err(AddressError::MissingPort(_))
        ));
        assert!(matches!(
            "vsock://x:1".parse::<AgentAddress>(),
            Err(AddressError::BadNumber(_))
        ));
        assert!(matches!(
            "hvsock://rel/sock:1".parse::<AgentAddress>(),
            Err(AddressError::RelativePath(_))
        ));
        assert!(matches!(
            "vsock://3:99999999999".parse::<AgentAddress>(),
            Err(AddressError::BadNumber(_))
        ));
    }
}
