//! Fuzzing entry points, used by the `spdy_frames` target in
//! `cri-server/fuzz/` and by the unit tests. Built with the `fuzzing`
//! feature.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::frame::{Frame, FrameDecoder, FrameLimits};
use super::headers::{HeaderDecoder, HeaderEncoder, HeaderLimits, Headers};
use super::session::{Role, Session, SessionLimits};

/// Small limits, so that a case stays fast and limits are reached.
fn small_limits() -> SessionLimits {
    SessionLimits {
        max_control_payload: 16 * 1024,
        max_data_payload: 64 * 1024,
        max_header_block: 32 * 1024,
        max_header_pairs: 64,
        max_concurrent_streams: 8,
        stream_buffer: 16 * 1024,
        session_buffer: 64 * 1024,
        max_send_frame: 4 * 1024,
        write_queue_frames: 8,
    }
}

/// Decodes frames from `data` until it runs out or a frame is refused;
/// checks that each decoded frame encodes back to the bytes it came from and
/// runs every header block through one session-wide decoder. `data` is also
/// parsed as an uncompressed header block, which must round-trip when valid.
pub fn frames_and_headers(data: &[u8]) {
    let limits = small_limits();
    let decoder = FrameDecoder::new(FrameLimits {
        max_control_payload: limits.max_control_payload,
        max_data_payload: limits.max_data_payload,
    });
    let mut header_decoder = HeaderDecoder::new(HeaderLimits {
        max_block_size: limits.max_header_block,
        max_pairs: limits.max_header_pairs,
    });
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.clone();
        let frame = match decoder.decode(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => break,
        };
        let consumed = before.len() - buf.len();
        let mut encoded = BytesMut::new();
        if let Err(e) = frame.encode(&mut encoded) {
            panic!("decoded frame {frame:?} does not encode: {e}");
        }
        assert_eq!(&encoded[..], &before[..consumed], "{frame:?}");
        let block = match &frame {
            Frame::SynStream(f) => Some(&f.header_block),
            Frame::SynReply(f) => Some(&f.header_block),
            Frame::Headers(f) => Some(&f.header_block),
            _ => None,
        };
        if let Some(block) = block {
            let _ = header_decoder.decode(block);
        }
    }
    let header_limits = HeaderLimits {
        max_block_size: usize::MAX,
        max_pairs: 64,
    };
    if let Ok(headers) = Headers::from_block(data, &header_limits) {
        let again = Headers::from_block(&headers.to_block(), &header_limits);
        assert_eq!(again.as_ref(), Ok(&headers));
    }
}

/// Runs a server session whose peer sends `data` and then closes its side;
/// every stream is accepted and read to its end. The session must end.
///
/// Random bytes seldom form a zlib stream with the SPDY dictionary, so when
/// the first byte is odd the rest is taken as frames whose header blocks are
/// uncompressed: they are compressed (one context, as a peer would) before
/// the session sees them, which lets the fuzzer reach the stream logic.
pub fn session(data: &[u8]) {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => run_session(&compress_header_blocks(rest)),
        _ => run_session(data),
    }
}

/// Re-encodes the frames of `data` with their header blocks compressed;
/// whatever follows the first undecodable frame is appended as is.
fn compress_header_blocks(data: &[u8]) -> Vec<u8> {
    let decoder = FrameDecoder::new(FrameLimits {
        max_control_payload: 64 * 1024,
        max_data_payload: 64 * 1024,
    });
    let mut encoder = HeaderEncoder::new();
    let mut buf = BytesMut::from(data);
    let mut out = BytesMut::new();
    while let Ok(Some(mut frame)) = decoder.decode(&mut buf) {
        let block = match &mut frame {
            Frame::SynStream(f) => Some(&mut f.header_block),
            Frame::SynReply(f) => Some(&mut f.header_block),
            Frame::Headers(f) => Some(&mut f.header_block),
            _ => None,
        };
        if let Some(block) = block {
            match encoder.compress_block(block) {
                Ok(compressed) => *block = compressed,
                Err(_) => return data.to_vec(),
            }
        }
        if frame.encode(&mut out).is_err() {
            return data.to_vec();
        }
    }
    out.extend_from_slice(&buf);
    out.to_vec()
}

fn run_session(data: &[u8]) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    runtime.block_on(async {
        let (peer, ours) = tokio::io::duplex(16 * 1024);
        let session = Session::new(ours, Role::Server, small_limits());
        let (mut peer_read, mut peer_write) = tokio::io::split(peer);
        let input = data.to_vec();
        let feed = async move {
            let _ = peer_write.write_all(&input).await;
            let _ = peer_write.shutdown().await;
        };
        let drain = async move {
            let mut sink = vec![0u8; 16 * 1024];
            while matches!(peer_read.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let serve = async {
            while let Some(incoming) = session.accept().await {
                if let Ok(mut stream) = incoming.reply(Headers::new()) {
                    tokio::spawn(async move { while let Ok(Some(_)) = stream.recv().await {} });
                }
            }
        };
        let all = async {
            tokio::join!(feed, drain, serve, session.closed());
        };
        if tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .is_err()
        {
            panic!("SPDY session did not end after its peer closed the connection");
        }
    });
}
