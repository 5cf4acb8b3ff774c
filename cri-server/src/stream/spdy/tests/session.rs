//! Two sessions, client and server, over an in-memory connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::super::{CloseReason, GoAwayStatus, Headers, RstStatus, SessionError, SessionLimits};
use super::{FNV_START, fnv1a, headers, pattern_byte, session_pair, within};

#[tokio::test]
async fn streams_carry_data_both_ways_with_half_close_reset_ping_and_goaway() {
    let (client, server) = session_pair(SessionLimits::default(), SessionLimits::default());
    let server = Arc::new(server);
    let serving = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            while let Some(incoming) = server.accept().await {
                let kind = incoming.headers().get("streamtype").unwrap().to_owned();
                let stream = incoming
                    .reply(headers(&[("accepted", &kind)]))
                    .expect("reply");
                accepted.push((kind, stream));
                if accepted.len() == 3 {
                    break;
                }
            }
            accepted
        })
    };
    let (a, b, c) = tokio::join!(
        client.open(headers(&[("streamtype", "stdin")]), false),
        client.open(headers(&[("streamtype", "stdout")]), false),
        client.open(headers(&[("streamtype", "error")]), false),
    );
    let (mut stdin, mut stdout, mut error) = (a.unwrap(), b.unwrap(), c.unwrap());
    let mut ids = vec![stdin.id(), stdout.id(), error.id()];
    ids.sort_unstable();
    assert_eq!(ids, [1, 3, 5]);
    assert_eq!(stdin.headers().get("accepted"), Some("stdin"));
    assert_eq!(stdout.headers().get("accepted"), Some("stdout"));
    let mut accepted = within(5, serving).await.unwrap();
    accepted.sort_by_key(|(_, stream)| stream.id());
    let mut by_kind = std::collections::HashMap::new();
    for (kind, stream) in accepted {
        by_kind.insert(kind, stream);
    }
    let mut server_stdin = by_kind.remove("stdin").unwrap();
    let mut server_stdout = by_kind.remove("stdout").unwrap();
    let mut server_error = by_kind.remove("error").unwrap();
    assert_eq!(server_stdin.id(), stdin.id());
    assert_eq!(server.open_streams(), 3);

    // Client to server, then the client half-closes; the server can still
    // answer on the same stream.
    stdin.send(b"hello ").await.unwrap();
    stdin.send(b"server").await.unwrap();
    stdin.finish().unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = server_stdin.recv().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"hello server");
    assert_eq!(server_stdin.recv().await, Ok(None));
    server_stdin.send(b"ack").await.unwrap();
    assert_eq!(stdin.recv().await.unwrap().as_deref(), Some(&b"ack"[..]));
    assert_eq!(
        stdin.send(b"more").await,
        Err(SessionError::StreamFinished {
            stream_id: stdin.id()
        })
    );
    server_stdin.finish().unwrap();
    assert_eq!(stdin.recv().await, Ok(None));

    // Server to client, server half-closes first.
    server_stdout.send(b"output").await.unwrap();
    server_stdout.finish().unwrap();
    assert_eq!(
        stdout.recv().await.unwrap().as_deref(),
        Some(&b"output"[..])
    );
    assert_eq!(stdout.recv().await, Ok(None));
    stdout.send(b"late but allowed").await.unwrap();
    assert_eq!(
        server_stdout.recv().await.unwrap().as_deref(),
        Some(&b"late but allowed"[..])
    );
    stdout.finish().unwrap();
    assert_eq!(server_stdout.recv().await, Ok(None));

    // A reset from the client reaches the server's receiver and sender.
    error.reset(RstStatus::CANCEL);
    let reset = SessionError::StreamReset {
        stream_id: error.id(),
        status: RstStatus::CANCEL,
        by_peer: true,
    };
    assert_eq!(within(5, server_error.recv()).await, Err(reset.clone()));
    assert_eq!(server_error.send(b"x").await, Err(reset));
    assert_eq!(server.open_streams(), 0);
    assert_eq!(client.open_streams(), 0);

    let rtt = within(5, client.ping()).await.unwrap();
    assert!(rtt < Duration::from_secs(5));
    within(5, server.ping()).await.unwrap();

    // GOAWAY from the client: no new streams, and with none open, both ends
    // close the connection.
    client.go_away(GoAwayStatus::OK);
    assert!(within(5, server.accept()).await.is_none());
    within(5, server.closed()).await;
    within(5, client.closed()).await;
    // Closed by whichever end noticed first.
    assert!(matches!(
        client.open(Headers::new(), false).await,
        Err(SessionError::Closed(_))
    ));
    assert!(client.ping().await.is_err());
}

#[tokio::test]
async fn forty_concurrent_streams_echo_their_own_data() {
    let (client, server) = session_pair(SessionLimits::default(), SessionLimits::default());
    let server = tokio::spawn(async move {
        let mut tasks = Vec::new();
        while let Some(incoming) = server.accept().await {
            let mut stream = incoming.reply(Headers::new()).unwrap();
            tasks.push(tokio::spawn(async move {
                while let Some(chunk) = stream.recv().await.unwrap() {
                    stream.send(&chunk).await.unwrap();
                }
                stream.finish().unwrap();
            }));
            if tasks.len() == 40 {
                break;
            }
        }
        for task in tasks {
            task.await.unwrap();
        }
        server
    });
    let client = Arc::new(client);
    let mut tasks = Vec::new();
    for n in 0..40usize {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("stream-{n}");
            let stream = client
                .open(headers(&[("name", &name)]), false)
                .await
                .unwrap();
            let payload: Vec<u8> = (0..20_000 + n * 1000)
                .map(|i| pattern_byte(i + n))
                .collect();
            let (mut sender, mut receiver) = stream.split();
            let send = async {
                for piece in payload.chunks(7000) {
                    sender.send(piece).await.unwrap();
                }
                sender.finish().unwrap();
            };
            let receive = async {
                let mut got = Vec::new();
                while let Some(chunk) = receiver.recv().await.unwrap() {
                    got.extend_from_slice(&chunk);
                }
                got
            };
            let ((), got) = tokio::join!(send, receive);
            assert_eq!(got, payload, "stream {n}");
        }));
    }
    for task in tasks {
        within(60, task).await.unwrap();
    }
    let server = within(60, server).await.unwrap();
    assert_eq!(server.open_streams(), 0);
    assert_eq!(client.open_streams(), 0);
    assert_eq!(server.buffered_bytes(), 0);
}

#[tokio::test]
async fn fifty_megabytes_arrive_intact() {
    const TOTAL: usize = 50 * 1000 * 1000;
    let (client, server) = session_pair(SessionLimits::default(), SessionLimits::default());
    let sending = tokio::spawn(async move {
        let mut stream = client.open(Headers::new(), false).await.unwrap();
        let mut hash = FNV_START;
        let mut piece = vec![0u8; 256 * 1024];
        let mut sent = 0;
        while sent < TOTAL {
            let n = piece.len().min(TOTAL - sent);
            for (k, byte) in piece[..n].iter_mut().enumerate() {
                *byte = pattern_byte(sent + k);
            }
            hash = fnv1a(hash, &piece[..n]);
            stream.send(&piece[..n]).await.unwrap();
            sent += n;
        }
        stream.finish().unwrap();
        assert_eq!(stream.recv().await, Ok(None));
        (hash, client)
    });
    let incoming = within(5, server.accept()).await.unwrap();
    let mut stream = incoming.reply(Headers::new()).unwrap();
    let mut received = 0usize;
    let mut hash = FNV_START;
    let mut first_mismatch = None;
    while let Some(chunk) = within(60, stream.recv()).await.unwrap() {
        if first_mismatch.is_none() {
            first_mismatch = chunk
                .iter()
                .enumerate()
                .find(|(k, byte)| **byte != pattern_byte(received + k))
                .map(|(k, _)| received + k);
        }
        hash = fnv1a(hash, &chunk);
        received += chunk.len();
    }
    stream.finish().unwrap();
    let (sent_hash, _client) = within(60, sending).await.unwrap();
    assert_eq!(received, TOTAL);
    assert_eq!(first_mismatch, None);
    assert_eq!(hash, sent_hash);
}

#[tokio::test]
async fn an_unread_stream_stops_the_reader_at_its_buffer_limit_and_resumes() {
    const TOTAL: usize = 4 << 20;
    let server_limits = SessionLimits {
        stream_buffer: 64 * 1024,
        ..SessionLimits::default()
    };
    let client_limits = SessionLimits {
        write_queue_frames: 4,
        ..SessionLimits::default()
    };
    let (client, server) = session_pair(client_limits, server_limits);
    let progress = Arc::new(AtomicUsize::new(0));
    let sending = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut stream = client.open(Headers::new(), false).await.unwrap();
            let piece: Vec<u8> = (0..32 * 1024).map(|i| i as u8).collect();
            while progress.load(Ordering::SeqCst) < TOTAL {
                stream.send(&piece).await.unwrap();
                progress.fetch_add(piece.len(), Ordering::SeqCst);
            }
            stream.finish().unwrap();
            (stream, client)
        })
    };
    let incoming = within(5, server.accept()).await.unwrap();
    let mut stream = incoming.reply(Headers::new()).unwrap();
    // Not reading: the server buffers two 32 KiB frames (the limit) and
    // stops reading; the connection and the client's queue fill up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stalled_at = progress.load(Ordering::SeqCst);
    assert_eq!(server.buffered_bytes(), 64 * 1024);
    assert!(stalled_at < 1 << 20, "sender got {stalled_at} bytes out");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        progress.load(Ordering::SeqCst),
        stalled_at,
        "sender is blocked"
    );
    assert_eq!(server.buffered_bytes(), 64 * 1024);

    // Reading lets everything through.
    let mut received = 0;
    let mut max_buffered = 0;
    while let Some(chunk) = within(30, stream.recv()).await.unwrap() {
        assert!(chunk.iter().enumerate().all(|(k, b)| *b == k as u8));
        received += chunk.len();
        max_buffered = max_buffered.max(server.buffered_bytes());
    }
    assert_eq!(received, TOTAL);
    assert!(max_buffered <= 64 * 1024, "{max_buffered}");
    let (_client_stream, _client) = within(30, sending).await.unwrap();
}

#[tokio::test]
async fn pending_calls_end_when_the_connection_closes() {
    let (client, server) = session_pair(SessionLimits::default(), SessionLimits::default());
    let client = Arc::new(client);
    let opening = {
        let client = client.clone();
        tokio::spawn(async move {
            let first = client.open(Headers::new(), false).await;
            let mut first = first.unwrap();
            let second = client.open(Headers::new(), false);
            let (second, first_recv) = tokio::join!(second, first.recv());
            (second.err(), first_recv)
        })
    };
    let first = within(5, server.accept()).await.unwrap();
    let _first = first.reply(Headers::new()).unwrap();
    // The second stream is accepted but never answered.
    let _second = within(5, server.accept()).await.unwrap();
    server.abort();
    within(5, server.closed()).await;
    let (second, first_recv) = within(5, opening).await.unwrap();
    assert_eq!(second, Some(SessionError::Closed(CloseReason::PeerClosed)));
    assert_eq!(
        first_recv,
        Err(SessionError::Closed(CloseReason::PeerClosed))
    );
    within(5, client.closed()).await;
    assert_eq!(
        client.ping().await.err(),
        Some(SessionError::Closed(CloseReason::PeerClosed))
    );
    assert!(server.accept().await.is_none());
}

#[tokio::test]
async fn refused_streams_fail_open_with_the_status() {
    let (client, server) = session_pair(SessionLimits::default(), SessionLimits::default());
    let serving = tokio::spawn(async move {
        drop(server.accept().await.unwrap());
        server
            .accept()
            .await
            .unwrap()
            .reset(RstStatus::INTERNAL_ERROR);
        server
    });
    assert_eq!(
        client.open(Headers::new(), false).await.err(),
        Some(SessionError::StreamReset {
            stream_id: 1,
            status: RstStatus::REFUSED_STREAM,
            by_peer: true
        })
    );
    assert_eq!(
        client.open(Headers::new(), true).await.err(),
        Some(SessionError::StreamReset {
            stream_id: 3,
            status: RstStatus::INTERNAL_ERROR,
            by_peer: true
        })
    );
    let _server = within(5, serving).await.unwrap();
    assert_eq!(client.open_streams(), 0);
}

#[tokio::test]
async fn async_read_and_write_adapters_carry_a_copy() {
    let (client, server) = session_pair(SessionLimits::default(), SessionLimits::default());
    let echo = tokio::spawn(async move {
        let stream = server
            .accept()
            .await
            .unwrap()
            .reply(Headers::new())
            .unwrap();
        let (mut sender, mut receiver) = stream.split();
        let copied = tokio::io::copy(&mut receiver, &mut sender).await.unwrap();
        sender.shutdown().await.unwrap();
        (copied, server)
    });
    let payload: Vec<u8> = (0..300_000).map(pattern_byte).collect();
    let stream = client.open(Headers::new(), false).await.unwrap();
    let (mut sender, mut receiver) = stream.split();
    let write = async {
        sender.write_all(&payload).await.unwrap();
        sender.shutdown().await.unwrap();
    };
    let read = async {
        let mut back = Vec::new();
        receiver.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = within(30, async { tokio::join!(write, read) }).await;
    assert_eq!(back, payload);
    let (copied, _server) = within(5, echo).await.unwrap();
    assert_eq!(copied, payload.len() as u64);
}

#[tokio::test]
async fn goaway_from_the_server_stops_new_streams_but_not_open_ones() {
    let (client, server) = session_pair(SessionLimits::default(), SessionLimits::default());
    let (opened, mut server_stream) = tokio::join!(client.open(Headers::new(), false), async {
        let incoming = server.accept().await.unwrap();
        incoming.reply(Headers::new()).unwrap()
    });
    let mut client_stream = opened.unwrap();
    server.go_away(GoAwayStatus::OK);
    // Wait until the GOAWAY has arrived.
    within(5, async {
        while client.open(Headers::new(), false).await.err() != Some(SessionError::GoingAway) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    client_stream.send(b"still").await.unwrap();
    assert_eq!(
        server_stream.recv().await.unwrap().as_deref(),
        Some(&b"still"[..])
    );
    client_stream.finish().unwrap();
    server_stream.finish().unwrap();
    assert_eq!(client_stream.recv().await, Ok(None));
    within(5, server.closed()).await;
    within(5, client.closed()).await;
    assert_eq!(server.close_reason(), Some(CloseReason::Local));
}

#[tokio::test]
async fn close_ends_open_streams_at_once() {
    let (client, server) = session_pair(SessionLimits::default(), SessionLimits::default());
    let (opened, mut server_stream) = tokio::join!(client.open(Headers::new(), false), async {
        let incoming = server.accept().await.unwrap();
        incoming.reply(Headers::new()).unwrap()
    });
    let mut client_stream = opened.unwrap();
    server_stream.send(b"queued before close").await.unwrap();
    within(5, server.close()).await;
    assert_eq!(
        server_stream.recv().await,
        Err(SessionError::Closed(CloseReason::Local))
    );
    // What was queued before the close still went out.
    assert_eq!(
        client_stream.recv().await.unwrap().as_deref(),
        Some(&b"queued before close"[..])
    );
    assert_eq!(
        client_stream.recv().await,
        Err(SessionError::Closed(CloseReason::PeerClosed))
    );
    within(5, client.closed()).await;
}

#[test]
fn fuzzing_entry_points_handle_seed_inputs() {
    use super::super::frame::{Frame, SynStream};
    use super::super::fuzzing;
    use super::super::headers::HeaderEncoder;
    use bytes::BytesMut;

    let mut wire = BytesMut::new();
    let block = HeaderEncoder::new()
        .encode(&headers(&[("streamtype", "stdin")]))
        .unwrap();
    for frame in [
        Frame::SynStream(SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            header_block: block,
        }),
        Frame::Ping { id: 1 },
        Frame::Data(super::super::frame::DataFrame {
            stream_id: 1,
            fin: true,
            payload: bytes::Bytes::from_static(b"data"),
        }),
    ] {
        frame.encode(&mut wire).unwrap();
    }
    // Mode 1: header blocks uncompressed, the harness compresses them.
    let mut structured = BytesMut::from(&[1u8][..]);
    Frame::SynStream(SynStream {
        stream_id: 1,
        associated_to: 0,
        priority: 0,
        slot: 0,
        fin: false,
        unidirectional: false,
        header_block: headers(&[("streamtype", "data")]).to_block().into(),
    })
    .encode(&mut structured)
    .unwrap();
    fuzzing::session(&structured);
    for input in [
        &wire[..],
        &wire[..wire.len() - 3],
        b"",
        b"\x80\x03\x00\x01\xff\xff\xff\xff",
    ] {
        fuzzing::frames_and_headers(input);
        fuzzing::session(input);
    }
}

#[tokio::test]
async fn open_stops_at_the_stream_limit() {
    let client_limits = SessionLimits {
        max_concurrent_streams: 1,
        ..SessionLimits::default()
    };
    let (client, server) = session_pair(client_limits, SessionLimits::default());
    let (first, _server_stream) = tokio::join!(client.open(Headers::new(), false), async {
        server
            .accept()
            .await
            .unwrap()
            .reply(Headers::new())
            .unwrap()
    });
    let mut first = first.unwrap();
    assert_eq!(
        client.open(Headers::new(), false).await.err(),
        Some(SessionError::TooManyStreams { max: 1 })
    );
    first.reset(RstStatus::CANCEL);
    assert_eq!(client.open_streams(), 0);
}
