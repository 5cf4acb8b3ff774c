//! The reader task: decodes the peer's frames and acts on them.
//!
//! It is the only place that reads the connection, so stopping it is how
//! backpressure reaches the peer: a DATA frame for a stream whose buffer (or
//! the session's) is full waits here until the consumer takes data, and
//! meanwhile nothing more is read, so TCP pushes back on the sender. Replies
//! to the peer (PING echoes, RST_STREAM) wait for writer credits like any
//! sender, so a peer that does not read cannot make this end queue without
//! bound either.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::debug;

use super::frame::{DataFrame, Frame, FrameDecoder, GoAwayStatus, RstStatus, SynStream};
use super::headers::{HeaderDecoder, HeaderError, Headers};
use super::session::{CloseReason, SessionError};
use super::state::{OutFrame, Shared, StreamState};
use super::stream::IncomingStream;

/// How much is read from the connection at a time.
const READ_CHUNK: usize = 64 * 1024;

pub(super) async fn run<R: AsyncRead + Unpin>(shared: Arc<Shared>, io: R) {
    let mut reader = Reader {
        headers: HeaderDecoder::new(shared.limits.header_limits()),
        shared: shared.clone(),
    };
    let reason = reader.read_loop(io).await;
    {
        let mut guard = shared.lock();
        let st = &mut *guard;
        if let CloseReason::Protocol(_) = &reason {
            shared.go_away(st, GoAwayStatus::PROTOCOL_ERROR);
            shared.queue_shutdown(st);
        }
        shared.mark_closed(st, reason.clone());
    }
    match reason {
        // The writer sends the GOAWAY and then closes the connection.
        CloseReason::Protocol(_) => {}
        _ => shared.stop_tasks(),
    }
    shared.task_ended();
}

/// What the reader does with a stream-level problem.
enum Verdict {
    Done,
    Reset(u32, RstStatus),
}

struct Reader {
    shared: Arc<Shared>,
    headers: HeaderDecoder,
}

impl Reader {
    async fn read_loop<R: AsyncRead + Unpin>(&mut self, mut io: R) -> CloseReason {
        let decoder = FrameDecoder::new(self.shared.limits.frame_limits());
        let mut stop = self.shared.stop.subscribe();
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if let Err(reason) = self.handle(frame).await {
                        return reason;
                    }
                }
                Ok(None) => {
                    buf.reserve(READ_CHUNK);
                    let read = tokio::select! {
                        biased;
                        _ = stop.wait_for(|stop| *stop) => return CloseReason::Local,
                        read = io.read_buf(&mut buf) => read,
                    };
                    match read {
                        Ok(0) => return CloseReason::PeerClosed,
                        Ok(_) => {}
                        Err(e) => return CloseReason::Io(e.to_string()),
                    }
                }
                Err(e) => {
                    debug!(error = %e, "SPDY peer sent a malformed frame");
                    return CloseReason::Protocol(e.to_string());
                }
            }
        }
    }

    /// Queues a frame for the peer, waiting for a writer credit.
    async fn respond(&self, frame: Frame) -> Result<(), CloseReason> {
        self.shared
            .outbox
            .send(OutFrame::Plain(frame))
            .await
            .map_err(|()| self.close_reason())
    }

    fn close_reason(&self) -> CloseReason {
        self.shared
            .lock()
            .closed
            .clone()
            .unwrap_or(CloseReason::Local)
    }

    async fn reset(&self, stream_id: u32, status: RstStatus) -> Result<(), CloseReason> {
        debug!(stream_id, %status, "SPDY stream refused or reset");
        self.respond(Frame::RstStream { stream_id, status }).await
    }

    /// Decodes a header block: content errors are the stream's problem
    /// (Ok(Err)), decompression errors the session's (Err).
    fn decode_headers(
        &mut self,
        block: &[u8],
    ) -> Result<Result<Headers, HeaderError>, CloseReason> {
        match self.headers.decode(block) {
            Err(e) if e.is_session_fatal() => {
                debug!(error = %e, "SPDY peer sent an undecodable header block");
                Err(CloseReason::Protocol(e.to_string()))
            }
            other => Ok(other),
        }
    }

    /// Whether `stream_id` was in use on this session once (and is closed
    /// now): frames in flight for it are dropped rather than answered.
    fn was_used(&self, stream_id: u32) -> bool {
        let st = self.shared.lock();
        if self.shared.is_peer_stream_id(stream_id) {
            stream_id <= st.last_peer_stream_id
        } else {
            stream_id < st.next_local_stream_id
        }
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), CloseReason> {
        let verdict = match frame {
            Frame::SynStream(syn) => self.syn_stream(syn)?,
            Frame::SynReply(reply) => {
                let headers = self.decode_headers(&reply.header_block)?;
                self.syn_reply(reply.stream_id, reply.fin, headers)
            }
            Frame::Headers(frame) => {
                let headers = self.decode_headers(&frame.header_block)?;
                self.headers_frame(frame.stream_id, frame.fin, headers)
            }
            Frame::RstStream { stream_id, status } => {
                self.rst_stream(stream_id, status);
                Verdict::Done
            }
            Frame::Data(data) => self.data(data).await?,
            Frame::Ping { id } => {
                if self.shared.is_peer_stream_id(id) {
                    self.respond(Frame::Ping { id }).await?;
                } else if let Some(waiter) = self.shared.lock().pings.remove(&id) {
                    let _ = waiter.send(());
                }
                Verdict::Done
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                self.go_away(last_good_stream_id, status);
                Verdict::Done
            }
            Frame::Settings { entries, .. } => {
                // Nothing in SETTINGS changes how this end behaves; in
                // particular it keeps no flow-control windows.
                debug!(entries = entries.len(), "SPDY SETTINGS ignored");
                Verdict::Done
            }
            Frame::WindowUpdate { .. } => Verdict::Done,
            Frame::Unknown {
                frame_type,
                payload,
                ..
            } => {
                debug!(
                    frame_type,
                    length = payload.len(),
                    "SPDY control frame of unknown type ignored"
                );
                Verdict::Done
            }
        };
        match verdict {
            Verdict::Done => Ok(()),
            Verdict::Reset(stream_id, status) => self.reset(stream_id, status).await,
        }
    }

    fn syn_stream(&mut self, syn: SynStream) -> Result<Verdict, CloseReason> {
        // Decoded whatever happens next: the zlib stream must stay in step.
        let headers = self.decode_headers(&syn.header_block)?;
        let stream_id = syn.stream_id;
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        if !self.shared.is_peer_stream_id(stream_id) || stream_id <= st.last_peer_stream_id {
            debug!(
                stream_id,
                last = st.last_peer_stream_id,
                "SPDY SYN_STREAM with a wrong-parity or non-increasing id"
            );
            return Ok(Verdict::Reset(stream_id, RstStatus::PROTOCOL_ERROR));
        }
        st.last_peer_stream_id = stream_id;
        let headers = match headers {
            Ok(headers) => headers,
            Err(e) => {
                debug!(stream_id, error = %e, "SPDY SYN_STREAM with invalid headers");
                return Ok(Verdict::Reset(stream_id, RstStatus::PROTOCOL_ERROR));
            }
        };
        if st.open_streams >= self.shared.limits.max_concurrent_streams {
            return Ok(Verdict::Reset(stream_id, RstStatus::REFUSED_STREAM));
        }
        let Some(accept_tx) = st.accept_tx.clone() else {
            // Going away or closed: no new streams.
            return Ok(Verdict::Reset(stream_id, RstStatus::REFUSED_STREAM));
        };
        // A unidirectional stream is half-closed for this end from the start.
        let state = StreamState::new(false, syn.unidirectional, syn.fin);
        self.shared.insert_stream(st, stream_id, state);
        let incoming = IncomingStream::new(
            self.shared.clone(),
            stream_id,
            headers,
            syn.fin,
            syn.unidirectional,
        );
        // The accept queue is unbounded, but each entry is an open stream,
        // which max_concurrent_streams bounds.
        let refused = accept_tx.send(incoming).err();
        drop(guard);
        // Dropping a refused stream takes the lock (and resets it).
        drop(refused);
        Ok(Verdict::Done)
    }

    fn syn_reply(
        &self,
        stream_id: u32,
        fin: bool,
        headers: Result<Headers, HeaderError>,
    ) -> Verdict {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let Some(s) = st.streams.get_mut(&stream_id) else {
            drop(guard);
            if self.was_used(stream_id) {
                return Verdict::Done;
            }
            return Verdict::Reset(stream_id, RstStatus::INVALID_STREAM);
        };
        if s.reset.is_some() {
            return Verdict::Done;
        }
        if !s.local {
            debug!(stream_id, "SPDY SYN_REPLY for a stream the peer opened");
            self.shared
                .reset_locally(st, stream_id, RstStatus::PROTOCOL_ERROR);
            return Verdict::Done;
        }
        if s.replied {
            self.shared
                .reset_locally(st, stream_id, RstStatus::STREAM_IN_USE);
            return Verdict::Done;
        }
        let headers = match headers {
            Ok(headers) => headers,
            Err(e) => {
                debug!(stream_id, error = %e, "SPDY SYN_REPLY with invalid headers");
                self.shared
                    .reset_locally(st, stream_id, RstStatus::PROTOCOL_ERROR);
                return Verdict::Done;
            }
        };
        s.replied = true;
        if fin {
            s.remote_fin = true;
            s.wake_receiver();
        }
        if let Some(reply) = s.reply.take() {
            let _ = reply.send(Ok(headers));
        }
        self.shared.settle(st, stream_id);
        Verdict::Done
    }

    fn headers_frame(
        &self,
        stream_id: u32,
        fin: bool,
        headers: Result<Headers, HeaderError>,
    ) -> Verdict {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let Some(s) = st.streams.get_mut(&stream_id) else {
            return Verdict::Done;
        };
        if s.is_closed() {
            return Verdict::Done;
        }
        if s.remote_fin {
            self.shared
                .reset_locally(st, stream_id, RstStatus::STREAM_ALREADY_CLOSED);
            return Verdict::Done;
        }
        if let Err(e) = headers {
            debug!(stream_id, error = %e, "SPDY HEADERS with invalid headers");
            self.shared
                .reset_locally(st, stream_id, RstStatus::PROTOCOL_ERROR);
            return Verdict::Done;
        }
        // The headers themselves are not used by anything hull serves.
        if fin {
            s.remote_fin = true;
            s.wake_receiver();
            self.shared.settle(st, stream_id);
        }
        Verdict::Done
    }

    fn rst_stream(&self, stream_id: u32, status: RstStatus) {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let Some(s) = st.streams.get_mut(&stream_id) else {
            return;
        };
        if s.reset.is_some() {
            return;
        }
        debug!(stream_id, %status, "SPDY stream reset by the peer");
        s.reset = Some((status, true));
        s.wake_receiver();
        if let Some(reply) = s.reply.take() {
            let _ = reply.send(Err(SessionError::StreamReset {
                stream_id,
                status,
                by_peer: true,
            }));
        }
        self.shared.reader_wake.notify_one();
        self.shared.settle(st, stream_id);
    }

    fn go_away(&self, last_good_stream_id: u32, status: GoAwayStatus) {
        debug!(last_good_stream_id, %status, "SPDY GOAWAY from the peer");
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        st.go_away_received = true;
        st.accept_tx = None;
        // Streams this end opened after the peer's last good one were never
        // processed by the peer.
        let unprocessed: Vec<u32> = st
            .streams
            .iter()
            .filter(|(id, s)| s.local && **id > last_good_stream_id && !s.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for stream_id in unprocessed {
            if let Some(s) = st.streams.get_mut(&stream_id) {
                s.reset = Some((RstStatus::REFUSED_STREAM, true));
                s.wake_receiver();
                if let Some(reply) = s.reply.take() {
                    let _ = reply.send(Err(SessionError::GoingAway));
                }
            }
            self.shared.settle(st, stream_id);
        }
        self.shared.maybe_finish(st);
    }

    /// Queues a DATA frame's payload for its stream, waiting while the
    /// stream's or the session's buffer is full.
    async fn data(&mut self, data: DataFrame) -> Result<Verdict, CloseReason> {
        let DataFrame {
            stream_id,
            fin,
            payload,
        } = data;
        let len = payload.len();
        let mut stop = self.shared.stop.subscribe();
        let mut payload = Some(payload);
        loop {
            let space_freed = self.shared.reader_wake.notified();
            {
                let mut guard = self.shared.lock();
                let st = &mut *guard;
                let Some(s) = st.streams.get_mut(&stream_id) else {
                    drop(guard);
                    if self.was_used(stream_id) {
                        return Ok(Verdict::Done);
                    }
                    debug!(stream_id, "SPDY DATA for a stream never opened");
                    return Ok(Verdict::Reset(stream_id, RstStatus::INVALID_STREAM));
                };
                if s.reset.is_some() {
                    // In flight when the stream was reset.
                    return Ok(Verdict::Done);
                }
                if s.remote_fin {
                    debug!(stream_id, "SPDY DATA after the peer's FIN");
                    self.shared
                        .reset_locally(st, stream_id, RstStatus::STREAM_ALREADY_CLOSED);
                    return Ok(Verdict::Done);
                }
                let limits = &self.shared.limits;
                let fits = len == 0
                    || !s.receiver_alive
                    || ((s.queued == 0 || s.queued + len <= limits.stream_buffer)
                        && (st.buffered == 0 || st.buffered + len <= limits.session_buffer));
                if fits {
                    if s.receiver_alive && len > 0 {
                        if let Some(payload) = payload.take() {
                            s.queue.push_back(payload);
                        }
                        s.queued += len;
                        st.buffered += len;
                    }
                    if fin {
                        s.remote_fin = true;
                    }
                    s.wake_receiver();
                    self.shared.settle(st, stream_id);
                    return Ok(Verdict::Done);
                }
            }
            tokio::select! {
                _ = space_freed => {}
                _ = stop.wait_for(|stop| *stop) => return Err(CloseReason::Local),
            }
        }
    }
}
