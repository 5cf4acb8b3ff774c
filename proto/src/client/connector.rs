//! Opening a byte stream to an agent, and a gRPC client on top of it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;
use tokio_vsock::{VsockAddr, VsockStream};
use tonic::transport::Endpoint;

use super::AgentClient;
use super::address::AgentAddress;
use crate::limits::{MAX_REPLY_BYTES, MAX_REQUEST_BYTES};

/// Longest reply line of the hybrid-vsock handshake (`OK 4294967295\n` is 14).
const MAX_HANDSHAKE_LINE: usize = 32;

/// Connecting to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to the agent at {address}")]
    Connect {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("the hybrid-vsock handshake with {address} failed")]
    Handshake {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("the VMM at {address} refused CONNECT {port}: it answered {reply:?}")]
    Refused {
        address: String,
        port: u32,
        reply: String,
    },
    #[error("connecting to the agent at {address} took longer than {timeout:?}")]
    Timeout { address: String, timeout: Duration },
    #[error("cannot set up the gRPC channel to the agent")]
    Channel(#[source] tonic::transport::Error),
    #[error(transparent)]
    Address(#[from] super::AddressError),
}

/// A connected byte stream to an agent, over either transport.
#[derive(Debug)]
pub enum AgentStream {
    Vsock(VsockStream),
    Unix(UnixStream),
}

impl AsyncRead for AgentStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Vsock(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AgentStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Vsock(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Vsock(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Vsock(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Reads one `\n`-terminated line, byte by byte so that nothing after the
/// newline (the start of HTTP/2) is consumed. Bounded by [`MAX_HANDSHAKE_LINE`].
async fn read_handshake_line(stream: &mut UnixStream) -> io::Result<String> {
    let mut line = Vec::with_capacity(MAX_HANDSHAKE_LINE);
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' {
            break;
        }
        if line.len() == MAX_HANDSHAKE_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "handshake reply line is too long",
            ));
        }
        line.push(byte);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

async fn open(address: &AgentAddress) -> Result<AgentStream, ConnectError> {
    match address {
        AgentAddress::Vsock { cid, port } => VsockStream::connect(VsockAddr::new(*cid, *port))
            .await
            .map(AgentStream::Vsock)
            .map_err(|source| ConnectError::Connect {
                address: address.to_string(),
                source,
            }),
        AgentAddress::HybridVsock { socket, port } => {
            let mut stream =
                UnixStream::connect(socket)
                    .await
                    .map_err(|source| ConnectError::Connect {
                        address: address.to_string(),
                        source,
                    })?;
            let handshake_error = |source| ConnectError::Handshake {
                address: address.to_string(),
                source,
            };
            stream
                .write_all(format!("CONNECT {port}\n").as_bytes())
                .await
                .map_err(handshake_error)?;
            let reply = read_handshake_line(&mut stream)
                .await
                .map_err(handshake_error)?;
            let accepted = reply
                .strip_prefix("OK ")
                .is_some_and(|n| n.trim().parse::<u32>().is_ok());
            if !accepted {
                return Err(ConnectError::Refused {
                    address: address.to_string(),
                    port: *port,
                    reply,
                });
            }
            Ok(AgentStream::Unix(stream))
        }
    }
}

/// Opens a byte stream to the agent (for the hybrid transport, after the
/// `CONNECT` handshake), within `timeout`.
pub async fn connect_stream(
    address: &AgentAddress,
    timeout: Duration,
) -> Result<AgentStream, ConnectError> {
    tokio::time::timeout(timeout, open(address))
        .await
        .map_err(|_| ConnectError::Timeout {
            address: address.to_string(),
            timeout,
        })?
}

/// Connects a gRPC client to the agent. The channel reconnects through the
/// same address when the connection drops. Replies larger than
/// [`MAX_REPLY_BYTES`] are refused by the decoder.
pub async fn connect(
    address: &AgentAddress,
    timeout: Duration,
) -> Result<AgentClient, ConnectError> {
    // The URI is required by tonic but unused: the connector below decides
    // where bytes go.
    let endpoint = Endpoint::from_static("http://hull-agent.invalid")
        .connect_timeout(timeout)
        .tcp_nodelay(false);
    let target = address.clone();
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let target = target.clone();
            async move {
                let stream = connect_stream(&target, timeout).await?;
                tracing::debug!(address = %target, "connected to the agent");
                Ok::<_, ConnectError>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(ConnectError::Channel)?;
    Ok(AgentClient::new(channel)
        .max_decoding_message_size(MAX_REPLY_BYTES)
        .max_encoding_message_size(MAX_REQUEST_BYTES))
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixListener;

    use super::*;

    /// A fake VMM end of a hybrid-vsock socket: reads the CONNECT line, sends
    /// `reply`, then echoes whatever comes after.
    async fn fake_vmm(listener: UnixListener, reply: &'static [u8]) -> String {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut line = Vec::new();
        loop {
            let b = conn.read_u8().await.unwrap();
            if b == b'\n' {
                break;
            }
            line.push(b);
        }
        conn.write_all(reply).await.unwrap();
        let mut echo = [0u8; 4];
        if conn.read_exact(&mut echo).await.is_ok() {
            conn.write_all(&echo).await.unwrap();
        }
        String::from_utf8(line).unwrap()
    }

    #[tokio::test]
    async fn hybrid_handshake_sends_connect_and_keeps_following_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("v.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        // The VMM's reply and the first bytes of the guest's stream arrive
        // together; the connector must not swallow the latter.
        let vmm = tokio::spawn(fake_vmm(listener, b"OK 1073741824\n"));
        let address = AgentAddress::HybridVsock { socket, port: 1024 };
        let mut stream = connect_stream(&address, Duration::from_secs(5))
            .await
            .unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        stream.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
        assert_eq!(vmm.await.unwrap(), "CONNECT 1024");
    }

    #[tokio::test]
    async fn hybrid_handshake_reports_a_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("v.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        tokio::spawn(fake_vmm(listener, b"ERR no listener\n"));
        let address = AgentAddress::HybridVsock { socket, port: 7 };
        let err = connect_stream(&address, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ConnectError::Refused { port: 7, reply, .. } if reply == "ERR no listener"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn hybrid_handshake_bounds_the_reply_line() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("v.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        tokio::spawn(fake_vmm(listener, &[b'O'; 100]));
        let address = AgentAddress::HybridVsock { socket, port: 7 };
        let err = connect_stream(&address, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Handshake { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error() {
        let address = AgentAddress::HybridVsock {
            socket: "/nonexistent/hull-test.sock".into(),
            port: 1,
        };
        let err = connect_stream(&address, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Connect { .. }), "{err:?}");
    }
}
