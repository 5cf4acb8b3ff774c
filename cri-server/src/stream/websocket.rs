//! The Kubernetes channel protocols over WebSocket.
//!
//! Every binary message starts with a channel byte. Remote command (exec,
//! attach): 0 stdin, 1 stdout, 2 stderr, 3 error (the final status), 4
//! resize (JSON terminal sizes); `v5.channel.k8s.io` adds 255, "close": its
//! second byte names a channel the client will not write again (stdin's
//! EOF, which WebSocket has no other way to say). Port-forward: for the n-th
//! port of the URL's `port` query, channel 2n carries data both ways and
//! 2n+1 the errors; the server's first message on each starts with the port
//! (16 bits, little-endian).
//!
//! Messages are bounded ([`MAX_MESSAGE_BYTES`]); the reader stops reading
//! the socket while the consumer of a channel is behind, so a client
//! cannot queue more than a few messages in hulld.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{
    CloseFrame, WebSocketConfig, frame::coding::CloseCode,
};

use super::port_forward::PortStreams;
use super::remote_command::CommandStreams;
use super::status::{Outcome, ResizeDecoder};

/// Largest message accepted from a client.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// `v5.channel.k8s.io`: "I will not write to channel `data[1]` again".
pub const CLOSE: u8 = 255;

/// Messages waiting for the socket, per session.
const OUTGOING_BACKLOG: usize = 16;
/// Messages waiting for a consumer, per channel.
const CHANNEL_BACKLOG: usize = 4;
/// How long the close handshake may take at the end of a session.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The WebSocket settings of hulld's sessions.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// Which streams an exec or attach client asked for.
#[derive(Clone, Copy, Debug)]
pub struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The sending half: queues `(channel, data)` messages for the socket.
#[derive(Clone)]
struct Outgoing(mpsc::Sender<Message>);

impl Outgoing {
    async fn send(&self, channel: u8, data: &[u8]) -> bool {
        let mut message = BytesMut::with_capacity(data.len() + 1);
        message.put_u8(channel);
        message.put_slice(data);
        self.0.send(Message::Binary(message.freeze())).await.is_ok()
    }
}

/// Writes queued messages to the socket until every sender is gone, then
/// closes the connection properly.
async fn write_messages<S>(
    mut sink: futures::stream::SplitSink<WebSocketStream<S>, Message>,
    mut queue: mpsc::Receiver<Message>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(message) = queue.recv().await {
        if sink.send(message).await.is_err() {
            return;
        }
    }
    let close = Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }));
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        let _ = sink.send(close).await;
        let _ = sink.close().await;
    })
    .await;
}

/// Serves one exec or attach session on `socket`: `run` gets the client's
/// streams and returns the outcome, which goes on the error channel
/// (`protocol_version` says in which form) before the connection closes.
pub async fn serve_command<S, F>(
    socket: WebSocketStream<S>,
    protocol_version: u8,
    wanted: Wanted,
    run: F,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnOnce(CommandStreams) -> BoxFuture<'static, Outcome>,
{
    let (sink, mut source) = socket.split();
    let (queue, queued) = mpsc::channel(OUTGOING_BACKLOG);
    let writer = tokio::spawn(write_messages(sink, queued));
    let outgoing = Outgoing(queue);

    // Tells the client the session is established (as the kubelet does):
    // an empty message on the lowest channel it reads.
    let first = if wanted.stdout {
        STDOUT
    } else if wanted.stderr && !wanted.tty {
        STDERR
    } else {
        ERROR
    };
    outgoing.send(first, &[]).await;

    let (stdin_sender, stdin) = mpsc::channel::<Bytes>(CHANNEL_BACKLOG);
    let (resize_sender, resize) = mpsc::channel(CHANNEL_BACKLOG);
    let (gone_sender, gone) = oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut stdin_sender = wanted.stdin.then_some(stdin_sender);
        let mut resize_sender = wanted.tty.then_some(resize_sender);
        let mut sizes = ResizeDecoder::default();
        while let Some(Ok(message)) = source.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                // Pings are answered by the WebSocket layer; text frames
                // belong to the base64 protocols, which hulld does not offer.
                _ => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            match channel {
                STDIN => {
                    if let Some(sender) = &stdin_sender
                        && !payload.is_empty()
                        && sender.send(data.slice(1..)).await.is_err()
                    {
                        stdin_sender = None;
                    }
                }
                RESIZE => match sizes.push(payload) {
                    Ok(new_sizes) => {
                        for size in new_sizes {
                            if let Some(sender) = &resize_sender {
                                let _ = sender.send(size).await;
                            }
                        }
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "bad resize message; resize ignored from now on");
                        resize_sender = None;
                    }
                },
                CLOSE if protocol_version >= 5 && payload.first() == Some(&STDIN) => {
                    stdin_sender = None;
                }
                _ => {}
            }
        }
        drop(gone_sender);
    });

    let stdout = spawn_channel_writer(wanted.stdout, STDOUT, &outgoing);
    let stderr = spawn_channel_writer(wanted.stderr && !wanted.tty, STDERR, &outgoing);
    let streams = CommandStreams {
        stdin: wanted.stdin.then_some(stdin),
        stdout: stdout.as_ref().map(|(sender, _)| sender.clone()),
        stderr: stderr.as_ref().map(|(sender, _)| sender.clone()),
        resize: wanted.tty.then_some(resize),
        client_gone: gone.map(|_| ()).boxed(),
    };
    let outcome = run(streams).await;
    // Output still queued goes out before the status.
    for (sender, task) in [stdout, stderr].into_iter().flatten() {
        drop(sender);
        let _ = task.await;
    }
    if let Some(message) = outcome.error_stream_message(protocol_version) {
        outgoing.send(ERROR, &message).await;
    }
    drop(outgoing);
    let _ = writer.await;
    reader.abort();
}

/// A channel the session's output goes to: a sender for the session and
/// the task that moves its data into the socket's queue.
fn spawn_channel_writer(
    wanted: bool,
    channel: u8,
    outgoing: &Outgoing,
) -> Option<(mpsc::Sender<Bytes>, tokio::task::JoinHandle<()>)> {
    if !wanted {
        return None;
    }
    let (sender, mut receiver) = mpsc::channel::<Bytes>(CHANNEL_BACKLOG);
    let outgoing = outgoing.clone();
    let task = tokio::spawn(async move {
        while let Some(data) = receiver.recv().await {
            if !outgoing.send(channel, &data).await {
                return;
            }
        }
    });
    Some((sender, task))
}

/// Serves one WebSocket port-forward session: for each of `ports`, `forward`
/// connects the port's data channel to the pod, and what it returns as an
/// error goes on the port's error channel.
pub async fn serve_port_forward<S, F>(socket: WebSocketStream<S>, ports: Vec<u16>, forward: F)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(u16, PortStreams) -> BoxFuture<'static, Result<(), String>>,
{
    let (sink, mut source) = socket.split();
    let (queue, queued) = mpsc::channel(OUTGOING_BACKLOG);
    let writer = tokio::spawn(write_messages(sink, queued));
    let outgoing = Outgoing(queue);

    let mut from_client = Vec::with_capacity(ports.len());
    let mut sessions = Vec::with_capacity(ports.len());
    for (index, &port) in ports.iter().enumerate() {
        let (data_channel, error_channel) = port_channels(index);
        outgoing.send(data_channel, &port.to_le_bytes()).await;
        outgoing.send(error_channel, &port.to_le_bytes()).await;
        let (client_sender, client_data) = mpsc::channel(CHANNEL_BACKLOG);
        from_client.push(Some(client_sender));
        let (to_client, pod_data) = mpsc::channel::<Bytes>(CHANNEL_BACKLOG);
        let relay = outgoing.clone();
        let pod_to_client = tokio::spawn(async move {
            let mut pod_data = pod_data;
            while let Some(data) = pod_data.recv().await {
                if !relay.send(data_channel, &data).await {
                    return;
                }
            }
        });
        let errors = outgoing.clone();
        let forwarded = forward(
            port,
            PortStreams {
                from_client: client_data,
                to_client,
            },
        );
        sessions.push(async move {
            let result = forwarded.await;
            let _ = pod_to_client.await;
            if let Err(message) = result {
                errors.send(error_channel, message.as_bytes()).await;
            }
        });
    }
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = source.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some(&channel) = data.first() else {
                continue;
            };
            let index = usize::from(channel / 2);
            // Only data channels are read; error channels are the server's.
            if channel % 2 == 1 || data.len() == 1 {
                continue;
            }
            if let Some(Some(sender)) = from_client.get(index)
                && sender.send(data.slice(1..)).await.is_err()
            {
                from_client[index] = None;
            }
        }
        // The client is gone: every port's input ends.
    });
    futures::future::join_all(sessions).await;
    drop(outgoing);
    let _ = writer.await;
    reader.abort();
}

/// A WebSocket whose binary messages carry one byte stream, as SPDY over
/// WebSocket (`SPDY/3.1+portforward.k8s.io`) uses it. The returned end reads
/// what the client sends and writes what goes to it; a bounded buffer in
/// between keeps backpressure.
pub fn byte_stream<S>(socket: WebSocketStream<S>) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut from_session, mut to_session) = tokio::io::split(ours);
    let (mut sink, mut source) = socket.split();
    tokio::spawn(async move {
        while let Some(Ok(message)) = source.next().await {
            match message {
                Message::Binary(data) if to_session.write_all(&data).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_session.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            match from_session.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let data = Bytes::copy_from_slice(&buffer[..n]);
                    if sink.send(Message::Binary(data)).await.is_err() {
                        return;
                    }
                }
            }
        }
        let close = Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            let _ = sink.send(close).await;
            let _ = sink.close().await;
        })
        .await;
    });
    theirs
}

/// The data and error channels of the `index`-th port.
fn port_channels(index: usize) -> (u8, u8) {
    let data = u8::try_from(index * 2).unwrap_or(u8::MAX - 1);
    (data, data + 1)
}

/// The ports a WebSocket port-forward URL names: `?port=80&port=8080` or
/// `?port=80,8080`.
pub fn ports_from_query(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.unwrap_or("").split('&') {
        let Some(value) = pair.strip_prefix("port=") else {
            continue;
        };
        if value.is_empty() {
            return Err("query parameter \"port\" cannot be empty".to_string());
        }
        for port in value.split(',') {
            match port.parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return Err(format!("{port:?} is not a port (1-65535)")),
            }
        }
    }
    if ports.len() > 127 {
        return Err("at most 127 ports per WebSocket port-forward session".to_string());
    }
    Ok(ports)
}

#[cfg(test)]
mod tests;
