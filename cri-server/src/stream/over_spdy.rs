//! The Kubernetes streaming protocols over SPDY/3.1: the client opens one
//! SPDY stream per purpose, named by its `streamType` header.
//!
//! Remote command (`v4.channel.k8s.io` … `channel.k8s.io`): `error`,
//! `stdin`, `stdout`, `stderr` and (v3 and later, with a terminal) `resize`;
//! the session starts once every stream the request implies is open. The
//! final status goes on `error`: v4 a JSON `metav1.Status` with the exit
//! code, earlier versions the error's text.
//!
//! Port-forward (`portforward.k8s.io`): per forwarded connection an `error`
//! and a `data` stream carrying the same `port` and `requestID` headers; a
//! connection starts once both are open. Many connections share a session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::port_forward::PortStreams;
use super::remote_command::CommandStreams;
use super::spdy::{Headers, IncomingStream, RstStatus, Session, SessionLimits, Stream};
use super::status::{Outcome, ResizeDecoder};
use super::websocket::Wanted;

/// Messages waiting for a consumer, per stream.
const CHANNEL_BACKLOG: usize = 4;

fn stream_type(stream: &IncomingStream) -> String {
    stream
        .headers()
        .get("streamtype")
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Serves one exec or attach session: waits (up to `creation_timeout`) for
/// the streams the request implies, runs `run` on them, then writes the
/// outcome to the error stream and closes the session.
pub async fn serve_command<IO, F>(
    io: IO,
    protocol_version: u8,
    wanted: Wanted,
    creation_timeout: Duration,
    run: F,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnOnce(CommandStreams) -> BoxFuture<'static, Outcome>,
{
    let session = Arc::new(Session::new(
        io,
        super::spdy::Role::Server,
        SessionLimits::default(),
    ));
    let with_resize = wanted.tty && protocol_version >= 3;
    let with_stderr = wanted.stderr && !wanted.tty;
    let expected = 1
        + usize::from(wanted.stdin)
        + usize::from(wanted.stdout)
        + usize::from(with_stderr)
        + usize::from(with_resize);
    let mut streams: HashMap<String, Stream> = HashMap::new();
    let deadline = Instant::now() + creation_timeout;
    while streams.len() < expected {
        let incoming = match tokio::time::timeout_at(deadline, session.accept()).await {
            Ok(Some(incoming)) => incoming,
            Ok(None) => {
                tracing::debug!("the client closed the session before opening its streams");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    expected,
                    opened = streams.len(),
                    "timed out waiting for the client to open its streams"
                );
                session.close().await;
                return;
            }
        };
        let kind = stream_type(&incoming);
        let known = matches!(
            kind.as_str(),
            "error" | "stdin" | "stdout" | "stderr" | "resize"
        );
        if !known || streams.contains_key(&kind) {
            tracing::debug!(stream_type = kind, "unexpected stream refused");
            incoming.reset(RstStatus::REFUSED_STREAM);
            continue;
        }
        match incoming.reply(Headers::new()) {
            Ok(stream) => {
                streams.insert(kind, stream);
            }
            Err(err) => {
                tracing::debug!(error = %err, "cannot answer the client's stream");
                return;
            }
        }
    }
    let Some(mut error_stream) = streams.remove("error") else {
        tracing::warn!("the client opened no error stream");
        session.close().await;
        return;
    };

    let mut tasks = JoinSet::new();
    let stdin = streams
        .remove("stdin")
        .filter(|_| wanted.stdin)
        .map(|mut stream| {
            let (sender, receiver) = mpsc::channel(CHANNEL_BACKLOG);
            tasks.spawn(async move {
                while let Ok(Some(data)) = stream.recv().await {
                    if sender.send(data).await.is_err() {
                        return;
                    }
                }
                // End of the client's stdin: the sender goes, the channel closes.
            });
            receiver
        });
    let resize = streams.remove("resize").filter(|_| with_resize).map(|mut stream| {
        let (sender, receiver) = mpsc::channel(CHANNEL_BACKLOG);
        tasks.spawn(async move {
            let mut sizes = ResizeDecoder::default();
            while let Ok(Some(data)) = stream.recv().await {
                match sizes.push(&data) {
                    Ok(new_sizes) => {
                        for size in new_sizes {
                            if sender.send(size).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "bad resize message; resize ignored from now on");
                        return;
                    }
                }
            }
        });
        receiver
    });
    let mut writers = JoinSet::new();
    let stdout = output_stream(
        streams.remove("stdout").filter(|_| wanted.stdout),
        &mut writers,
    );
    let stderr = output_stream(
        streams.remove("stderr").filter(|_| with_stderr),
        &mut writers,
    );

    let watched = session.clone();
    let command_streams = CommandStreams {
        stdin,
        stdout,
        stderr,
        resize,
        client_gone: async move { watched.closed().await }.boxed(),
    };
    let outcome = run(command_streams).await;
    // Output still queued goes out (and each stream half-closes) before the
    // status.
    while writers.join_next().await.is_some() {}
    if let Some(message) = outcome.error_stream_message(protocol_version) {
        let _ = error_stream.send(&message).await;
    }
    let _ = error_stream.finish();
    tasks.abort_all();
    session.close().await;
}

/// A sender for one output stream of the session, and the task that writes
/// what it gets to the SPDY stream, half-closing it at the end.
fn output_stream(stream: Option<Stream>, writers: &mut JoinSet<()>) -> Option<mpsc::Sender<Bytes>> {
    let mut stream = stream?;
    let (sender, mut receiver) = mpsc::channel::<Bytes>(CHANNEL_BACKLOG);
    writers.spawn(async move {
        while let Some(data) = receiver.recv().await {
            if stream.send(&data).await.is_err() {
                return;
            }
        }
        let _ = stream.finish();
    });
    Some(sender)
}

/// A port-forward connection whose two streams are not both open yet.
#[derive(Default)]
struct PendingPair {
    port: Option<u16>,
    data: Option<Stream>,
    error: Option<Stream>,
    since: Option<Instant>,
}

/// Serves one port-forward session: each (data, error) stream pair becomes
/// one `forward` call for its port, whose error goes on the error stream.
pub async fn serve_port_forward<IO, F>(io: IO, creation_timeout: Duration, forward: F)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(u16, PortStreams) -> BoxFuture<'static, Result<(), String>>,
{
    let session = Session::new(io, super::spdy::Role::Server, SessionLimits::default());
    let mut pending: HashMap<String, PendingPair> = HashMap::new();
    let mut connections = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            incoming = session.accept() => incoming,
            // Pairs left half-open are given up on.
            () = tokio::time::sleep(creation_timeout) => {
                expire_pairs(&mut pending, creation_timeout);
                continue;
            }
        };
        let Some(incoming) = incoming else { break };
        expire_pairs(&mut pending, creation_timeout);
        let kind = stream_type(&incoming);
        let port_header = incoming
            .headers()
            .get("port")
            .unwrap_or_default()
            .to_string();
        // Clients older than the requestID header pair an error stream with
        // the data stream opened just after it.
        let request_id = match incoming.headers().get("requestid") {
            Some(id) => id.to_string(),
            None if kind == "data" => incoming.id().saturating_sub(2).to_string(),
            None => incoming.id().to_string(),
        };
        if kind != "data" && kind != "error" {
            tracing::debug!(stream_type = kind, "unexpected port-forward stream refused");
            incoming.reset(RstStatus::REFUSED_STREAM);
            continue;
        }
        let Ok(mut stream) = incoming.reply(Headers::new()) else {
            continue;
        };
        let port = match port_header.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                if kind == "error" {
                    let message = format!("invalid port header {port_header:?}");
                    let _ = stream.send(message.as_bytes()).await;
                    let _ = stream.finish();
                } else {
                    stream.reset(RstStatus::PROTOCOL_ERROR);
                }
                continue;
            }
        };
        let pair = pending.entry(request_id.clone()).or_default();
        pair.since.get_or_insert_with(Instant::now);
        pair.port = Some(port);
        if kind == "data" {
            pair.data = Some(stream);
        } else {
            pair.error = Some(stream);
        }
        if pair.data.is_some() && pair.error.is_some() {
            let pair = pending.remove(&request_id).unwrap_or_default();
            if let (Some(data), Some(error)) = (pair.data, pair.error) {
                let forwarded = start_connection(port, data, &forward);
                connections.spawn(finish_connection(forwarded, error));
            }
        }
    }
    connections.join_all().await;
    session.close().await;
}

/// Gives up on pairs whose second stream did not come in time.
fn expire_pairs(pending: &mut HashMap<String, PendingPair>, timeout: Duration) {
    pending.retain(|request_id, pair| {
        let fresh = pair.since.is_some_and(|since| since.elapsed() < timeout);
        if !fresh {
            tracing::debug!(request_id, "port-forward stream pair incomplete; reset");
            for stream in [pair.data.as_mut(), pair.error.as_mut()]
                .into_iter()
                .flatten()
            {
                stream.reset(RstStatus::CANCEL);
            }
        }
        fresh
    });
}

/// Starts relaying one connection's data stream; the returned future ends
/// with the connection.
fn start_connection<F>(
    port: u16,
    data: Stream,
    forward: &F,
) -> BoxFuture<'static, Result<(), String>>
where
    F: Fn(u16, PortStreams) -> BoxFuture<'static, Result<(), String>>,
{
    let (mut sender, mut receiver) = data.split();
    let (client_data, from_client) = mpsc::channel(CHANNEL_BACKLOG);
    let (to_client, mut pod_data) = mpsc::channel::<Bytes>(CHANNEL_BACKLOG);
    let forwarded = forward(
        port,
        PortStreams {
            from_client,
            to_client,
        },
    );
    async move {
        let from_client = async move {
            while let Ok(Some(data)) = receiver.recv().await {
                if client_data.send(data).await.is_err() {
                    return;
                }
            }
        };
        let to_client = async move {
            while let Some(data) = pod_data.recv().await {
                if sender.send(&data).await.is_err() {
                    return;
                }
            }
            let _ = sender.finish();
        };
        let from_client = tokio::spawn(from_client);
        let (result, ()) = tokio::join!(forwarded, to_client);
        from_client.abort();
        result
    }
    .boxed()
}

/// Writes a connection's error, if it had one, and closes its error stream.
async fn finish_connection(forwarded: BoxFuture<'static, Result<(), String>>, mut error: Stream) {
    if let Err(message) = forwarded.await {
        tracing::debug!(error = message, "port-forward connection failed");
        let _ = error.send(message.as_bytes()).await;
    }
    let _ = error.finish();
}

#[cfg(test)]
mod tests;
