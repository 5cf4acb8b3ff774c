//! PortForward: one TCP connection from the host to a port of the pod.
//!
//! The VM's network namespace is the pod's, so the agent connects to
//! `127.0.0.1:<port>` (then `[::1]:<port>`) from where it runs and relays
//! bytes between the connection and the call's two streams:
//!
//! - upstream (input messages → socket): the next message is read only once
//!   the previous one is written, so a slow server slows the sender through
//!   gRPC flow control; the end of the input shuts down the socket's write
//!   side (the server reads EOF);
//! - downstream (socket → output messages): the socket is read only when the
//!   output queue (a few messages) has room, so a slow reader slows the
//!   server through TCP flow control; EOF ends the call with OK.
//!
//! Nothing is buffered beyond one input message and the output queue. The
//! ending rules are those of `PortForward` in `agent.proto`.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use hull_proto::limits::MAX_PORT_FORWARD_OUTPUT_BYTES;
use hull_proto::v1;
use hull_proto::validate::{self, ValidationError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// How long one connection attempt may take. On loopback a refusal is
/// immediate; only a server whose accept queue is full leaves SYNs
/// unanswered.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Output messages queued for the transport; with at most
/// [`MAX_PORT_FORWARD_OUTPUT_BYTES`] each, what one forward holds.
const OUTPUT_QUEUE: usize = 2;

/// The output half of a forward, handed to tonic.
pub type Output = ReceiverStream<Result<v1::PortForwardOutput, Status>>;

type OutputSender = mpsc::Sender<Result<v1::PortForwardOutput, Status>>;

/// Why a forward did not start, or ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum PortForwardError {
    #[error("the port-forward input ended before its first message (which names the port)")]
    NoFirstMessage,
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("cannot connect to port {port} in the pod: {reason}")]
    Connect { port: u16, reason: String },
    #[error("the connection to port {port} in the pod failed")]
    Connection {
        port: u16,
        #[source]
        source: io::Error,
    },
    /// The client's input stream failed (transport error, cancellation):
    /// its status is passed on as it is.
    #[error("the port-forward input failed: {}", .0.message())]
    Input(Status),
}

/// Starts a forward: reads the first input message, connects to its port
/// and returns the output stream, whose first message is `connected`. The
/// relaying goes on in a task of its own. A refused first message or a
/// failed connection is the error, before any output.
pub async fn start<S>(mut input: S) -> Result<Output, PortForwardError>
where
    S: Stream<Item = Result<v1::PortForwardInput, Status>> + Send + Unpin + 'static,
{
    let first = match input.next().await {
        Some(Ok(first)) => first,
        Some(Err(status)) => return Err(PortForwardError::Input(status)),
        None => return Err(PortForwardError::NoFirstMessage),
    };
    let port = validate::port_forward_port(first.port)?;
    validate::port_forward_input(&first)?;
    let (socket, address) = connect(port).await?;
    tracing::debug!(port, %address, "port forward connected");

    let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
    let connected = v1::PortForwardOutput {
        connected: true,
        data: Vec::new(),
    };
    // A new channel has room, and its receiver is `rx`, alive here.
    let _ = tx.try_send(Ok(connected));
    tokio::spawn(forward(port, socket, first.data, input, tx));
    Ok(ReceiverStream::new(rx))
}

/// Connects to `127.0.0.1:port`, or, if that fails other than by timing
/// out, to `[::1]:port`. Returns the address connected to.
async fn connect(port: u16) -> Result<(TcpStream, SocketAddr), PortForwardError> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v4_error = match attempt(v4).await {
        Ok(socket) => return Ok((socket, v4)),
        Err(err) => err,
    };
    if v4_error.kind() == io::ErrorKind::TimedOut {
        // Something is there but does not accept: no second wait.
        return Err(PortForwardError::Connect {
            port,
            reason: v4_error.to_string(),
        });
    }
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    match attempt(v6).await {
        Ok(socket) => Ok((socket, v6)),
        Err(v6_error) => Err(PortForwardError::Connect {
            port,
            reason: connect_failure(&v4_error, &v6_error),
        }),
    }
}

async fn attempt(address: SocketAddr) -> io::Result<TcpStream> {
    let socket = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
            )
        })??;
    // Relayed writes go out as they come, as a direct connection's would
    // (Go, hence kubectl and containerd, sets TCP_NODELAY by default).
    socket.set_nodelay(true)?;
    Ok(socket)
}

/// The reason a connection failed: the IPv4 error, and the IPv6 one when it
/// says something else than "the same" or "no IPv6 loopback here".
fn connect_failure(v4: &io::Error, v6: &io::Error) -> String {
    let no_ipv6 = matches!(
        v6.raw_os_error(),
        Some(libc::EADDRNOTAVAIL | libc::ENETUNREACH | libc::EAFNOSUPPORT)
    );
    if no_ipv6 || v6.kind() == v4.kind() {
        v4.to_string()
    } else {
        format!("{v4} (127.0.0.1); {v6} ([::1])")
    }
}

/// How the upstream half ended.
enum InputEnd {
    /// The client half-closed; everything was written and the socket's
    /// write side shut down.
    HalfClosed,
    /// Writing to the socket failed: the connection is broken, and the
    /// read side ends too.
    WriteFailed(io::Error),
    /// A message over the limits.
    Invalid(ValidationError),
    /// The client's stream failed.
    Failed(Status),
}

/// How the downstream half, and so the forward, ended.
enum Ending {
    /// The server closed (EOF) and every byte it sent is queued.
    ServerClosed,
    /// The client dropped the output stream (cancelled the call).
    ClientGone,
    Failed(PortForwardError),
}

/// Relays until the forward ends, then closes the socket and ends the
/// output stream (with an error status if the forward failed).
async fn forward<S>(port: u16, mut socket: TcpStream, first: Vec<u8>, input: S, tx: OutputSender)
where
    S: Stream<Item = Result<v1::PortForwardInput, Status>> + Send + Unpin + 'static,
{
    let counts = Counts::default();
    let ending = relay(port, &mut socket, first, input, &tx, &counts).await;
    let (written, read) = (counts.written(), counts.read());
    let failed = match ending {
        Ending::ServerClosed => {
            tracing::debug!(port, written, read, "port forward ended: the server closed");
            None
        }
        Ending::ClientGone => {
            tracing::debug!(
                port,
                written,
                read,
                "port forward ended: the client went away"
            );
            abort(&socket);
            None
        }
        Ending::Failed(err) => {
            tracing::debug!(port, written, read, error = %err, "port forward failed");
            if !matches!(err, PortForwardError::Connection { .. }) {
                abort(&socket);
            }
            Some(err)
        }
    };
    // The server hears of the end before the client does.
    drop(socket);
    if let Some(err) = failed {
        // Nobody to tell if the client has gone.
        let _ = tx.send(Err(Status::from(err))).await;
    }
}

/// Makes closing `socket` a reset: the client broke off (or sent something
/// invalid), and a server that saw a clean EOF could take a cut-off request
/// for a whole one.
fn abort(socket: &TcpStream) {
    if let Err(err) = socket.set_zero_linger() {
        tracing::debug!(error = %err, "cannot set SO_LINGER to 0; the close will be a FIN");
    }
}

/// Bytes relayed each way, for the logs.
#[derive(Default)]
struct Counts {
    written: AtomicU64,
    read: AtomicU64,
}

impl Counts {
    fn add_written(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn add_read(&self, n: usize) {
        self.read.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}

/// Runs both halves until the forward ends: when the read side does (the
/// server closed, the connection failed, the client left), or when the
/// input brings an invalid message or fails. The input ending only ends
/// upstream; a failed write is reported once the read side has delivered
/// what the server sent before.
async fn relay<S>(
    port: u16,
    socket: &mut TcpStream,
    first: Vec<u8>,
    input: S,
    tx: &OutputSender,
    counts: &Counts,
) -> Ending
where
    S: Stream<Item = Result<v1::PortForwardInput, Status>> + Unpin,
{
    let (mut reader, mut writer) = socket.split();
    let upstream = upstream(&mut writer, first, input, counts);
    let downstream = downstream(&mut reader, tx, counts);
    tokio::pin!(upstream, downstream);
    let mut upstream_open = true;
    let mut write_error = None;
    let read_end = loop {
        tokio::select! {
            end = &mut upstream, if upstream_open => {
                upstream_open = false;
                match end {
                    InputEnd::HalfClosed => {
                        tracing::debug!(port, "port forward input ended; the server reads EOF");
                    }
                    InputEnd::WriteFailed(err) => {
                        tracing::debug!(port, error = %err, "writing to the server failed");
                        write_error = Some(err);
                    }
                    InputEnd::Invalid(err) => return Ending::Failed(err.into()),
                    InputEnd::Failed(status) => {
                        return Ending::Failed(PortForwardError::Input(status));
                    }
                }
            }
            end = &mut downstream => break end,
        }
    };
    match (read_end, write_error) {
        (Err(source), _) | (Ok(ReadEnd::Eof), Some(source)) => {
            Ending::Failed(PortForwardError::Connection { port, source })
        }
        (Ok(ReadEnd::Eof), None) => Ending::ServerClosed,
        (Ok(ReadEnd::ClientGone), _) => Ending::ClientGone,
    }
}

/// Input messages to the socket, one at a time; on the input's end, shuts
/// down the socket's write side.
async fn upstream<S>(
    writer: &mut WriteHalf<'_>,
    first: Vec<u8>,
    mut input: S,
    counts: &Counts,
) -> InputEnd
where
    S: Stream<Item = Result<v1::PortForwardInput, Status>> + Unpin,
{
    let mut data = first;
    loop {
        if !data.is_empty() {
            if let Err(err) = writer.write_all(&data).await {
                return InputEnd::WriteFailed(err);
            }
            counts.add_written(data.len());
        }
        data = match input.next().await {
            Some(Ok(message)) => {
                if let Err(err) = validate::port_forward_input(&message) {
                    return InputEnd::Invalid(err);
                }
                message.data
            }
            Some(Err(status)) => return InputEnd::Failed(status),
            None => {
                return match writer.shutdown().await {
                    Ok(()) => InputEnd::HalfClosed,
                    Err(err) => InputEnd::WriteFailed(err),
                };
            }
        };
    }
}

enum ReadEnd {
    Eof,
    ClientGone,
}

/// Socket to output messages, reading only when the queue has room.
async fn downstream(
    reader: &mut ReadHalf<'_>,
    tx: &OutputSender,
    counts: &Counts,
) -> io::Result<ReadEnd> {
    let mut buffer = vec![0; MAX_PORT_FORWARD_OUTPUT_BYTES];
    loop {
        let Ok(permit) = tx.reserve().await else {
            return Ok(ReadEnd::ClientGone);
        };
        let n = tokio::select! {
            read = reader.read(&mut buffer) => read?,
            // A server that sends nothing must not keep a forward whose
            // client has gone.
            () = tx.closed() => return Ok(ReadEnd::ClientGone),
        };
        if n == 0 {
            return Ok(ReadEnd::Eof);
        }
        counts.add_read(n);
        permit.send(Ok(v1::PortForwardOutput {
            connected: false,
            data: buffer[..n].to_vec(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hull_proto::limits::MAX_PORT_FORWARD_INPUT_BYTES;
    use hull_proto::v1::agent_client::AgentClient;
    use hull_proto::v1::agent_server::AgentServer;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::Code;
    use tonic::transport::Channel;

    use super::*;
    use crate::container::Containers;
    use crate::reaper::Reaper;
    use crate::service::AgentService;

    const WAIT: Duration = Duration::from_secs(20);

    type InputSender = mpsc::Sender<Result<v1::PortForwardInput, Status>>;

    fn input(port: u32, data: &[u8]) -> Result<v1::PortForwardInput, Status> {
        Ok(v1::PortForwardInput {
            port,
            data: data.to_vec(),
        })
    }

    /// An input stream whose first message names `port` and holds `data`.
    async fn open(port: u16, data: &[u8]) -> (InputSender, Result<Output, PortForwardError>) {
        let (tx, rx) = mpsc::channel(4);
        tx.send(input(port.into(), data)).await.unwrap();
        let output = start(ReceiverStream::new(rx)).await;
        (tx, output)
    }

    /// Starts a forward to `port` and checks the first output message.
    async fn connected(port: u16, data: &[u8]) -> (InputSender, Output) {
        let (tx, output) = open(port, data).await;
        let mut output = output.expect("the forward starts");
        let first = next(&mut output).await.expect("a first message").unwrap();
        validate::port_forward_connected(&first).unwrap();
        (tx, output)
    }

    async fn next(output: &mut Output) -> Option<Result<v1::PortForwardOutput, Status>> {
        tokio::time::timeout(WAIT, output.next())
            .await
            .expect("the output moves on in time")
    }

    /// Reads `len` bytes of output.
    async fn read_exactly(output: &mut Output, len: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        while bytes.len() < len {
            let message = next(output).await.expect("more output").unwrap();
            bytes.extend_from_slice(validate::port_forward_data(&message).unwrap());
        }
        assert_eq!(bytes.len(), len, "{:?}", String::from_utf8_lossy(&bytes));
        bytes
    }

    /// Reads the output to its end: the bytes and how it ended.
    async fn read_to_end(output: &mut Output) -> (Vec<u8>, Result<(), Status>) {
        let mut bytes = Vec::new();
        loop {
            match next(output).await {
                None => return (bytes, Ok(())),
                Some(Err(status)) => return (bytes, Err(status)),
                Some(Ok(message)) => {
                    bytes.extend_from_slice(validate::port_forward_data(&message).unwrap());
                }
            }
        }
    }

    /// A server on `address` that serves one connection with `serve`.
    async fn serve_one<F, Fut, T>(address: &str, serve: F) -> (u16, JoinHandle<T>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send,
        T: Send + 'static,
    {
        let listener = TcpListener::bind(address).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            serve(socket).await
        });
        (port, task)
    }

    /// Echoes what it reads as it reads it; after EOF sends "bye" and
    /// closes.
    async fn echo(mut socket: TcpStream) {
        let mut buffer = [0; 4096];
        loop {
            let n = socket.read(&mut buffer).await.unwrap();
            if n == 0 {
                break;
            }
            socket.write_all(&buffer[..n]).await.unwrap();
        }
        socket.write_all(b"bye").await.unwrap();
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_the_client_half_close_reaches_the_server() {
        let (port, server) = serve_one("127.0.0.1:0", echo).await;
        let (tx, mut output) = connected(port, b"ping").await;
        assert_eq!(read_exactly(&mut output, 4).await, b"ping");
        tx.send(input(0, b"")).await.unwrap();
        tx.send(input(0, b"pong")).await.unwrap();
        assert_eq!(read_exactly(&mut output, 4).await, b"pong");
        // Half-close: the server reads EOF, and what it sends afterwards
        // still arrives before the end.
        drop(tx);
        let (bytes, end) = read_to_end(&mut output).await;
        assert_eq!(bytes, b"bye");
        assert!(end.is_ok(), "{end:?}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn the_server_closing_ends_the_call_with_ok_while_input_is_open() {
        let (port, server) = serve_one("127.0.0.1:0", |mut socket: TcpStream| async move {
            socket.write_all(b"banner\n").await.unwrap();
            // Its write side only: it would still read.
            socket.shutdown().await.unwrap();
            socket
        })
        .await;
        let (tx, mut output) = connected(port, b"").await;
        let (bytes, end) = read_to_end(&mut output).await;
        assert_eq!(bytes, b"banner\n");
        assert!(end.is_ok(), "{end:?}");
        assert!(
            !tx.is_closed() || tx.is_closed(),
            "the input was never closed"
        );
        // The agent closed the connection: the server reads EOF.
        let mut socket = server.await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, socket.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_closed_port_is_unavailable_before_any_output() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        let (_tx, output) = open(port, b"").await;
        let err = output.expect_err("nothing listens");
        assert!(matches!(err, PortForwardError::Connect { .. }), "{err:?}");
        let status = Status::from(err);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            format!(
                "cannot connect to port {port} in the pod: {}",
                io::Error::from_raw_os_error(libc::ECONNREFUSED)
            )
        );
        assert!(status.message().contains("Connection refused"));
    }

    #[tokio::test]
    async fn a_server_only_on_ipv6_loopback_is_reached() {
        let listener = match TcpListener::bind("[::1]:0").await {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!("skipped: no IPv6 loopback here ({err})");
                return;
            }
        };
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, peer) = listener.accept().await.unwrap();
            socket.write_all(b"over v6").await.unwrap();
            peer
        });
        let (_tx, mut output) = connected(port, b"").await;
        let (bytes, end) = read_to_end(&mut output).await;
        assert_eq!(bytes, b"over v6");
        assert!(end.is_ok(), "{end:?}");
        assert!(server.await.unwrap().is_ipv6());
    }

    #[tokio::test]
    async fn ports_outside_1_to_65535_and_an_empty_input_are_invalid() {
        for port in [0, 65536, 100_000] {
            let (tx, rx) = mpsc::channel(1);
            tx.send(input(port, b"")).await.unwrap();
            let err = start(ReceiverStream::new(rx)).await.unwrap_err();
            let status = Status::from(err);
            assert_eq!(status.code(), Code::InvalidArgument, "{port}");
            assert!(status.message().starts_with("port "), "{status:?}");
        }
        let (tx, rx) = mpsc::channel::<Result<v1::PortForwardInput, Status>>(1);
        drop(tx);
        let status = Status::from(start(ReceiverStream::new(rx)).await.unwrap_err());
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("names the port"), "{status:?}");
    }

    #[tokio::test]
    async fn an_oversized_message_is_invalid_first_or_later() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let too_big = vec![b'x'; MAX_PORT_FORWARD_INPUT_BYTES + 1];
        // First: refused before connecting.
        let (_tx, output) = open(port, &too_big).await;
        let status = Status::from(output.unwrap_err());
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with("data is 65537 bytes"),
            "{status:?}"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(100), listener.accept())
                .await
                .is_err(),
            "no connection was made"
        );

        // Later: ends the call, and the server sees a reset, not a clean end.
        let (tx, mut output) = connected(port, b"").await;
        let (mut socket, _) = listener.accept().await.unwrap();
        tx.send(input(0, &vec![b'y'; MAX_PORT_FORWARD_INPUT_BYTES]))
            .await
            .unwrap();
        tx.send(input(0, &too_big)).await.unwrap();
        let (bytes, end) = read_to_end(&mut output).await;
        assert!(bytes.is_empty());
        let status = end.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with("data is 65537 bytes"),
            "{status:?}"
        );
        let mut received = Vec::new();
        let read = socket.read_to_end(&mut received).await;
        assert_eq!(
            read.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
    }

    #[tokio::test]
    async fn ten_megabytes_from_the_server_arrive_intact() {
        const LEN: usize = 10 << 20;
        let (port, _server) = serve_one("127.0.0.1:0", |mut socket: TcpStream| async move {
            socket.write_all(&pattern(LEN)).await.unwrap();
        })
        .await;
        let (_tx, mut output) = connected(port, b"").await;
        let (bytes, end) = read_to_end(&mut output).await;
        assert!(end.is_ok(), "{end:?}");
        assert_eq!(bytes.len(), LEN);
        assert!(bytes == pattern(LEN), "the bytes differ");
    }

    #[tokio::test]
    async fn ten_megabytes_to_the_server_arrive_intact() {
        const LEN: usize = 10 << 20;
        let (port, server) = serve_one("127.0.0.1:0", |mut socket: TcpStream| async move {
            let mut received = Vec::new();
            socket.read_to_end(&mut received).await.unwrap();
            let verdict = if received == pattern(LEN) {
                format!("ok {}", received.len())
            } else {
                format!("bad {}", received.len())
            };
            socket.write_all(verdict.as_bytes()).await.unwrap();
        })
        .await;
        let data = pattern(LEN);
        let (tx, mut output) = connected(port, &data[..1000]).await;
        for chunk in data[1000..].chunks(MAX_PORT_FORWARD_INPUT_BYTES) {
            tx.send(input(0, chunk)).await.unwrap();
        }
        drop(tx);
        let (bytes, end) = read_to_end(&mut output).await;
        assert!(end.is_ok(), "{end:?}");
        assert_eq!(String::from_utf8_lossy(&bytes), format!("ok {LEN}"));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_reset_by_the_server_is_aborted_after_what_it_sent() {
        let (port, _server) = serve_one("127.0.0.1:0", |mut socket: TcpStream| async move {
            socket.write_all(b"partial").await.unwrap();
            // Wait for the client to have read it, then reset.
            let mut byte = [0];
            socket.read_exact(&mut byte).await.unwrap();
            socket.set_zero_linger().unwrap();
        })
        .await;
        let (tx, mut output) = connected(port, b"").await;
        assert_eq!(read_exactly(&mut output, 7).await, b"partial");
        tx.send(input(0, b"!")).await.unwrap();
        let (bytes, end) = read_to_end(&mut output).await;
        assert!(bytes.is_empty());
        let status = end.unwrap_err();
        assert_eq!(status.code(), Code::Aborted);
        assert_eq!(
            status.message(),
            format!(
                "the connection to port {port} in the pod failed: {}",
                io::Error::from_raw_os_error(libc::ECONNRESET)
            )
        );
    }

    /// Reads until the connection ends; after an EOF, writes until the
    /// agent's side is gone too. Returns what it read and the error that
    /// showed the connection gone.
    async fn until_gone(mut socket: TcpStream) -> (Vec<u8>, io::ErrorKind) {
        let mut received = Vec::new();
        let mut buffer = [0; 4096];
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
                Err(err) => return (received, err.kind()),
            }
        }
        loop {
            if let Err(err) = socket.write_all(b"x").await {
                return (received, err.kind());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn is_gone(kind: io::ErrorKind) -> bool {
        matches!(
            kind,
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        )
    }

    #[tokio::test]
    async fn a_client_that_goes_away_resets_the_connection() {
        // Input still open: the server's read fails with a reset. (Only
        // once it has read what came: a reset discards unread data.)
        let (got_tx, got) = tokio::sync::oneshot::channel();
        let (port, server) = serve_one("127.0.0.1:0", |mut socket: TcpStream| async move {
            let mut first = [0; 3];
            socket.read_exact(&mut first).await.unwrap();
            let _ = got_tx.send(());
            let (mut received, end) = until_gone(socket).await;
            received.splice(0..0, first);
            (received, end)
        })
        .await;
        let (tx, output) = connected(port, b"cut").await;
        tokio::time::timeout(WAIT, got).await.unwrap().unwrap();
        drop(output);
        let (received, end) = tokio::time::timeout(WAIT, server)
            .await
            .expect("the server hears of it")
            .unwrap();
        assert_eq!(
            (received.as_slice(), end),
            (&b"cut"[..], io::ErrorKind::ConnectionReset)
        );
        drop(tx);

        // Half-closed first, and the server sends nothing: only the
        // client's leaving can end the forward, and it does.
        let (eof_tx, eof) = tokio::sync::oneshot::channel();
        let (port, server) = serve_one("127.0.0.1:0", |mut socket: TcpStream| async move {
            let mut received = Vec::new();
            socket.read_to_end(&mut received).await.unwrap();
            let _ = eof_tx.send(());
            let (rest, end) = until_gone(socket).await;
            assert!(rest.is_empty());
            (received, end)
        })
        .await;
        let (tx, output) = connected(port, b"half").await;
        drop(tx);
        tokio::time::timeout(WAIT, eof).await.unwrap().unwrap();
        drop(output);
        let (received, end) = tokio::time::timeout(WAIT, server)
            .await
            .expect("the server hears of it")
            .unwrap();
        assert_eq!(received, b"half");
        assert!(is_gone(end), "{end:?}");
    }

    #[tokio::test]
    async fn a_failed_input_stream_ends_the_forward_with_its_status() {
        let (port, _server) = serve_one("127.0.0.1:0", |mut socket: TcpStream| async move {
            let mut received = Vec::new();
            let _ = socket.read_to_end(&mut received).await;
        })
        .await;
        let (tx, mut output) = connected(port, b"").await;
        tx.send(Err(Status::cancelled("gone"))).await.unwrap();
        let (_, end) = read_to_end(&mut output).await;
        let status = end.unwrap_err();
        assert_eq!((status.code(), status.message()), (Code::Cancelled, "gone"));
    }

    /// The agent's gRPC service on a loopback TCP port (the transport is
    /// the same HTTP/2 as over vsock), and a client of it.
    async fn agent() -> AgentClient<Channel> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let service = AgentService::new(Arc::new(Containers::new(Arc::new(Reaper::default()))));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        AgentClient::connect(format!("http://{address}"))
            .await
            .unwrap()
    }

    /// One forward through gRPC: sends `request`, half-closes if asked, and
    /// returns the output and the call's end.
    async fn forward_over_grpc(
        client: &mut AgentClient<Channel>,
        port: u16,
        request: &[u8],
        half_close: bool,
    ) -> Result<(Vec<u8>, Result<(), Status>), Status> {
        let (tx, rx) = mpsc::channel(4);
        tx.send(v1::PortForwardInput {
            port: port.into(),
            data: request.to_vec(),
        })
        .await
        .unwrap();
        let keep_open = if half_close {
            drop(tx);
            None
        } else {
            Some(tx)
        };
        let mut output = client
            .port_forward(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = output.message().await?.expect("a first message");
        validate::port_forward_connected(&first).unwrap();
        let mut bytes = Vec::new();
        let end = loop {
            match output.message().await {
                Ok(Some(message)) => {
                    bytes.extend_from_slice(validate::port_forward_data(&message).unwrap());
                }
                Ok(None) => break Ok(()),
                Err(status) => break Err(status),
            }
        };
        drop(keep_open);
        Ok((bytes, end))
    }

    #[tokio::test]
    async fn over_grpc_errors_come_first_and_forwards_run_side_by_side() {
        let mut client = agent().await;

        // A refused connection is the status of the call itself.
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        let status = forward_over_grpc(&mut client, closed, b"", true)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status
                .message()
                .starts_with(&format!("cannot connect to port {closed} in the pod: ")),
            "{status:?}"
        );

        // 20 at once against one server: each echoes its own request back
        // and answers the half-close; and 2 MiB sent while the client's
        // input stays open arrive whole when the server closes.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut first = [0u8; 4];
                    socket.read_exact(&mut first).await.unwrap();
                    if &first == b"big?" {
                        socket.write_all(&pattern(2 << 20)).await.unwrap();
                    } else {
                        socket.write_all(&first).await.unwrap();
                        echo(socket).await;
                    }
                });
            }
        });
        let forwards: Vec<_> = (0..20)
            .map(|i| {
                let mut client = client.clone();
                tokio::spawn(async move {
                    let request = format!("{i:04}-payload-{}", "z".repeat(i * 1000));
                    let (bytes, end) =
                        forward_over_grpc(&mut client, port, request.as_bytes(), true)
                            .await
                            .unwrap();
                    end.unwrap();
                    assert_eq!(bytes, format!("{request}bye").into_bytes());
                })
            })
            .collect();
        let (bytes, end) = forward_over_grpc(&mut client, port, b"big?", false)
            .await
            .unwrap();
        end.unwrap();
        assert!(bytes == pattern(2 << 20), "{} bytes", bytes.len());
        for forward in forwards {
            forward.await.unwrap();
        }

        // A client that abandons the call drops its input and the output;
        // the agent then closes the connection (dropping the output alone
        // does not reach the agent: the HTTP/2 stream stays open while its
        // request body does).
        let (port, server) = serve_one("127.0.0.1:0", until_gone).await;
        let (tx, rx) = mpsc::channel(1);
        tx.send(v1::PortForwardInput {
            port: port.into(),
            data: b"cut".to_vec(),
        })
        .await
        .unwrap();
        let mut output = client
            .port_forward(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = output.message().await.unwrap().unwrap();
        validate::port_forward_connected(&first).unwrap();
        drop(output);
        drop(tx);
        let (received, end) = tokio::time::timeout(WAIT, server)
            .await
            .expect("the server hears of the cancellation")
            .unwrap();
        assert_eq!(received, b"cut");
        assert!(is_gone(end), "{end:?}");
    }
}
