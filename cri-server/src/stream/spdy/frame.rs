//! SPDY/3 frames on the wire: the decoder ([`FrameDecoder`]) and the encoder
//! ([`Frame::encode`]).
//!
//! Every frame starts with 8 bytes. A control frame has the control bit set,
//! a 15-bit version (always 3 here), a 16-bit type, 8 bits of flags and a
//! 24-bit payload length; a data frame has the control bit clear, a 31-bit
//! stream id, 8 bits of flags and a 24-bit length. All integers are big
//! endian.
//!
//! The decoder checks everything it can before the payload arrives (version,
//! the length against the limit and against the frame type, the flags), so a
//! peer announcing a frame longer than the limit is refused after 8 bytes,
//! not after the limit has been buffered. Header blocks stay compressed here:
//! [`super::headers`] owns the zlib contexts, which span the whole session.
//! Payloads are copied out of the read buffer into their own allocation, so a
//! small frame never keeps a large read buffer alive.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// The only protocol version this module speaks.
pub const VERSION: u16 = 3;
/// Size of the common frame header (control and data frames alike).
pub const FRAME_HEADER_LEN: usize = 8;
/// The largest payload the 24-bit length field can announce.
pub const MAX_PAYLOAD_LEN: usize = 0x00FF_FFFF;
/// Stream ids are 31 bits.
pub const MAX_STREAM_ID: u32 = 0x7FFF_FFFF;

/// Control frame type numbers (SPDY/3 section 2.6).
pub mod frame_type {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// FIN: the sender will send nothing more on this stream (SYN_STREAM,
/// SYN_REPLY, HEADERS and DATA).
pub const FLAG_FIN: u8 = 0x01;
/// UNIDIRECTIONAL (SYN_STREAM only): the recipient may not send on the stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// SETTINGS only: forget previously persisted settings.
pub const FLAG_SETTINGS_CLEAR: u8 = 0x01;

/// Name of a control frame type, for messages.
pub fn frame_type_name(frame_type: u16) -> &'static str {
    match frame_type {
        frame_type::SYN_STREAM => "SYN_STREAM",
        frame_type::SYN_REPLY => "SYN_REPLY",
        frame_type::RST_STREAM => "RST_STREAM",
        frame_type::SETTINGS => "SETTINGS",
        frame_type::PING => "PING",
        frame_type::GOAWAY => "GOAWAY",
        frame_type::HEADERS => "HEADERS",
        frame_type::WINDOW_UPDATE => "WINDOW_UPDATE",
        _ => "unknown",
    }
}

/// RST_STREAM status codes (SPDY/3 section 2.6.3). Any non-zero value is
/// accepted on the wire; these are the ones the specification names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RstStatus(pub u32);

impl RstStatus {
    pub const PROTOCOL_ERROR: RstStatus = RstStatus(1);
    pub const INVALID_STREAM: RstStatus = RstStatus(2);
    pub const REFUSED_STREAM: RstStatus = RstStatus(3);
    pub const UNSUPPORTED_VERSION: RstStatus = RstStatus(4);
    pub const CANCEL: RstStatus = RstStatus(5);
    pub const INTERNAL_ERROR: RstStatus = RstStatus(6);
    pub const FLOW_CONTROL_ERROR: RstStatus = RstStatus(7);
    pub const STREAM_IN_USE: RstStatus = RstStatus(8);
    pub const STREAM_ALREADY_CLOSED: RstStatus = RstStatus(9);
    pub const INVALID_CREDENTIALS: RstStatus = RstStatus(10);
    pub const FRAME_TOO_LARGE: RstStatus = RstStatus(11);

    /// The specification's name of the status, or "unknown".
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "PROTOCOL_ERROR",
            2 => "INVALID_STREAM",
            3 => "REFUSED_STREAM",
            4 => "UNSUPPORTED_VERSION",
            5 => "CANCEL",
            6 => "INTERNAL_ERROR",
            7 => "FLOW_CONTROL_ERROR",
            8 => "STREAM_IN_USE",
            9 => "STREAM_ALREADY_CLOSED",
            10 => "INVALID_CREDENTIALS",
            11 => "FRAME_TOO_LARGE",
            _ => "unknown",
        }
    }
}

impl std::fmt::Display for RstStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// GOAWAY status codes (SPDY/3 section 2.6.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GoAwayStatus(pub u32);

impl GoAwayStatus {
    pub const OK: GoAwayStatus = GoAwayStatus(0);
    pub const PROTOCOL_ERROR: GoAwayStatus = GoAwayStatus(1);
    pub const INTERNAL_ERROR: GoAwayStatus = GoAwayStatus(2);
}

impl std::fmt::Display for GoAwayStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            0 => "OK",
            1 => "PROTOCOL_ERROR",
            2 => "INTERNAL_ERROR",
            _ => "unknown",
        };
        write!(f, "{name} ({})", self.0)
    }
}

/// SYN_STREAM: the sender opens stream `stream_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynStream {
    pub stream_id: u32,
    /// 0, or the stream this one is associated to (server push).
    pub associated_to: u32,
    /// 0 (highest) to 7 (lowest).
    pub priority: u8,
    /// Credential slot (0: none).
    pub slot: u8,
    pub fin: bool,
    pub unidirectional: bool,
    /// The compressed name/value header block.
    pub header_block: Bytes,
}

/// SYN_REPLY: the recipient of a SYN_STREAM accepts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynReply {
    pub stream_id: u32,
    pub fin: bool,
    pub header_block: Bytes,
}

/// HEADERS: more headers on an open stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadersFrame {
    pub stream_id: u32,
    pub fin: bool,
    pub header_block: Bytes,
}

/// One SETTINGS entry: 8 bits of flags, a 24-bit id and a 32-bit value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

/// A DATA frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataFrame {
    pub stream_id: u32,
    pub fin: bool,
    pub payload: Bytes,
}

/// One SPDY/3 frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream(SynStream),
    SynReply(SynReply),
    RstStream {
        stream_id: u32,
        status: RstStatus,
    },
    Settings {
        clear_persisted: bool,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: GoAwayStatus,
    },
    Headers(HeadersFrame),
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data(DataFrame),
    /// A control frame of a type this module does not know. The
    /// specification says to ignore those; the decoder still bounds their
    /// length and hands them up so that the session can log them.
    Unknown {
        frame_type: u16,
        flags: u8,
        payload: Bytes,
    },
}

/// What was wrong with a frame.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("SPDY control frame has version {version}, only version 3 is supported")]
    UnsupportedVersion { version: u16 },
    #[error(
        "SPDY control frame of type {frame_type} ({}) has length {length}, over the limit of {max}",
        frame_type_name(*frame_type)
    )]
    ControlFrameTooLarge {
        frame_type: u16,
        length: usize,
        max: usize,
    },
    #[error("SPDY data frame on stream {stream_id} has length {length}, over the limit of {max}")]
    DataFrameTooLarge {
        stream_id: u32,
        length: usize,
        max: usize,
    },
    #[error(
        "SPDY control frame of type {frame_type} ({}) has length {length}, expected {expected}",
        frame_type_name(*frame_type)
    )]
    WrongLength {
        frame_type: u16,
        length: usize,
        expected: usize,
    },
    #[error(
        "SPDY control frame of type {frame_type} ({}) has length {length}, expected at least {min}",
        frame_type_name(*frame_type)
    )]
    TooShort {
        frame_type: u16,
        length: usize,
        min: usize,
    },
    #[error("SPDY SETTINGS frame has length {length}, which is not 4 + 8 per entry")]
    SettingsLength { length: usize },
    #[error("SPDY SETTINGS frame has length {length}, but announces {entries} entries")]
    SettingsCountMismatch { length: usize, entries: u32 },
    #[error("SPDY {frame} frame has stream id 0")]
    ZeroStreamId { frame: &'static str },
    #[error("SPDY {frame} frame has a reserved bit set in {field}")]
    ReservedBitSet {
        frame: &'static str,
        field: &'static str,
    },
    #[error("SPDY {frame} frame has undefined flags {flags:#04x}")]
    UndefinedFlags { frame: &'static str, flags: u8 },
    #[error("SPDY RST_STREAM frame on stream {stream_id} has status 0")]
    ZeroRstStatus { stream_id: u32 },
    #[error("SPDY WINDOW_UPDATE frame on stream {stream_id} has a delta of 0")]
    ZeroWindowDelta { stream_id: u32 },
    /// Encoding only: a field does not fit its wire width.
    #[error("cannot encode SPDY {frame} frame: {field} {value} does not fit in {bits} bits")]
    FieldTooWide {
        frame: &'static str,
        field: &'static str,
        value: u64,
        bits: u32,
    },
}

/// Length limits the decoder enforces, checked as soon as a frame header
/// has arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest control frame payload (header blocks live in SYN_STREAM,
    /// SYN_REPLY and HEADERS, so this bounds a compressed header block).
    pub max_control_payload: usize,
    /// Largest data frame payload; the wire format cannot exceed
    /// [`MAX_PAYLOAD_LEN`] (16 MiB - 1).
    pub max_data_payload: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_control_payload: 64 * 1024,
            max_data_payload: MAX_PAYLOAD_LEN,
        }
    }
}

/// Incremental frame decoder: call [`FrameDecoder::decode`] whenever more
/// bytes have been appended to the buffer.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameDecoder {
    limits: FrameLimits,
}

impl FrameDecoder {
    pub fn new(limits: FrameLimits) -> Self {
        FrameDecoder { limits }
    }

    pub fn limits(&self) -> FrameLimits {
        self.limits
    }

    /// Takes one whole frame off the front of `buf`. `Ok(None)`: not enough
    /// bytes yet (nothing is consumed). After an error the connection cannot
    /// be resynchronised and `buf` is left as it was.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let first = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let flags = buf[4];
        let length = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if first & 0x8000_0000 == 0 {
            let stream_id = first;
            if stream_id == 0 {
                return Err(FrameError::ZeroStreamId { frame: "DATA" });
            }
            if length > self.limits.max_data_payload {
                return Err(FrameError::DataFrameTooLarge {
                    stream_id,
                    length,
                    max: self.limits.max_data_payload,
                });
            }
            check_flags("DATA", flags, FLAG_FIN)?;
            if buf.len() < FRAME_HEADER_LEN + length {
                return Ok(None);
            }
            buf.advance(FRAME_HEADER_LEN);
            let payload = take(buf, length);
            return Ok(Some(Frame::Data(DataFrame {
                stream_id,
                fin: flags & FLAG_FIN != 0,
                payload,
            })));
        }
        let version = ((first >> 16) & 0x7FFF) as u16;
        let frame_type = (first & 0xFFFF) as u16;
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion { version });
        }
        if length > self.limits.max_control_payload {
            return Err(FrameError::ControlFrameTooLarge {
                frame_type,
                length,
                max: self.limits.max_control_payload,
            });
        }
        check_control_header(frame_type, flags, length)?;
        if buf.len() < FRAME_HEADER_LEN + length {
            return Ok(None);
        }
        let frame = parse_control(frame_type, flags, &buf[FRAME_HEADER_LEN..][..length])?;
        buf.advance(FRAME_HEADER_LEN + length);
        Ok(Some(frame))
    }
}

fn take(buf: &mut BytesMut, length: usize) -> Bytes {
    let payload = Bytes::copy_from_slice(&buf[..length]);
    buf.advance(length);
    payload
}

fn check_flags(frame: &'static str, flags: u8, allowed: u8) -> Result<(), FrameError> {
    if flags & !allowed != 0 {
        return Err(FrameError::UndefinedFlags { frame, flags });
    }
    Ok(())
}

/// The checks that need only the 8-byte header: flags and the length the
/// type dictates (fixed, or a minimum).
fn check_control_header(frame_type: u16, flags: u8, length: usize) -> Result<(), FrameError> {
    let name = frame_type_name(frame_type);
    let (allowed_flags, exact, min) = match frame_type {
        frame_type::SYN_STREAM => (FLAG_FIN | FLAG_UNIDIRECTIONAL, None, 10),
        frame_type::SYN_REPLY | frame_type::HEADERS => (FLAG_FIN, None, 4),
        frame_type::RST_STREAM | frame_type::GOAWAY | frame_type::WINDOW_UPDATE => (0, Some(8), 8),
        frame_type::SETTINGS => (FLAG_SETTINGS_CLEAR, None, 4),
        frame_type::PING => (0, Some(4), 4),
        // Unknown types are skipped whatever their flags.
        _ => return Ok(()),
    };
    check_flags(name, flags, allowed_flags)?;
    if let Some(expected) = exact {
        if length != expected {
            return Err(FrameError::WrongLength {
                frame_type,
                length,
                expected,
            });
        }
    } else if length < min {
        return Err(FrameError::TooShort {
            frame_type,
            length,
            min,
        });
    }
    if frame_type == frame_type::SETTINGS && !(length - 4).is_multiple_of(8) {
        // The announced count is checked with the payload; a length that
        // no count can match is refused now.
        return Err(FrameError::SettingsLength { length });
    }
    Ok(())
}

fn read_u32(payload: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([
        payload[at],
        payload[at + 1],
        payload[at + 2],
        payload[at + 3],
    ])
}

/// A 31-bit stream id whose top bit is reserved and must be clear; `allow_zero`
/// for the fields where 0 means "none" (GOAWAY, WINDOW_UPDATE, associated-to).
fn stream_id_field(
    frame: &'static str,
    field: &'static str,
    raw: u32,
    allow_zero: bool,
) -> Result<u32, FrameError> {
    if raw & 0x8000_0000 != 0 {
        return Err(FrameError::ReservedBitSet { frame, field });
    }
    if raw == 0 && !allow_zero {
        return Err(FrameError::ZeroStreamId { frame });
    }
    Ok(raw)
}

/// Parses a control frame whose header checks passed and whose payload is
/// complete (`payload.len()` is the announced length).
fn parse_control(frame_type: u16, flags: u8, payload: &[u8]) -> Result<Frame, FrameError> {
    let name = frame_type_name(frame_type);
    let fin = flags & FLAG_FIN != 0;
    Ok(match frame_type {
        frame_type::SYN_STREAM => {
            let stream_id = stream_id_field(name, "stream id", read_u32(payload, 0), false)?;
            let associated_to =
                stream_id_field(name, "associated-to stream id", read_u32(payload, 4), true)?;
            let priority_byte = payload[8];
            if priority_byte & 0x1F != 0 {
                return Err(FrameError::ReservedBitSet {
                    frame: name,
                    field: "priority byte",
                });
            }
            Frame::SynStream(SynStream {
                stream_id,
                associated_to,
                priority: priority_byte >> 5,
                slot: payload[9],
                fin,
                unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                header_block: Bytes::copy_from_slice(&payload[10..]),
            })
        }
        frame_type::SYN_REPLY | frame_type::HEADERS => {
            let stream_id = stream_id_field(name, "stream id", read_u32(payload, 0), false)?;
            let header_block = Bytes::copy_from_slice(&payload[4..]);
            if frame_type == frame_type::SYN_REPLY {
                Frame::SynReply(SynReply {
                    stream_id,
                    fin,
                    header_block,
                })
            } else {
                Frame::Headers(HeadersFrame {
                    stream_id,
                    fin,
                    header_block,
                })
            }
        }
        frame_type::RST_STREAM => {
            let stream_id = stream_id_field(name, "stream id", read_u32(payload, 0), false)?;
            let status = read_u32(payload, 4);
            if status == 0 {
                return Err(FrameError::ZeroRstStatus { stream_id });
            }
            Frame::RstStream {
                stream_id,
                status: RstStatus(status),
            }
        }
        frame_type::SETTINGS => {
            let entries = read_u32(payload, 0);
            if (payload.len() - 4) / 8 != entries as usize {
                return Err(FrameError::SettingsCountMismatch {
                    length: payload.len(),
                    entries,
                });
            }
            let entries = payload[4..]
                .chunks_exact(8)
                .map(|entry| {
                    let flags_and_id = read_u32(entry, 0);
                    Setting {
                        flags: (flags_and_id >> 24) as u8,
                        id: flags_and_id & 0x00FF_FFFF,
                        value: read_u32(entry, 4),
                    }
                })
                .collect();
            Frame::Settings {
                clear_persisted: flags & FLAG_SETTINGS_CLEAR != 0,
                entries,
            }
        }
        frame_type::PING => Frame::Ping {
            id: read_u32(payload, 0),
        },
        frame_type::GOAWAY => Frame::GoAway {
            last_good_stream_id: stream_id_field(
                name,
                "last-good stream id",
                read_u32(payload, 0),
                true,
            )?,
            status: GoAwayStatus(read_u32(payload, 4)),
        },
        frame_type::WINDOW_UPDATE => {
            // Stream 0 is the session window in SPDY/3.1.
            let stream_id = stream_id_field(name, "stream id", read_u32(payload, 0), true)?;
            let delta = read_u32(payload, 4);
            if delta & 0x8000_0000 != 0 {
                return Err(FrameError::ReservedBitSet {
                    frame: name,
                    field: "delta window size",
                });
            }
            if delta == 0 {
                return Err(FrameError::ZeroWindowDelta { stream_id });
            }
            Frame::WindowUpdate { stream_id, delta }
        }
        _ => Frame::Unknown {
            frame_type,
            flags,
            payload: Bytes::copy_from_slice(payload),
        },
    })
}

fn check_width(
    frame: &'static str,
    field: &'static str,
    value: u64,
    bits: u32,
) -> Result<(), FrameError> {
    if value >> bits != 0 {
        return Err(FrameError::FieldTooWide {
            frame,
            field,
            value,
            bits,
        });
    }
    Ok(())
}

fn check_stream_id(frame: &'static str, field: &'static str, id: u32) -> Result<(), FrameError> {
    check_width(frame, field, u64::from(id), 31)
}

fn check_payload_len(frame: &'static str, len: usize) -> Result<(), FrameError> {
    check_width(frame, "payload length", len as u64, 24)
}

fn put_control_header(out: &mut BytesMut, frame_type: u16, flags: u8, length: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(frame_type);
    out.put_u32((u32::from(flags) << 24) | length as u32);
}

impl Frame {
    /// The stream a frame belongs to (0 for session-wide frames).
    pub fn stream_id(&self) -> u32 {
        match self {
            Frame::SynStream(f) => f.stream_id,
            Frame::SynReply(f) => f.stream_id,
            Frame::Headers(f) => f.stream_id,
            Frame::Data(f) => f.stream_id,
            Frame::RstStream { stream_id, .. } | Frame::WindowUpdate { stream_id, .. } => {
                *stream_id
            }
            Frame::Settings { .. }
            | Frame::Ping { .. }
            | Frame::GoAway { .. }
            | Frame::Unknown { .. } => 0,
        }
    }

    /// Appends the wire form of the frame to `out`. Fails, writing nothing,
    /// when a field does not fit its wire width (a stream id over 31 bits, a
    /// priority over 7, a payload over 16 MiB - 1, ...).
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), FrameError> {
        match self {
            Frame::SynStream(f) => {
                const NAME: &str = "SYN_STREAM";
                check_stream_id(NAME, "stream id", f.stream_id)?;
                check_stream_id(NAME, "associated-to stream id", f.associated_to)?;
                check_width(NAME, "priority", u64::from(f.priority), 3)?;
                let length = 10 + f.header_block.len();
                check_payload_len(NAME, length)?;
                let mut flags = 0;
                if f.fin {
                    flags |= FLAG_FIN;
                }
                if f.unidirectional {
                    flags |= FLAG_UNIDIRECTIONAL;
                }
                out.reserve(FRAME_HEADER_LEN + length);
                put_control_header(out, frame_type::SYN_STREAM, flags, length);
                out.put_u32(f.stream_id);
                out.put_u32(f.associated_to);
                out.put_u8(f.priority << 5);
                out.put_u8(f.slot);
                out.put_slice(&f.header_block);
            }
            Frame::SynReply(SynReply {
                stream_id,
                fin,
                header_block,
            })
            | Frame::Headers(HeadersFrame {
                stream_id,
                fin,
                header_block,
            }) => {
                let (name, frame_type) = match self {
                    Frame::SynReply(_) => ("SYN_REPLY", frame_type::SYN_REPLY),
                    _ => ("HEADERS", frame_type::HEADERS),
                };
                check_stream_id(name, "stream id", *stream_id)?;
                let length = 4 + header_block.len();
                check_payload_len(name, length)?;
                out.reserve(FRAME_HEADER_LEN + length);
                put_control_header(out, frame_type, if *fin { FLAG_FIN } else { 0 }, length);
                out.put_u32(*stream_id);
                out.put_slice(header_block);
            }
            Frame::RstStream { stream_id, status } => {
                check_stream_id("RST_STREAM", "stream id", *stream_id)?;
                put_control_header(out, frame_type::RST_STREAM, 0, 8);
                out.put_u32(*stream_id);
                out.put_u32(status.0);
            }
            Frame::Settings {
                clear_persisted,
                entries,
            } => {
                const NAME: &str = "SETTINGS";
                for entry in entries {
                    check_width(NAME, "setting id", u64::from(entry.id), 24)?;
                }
                let length = 4 + 8 * entries.len();
                check_payload_len(NAME, length)?;
                let flags = if *clear_persisted {
                    FLAG_SETTINGS_CLEAR
                } else {
                    0
                };
                out.reserve(FRAME_HEADER_LEN + length);
                put_control_header(out, frame_type::SETTINGS, flags, length);
                out.put_u32(entries.len() as u32);
                for entry in entries {
                    out.put_u32((u32::from(entry.flags) << 24) | entry.id);
                    out.put_u32(entry.value);
                }
            }
            Frame::Ping { id } => {
                put_control_header(out, frame_type::PING, 0, 4);
                out.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                check_stream_id("GOAWAY", "last-good stream id", *last_good_stream_id)?;
                put_control_header(out, frame_type::GOAWAY, 0, 8);
                out.put_u32(*last_good_stream_id);
                out.put_u32(status.0);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                check_stream_id("WINDOW_UPDATE", "stream id", *stream_id)?;
                check_width("WINDOW_UPDATE", "delta window size", u64::from(*delta), 31)?;
                put_control_header(out, frame_type::WINDOW_UPDATE, 0, 8);
                out.put_u32(*stream_id);
                out.put_u32(*delta);
            }
            Frame::Data(f) => {
                check_stream_id("DATA", "stream id", f.stream_id)?;
                check_payload_len("DATA", f.payload.len())?;
                out.reserve(FRAME_HEADER_LEN + f.payload.len());
                out.put_u32(f.stream_id);
                let flags = if f.fin { FLAG_FIN } else { 0 };
                out.put_u32((u32::from(flags) << 24) | f.payload.len() as u32);
                out.put_slice(&f.payload);
            }
            Frame::Unknown {
                frame_type,
                flags,
                payload,
            } => {
                check_payload_len("unknown control", payload.len())?;
                out.reserve(FRAME_HEADER_LEN + payload.len());
                put_control_header(out, *frame_type, *flags, payload.len());
                out.put_slice(payload);
            }
        }
        Ok(())
    }
}
