//! Stream handles: [`IncomingStream`] (opened by the peer, not answered
//! yet), [`Stream`], and its halves [`StreamSender`] and [`StreamReceiver`].
//!
//! When the last handle of a stream that is still open goes away, the
//! stream is reset (RST_STREAM CANCEL; REFUSED_STREAM for an incoming stream
//! never answered), so the peer never waits on a stream nobody serves.
//! Dropping only the receiver discards what arrives from then on; dropping
//! only the sender sends nothing (use [`StreamSender::finish`] to half-close).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{AcquireError, OwnedSemaphorePermit};

use super::frame::{DataFrame, Frame, RstStatus};
use super::headers::Headers;
use super::session::SessionError;
use super::state::{OutFrame, SessionState, Shared};

/// A stream the peer opened, with its SYN_STREAM headers. Answer it with
/// [`IncomingStream::reply`] or [`IncomingStream::reset`]; dropping it
/// refuses it (RST_STREAM REFUSED_STREAM). spdystream clients wait for the
/// answer of every stream they open.
pub struct IncomingStream {
    shared: Arc<Shared>,
    stream_id: u32,
    headers: Headers,
    peer_finished: bool,
    unidirectional: bool,
    answered: bool,
}

impl IncomingStream {
    pub(super) fn new(
        shared: Arc<Shared>,
        stream_id: u32,
        headers: Headers,
        peer_finished: bool,
        unidirectional: bool,
    ) -> Self {
        IncomingStream {
            shared,
            stream_id,
            headers,
            peer_finished,
            unidirectional,
            answered: false,
        }
    }

    pub fn id(&self) -> u32 {
        self.stream_id
    }

    /// The headers of the peer's SYN_STREAM.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The SYN_STREAM carried FIN: the peer sends no data on this stream.
    pub fn peer_finished(&self) -> bool {
        self.peer_finished
    }

    /// The SYN_STREAM was UNIDIRECTIONAL: this end may not send on it.
    pub fn unidirectional(&self) -> bool {
        self.unidirectional
    }

    /// Accepts the stream with a SYN_REPLY carrying `headers`. For a
    /// unidirectional stream nothing is sent (the specification forbids a
    /// reply) and the returned stream's sender is already finished.
    pub fn reply(mut self, headers: Headers) -> Result<Stream, SessionError> {
        self.answered = true;
        let stream_id = self.stream_id;
        let request_headers = std::mem::take(&mut self.headers);
        // From here on the Stream's halves own the stream's release.
        let stream = Stream::new(self.shared.clone(), stream_id, request_headers);
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        if st.closed.is_some() {
            let error = Shared::closed_error(st);
            drop(guard);
            drop(stream);
            return Err(error);
        }
        if let Some(s) = st.streams.get_mut(&stream_id) {
            if let Some((status, by_peer)) = s.reset {
                drop(guard);
                drop(stream);
                return Err(SessionError::StreamReset {
                    stream_id,
                    status,
                    by_peer,
                });
            }
            s.replied = true;
            if !self.unidirectional {
                self.shared.outbox.send_now(OutFrame::SynReply {
                    stream_id,
                    headers,
                    fin: false,
                });
            }
        }
        drop(guard);
        Ok(stream)
    }

    /// Refuses the stream with RST_STREAM `status`.
    pub fn reset(mut self, status: RstStatus) {
        self.answered = true;
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        self.shared.reset_locally(st, self.stream_id, status);
        self.shared
            .release_handle(st, self.stream_id, true, true, status);
    }
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        if !self.answered {
            let mut guard = self.shared.lock();
            self.shared.release_handle(
                &mut guard,
                self.stream_id,
                true,
                true,
                RstStatus::REFUSED_STREAM,
            );
        }
    }
}

/// An answered stream: both halves together. [`Stream::split`] separates
/// them for use from two tasks.
pub struct Stream {
    headers: Headers,
    sender: StreamSender,
    receiver: StreamReceiver,
}

impl Stream {
    pub(super) fn new(shared: Arc<Shared>, stream_id: u32, headers: Headers) -> Self {
        Stream {
            headers,
            sender: StreamSender::new(shared.clone(), stream_id),
            receiver: StreamReceiver::new(shared, stream_id),
        }
    }

    pub(super) fn set_headers(&mut self, headers: Headers) {
        self.headers = headers;
    }

    pub fn id(&self) -> u32 {
        self.sender.stream_id
    }

    /// The peer's headers: its SYN_STREAM's for a stream it opened, its
    /// SYN_REPLY's for one this end opened.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// See [`StreamReceiver::recv`].
    pub async fn recv(&mut self) -> Result<Option<Bytes>, SessionError> {
        self.receiver.recv().await
    }

    /// See [`StreamSender::send`].
    pub async fn send(&mut self, data: &[u8]) -> Result<(), SessionError> {
        self.sender.send(data).await
    }

    /// See [`StreamSender::finish`].
    pub fn finish(&mut self) -> Result<(), SessionError> {
        self.sender.finish()
    }

    /// See [`StreamSender::reset`].
    pub fn reset(&mut self, status: RstStatus) {
        self.sender.reset(status)
    }

    pub fn sender(&mut self) -> &mut StreamSender {
        &mut self.sender
    }

    pub fn receiver(&mut self) -> &mut StreamReceiver {
        &mut self.receiver
    }

    pub fn split(self) -> (StreamSender, StreamReceiver) {
        (self.sender, self.receiver)
    }
}

type AcquireFuture =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// The sending half of a stream.
pub struct StreamSender {
    shared: Arc<Shared>,
    stream_id: u32,
    /// poll_write's pending wait for a writer credit.
    acquiring: Option<AcquireFuture>,
}

impl StreamSender {
    fn new(shared: Arc<Shared>, stream_id: u32) -> Self {
        StreamSender {
            shared,
            stream_id,
            acquiring: None,
        }
    }

    pub fn id(&self) -> u32 {
        self.stream_id
    }

    /// Why nothing more can be sent, if so.
    fn send_error(&self, st: &SessionState) -> Option<SessionError> {
        if st.closed.is_some() {
            return Some(Shared::closed_error(st));
        }
        let Some(s) = st.streams.get(&self.stream_id) else {
            return Some(Shared::closed_error(st));
        };
        if let Some((status, by_peer)) = s.reset {
            return Some(SessionError::StreamReset {
                stream_id: self.stream_id,
                status,
                by_peer,
            });
        }
        if s.local_fin {
            return Some(SessionError::StreamFinished {
                stream_id: self.stream_id,
            });
        }
        None
    }

    fn queue_data(&self, data: Bytes) -> Result<(), SessionError> {
        let frame = OutFrame::Plain(Frame::Data(DataFrame {
            stream_id: self.stream_id,
            fin: false,
            payload: data,
        }));
        self.shared
            .outbox
            .send_counted(frame)
            .map_err(|()| Shared::closed_error(&self.shared.lock()))
    }

    /// Sends `data` in DATA frames of at most
    /// [`super::SessionLimits::max_send_frame`] bytes, waiting while the
    /// writer's queue is full. Empty `data` sends nothing.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), SessionError> {
        for chunk in data.chunks(self.shared.limits.max_send_frame) {
            if let Some(e) = self.send_error(&self.shared.lock()) {
                return Err(e);
            }
            let permit = self.shared.outbox.credits.acquire().await;
            let Ok(permit) = permit else {
                return Err(Shared::closed_error(&self.shared.lock()));
            };
            permit.forget();
            if let Some(e) = self.send_error(&self.shared.lock()) {
                self.shared.outbox.credits.add_permits(1);
                return Err(e);
            }
            self.queue_data(Bytes::copy_from_slice(chunk))?;
        }
        Ok(())
    }

    /// Half-closes: an empty DATA frame with FIN. The peer's data can still
    /// be received.
    pub fn finish(&mut self) -> Result<(), SessionError> {
        let mut guard = self.shared.lock();
        if let Some(e) = self.send_error(&guard) {
            return Err(e);
        }
        let st = &mut *guard;
        if let Some(s) = st.streams.get_mut(&self.stream_id) {
            s.local_fin = true;
        }
        self.shared
            .outbox
            .send_now(OutFrame::Plain(Frame::Data(DataFrame {
                stream_id: self.stream_id,
                fin: true,
                payload: Bytes::new(),
            })));
        self.shared.settle(st, self.stream_id);
        Ok(())
    }

    /// Aborts the stream in both directions with RST_STREAM `status`
    /// (nothing happens if it is already closed).
    pub fn reset(&mut self, status: RstStatus) {
        let mut guard = self.shared.lock();
        self.shared
            .reset_locally(&mut guard, self.stream_id, status);
    }
}

impl Drop for StreamSender {
    fn drop(&mut self) {
        let mut guard = self.shared.lock();
        self.shared
            .release_handle(&mut guard, self.stream_id, true, false, RstStatus::CANCEL);
    }
}

fn to_io_error(e: SessionError) -> io::Error {
    let kind = match e {
        SessionError::StreamReset { .. } => io::ErrorKind::ConnectionReset,
        SessionError::Closed(_) => io::ErrorKind::ConnectionAborted,
        SessionError::StreamFinished { .. } => io::ErrorKind::BrokenPipe,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

/// Writes go out as DATA frames (at most one frame per `poll_write`);
/// `poll_flush` returns once they are queued for the writer, not written;
/// `poll_shutdown` is [`StreamSender::finish`] (and does nothing when the
/// stream already finished).
impl AsyncWrite for StreamSender {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        let error = this.send_error(&this.shared.lock());
        if let Some(e) = error {
            this.acquiring = None;
            return Poll::Ready(Err(to_io_error(e)));
        }
        let acquiring = this
            .acquiring
            .get_or_insert_with(|| Box::pin(this.shared.outbox.credits.clone().acquire_owned()));
        let permit = ready!(acquiring.as_mut().poll(cx));
        this.acquiring = None;
        let Ok(permit) = permit else {
            return Poll::Ready(Err(to_io_error(Shared::closed_error(&this.shared.lock()))));
        };
        permit.forget();
        if let Some(e) = this.send_error(&this.shared.lock()) {
            this.shared.outbox.credits.add_permits(1);
            return Poll::Ready(Err(to_io_error(e)));
        }
        let n = buf.len().min(this.shared.limits.max_send_frame);
        this.queue_data(Bytes::copy_from_slice(&buf[..n]))
            .map_err(to_io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.finish() {
            Ok(()) | Err(SessionError::StreamFinished { .. }) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io_error(e))),
        }
    }
}

/// The receiving half of a stream.
pub struct StreamReceiver {
    shared: Arc<Shared>,
    stream_id: u32,
    /// What poll_read took but could not hand out yet.
    leftover: Bytes,
}

impl StreamReceiver {
    fn new(shared: Arc<Shared>, stream_id: u32) -> Self {
        StreamReceiver {
            shared,
            stream_id,
            leftover: Bytes::new(),
        }
    }

    pub fn id(&self) -> u32 {
        self.stream_id
    }

    /// The next chunk of data (one DATA frame's payload); `Ok(None)` once the
    /// peer finished its side. Data received before a reset by the peer or
    /// the end of the session is handed out first, then the error.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, SessionError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, SessionError>> {
        if !self.leftover.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.leftover))));
        }
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let Some(s) = st.streams.get_mut(&self.stream_id) else {
            return Poll::Ready(Err(Shared::closed_error(st)));
        };
        if let Some(chunk) = s.queue.pop_front() {
            s.queued -= chunk.len();
            st.buffered -= chunk.len();
            self.shared.reader_wake.notify_one();
            return Poll::Ready(Ok(Some(chunk)));
        }
        if s.remote_fin {
            return Poll::Ready(Ok(None));
        }
        if let Some((status, by_peer)) = s.reset {
            return Poll::Ready(Err(SessionError::StreamReset {
                stream_id: self.stream_id,
                status,
                by_peer,
            }));
        }
        if st.closed.is_some() {
            return Poll::Ready(Err(Shared::closed_error(st)));
        }
        s.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for StreamReceiver {
    fn drop(&mut self) {
        let mut guard = self.shared.lock();
        self.shared
            .release_handle(&mut guard, self.stream_id, false, true, RstStatus::CANCEL);
    }
}

/// Reads return the stream's data; end of file at the peer's FIN; a reset
/// or the end of the session is an error.
impl AsyncRead for StreamReceiver {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut chunk = match ready!(self.poll_recv(cx)) {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Poll::Ready(Ok(())),
            Err(e) => return Poll::Ready(Err(to_io_error(e))),
        };
        let n = chunk.len().min(buf.remaining());
        buf.put_slice(&chunk[..n]);
        chunk.advance(n);
        self.leftover = chunk;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.receiver).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.sender).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sender).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sender).poll_shutdown(cx)
    }
}
