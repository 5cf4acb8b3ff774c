//! A SPDY/3.1 session over one connection: [`Session`], its limits and
//! errors. The module docs of [`super`] describe the design.

use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot};

use super::frame::{Frame, FrameLimits, GoAwayStatus, MAX_PAYLOAD_LEN, MAX_STREAM_ID, RstStatus};
use super::headers::{HeaderLimits, Headers};
use super::reader;
use super::state::{OutFrame, Shared, StreamState};
use super::stream::{IncomingStream, Stream};
use super::writer;

/// Which end of the connection this is: clients open odd-numbered streams
/// and send odd PING ids, servers even ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// The bounds of one session. [`SessionLimits::default`] gives the values
/// documented on each field. Out-of-range values are clamped by
/// [`Session::new`] (to at least 1, and payload sizes to at most 16 MiB - 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Largest control frame payload accepted (64 KiB).
    pub max_control_payload: usize,
    /// Largest DATA payload accepted (16 MiB - 1, what the wire allows:
    /// spdystream writes each `Write` call as one frame).
    pub max_data_payload: usize,
    /// Largest decompressed header block (256 KiB).
    pub max_header_block: usize,
    /// Most name/value pairs in a header block (1024).
    pub max_header_pairs: usize,
    /// Most streams open at once, in both directions together (256); a
    /// SYN_STREAM beyond it gets RST_STREAM REFUSED_STREAM.
    pub max_concurrent_streams: usize,
    /// Received bytes held for one stream before the reader stops reading
    /// the connection (1 MiB).
    pub stream_buffer: usize,
    /// Received bytes held for all streams together before the reader stops
    /// (16 MiB).
    pub session_buffer: usize,
    /// Largest DATA frame this end sends; longer writes are split (32 KiB).
    pub max_send_frame: usize,
    /// Frames queued for the writer before senders wait (64).
    pub write_queue_frames: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_control_payload: 64 * 1024,
            max_data_payload: MAX_PAYLOAD_LEN,
            max_header_block: 256 * 1024,
            max_header_pairs: 1024,
            max_concurrent_streams: 256,
            stream_buffer: 1024 * 1024,
            session_buffer: 16 * 1024 * 1024,
            max_send_frame: 32 * 1024,
            write_queue_frames: 64,
        }
    }
}

impl SessionLimits {
    fn clamped(self) -> Self {
        let payload = |n: usize| n.clamp(1, MAX_PAYLOAD_LEN);
        SessionLimits {
            max_control_payload: payload(self.max_control_payload),
            max_data_payload: payload(self.max_data_payload),
            max_header_block: self.max_header_block.max(1),
            max_header_pairs: self.max_header_pairs,
            max_concurrent_streams: self.max_concurrent_streams.max(1),
            stream_buffer: self.stream_buffer.max(1),
            session_buffer: self.session_buffer.max(1),
            max_send_frame: payload(self.max_send_frame),
            write_queue_frames: self.write_queue_frames.clamp(1, 1 << 20),
        }
    }

    pub(super) fn frame_limits(&self) -> FrameLimits {
        FrameLimits {
            max_control_payload: self.max_control_payload,
            max_data_payload: self.max_data_payload,
        }
    }

    pub(super) fn header_limits(&self) -> HeaderLimits {
        HeaderLimits {
            max_block_size: self.max_header_block,
            max_pairs: self.max_header_pairs,
        }
    }
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// This end closed it: [`Session::close`], [`Session::abort`], or both
    /// ends went away and the last stream closed.
    Local,
    /// The peer closed the connection.
    PeerClosed,
    /// Reading or writing the connection failed.
    Io(String),
    /// The peer broke the protocol; a GOAWAY PROTOCOL_ERROR was sent.
    Protocol(String),
    /// Compressing a header block failed; a GOAWAY INTERNAL_ERROR was sent.
    Internal(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Local => write!(f, "closed by this end"),
            CloseReason::PeerClosed => write!(f, "connection closed by the peer"),
            CloseReason::Io(e) => write!(f, "connection failed: {e}"),
            CloseReason::Protocol(e) => write!(f, "protocol error from the peer: {e}"),
            CloseReason::Internal(e) => write!(f, "internal error: {e}"),
        }
    }
}

/// What a session or stream operation ran into.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SessionError {
    #[error("SPDY session closed: {0}")]
    Closed(CloseReason),
    #[error(
        "SPDY stream {stream_id} was reset by {} with status {status}",
        if *by_peer { "the peer" } else { "this end" }
    )]
    StreamReset {
        stream_id: u32,
        status: RstStatus,
        by_peer: bool,
    },
    #[error("SPDY session is going away: no new streams")]
    GoingAway,
    #[error("SPDY stream {stream_id} has already finished sending")]
    StreamFinished { stream_id: u32 },
    #[error("SPDY session has {max} streams open, its limit")]
    TooManyStreams { max: usize },
    #[error("SPDY stream ids of this session are exhausted")]
    StreamIdsExhausted,
}

/// One SPDY/3.1 session. Created over an upgraded connection with
/// [`Session::new`], which spawns its reader and writer tasks.
///
/// Dropping the session sends GOAWAY (no new streams) and lets the streams
/// already handed out finish: the connection is closed once none is open.
/// [`Session::close`] closes at once, [`Session::abort`] without flushing.
pub struct Session {
    shared: Arc<Shared>,
    incoming: AsyncMutex<mpsc::UnboundedReceiver<IncomingStream>>,
}

impl Session {
    /// Starts a session over `io`. Must be called within a Tokio runtime.
    pub fn new<IO>(io: IO, role: Role, limits: SessionLimits) -> Session
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limits = limits.clamped();
        let (accept_tx, accept_rx) = mpsc::unbounded_channel();
        let (shared, outbound_rx) = Shared::new(role, limits, accept_tx);
        let (read_half, write_half) = tokio::io::split(io);
        tokio::spawn(reader::run(shared.clone(), read_half));
        tokio::spawn(writer::run(shared.clone(), write_half, outbound_rx));
        Session {
            shared,
            incoming: AsyncMutex::new(accept_rx),
        }
    }

    pub fn role(&self) -> Role {
        self.shared.role
    }

    pub fn limits(&self) -> SessionLimits {
        self.shared.limits
    }

    /// The next stream the peer opened, to be answered with
    /// [`IncomingStream::reply`] or [`IncomingStream::reset`]. None once the
    /// session is closed or either end sent GOAWAY (streams opened before
    /// that are still handed out first).
    pub async fn accept(&self) -> Option<IncomingStream> {
        self.incoming.lock().await.recv().await
    }

    /// Opens a stream (SYN_STREAM with the next id of this end's parity,
    /// FIN if `fin`) and waits for the peer's SYN_REPLY, whose headers
    /// [`Stream::headers`] then returns. A RST_STREAM in reply gives
    /// [`SessionError::StreamReset`]. Dropping the future resets the stream.
    pub async fn open(&self, headers: Headers, fin: bool) -> Result<Stream, SessionError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let stream_id = {
            let mut guard = self.shared.lock();
            let st = &mut *guard;
            if st.closed.is_some() {
                return Err(Shared::closed_error(st));
            }
            if st.go_away_sent || st.go_away_received {
                return Err(SessionError::GoingAway);
            }
            if st.open_streams >= self.shared.limits.max_concurrent_streams {
                return Err(SessionError::TooManyStreams {
                    max: self.shared.limits.max_concurrent_streams,
                });
            }
            let stream_id = st.next_local_stream_id;
            if stream_id > MAX_STREAM_ID {
                return Err(SessionError::StreamIdsExhausted);
            }
            st.next_local_stream_id += 2;
            let mut state = StreamState::new(true, fin, false);
            state.reply = Some(reply_tx);
            self.shared.insert_stream(st, stream_id, state);
            // Queued under the lock: ids reach the wire in increasing order.
            self.shared.outbox.send_now(OutFrame::SynStream {
                stream_id,
                headers,
                fin,
            });
            stream_id
        };
        // From here on, dropping `stream` (an error, or this future being
        // dropped) releases the stream.
        let mut stream = Stream::new(self.shared.clone(), stream_id, Headers::new());
        match reply_rx.await {
            Ok(Ok(reply_headers)) => {
                stream.set_headers(reply_headers);
                Ok(stream)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Shared::closed_error(&self.shared.lock())),
        }
    }

    /// Sends a PING and waits for the peer to echo it; the round trip time.
    pub async fn ping(&self) -> Result<Duration, SessionError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.shared.lock();
            if st.closed.is_some() {
                return Err(Shared::closed_error(&st));
            }
            let id = st.next_ping_id;
            st.next_ping_id = if id + 2 > MAX_STREAM_ID {
                // Back to the first id of this end's parity.
                2 - id % 2
            } else {
                id + 2
            };
            st.pings.insert(id, tx);
            id
        };
        let _forget_on_drop = PingGuard {
            shared: &self.shared,
            id,
        };
        let start = Instant::now();
        if self
            .shared
            .outbox
            .send(OutFrame::Plain(Frame::Ping { id }))
            .await
            .is_err()
        {
            return Err(Shared::closed_error(&self.shared.lock()));
        }
        match rx.await {
            Ok(()) => Ok(start.elapsed()),
            Err(_) => Err(Shared::closed_error(&self.shared.lock())),
        }
    }

    /// Sends GOAWAY with `status` (once): the peer's new streams are refused
    /// from now on, and the connection closes when no stream is open.
    pub fn go_away(&self, status: GoAwayStatus) {
        let mut guard = self.shared.lock();
        self.shared.go_away(&mut guard, status);
    }

    /// Closes the session now: GOAWAY (if not sent yet), the frames already
    /// queued, then the connection is shut down. Open streams end with
    /// [`SessionError::Closed`]. Waits until the connection is dropped.
    pub async fn close(&self) {
        {
            let mut guard = self.shared.lock();
            let st = &mut *guard;
            self.shared.go_away(st, GoAwayStatus::OK);
            self.shared.queue_shutdown(st);
            self.shared.mark_closed(st, CloseReason::Local);
        }
        self.closed().await;
    }

    /// Drops the connection without writing anything more.
    pub fn abort(&self) {
        {
            let mut guard = self.shared.lock();
            self.shared.mark_closed(&mut guard, CloseReason::Local);
        }
        self.shared.stop_tasks();
    }

    /// Resolves once the connection is done (both tasks ended and the
    /// connection dropped), whichever end closed it.
    pub async fn closed(&self) {
        let mut done = self.shared.done.subscribe();
        let _ = done.wait_for(|done| *done).await;
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.lock().closed.clone()
    }

    /// Received DATA bytes waiting in stream buffers, all streams together.
    pub fn buffered_bytes(&self) -> usize {
        self.shared.lock().buffered
    }

    /// Streams currently open (not closed in both directions nor reset).
    pub fn open_streams(&self) -> usize {
        self.shared.lock().open_streams
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut guard = self.shared.lock();
        self.shared.go_away(&mut guard, GoAwayStatus::OK);
        // `incoming` is dropped after this returns, with the lock released:
        // streams never accepted are refused by their own Drop.
    }
}

struct PingGuard<'a> {
    shared: &'a Shared,
    id: u32,
}

impl Drop for PingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().pings.remove(&self.id);
    }
}
