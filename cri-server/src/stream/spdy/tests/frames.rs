//! Frame encoding and decoding.

use bytes::{Bytes, BytesMut};

use super::super::frame::{
    DataFrame, Frame, FrameDecoder, FrameError, FrameLimits, GoAwayStatus, HeadersFrame, RstStatus,
    Setting, SynReply, SynStream,
};

fn encode(frame: &Frame) -> BytesMut {
    let mut out = BytesMut::new();
    frame.encode(&mut out).expect("encodes");
    out
}

fn decode_all(bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
    let mut buf = BytesMut::from(bytes);
    let frame = FrameDecoder::default().decode(&mut buf)?;
    if frame.is_some() {
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
    }
    Ok(frame)
}

fn every_frame() -> Vec<Frame> {
    vec![
        Frame::SynStream(SynStream {
            stream_id: 0x7FFF_FFFF,
            associated_to: 5,
            priority: 7,
            slot: 9,
            fin: true,
            unidirectional: true,
            header_block: Bytes::from_static(b"compressed"),
        }),
        Frame::SynStream(SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            header_block: Bytes::new(),
        }),
        Frame::SynReply(SynReply {
            stream_id: 2,
            fin: true,
            header_block: Bytes::from_static(b"\x01\x02"),
        }),
        Frame::RstStream {
            stream_id: 3,
            status: RstStatus::CANCEL,
        },
        Frame::Settings {
            clear_persisted: true,
            entries: vec![
                Setting {
                    flags: 1,
                    id: 7,
                    value: 65536,
                },
                Setting {
                    flags: 0,
                    id: 0x00FF_FFFF,
                    value: u32::MAX,
                },
            ],
        },
        Frame::Settings {
            clear_persisted: false,
            entries: vec![],
        },
        Frame::Ping { id: 0xDEAD_BEEF },
        Frame::GoAway {
            last_good_stream_id: 41,
            status: GoAwayStatus::INTERNAL_ERROR,
        },
        Frame::Headers(HeadersFrame {
            stream_id: 9,
            fin: false,
            header_block: Bytes::from_static(b"abc"),
        }),
        Frame::WindowUpdate {
            stream_id: 0,
            delta: 0x7FFF_FFFF,
        },
        Frame::Data(DataFrame {
            stream_id: 11,
            fin: true,
            payload: Bytes::from_static(b"hello"),
        }),
        Frame::Data(DataFrame {
            stream_id: 13,
            fin: false,
            payload: Bytes::new(),
        }),
        Frame::Unknown {
            frame_type: 10,
            flags: 0xFF,
            payload: Bytes::from_static(b"credential"),
        },
    ]
}

#[test]
fn every_frame_type_round_trips() {
    for frame in every_frame() {
        let bytes = encode(&frame);
        assert_eq!(decode_all(&bytes), Ok(Some(frame.clone())), "{frame:?}");
    }
}

#[test]
fn frames_have_the_specified_wire_form() {
    let cases: Vec<(Frame, &str)> = vec![
        (
            Frame::RstStream {
                stream_id: 1,
                status: RstStatus::PROTOCOL_ERROR,
            },
            "8003000300000008 00000001 00000001",
        ),
        (Frame::Ping { id: 0x1234_5678 }, "8003000600000004 12345678"),
        (
            Frame::GoAway {
                last_good_stream_id: 7,
                status: GoAwayStatus::OK,
            },
            "8003000700000008 00000007 00000000",
        ),
        (
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 0x100,
            },
            "8003000900000008 00000001 00000100",
        ),
        (
            Frame::Settings {
                clear_persisted: false,
                entries: vec![Setting {
                    flags: 1,
                    id: 7,
                    value: 0x0A0B_0C0D,
                }],
            },
            "800300040000000c 00000001 01000007 0a0b0c0d",
        ),
        (
            Frame::SynStream(SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 4,
                slot: 0,
                fin: true,
                unidirectional: false,
                header_block: Bytes::from_static(b"\xAA"),
            }),
            "800300010100000b 00000001 00000000 8000 aa",
        ),
        (
            Frame::SynReply(SynReply {
                stream_id: 3,
                fin: false,
                header_block: Bytes::from_static(b"\xBB"),
            }),
            "8003000200000005 00000003 bb",
        ),
        (
            Frame::Data(DataFrame {
                stream_id: 5,
                fin: true,
                payload: Bytes::from_static(b"xy"),
            }),
            "0000000501000002 7879",
        ),
    ];
    for (frame, wire) in cases {
        let wire = super::hex(wire);
        assert_eq!(&encode(&frame)[..], &wire[..], "{frame:?}");
        assert_eq!(decode_all(&wire), Ok(Some(frame)));
    }
}

#[test]
fn decoder_waits_for_whole_frames_and_consumes_nothing_meanwhile() {
    let frames = every_frame();
    let mut wire = BytesMut::new();
    for frame in &frames {
        frame.encode(&mut wire).expect("encodes");
    }
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for &byte in wire.iter() {
        buf.extend_from_slice(&[byte]);
        let before = buf.len();
        match decoder.decode(&mut buf).expect("valid") {
            Some(frame) => {
                assert!(buf.is_empty());
                decoded.push(frame);
            }
            None => assert_eq!(buf.len(), before),
        }
    }
    assert_eq!(decoded, frames);
}

fn control_header(frame_type: u16, flags: u8, length: u32) -> Vec<u8> {
    let mut out = vec![0x80, 0x03];
    out.extend_from_slice(&frame_type.to_be_bytes());
    out.extend_from_slice(&((u32::from(flags) << 24) | length).to_be_bytes());
    out
}

fn with_payload(mut header: Vec<u8>, payload: &[u8]) -> Vec<u8> {
    header.extend_from_slice(payload);
    header
}

#[test]
fn malformed_frames_are_refused_with_what_was_wrong() {
    let cases: Vec<(Vec<u8>, FrameError)> = vec![
        (
            super::hex("8002000600000004 00000001"),
            FrameError::UnsupportedVersion { version: 2 },
        ),
        (
            with_payload(control_header(3, 0, 12), &[0; 12]),
            FrameError::WrongLength {
                frame_type: 3,
                length: 12,
                expected: 8,
            },
        ),
        (
            with_payload(control_header(6, 0, 8), &[0; 8]),
            FrameError::WrongLength {
                frame_type: 6,
                length: 8,
                expected: 4,
            },
        ),
        (
            with_payload(control_header(7, 0, 4), &[0; 4]),
            FrameError::WrongLength {
                frame_type: 7,
                length: 4,
                expected: 8,
            },
        ),
        (
            with_payload(control_header(1, 0, 8), &[0; 8]),
            FrameError::TooShort {
                frame_type: 1,
                length: 8,
                min: 10,
            },
        ),
        (
            with_payload(control_header(2, 0, 3), &[0; 3]),
            FrameError::TooShort {
                frame_type: 2,
                length: 3,
                min: 4,
            },
        ),
        (
            with_payload(control_header(4, 0, 13), &[0; 13]),
            FrameError::SettingsLength { length: 13 },
        ),
        (
            with_payload(
                control_header(4, 0, 12),
                &[0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1],
            ),
            FrameError::SettingsCountMismatch {
                length: 12,
                entries: 2,
            },
        ),
        (
            with_payload(control_header(1, 0, 10), &[0; 10]),
            FrameError::ZeroStreamId {
                frame: "SYN_STREAM",
            },
        ),
        (
            with_payload(control_header(2, 0, 4), &[0; 4]),
            FrameError::ZeroStreamId { frame: "SYN_REPLY" },
        ),
        (
            with_payload(control_header(3, 0, 8), &[0, 0, 0, 0, 0, 0, 0, 1]),
            FrameError::ZeroStreamId {
                frame: "RST_STREAM",
            },
        ),
        (
            with_payload(control_header(8, 0, 4), &[0; 4]),
            FrameError::ZeroStreamId { frame: "HEADERS" },
        ),
        (
            super::hex("0000000000000001 00"),
            FrameError::ZeroStreamId { frame: "DATA" },
        ),
        (
            with_payload(control_header(3, 0, 8), &[0x80, 0, 0, 1, 0, 0, 0, 1]),
            FrameError::ReservedBitSet {
                frame: "RST_STREAM",
                field: "stream id",
            },
        ),
        (
            with_payload(control_header(1, 0, 10), &[0, 0, 0, 1, 0, 0, 0, 0, 0x01, 0]),
            FrameError::ReservedBitSet {
                frame: "SYN_STREAM",
                field: "priority byte",
            },
        ),
        (
            with_payload(control_header(1, 0, 10), &[0, 0, 0, 1, 0x80, 0, 0, 0, 0, 0]),
            FrameError::ReservedBitSet {
                frame: "SYN_STREAM",
                field: "associated-to stream id",
            },
        ),
        (
            with_payload(control_header(7, 0, 8), &[0x80, 0, 0, 1, 0, 0, 0, 0]),
            FrameError::ReservedBitSet {
                frame: "GOAWAY",
                field: "last-good stream id",
            },
        ),
        (
            with_payload(control_header(9, 0, 8), &[0, 0, 0, 1, 0x80, 0, 0, 1]),
            FrameError::ReservedBitSet {
                frame: "WINDOW_UPDATE",
                field: "delta window size",
            },
        ),
        (
            with_payload(control_header(9, 0, 8), &[0, 0, 0, 1, 0, 0, 0, 0]),
            FrameError::ZeroWindowDelta { stream_id: 1 },
        ),
        (
            with_payload(control_header(3, 0, 8), &[0, 0, 0, 1, 0, 0, 0, 0]),
            FrameError::ZeroRstStatus { stream_id: 1 },
        ),
        (
            with_payload(control_header(6, 0x01, 4), &[0, 0, 0, 1]),
            FrameError::UndefinedFlags {
                frame: "PING",
                flags: 0x01,
            },
        ),
        (
            with_payload(control_header(1, 0x04, 10), &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
            FrameError::UndefinedFlags {
                frame: "SYN_STREAM",
                flags: 0x04,
            },
        ),
        (
            with_payload(control_header(2, 0x02, 4), &[0, 0, 0, 1]),
            FrameError::UndefinedFlags {
                frame: "SYN_REPLY",
                flags: 0x02,
            },
        ),
        (
            super::hex("0000000102000001 00"),
            FrameError::UndefinedFlags {
                frame: "DATA",
                flags: 0x02,
            },
        ),
    ];
    for (wire, expected) in cases {
        assert_eq!(decode_all(&wire), Err(expected), "{wire:02x?}");
    }
}

#[test]
fn error_messages_name_the_problem() {
    let error = decode_all(&with_payload(control_header(3, 0, 12), &[0; 12])).unwrap_err();
    assert_eq!(
        error.to_string(),
        "SPDY control frame of type 3 (RST_STREAM) has length 12, expected 8"
    );
    let error = decode_all(&super::hex("8002000600000004")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "SPDY control frame has version 2, only version 3 is supported"
    );
}

#[test]
fn length_limits_are_checked_from_the_header_alone() {
    let decoder = FrameDecoder::new(FrameLimits {
        max_control_payload: 100,
        max_data_payload: 1000,
    });
    // Only the 8-byte headers: the payloads never arrive.
    let mut buf = BytesMut::from(&control_header(1, 0, 101)[..]);
    assert_eq!(
        decoder.decode(&mut buf),
        Err(FrameError::ControlFrameTooLarge {
            frame_type: 1,
            length: 101,
            max: 100
        })
    );
    // Unknown types are bounded too.
    let mut buf = BytesMut::from(&control_header(0x1234, 0, 0x00FF_FFFF)[..]);
    assert_eq!(
        decoder.decode(&mut buf),
        Err(FrameError::ControlFrameTooLarge {
            frame_type: 0x1234,
            length: 0x00FF_FFFF,
            max: 100
        })
    );
    let mut buf = BytesMut::from(&super::hex("00000007000003e9")[..]);
    assert_eq!(
        decoder.decode(&mut buf),
        Err(FrameError::DataFrameTooLarge {
            stream_id: 7,
            length: 1001,
            max: 1000
        })
    );
    // At the limit is fine.
    let mut buf = BytesMut::from(&with_payload(super::hex("00000007000003e8"), &[7; 1000])[..]);
    let Ok(Some(Frame::Data(data))) = decoder.decode(&mut buf) else {
        panic!("data frame at the limit refused");
    };
    assert_eq!(data.payload.len(), 1000);
}

#[test]
fn unknown_control_frames_are_skipped_whatever_their_flags() {
    let mut wire = with_payload(control_header(10, 0xFF, 3), b"abc");
    wire.extend_from_slice(&encode(&Frame::Ping { id: 1 }));
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(
        decoder.decode(&mut buf),
        Ok(Some(Frame::Unknown {
            frame_type: 10,
            flags: 0xFF,
            payload: Bytes::from_static(b"abc")
        }))
    );
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Frame::Ping { id: 1 })));
    assert!(buf.is_empty());
}

#[test]
fn encoding_refuses_fields_too_wide_for_the_wire() {
    let mut out = BytesMut::new();
    let too_wide_id = Frame::RstStream {
        stream_id: 0x8000_0000,
        status: RstStatus::CANCEL,
    };
    assert_eq!(
        too_wide_id.encode(&mut out),
        Err(FrameError::FieldTooWide {
            frame: "RST_STREAM",
            field: "stream id",
            value: 0x8000_0000,
            bits: 31
        })
    );
    let priority = Frame::SynStream(SynStream {
        stream_id: 1,
        associated_to: 0,
        priority: 8,
        slot: 0,
        fin: false,
        unidirectional: false,
        header_block: Bytes::new(),
    });
    assert!(matches!(
        priority.encode(&mut out),
        Err(FrameError::FieldTooWide {
            field: "priority",
            ..
        })
    ));
    let huge = Frame::Data(DataFrame {
        stream_id: 1,
        fin: false,
        payload: Bytes::from(vec![0; 1 << 24]),
    });
    assert!(matches!(
        huge.encode(&mut out),
        Err(FrameError::FieldTooWide {
            field: "payload length",
            ..
        })
    ));
    assert!(out.is_empty(), "nothing is written on failure");
}
