//! SPDY/3.1 framing and sessions, for the streams of CRI Exec, Attach and
//! PortForward.
//!
//! The kubelet and crictl reach hulld's streaming URLs through an HTTP/1.1
//! upgrade to `SPDY/3.1` and then speak SPDY/3 framing through Go's
//! `moby/spdystream` (wrapped by the `k8s.io` httpstream/spdy package). The
//! upgrade itself is the caller's: this module starts from the upgraded
//! byte stream.
//!
//! # Layers
//!
//! - [`frame`]: the wire format of every SPDY/3 frame, an incremental
//!   decoder that validates each frame (version 3, lengths consistent with
//!   the type, stream id 0 where it is not allowed, reserved bits, flags,
//!   separate length limits for control and data frames, checked as soon as
//!   the 8-byte header is in) and an encoder. Unknown control frame types
//!   are skipped, as the specification says, but still length-bounded.
//! - [`headers`]: name/value header blocks and their compression: one zlib
//!   stream per direction for the whole session, primed with the SPDY/3
//!   dictionary ([`dictionary`]), one sync flush per block.
//! - [`Session`]: streams over one connection. [`Session::new`] splits the
//!   connection and spawns two tasks: a reader (the only one that reads; it
//!   decodes, answers PINGs, refuses bad streams and hands DATA to streams)
//!   and a writer (the only one that writes; it owns the compression
//!   context, so header blocks go out in the order they were compressed).
//!   Handles and tasks share one state behind a mutex (`state.rs`).
//!
//! # Streams
//!
//! Clients open odd stream ids, servers even ones, strictly increasing. The
//! server answers each [`IncomingStream`] from [`Session::accept`] with
//! [`IncomingStream::reply`] (SYN_REPLY) or [`IncomingStream::reset`]; a
//! client opens with [`Session::open`], which waits for the SYN_REPLY. A
//! [`Stream`] receives with [`Stream::recv`] (`None` at the peer's FIN) and
//! sends with [`Stream::send`] (split into DATA frames of at most 32 KiB),
//! [`Stream::finish`] (half-close: empty DATA with FIN) and
//! [`Stream::reset`]; [`Stream::split`] gives a [`StreamSender`] and a
//! [`StreamReceiver`], which also implement `AsyncWrite` and `AsyncRead`.
//!
//! The peer's mistakes are answered per the specification: a SYN_STREAM
//! with a wrong-parity or non-increasing id gets RST_STREAM PROTOCOL_ERROR,
//! one with an invalid header block PROTOCOL_ERROR, one beyond
//! [`SessionLimits::max_concurrent_streams`] (or after a GOAWAY)
//! REFUSED_STREAM; DATA after the peer's FIN gets STREAM_ALREADY_CLOSED;
//! DATA for a stream id never opened gets INVALID_STREAM, while DATA for a
//! stream that was open once and is closed or reset now (frames in flight)
//! is dropped silently. A malformed frame or an undecodable header block
//! (the zlib contexts cannot recover) ends the session with GOAWAY
//! PROTOCOL_ERROR.
//!
//! # Memory bounds
//!
//! With the [`SessionLimits`] written `L`, one session holds at most about
//!
//! - the read buffer: one frame being assembled, `L.max_data_payload + 8`
//!   (or `L.max_control_payload + 8`), plus 64 KiB of read-ahead;
//! - received data waiting in stream buffers: a DATA frame is taken in only
//!   while its stream holds at most `L.stream_buffer` and the session at
//!   most `L.session_buffer` (or the buffer is empty), so together at most
//!   `max(L.session_buffer, L.max_data_payload)`, plus the one frame the
//!   stalled reader holds;
//! - one decompressed header block, `L.max_header_block`, at a time;
//! - outgoing frames: `L.write_queue_frames` DATA frames of at most
//!   `L.max_send_frame` bytes each (2 MiB by default), plus the few control
//!   frames handles queue without waiting (at most a SYN_STREAM or
//!   SYN_REPLY, a FIN and a RST_STREAM per stream, and one GOAWAY);
//! - the zlib contexts: about 300 KiB for compression, 50 KiB for
//!   decompression;
//! - per stream, its bookkeeping; at most `L.max_concurrent_streams` open.
//!
//! With the defaults that is about 16 MiB + 2 × 16 MiB in the worst case (a
//! peer sending maximal DATA frames to streams nobody reads), and a few
//! hundred KiB for ordinary use.
//!
//! # spdystream quirks
//!
//! - No flow control: spdystream implements SPDY/3 framing but never sends
//!   WINDOW_UPDATE and ignores the ones it gets. So this end never waits for
//!   a send window (it accepts and ignores WINDOW_UPDATE and sends no
//!   SETTINGS), and backpressure works the way spdystream's does: when a
//!   stream's buffer (or the session's) is full, the reader stops reading
//!   the connection until the consumer takes data, and TCP pushes back on
//!   the peer. One stream nobody reads therefore stalls the others, as in
//!   spdystream.
//! - spdystream writes each `Write` as one DATA frame, hence the default
//!   data frame limit of the protocol maximum.
//! - A spdystream client waits for the SYN_REPLY (or RST_STREAM) of every
//!   stream it opens; an [`IncomingStream`] dropped unanswered is refused.
//! - spdystream treats an unknown control frame type, a PING with flags or
//!   id 0, and a RST_STREAM with status 0 as fatal: this end sends none of
//!   those (PING ids start at 1 for clients and 2 for servers).
//! - PINGs with the peer's parity are echoed; ones with this end's parity
//!   answer [`Session::ping`].
//! - spdystream closes the connection after GOAWAY once its streams are
//!   done; this end does the same: once either end sent GOAWAY and no
//!   stream is open, the connection is closed.
//!
//! # Fuzzing
//!
//! `cri-server/fuzz` has the target `spdy_frames`, which feeds arbitrary
//! bytes to the frame decoder and header block decoder (checking that every
//! decoded frame re-encodes to the same bytes) and to a server session over
//! an in-memory connection (see `fuzzing.rs`, built with the `fuzzing`
//! feature). `cargo xtask fuzz --target spdy_frames --seconds 30`, from an
//! empty corpus: 269,100 executions in 30 s, no crash (details in
//! `docs/streaming.md`).

pub mod dictionary;
pub mod frame;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod headers;
mod reader;
mod session;
mod state;
mod stream;
mod writer;

#[cfg(test)]
mod tests;

pub use frame::{Frame, FrameDecoder, FrameError, FrameLimits, GoAwayStatus, RstStatus};
pub use headers::{HeaderDecoder, HeaderEncoder, HeaderError, HeaderLimits, Headers};
pub use session::{CloseReason, Role, Session, SessionError, SessionLimits};
pub use stream::{IncomingStream, Stream, StreamReceiver, StreamSender};
