//! The writer task: the only place that writes the connection. It takes the
//! queued frames in order, compresses header blocks with the session's one
//! compression context (so blocks reach the peer in the order they were
//! compressed), batches what is queued into one write, and gives the credits
//! of written frames back.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

use super::frame::{Frame, GoAwayStatus, SynReply, SynStream};
use super::headers::HeaderEncoder;
use super::session::CloseReason;
use super::state::{OutFrame, Outbound, Shared};

/// A batch is written once it reaches this size (or nothing more is queued).
const BATCH_BYTES: usize = 64 * 1024;

enum Ending {
    /// The Shutdown marker: everything before it is written.
    Shutdown,
    /// Told to stop (the reader ended, or abort).
    Stopped,
    Failed(CloseReason),
}

pub(super) async fn run<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut io: W,
    mut outbound: mpsc::UnboundedReceiver<Outbound>,
) {
    let ending = write_loop(&shared, &mut io, &mut outbound).await;
    match ending {
        Ending::Shutdown => {
            let mut stop = shared.stop.subscribe();
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => {}
                _ = io.shutdown() => {}
            }
            let mut guard = shared.lock();
            shared.mark_closed(&mut guard, CloseReason::Local);
        }
        Ending::Stopped => {}
        Ending::Failed(reason) => {
            let mut guard = shared.lock();
            shared.mark_closed(&mut guard, reason);
        }
    }
    // The reader is told to stop in every case; it drops the read half, and
    // with this write half gone the connection is closed.
    shared.stop_tasks();
    drop(io);
    shared.task_ended();
}

async fn write_loop<W: AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut W,
    outbound: &mut mpsc::UnboundedReceiver<Outbound>,
) -> Ending {
    let mut stop = shared.stop.subscribe();
    let mut encoder = HeaderEncoder::new();
    let mut buf = BytesMut::with_capacity(BATCH_BYTES);
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => return Ending::Stopped,
            message = outbound.recv() => message,
        };
        // The sender lives in `shared`, so the channel cannot close.
        let Some(mut message) = first else {
            return Ending::Stopped;
        };
        let mut credits = 0;
        let mut shutdown = false;
        loop {
            match message {
                Outbound::Shutdown => {
                    shutdown = true;
                    break;
                }
                Outbound::Frame { frame, counted } => {
                    if counted {
                        credits += 1;
                    }
                    if let Err(reason) = encode(shared, &mut encoder, frame, &mut buf) {
                        // Tell the peer before going: a GOAWAY needs no
                        // header compression.
                        buf.clear();
                        let _ = Frame::GoAway {
                            last_good_stream_id: shared.lock().last_peer_stream_id,
                            status: GoAwayStatus::INTERNAL_ERROR,
                        }
                        .encode(&mut buf);
                        let _ = write_batch(io, &buf, &mut stop).await;
                        return Ending::Failed(reason);
                    }
                }
            }
            if buf.len() >= BATCH_BYTES {
                break;
            }
            match outbound.try_recv() {
                Ok(next) => message = next,
                Err(_) => break,
            }
        }
        let written = write_batch(io, &buf, &mut stop).await;
        buf.clear();
        shared.outbox.credits.add_permits(credits);
        match written {
            Ok(true) => {}
            Ok(false) => return Ending::Stopped,
            Err(e) => {
                debug!(error = %e, "SPDY session write failed");
                return Ending::Failed(CloseReason::Io(e.to_string()));
            }
        }
        if shutdown {
            return Ending::Shutdown;
        }
    }
}

/// Writes and flushes `buf`; Ok(false) if told to stop first.
async fn write_batch<W: AsyncWrite + Unpin>(
    io: &mut W,
    buf: &[u8],
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<bool> {
    if buf.is_empty() {
        return Ok(true);
    }
    tokio::select! {
        biased;
        _ = stop.wait_for(|stop| *stop) => Ok(false),
        written = async {
            io.write_all(buf).await?;
            io.flush().await
        } => written.map(|()| true),
    }
}

/// Appends the wire form of one queued frame to `buf`. DATA for a stream
/// that has been reset meanwhile is dropped.
fn encode(
    shared: &Shared,
    encoder: &mut HeaderEncoder,
    frame: OutFrame,
    buf: &mut BytesMut,
) -> Result<(), CloseReason> {
    let frame = match frame {
        OutFrame::Plain(Frame::Data(data)) => {
            let st = shared.lock();
            if st
                .streams
                .get(&data.stream_id)
                .is_some_and(|s| s.reset.is_some())
            {
                return Ok(());
            }
            drop(st);
            Frame::Data(data)
        }
        OutFrame::Plain(frame) => frame,
        OutFrame::SynStream {
            stream_id,
            headers,
            fin,
        } => Frame::SynStream(SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin,
            unidirectional: false,
            header_block: encoder
                .encode(&headers)
                .map_err(|e| CloseReason::Internal(e.to_string()))?,
        }),
        OutFrame::SynReply {
            stream_id,
            headers,
            fin,
        } => Frame::SynReply(SynReply {
            stream_id,
            fin,
            header_block: encoder
                .encode(&headers)
                .map_err(|e| CloseReason::Internal(e.to_string()))?,
        }),
    };
    frame
        .encode(buf)
        .map_err(|e| CloseReason::Internal(e.to_string()))
}
