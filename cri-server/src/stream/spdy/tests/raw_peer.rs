//! A server [`Session`] driven frame by frame by a raw client, to check how
//! it answers the peer's mistakes and what exactly it puts on the wire.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::super::frame::{
    DataFrame, Frame, FrameDecoder, FrameLimits, GoAwayStatus, RstStatus, Setting, SynStream,
};
use super::super::headers::{HeaderDecoder, HeaderEncoder, HeaderLimits, Headers};
use super::super::{CloseReason, IncomingStream, Role, Session, SessionLimits};
use super::{headers, within};

struct RawPeer {
    io: DuplexStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    compress: HeaderEncoder,
    decompress: HeaderDecoder,
}

fn raw_pair(limits: SessionLimits) -> (RawPeer, Session) {
    let (peer_io, server_io) = tokio::io::duplex(256 * 1024);
    let peer = RawPeer {
        io: peer_io,
        buf: BytesMut::new(),
        decoder: FrameDecoder::new(FrameLimits::default()),
        compress: HeaderEncoder::new(),
        decompress: HeaderDecoder::new(HeaderLimits::default()),
    };
    (peer, Session::new(server_io, Role::Server, limits))
}

fn rst(stream_id: u32, status: RstStatus) -> Frame {
    Frame::RstStream { stream_id, status }
}

fn data(stream_id: u32, fin: bool, payload: &'static [u8]) -> Frame {
    Frame::Data(DataFrame {
        stream_id,
        fin,
        payload: Bytes::from_static(payload),
    })
}

impl RawPeer {
    async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        frame.encode(&mut out).expect("encodes");
        self.io.write_all(&out).await.expect("write");
    }

    async fn syn_block(&mut self, stream_id: u32, block: Bytes, fin: bool) {
        self.send(Frame::SynStream(SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin,
            unidirectional: false,
            header_block: block,
        }))
        .await;
    }

    async fn syn(&mut self, stream_id: u32, headers: &Headers, fin: bool) {
        let block = self.compress.encode(headers).expect("compress");
        self.syn_block(stream_id, block, fin).await;
    }

    /// The next frame from the server; None at end of file.
    async fn next(&mut self) -> Option<Frame> {
        within(5, async {
            loop {
                if let Some(frame) = self.decoder.decode(&mut self.buf).expect("valid frame") {
                    return Some(frame);
                }
                if self.io.read_buf(&mut self.buf).await.expect("read") == 0 {
                    assert!(self.buf.is_empty(), "partial frame at end of file");
                    return None;
                }
            }
        })
        .await
    }

    async fn expect(&mut self, expected: Frame) {
        assert_eq!(self.next().await, Some(expected));
    }

    /// The next frame is a SYN_REPLY for `stream_id`; its headers.
    async fn expect_reply(&mut self, stream_id: u32) -> Headers {
        match self.next().await {
            Some(Frame::SynReply(reply)) if reply.stream_id == stream_id => self
                .decompress
                .decode(&reply.header_block)
                .expect("reply headers"),
            other => panic!("expected SYN_REPLY {stream_id}, got {other:?}"),
        }
    }

    /// Nothing was sent before a PING round trip: the server is alive and
    /// had nothing to say about what came before.
    async fn expect_only_pong(&mut self, id: u32) {
        self.send(Frame::Ping { id }).await;
        self.expect(Frame::Ping { id }).await;
    }
}

async fn accept(server: &Session) -> IncomingStream {
    within(5, server.accept()).await.expect("a stream")
}

#[tokio::test]
async fn pings_of_the_peers_parity_are_echoed_and_others_not() {
    let (mut peer, _server) = raw_pair(SessionLimits::default());
    peer.expect_only_pong(1).await;
    // Even ids are the server's own: an answer to a ping it never sent.
    peer.send(Frame::Ping { id: 2 }).await;
    peer.expect_only_pong(0x7FFF_FFFF).await;
}

#[tokio::test]
async fn stream_ids_must_have_the_clients_parity_and_increase() {
    let (mut peer, server) = raw_pair(SessionLimits::default());
    let h = headers(&[("streamtype", "stdin")]);
    peer.syn(2, &h, false).await;
    peer.expect(rst(2, RstStatus::PROTOCOL_ERROR)).await;
    peer.syn(5, &h, false).await;
    let incoming = accept(&server).await;
    assert_eq!(incoming.id(), 5);
    assert_eq!(incoming.headers().get("streamtype"), Some("stdin"));
    let _stream = incoming.reply(headers(&[("reply", "yes")])).expect("reply");
    assert_eq!(peer.expect_reply(5).await, headers(&[("reply", "yes")]));
    peer.syn(3, &h, false).await;
    peer.expect(rst(3, RstStatus::PROTOCOL_ERROR)).await;
    peer.syn(5, &h, false).await;
    peer.expect(rst(5, RstStatus::PROTOCOL_ERROR)).await;
    peer.syn(7, &h, false).await;
    assert_eq!(accept(&server).await.id(), 7);
}

#[tokio::test]
async fn data_rules_unknown_stream_and_after_fin() {
    let (mut peer, server) = raw_pair(SessionLimits::default());
    peer.send(data(99, false, b"x")).await;
    peer.expect(rst(99, RstStatus::INVALID_STREAM)).await;

    // Opened with FIN: the client sends nothing more on it.
    peer.syn(1, &Headers::new(), true).await;
    let incoming = accept(&server).await;
    assert!(incoming.peer_finished());
    let mut stream = incoming.reply(Headers::new()).expect("reply");
    peer.expect_reply(1).await;
    assert_eq!(stream.recv().await, Ok(None));
    peer.send(data(1, false, b"late")).await;
    peer.expect(rst(1, RstStatus::STREAM_ALREADY_CLOSED)).await;
    assert_eq!(
        stream.send(b"x").await,
        Err(super::super::SessionError::StreamReset {
            stream_id: 1,
            status: RstStatus::STREAM_ALREADY_CLOSED,
            by_peer: false
        })
    );

    // A stream the client reset: its frames in flight are dropped quietly.
    peer.syn(3, &Headers::new(), false).await;
    let mut stream3 = accept(&server).await.reply(Headers::new()).expect("reply");
    peer.expect_reply(3).await;
    peer.send(rst(3, RstStatus::CANCEL)).await;
    assert_eq!(
        stream3.recv().await,
        Err(super::super::SessionError::StreamReset {
            stream_id: 3,
            status: RstStatus::CANCEL,
            by_peer: true
        })
    );
    drop(stream3);
    peer.send(data(3, false, b"in flight")).await;
    peer.expect_only_pong(11).await;
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused() {
    let limits = SessionLimits {
        max_concurrent_streams: 2,
        ..SessionLimits::default()
    };
    let (mut peer, server) = raw_pair(limits);
    for id in [1, 3, 5] {
        peer.syn(id, &Headers::new(), false).await;
    }
    peer.expect(rst(5, RstStatus::REFUSED_STREAM)).await;
    let first = accept(&server).await;
    let second = accept(&server).await;
    assert_eq!((first.id(), second.id()), (1, 3));
    assert_eq!(server.open_streams(), 2);
    // Refusing one makes room.
    drop(first);
    peer.expect(rst(1, RstStatus::REFUSED_STREAM)).await;
    assert_eq!(server.open_streams(), 1);
    peer.syn(7, &Headers::new(), false).await;
    assert_eq!(accept(&server).await.id(), 7);
}

#[tokio::test]
async fn flow_control_frames_are_ignored_and_sending_never_waits_for_a_window() {
    let (mut peer, server) = raw_pair(SessionLimits::default());
    // An initial window of 0 would stop a flow-controlled sender.
    peer.send(Frame::Settings {
        clear_persisted: false,
        entries: vec![Setting {
            flags: 0,
            id: 7,
            value: 0,
        }],
    })
    .await;
    peer.send(Frame::WindowUpdate {
        stream_id: 0,
        delta: 1,
    })
    .await;
    peer.send(Frame::Unknown {
        frame_type: 10,
        flags: 0,
        payload: Bytes::from_static(b"credential"),
    })
    .await;
    peer.expect_only_pong(1).await;

    peer.syn(1, &Headers::new(), false).await;
    let mut stream = accept(&server).await.reply(Headers::new()).expect("reply");
    let payload: Vec<u8> = (0..100 * 1024).map(super::pattern_byte).collect();
    stream.send(&payload).await.expect("send");
    stream.finish().expect("finish");
    peer.expect_reply(1).await;
    let mut sizes = Vec::new();
    let mut received = Vec::new();
    loop {
        match peer.next().await {
            Some(Frame::Data(d)) if d.stream_id == 1 => {
                sizes.push(d.payload.len());
                received.extend_from_slice(&d.payload);
                if d.fin {
                    break;
                }
            }
            other => panic!("expected DATA, got {other:?}"),
        }
    }
    assert_eq!(sizes, [32768, 32768, 32768, 4096, 0]);
    assert_eq!(received, payload);
}

#[tokio::test]
async fn a_malformed_frame_ends_the_session_with_goaway() {
    let (mut peer, server) = raw_pair(SessionLimits::default());
    peer.syn(1, &Headers::new(), false).await;
    let _incoming = accept(&server).await;
    // Version 2.
    peer.io
        .write_all(&super::hex("8002000600000004 00000001"))
        .await
        .unwrap();
    peer.expect(Frame::GoAway {
        last_good_stream_id: 1,
        status: GoAwayStatus::PROTOCOL_ERROR,
    })
    .await;
    assert_eq!(peer.next().await, None);
    within(5, server.closed()).await;
    assert_eq!(
        server.close_reason(),
        Some(CloseReason::Protocol(
            "SPDY control frame has version 2, only version 3 is supported".into()
        ))
    );
    assert!(server.accept().await.is_none());
}

#[tokio::test]
async fn a_header_bomb_ends_the_session() {
    let limits = SessionLimits {
        max_header_block: 64 * 1024,
        ..SessionLimits::default()
    };
    let (mut peer, server) = raw_pair(limits);
    let mut bomb = Headers::new();
    bomb.append("bomb", "a".repeat(4 << 20)).unwrap();
    let block = peer.compress.encode(&bomb).unwrap();
    assert!(block.len() < 64 * 1024);
    peer.syn_block(1, block, false).await;
    peer.expect(Frame::GoAway {
        last_good_stream_id: 0,
        status: GoAwayStatus::PROTOCOL_ERROR,
    })
    .await;
    assert_eq!(peer.next().await, None);
    within(5, server.closed()).await;
    assert!(matches!(
        server.close_reason(),
        Some(CloseReason::Protocol(_))
    ));
}

#[tokio::test]
async fn bad_header_content_refuses_only_its_stream() {
    let (mut peer, server) = raw_pair(SessionLimits::default());
    let mut block = Vec::new();
    block.extend_from_slice(&2u32.to_be_bytes());
    for _ in 0..2 {
        block.extend_from_slice(&1u32.to_be_bytes());
        block.push(b'a');
        block.extend_from_slice(&1u32.to_be_bytes());
        block.push(b'1');
    }
    let compressed = peer.compress.compress_block(&block).unwrap();
    peer.syn_block(1, compressed, false).await;
    peer.expect(rst(1, RstStatus::PROTOCOL_ERROR)).await;
    // The compression contexts are still in step.
    peer.syn(3, &headers(&[("streamtype", "stdout")]), false)
        .await;
    let incoming = accept(&server).await;
    assert_eq!(
        (incoming.id(), incoming.headers().get("streamtype")),
        (3, Some("stdout"))
    );
}

#[tokio::test]
async fn an_unanswered_stream_is_refused_and_reset_works() {
    let (mut peer, server) = raw_pair(SessionLimits::default());
    peer.syn(1, &Headers::new(), false).await;
    peer.syn(3, &Headers::new(), false).await;
    drop(accept(&server).await);
    peer.expect(rst(1, RstStatus::REFUSED_STREAM)).await;
    accept(&server).await.reset(RstStatus::INTERNAL_ERROR);
    peer.expect(rst(3, RstStatus::INTERNAL_ERROR)).await;
    assert_eq!(server.open_streams(), 0);
}

#[tokio::test]
async fn dropping_the_session_sends_goaway_and_lets_open_streams_finish() {
    let (mut peer, server) = raw_pair(SessionLimits::default());
    peer.syn(1, &Headers::new(), false).await;
    peer.syn(3, &Headers::new(), false).await;
    let mut stream = accept(&server).await.reply(Headers::new()).expect("reply");
    let unanswered = accept(&server).await;
    peer.expect_reply(1).await;
    drop(server);
    peer.expect(Frame::GoAway {
        last_good_stream_id: 3,
        status: GoAwayStatus::OK,
    })
    .await;
    drop(unanswered);
    peer.expect(rst(3, RstStatus::REFUSED_STREAM)).await;
    // Stream 1 still works.
    stream.send(b"still here").await.unwrap();
    peer.expect(data(1, false, b"still here")).await;
    peer.send(data(1, true, b"bye")).await;
    assert_eq!(stream.recv().await.unwrap().as_deref(), Some(&b"bye"[..]));
    assert_eq!(stream.recv().await, Ok(None));
    // New streams are refused.
    peer.syn(5, &Headers::new(), false).await;
    peer.expect(rst(5, RstStatus::REFUSED_STREAM)).await;
    stream.finish().unwrap();
    peer.expect(data(1, true, b"")).await;
    // No stream open any more: the connection closes.
    assert_eq!(peer.next().await, None);
}

#[tokio::test]
async fn the_server_closes_after_the_clients_goaway_once_streams_are_done() {
    let (mut peer, server) = raw_pair(SessionLimits::default());
    peer.syn(1, &Headers::new(), false).await;
    let mut stream = accept(&server).await.reply(Headers::new()).expect("reply");
    peer.expect_reply(1).await;
    peer.send(Frame::GoAway {
        last_good_stream_id: 0,
        status: GoAwayStatus::OK,
    })
    .await;
    assert!(within(5, server.accept()).await.is_none());
    peer.send(data(1, true, b"")).await;
    assert_eq!(stream.recv().await, Ok(None));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(server.close_reason().is_none(), "stream 1 is still open");
    stream.finish().unwrap();
    peer.expect(data(1, true, b"")).await;
    assert_eq!(peer.next().await, None);
    within(5, server.closed()).await;
    assert_eq!(server.close_reason(), Some(CloseReason::Local));
}

#[tokio::test]
async fn a_dropped_stream_is_cancelled_and_a_unidirectional_one_gets_no_reply() {
    let (mut peer, server) = raw_pair(SessionLimits::default());
    peer.syn(1, &Headers::new(), false).await;
    let stream = accept(&server).await.reply(Headers::new()).expect("reply");
    peer.expect_reply(1).await;
    drop(stream);
    peer.expect(rst(1, RstStatus::CANCEL)).await;

    let header_block = peer.compress.encode(&Headers::new()).unwrap();
    peer.send(Frame::SynStream(SynStream {
        stream_id: 3,
        associated_to: 0,
        priority: 0,
        slot: 0,
        fin: false,
        unidirectional: true,
        header_block,
    }))
    .await;
    let incoming = accept(&server).await;
    assert!(incoming.unidirectional());
    let mut stream = incoming.reply(Headers::new()).expect("reply");
    assert_eq!(
        stream.send(b"x").await,
        Err(super::super::SessionError::StreamFinished { stream_id: 3 })
    );
    peer.send(data(3, false, b"one way")).await;
    assert_eq!(
        stream.recv().await.unwrap().as_deref(),
        Some(&b"one way"[..])
    );
    // A HEADERS frame with FIN ends the peer's side too.
    let block = peer.compress.encode(&headers(&[("trailer", "x")])).unwrap();
    peer.send(Frame::Headers(super::super::frame::HeadersFrame {
        stream_id: 3,
        fin: true,
        header_block: block,
    }))
    .await;
    assert_eq!(stream.recv().await, Ok(None));
    // Closed both ways now, and nothing was sent for it.
    assert_eq!(server.open_streams(), 0);
    peer.expect_only_pong(5).await;
}
