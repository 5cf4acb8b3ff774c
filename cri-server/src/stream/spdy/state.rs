//! State shared by a session's handles and its reader and writer tasks.
//!
//! One `std::sync::Mutex` guards the whole [`SessionState`] (the stream
//! table, the id counters, the buffered byte counts): critical sections are
//! short and never await, and one lock means no lock order to get wrong.
//! Values whose `Drop` takes that lock (stream handles) are never dropped
//! while it is held.
//!
//! Outgoing frames go through one unbounded channel to the writer, which
//! keeps them in the order they were queued (a stream's DATA before its FIN
//! or RST). Backpressure comes from [`Outbox::credits`]: a semaphore with
//! [`SessionLimits::write_queue_frames`] permits that every DATA frame and
//! every reply the reader makes to the peer (PING echo, RST_STREAM) must
//! take first, and that the writer gives back once the frame is written.
//! Frames that cannot wait (SYN_STREAM, SYN_REPLY, FIN, RST_STREAM and
//! GOAWAY sent by handles, at most a few per stream and per session) skip
//! the semaphore, so that `Drop` can queue them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};

use super::frame::{Frame, GoAwayStatus, RstStatus};
use super::headers::Headers;
use super::session::{CloseReason, Role, SessionError, SessionLimits};
use super::stream::IncomingStream;

/// A frame for the writer. Header blocks are compressed by the writer, in
/// the order the frames go out, since the compression context spans the
/// session.
pub(super) enum OutFrame {
    Plain(Frame),
    SynStream {
        stream_id: u32,
        headers: Headers,
        fin: bool,
    },
    SynReply {
        stream_id: u32,
        headers: Headers,
        fin: bool,
    },
}

pub(super) enum Outbound {
    Frame {
        frame: OutFrame,
        /// Took a credit, to be given back once written.
        counted: bool,
    },
    /// Write everything queued before this, then close the connection.
    Shutdown,
}

pub(super) struct Outbox {
    tx: mpsc::UnboundedSender<Outbound>,
    pub(super) credits: Arc<Semaphore>,
}

impl Outbox {
    pub(super) fn new(write_queue_frames: usize) -> (Self, mpsc::UnboundedReceiver<Outbound>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let outbox = Outbox {
            tx,
            credits: Arc::new(Semaphore::new(write_queue_frames)),
        };
        (outbox, rx)
    }

    /// Queues a frame after taking a credit; fails once the session is closed.
    pub(super) async fn send(&self, frame: OutFrame) -> Result<(), ()> {
        let permit = self.credits.acquire().await.map_err(|_| ())?;
        permit.forget();
        self.send_counted(frame)
    }

    /// Queues a frame whose credit the caller already took and forgot.
    pub(super) fn send_counted(&self, frame: OutFrame) -> Result<(), ()> {
        self.tx
            .send(Outbound::Frame {
                frame,
                counted: true,
            })
            .map_err(|_| ())
    }

    /// Queues a frame without waiting (see the module docs for which).
    pub(super) fn send_now(&self, frame: OutFrame) {
        let _ = self.tx.send(Outbound::Frame {
            frame,
            counted: false,
        });
    }

    fn send_shutdown(&self) {
        let _ = self.tx.send(Outbound::Shutdown);
    }
}

/// What open() waits for: the SYN_REPLY's headers, or why there is none.
pub(super) type ReplySender = oneshot::Sender<Result<Headers, SessionError>>;

pub(super) struct StreamState {
    /// Opened by this end.
    pub local: bool,
    /// Received DATA not yet taken by the receiver.
    pub queue: VecDeque<Bytes>,
    pub queued: usize,
    pub remote_fin: bool,
    pub local_fin: bool,
    /// Set once: the status and whether the peer sent it.
    pub reset: Option<(RstStatus, bool)>,
    pub recv_waker: Option<Waker>,
    pub sender_alive: bool,
    pub receiver_alive: bool,
    /// open() waiting for the SYN_REPLY (local streams).
    pub reply: Option<ReplySender>,
    /// SYN_REPLY received (local streams) or sent (peer streams).
    pub replied: bool,
    /// Counted in `SessionState::open_streams`.
    counted_open: bool,
}

impl StreamState {
    pub(super) fn new(local: bool, local_fin: bool, remote_fin: bool) -> Self {
        StreamState {
            local,
            queue: VecDeque::new(),
            queued: 0,
            remote_fin,
            local_fin,
            reset: None,
            recv_waker: None,
            sender_alive: true,
            receiver_alive: true,
            reply: None,
            replied: false,
            counted_open: false,
        }
    }

    /// Nothing more will cross the wire on this stream.
    pub(super) fn is_closed(&self) -> bool {
        self.reset.is_some() || (self.local_fin && self.remote_fin)
    }

    pub(super) fn wake_receiver(&mut self) {
        if let Some(waker) = self.recv_waker.take() {
            waker.wake();
        }
    }
}

pub(super) struct SessionState {
    pub streams: HashMap<u32, StreamState>,
    /// Streams in the table that are not closed yet.
    pub open_streams: usize,
    /// Highest stream id the peer opened (accepted or refused).
    pub last_peer_stream_id: u32,
    pub next_local_stream_id: u32,
    pub next_ping_id: u32,
    pub pings: HashMap<u32, oneshot::Sender<()>>,
    /// Received DATA bytes held in stream queues, all streams together.
    pub buffered: usize,
    /// Where the reader hands new streams to accept(); None once no more
    /// streams will be accepted.
    pub accept_tx: Option<mpsc::UnboundedSender<IncomingStream>>,
    pub go_away_sent: bool,
    pub go_away_received: bool,
    shutdown_queued: bool,
    /// Set once the session is over: no frame goes in or out any more.
    pub closed: Option<CloseReason>,
}

pub(super) struct Shared {
    pub role: Role,
    pub limits: SessionLimits,
    state: Mutex<SessionState>,
    pub outbox: Outbox,
    /// Wakes the reader when buffered bytes were taken or a stream closed.
    pub reader_wake: Notify,
    /// Tells both tasks to stop at once.
    pub stop: watch::Sender<bool>,
    /// True once both tasks have ended and the connection is dropped.
    pub done: watch::Sender<bool>,
    tasks_alive: AtomicUsize,
}

impl Shared {
    pub(super) fn new(
        role: Role,
        limits: SessionLimits,
        accept_tx: mpsc::UnboundedSender<IncomingStream>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Outbound>) {
        let (outbox, rx) = Outbox::new(limits.write_queue_frames);
        let (first_stream, first_ping) = match role {
            Role::Client => (1, 1),
            Role::Server => (2, 2),
        };
        let shared = Shared {
            role,
            limits,
            state: Mutex::new(SessionState {
                streams: HashMap::new(),
                open_streams: 0,
                last_peer_stream_id: 0,
                next_local_stream_id: first_stream,
                next_ping_id: first_ping,
                pings: HashMap::new(),
                buffered: 0,
                accept_tx: Some(accept_tx),
                go_away_sent: false,
                go_away_received: false,
                shutdown_queued: false,
                closed: None,
            }),
            outbox,
            reader_wake: Notify::new(),
            stop: watch::Sender::new(false),
            done: watch::Sender::new(false),
            tasks_alive: AtomicUsize::new(2),
        };
        (Arc::new(shared), rx)
    }

    /// The session state. A panic while the lock was held cannot leave it
    /// half-updated in a way that matters more than stopping would, so a
    /// poisoned lock is used as is.
    pub(super) fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `stream_id` has the parity of streams the peer opens.
    pub(super) fn is_peer_stream_id(&self, stream_id: u32) -> bool {
        let peer_odd = self.role == Role::Server;
        (stream_id % 2 == 1) == peer_odd
    }

    /// Records a new stream in the table.
    pub(super) fn insert_stream(&self, st: &mut SessionState, stream_id: u32, mut s: StreamState) {
        if !s.is_closed() {
            s.counted_open = true;
            st.open_streams += 1;
        }
        st.streams.insert(stream_id, s);
    }

    /// Brings the bookkeeping up to date after stream `stream_id` changed:
    /// the open count, the removal of a closed stream nobody holds, and the
    /// end of a session that is going away.
    pub(super) fn settle(&self, st: &mut SessionState, stream_id: u32) {
        if let Some(s) = st.streams.get_mut(&stream_id) {
            let closed = s.is_closed();
            if closed && s.counted_open {
                s.counted_open = false;
                st.open_streams -= 1;
            }
            if closed
                && !s.sender_alive
                && !s.receiver_alive
                && let Some(s) = st.streams.remove(&stream_id)
            {
                st.buffered -= s.queued;
                self.reader_wake.notify_one();
            }
        }
        self.maybe_finish(st);
    }

    /// Resets the stream from this end (if it is not closed yet): queues the
    /// RST_STREAM, drops what was received, wakes its receiver.
    pub(super) fn reset_locally(&self, st: &mut SessionState, stream_id: u32, status: RstStatus) {
        let Some(s) = st.streams.get_mut(&stream_id) else {
            return;
        };
        if s.is_closed() {
            return;
        }
        s.reset = Some((status, false));
        st.buffered -= s.queued;
        s.queue.clear();
        s.queued = 0;
        s.wake_receiver();
        if let Some(reply) = s.reply.take() {
            let _ = reply.send(Err(SessionError::StreamReset {
                stream_id,
                status,
                by_peer: false,
            }));
        }
        if st.closed.is_none() {
            self.outbox
                .send_now(OutFrame::Plain(Frame::RstStream { stream_id, status }));
        }
        self.reader_wake.notify_one();
        self.settle(st, stream_id);
    }

    /// A handle of the stream went away; when the last one has, a stream
    /// that is still open is reset with `status`.
    pub(super) fn release_handle(
        &self,
        st: &mut SessionState,
        stream_id: u32,
        sender: bool,
        receiver: bool,
        status: RstStatus,
    ) {
        let Some(s) = st.streams.get_mut(&stream_id) else {
            return;
        };
        if sender {
            s.sender_alive = false;
        }
        if receiver && s.receiver_alive {
            s.receiver_alive = false;
            st.buffered -= s.queued;
            s.queue.clear();
            s.queued = 0;
            self.reader_wake.notify_one();
        }
        if !s.sender_alive && !s.receiver_alive && !s.is_closed() {
            self.reset_locally(st, stream_id, status);
        }
        self.settle(st, stream_id);
    }

    /// Sends GOAWAY once: no new streams from the peer from now on.
    pub(super) fn go_away(&self, st: &mut SessionState, status: GoAwayStatus) {
        if st.go_away_sent || st.closed.is_some() {
            return;
        }
        st.go_away_sent = true;
        st.accept_tx = None;
        self.outbox.send_now(OutFrame::Plain(Frame::GoAway {
            last_good_stream_id: st.last_peer_stream_id,
            status,
        }));
        self.maybe_finish(st);
    }

    /// Once either end went away and no stream is open, the connection ends.
    pub(super) fn maybe_finish(&self, st: &mut SessionState) {
        if st.closed.is_none()
            && !st.shutdown_queued
            && (st.go_away_sent || st.go_away_received)
            && st.open_streams == 0
        {
            self.queue_shutdown(st);
        }
    }

    /// Queues the writer's last act: flush, then close the connection.
    pub(super) fn queue_shutdown(&self, st: &mut SessionState) {
        if !st.shutdown_queued {
            st.shutdown_queued = true;
            self.outbox.send_shutdown();
        }
    }

    /// Ends the session for everything waiting on it: receivers, open(),
    /// ping(), accept() and senders waiting for credits. Frames already
    /// queued may still be written (the writer decides).
    pub(super) fn mark_closed(&self, st: &mut SessionState, reason: CloseReason) {
        if st.closed.is_some() {
            return;
        }
        tracing::debug!(%reason, "SPDY session closed");
        st.closed = Some(reason.clone());
        st.accept_tx = None;
        st.pings.clear();
        for s in st.streams.values_mut() {
            s.wake_receiver();
            if let Some(reply) = s.reply.take() {
                let _ = reply.send(Err(SessionError::Closed(reason.clone())));
            }
        }
        self.outbox.credits.close();
        self.reader_wake.notify_one();
    }

    /// Stops both tasks now.
    pub(super) fn stop_tasks(&self) {
        self.stop.send_replace(true);
    }

    /// Called by each task as it ends; the last one marks the session done.
    pub(super) fn task_ended(&self) {
        if self.tasks_alive.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.send_replace(true);
        }
    }

    /// The error for an operation on a closed session.
    pub(super) fn closed_error(st: &SessionState) -> SessionError {
        SessionError::Closed(st.closed.clone().unwrap_or(CloseReason::Local))
    }
}
