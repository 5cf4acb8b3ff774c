//! Header blocks and their compression.

use bytes::BytesMut;
use flate2::{Compress, Compression, FlushCompress};

use super::super::dictionary::DICTIONARY;
use super::super::frame::{Frame, FrameDecoder};
use super::super::headers::{HeaderDecoder, HeaderEncoder, HeaderError, HeaderLimits, Headers};
use super::{headers, hex};

fn raw_block(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    raw_block_with_count(pairs.len() as u32, pairs)
}

fn raw_block_with_count(count: u32, pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = count.to_be_bytes().to_vec();
    for (name, value) in pairs {
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// Compresses blocks the way an independent peer would: its own zlib
/// stream, primed with the dictionary, a sync flush per block.
fn independent_compressor(level: Compression) -> impl FnMut(&[u8]) -> Vec<u8> {
    let mut compress = Compress::new(level, true);
    compress.set_dictionary(&DICTIONARY).expect("dictionary");
    move |block: &[u8]| {
        let mut out = Vec::with_capacity(1024);
        let mut input = block;
        loop {
            let before = compress.total_in();
            compress
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .expect("compress");
            input = &input[(compress.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                return out;
            }
            out.reserve(out.capacity());
        }
    }
}

#[test]
fn block_round_trips_with_multiple_values_joined_by_nul() {
    let mut h = Headers::new();
    h.append("StreamType", "stdout").unwrap();
    h.append("port", "8080").unwrap();
    h.append("port", "443").unwrap();
    h.append("empty", "").unwrap();
    let block = h.to_block();
    assert_eq!(
        block,
        raw_block(&[
            (b"streamtype", b"stdout"),
            (b"port", b"8080\x00443"),
            (b"empty", b""),
        ])
    );
    let parsed = Headers::from_block(&block, &HeaderLimits::default()).unwrap();
    assert_eq!(parsed, h);
    assert_eq!(parsed.get("STREAMTYPE"), Some("stdout"));
    assert_eq!(parsed.get("port"), Some("8080"));
    assert_eq!(parsed.get_all("port"), ["8080", "443"]);
    assert_eq!(parsed.get("empty"), Some(""));
    assert_eq!(parsed.get("missing"), None);
    assert!(parsed.get_all("missing").is_empty());
    assert_eq!(parsed.len(), 3);
}

#[test]
fn append_refuses_what_the_wire_cannot_carry() {
    let mut h = Headers::new();
    assert_eq!(h.append("", "x"), Err(HeaderError::EmptyName));
    assert_eq!(
        h.append("has space", "x"),
        Err(HeaderError::InvalidName {
            name: "has space".into()
        })
    );
    assert_eq!(
        h.append("a", "x\0y"),
        Err(HeaderError::NulInValue { name: "a".into() })
    );
    h.append("a", "x").unwrap();
    assert_eq!(
        h.append("a", ""),
        Err(HeaderError::EmptyValueInList { name: "a".into() })
    );
    assert_eq!(h.get_all("a"), ["x"]);
}

#[test]
fn invalid_blocks_are_refused() {
    let limits = HeaderLimits::default();
    let cases: Vec<(Vec<u8>, HeaderError)> = vec![
        (
            raw_block(&[(b"a", b"1"), (b"a", b"2")]),
            HeaderError::DuplicateName { name: "a".into() },
        ),
        (
            raw_block(&[(b"Upper", b"1")]),
            HeaderError::InvalidName {
                name: "Upper".into(),
            },
        ),
        (raw_block(&[(b"", b"1")]), HeaderError::EmptyName),
        (
            raw_block(&[(b"a", b"x\x00\x00y")]),
            HeaderError::EmptyValueInList { name: "a".into() },
        ),
        (
            raw_block(&[(b"a", b"\x00x")]),
            HeaderError::EmptyValueInList { name: "a".into() },
        ),
        (
            raw_block(&[(b"a", b"\xff")]),
            HeaderError::ValueNotUtf8 { name: "a".into() },
        ),
        (
            [raw_block(&[(b"a", b"1")]), vec![0, 0]].concat(),
            HeaderError::TrailingBytes { count: 2 },
        ),
        (
            vec![0, 0],
            HeaderError::Truncated {
                what: "the pair count",
                needed: 4,
                remaining: 2,
            },
        ),
        (
            // The name claims 100 bytes, 1 follows.
            vec![0, 0, 0, 1, 0, 0, 0, 100, b'a', 0, 0, 0, 0],
            HeaderError::Truncated {
                what: "a header name",
                needed: 100,
                remaining: 5,
            },
        ),
    ];
    for (block, expected) in cases {
        assert_eq!(
            Headers::from_block(&block, &limits),
            Err(expected.clone()),
            "{block:02x?}"
        );
        assert!(!expected.is_session_fatal());
    }
}

#[test]
fn lying_counts_are_refused_before_allocating() {
    let limits = HeaderLimits {
        max_block_size: 1024,
        max_pairs: 16,
    };
    assert_eq!(
        Headers::from_block(&raw_block_with_count(u32::MAX, &[]), &limits),
        Err(HeaderError::TooManyPairs {
            count: u32::MAX,
            max: 16
        })
    );
    // 10 pairs cannot fit in 8 bytes.
    assert_eq!(
        Headers::from_block(&raw_block_with_count(10, &[(b"", b"")]), &limits),
        Err(HeaderError::CountExceedsBlock {
            count: 10,
            remaining: 8
        })
    );
}

#[test]
fn compressed_blocks_round_trip_and_share_one_zlib_stream() {
    let mut encoder = HeaderEncoder::new();
    let mut decoder = HeaderDecoder::new(HeaderLimits::default());
    let block = headers(&[("streamtype", "stdout"), ("requestid", "1")]);
    let first = encoder.encode(&block).unwrap();
    let second = encoder.encode(&block).unwrap();
    let third = encoder.encode(&headers(&[("port", "8080")])).unwrap();
    // The first block starts the zlib stream: header with FDICT and the
    // dictionary id; the others continue it (no header) and reuse the
    // history, so the repeated block is smaller.
    assert_eq!(first[0] & 0x0F, 8, "deflate");
    assert_eq!(first[1] & 0x20, 0x20, "FDICT");
    assert_eq!(&first[2..6], &[0xE3, 0xC6, 0xA7, 0xC2]);
    assert!(second.len() < first.len(), "{second:?} vs {first:?}");
    for compressed in [&first, &second, &third] {
        assert_eq!(&compressed[compressed.len() - 4..], &[0, 0, 0xFF, 0xFF]);
    }
    assert_eq!(decoder.decode(&first).unwrap(), block);
    assert_eq!(decoder.decode(&second).unwrap(), block);
    assert_eq!(
        decoder.decode(&third).unwrap(),
        headers(&[("port", "8080")])
    );
    // Without the first block, the second makes no sense.
    let mut fresh = HeaderDecoder::new(HeaderLimits::default());
    let error = fresh.decode(&second).unwrap_err();
    assert!(error.is_session_fatal(), "{error}");
}

#[test]
fn blocks_from_an_independent_compressor_decode() {
    for level in [
        Compression::best(),
        Compression::fast(),
        Compression::none(),
    ] {
        let mut compress = independent_compressor(level);
        let mut decoder = HeaderDecoder::new(HeaderLimits::default());
        for round in 0..5 {
            let value = format!("value-{round}");
            let expected = headers(&[("streamtype", "error"), ("x-round", &value)]);
            let compressed = compress(&expected.to_block());
            assert_eq!(decoder.decode(&compressed).unwrap(), expected);
        }
    }
}

/// Three blocks compressed by CPython's zlib (the C library, not the
/// zlib-rs backend this crate uses), level 9, with the SPDY/3 dictionary and
/// a sync flush per block, as a Go client's framer does.
#[test]
fn blocks_from_c_zlib_decode() {
    let blocks = [
        "78f9e3c6a7c202e50e703a2b294a4dcc851625aca9a0800632388b20d196094ace8c0600000000ffff",
        "c2aa1898bc53f2c1a5369a6a00000000ffff",
        "82aa0616ed45e0a2c6c2c0c280c1c4c418c30450c99508000000ffff",
    ];
    let expected = [
        headers(&[("streamtype", "error"), ("requestid", "0")]),
        headers(&[("streamtype", "stdout"), ("requestid", "0")]),
        headers(&[("port", "8080"), ("port", "443"), ("streamtype", "data")]),
    ];
    let mut decoder = HeaderDecoder::new(HeaderLimits::default());
    for (block, expected) in blocks.iter().zip(expected) {
        assert_eq!(decoder.decode(&hex(block)).unwrap(), expected);
    }
}

/// A SYN_STREAM as Chromium's SPDY/3 framer writes it (stream 1, priority
/// 4, headers bar: foo and foo: bar), a known-answer vector of the framer's
/// tests: decoding it needs the exact dictionary.
#[test]
fn chromium_syn_stream_decodes() {
    let wire = hex(concat!(
        "8003000100000037000000010000000080003",
        "8eae3c6a7c202e50e50c24b4a04e50b6680004acbcf070820",
        "1095969f0fa200022829b108208000000000ffff"
    ));
    let mut buf = BytesMut::from(&wire[..]);
    let Ok(Some(Frame::SynStream(syn))) = FrameDecoder::default().decode(&mut buf) else {
        panic!("not a SYN_STREAM");
    };
    assert_eq!((syn.stream_id, syn.priority, syn.fin), (1, 4, false));
    let mut decoder = HeaderDecoder::new(HeaderLimits::default());
    assert_eq!(
        decoder.decode(&syn.header_block).unwrap(),
        headers(&[("bar", "foo"), ("foo", "bar")])
    );
}

#[test]
fn decompression_bombs_stop_at_the_limit() {
    let limits = HeaderLimits {
        max_block_size: 256 * 1024,
        max_pairs: 16,
    };
    // A 16 MiB value compresses to a few KiB.
    let huge = vec![b'a'; 16 << 20];
    let block = raw_block(&[(b"bomb", &huge)]);
    let compressed = independent_compressor(Compression::best())(&block);
    assert!(compressed.len() < 64 * 1024, "{}", compressed.len());
    let mut decoder = HeaderDecoder::new(limits);
    let error = decoder.decode(&compressed).unwrap_err();
    assert_eq!(error, HeaderError::BlockTooLarge { max: 256 * 1024 });
    assert!(error.is_session_fatal());
    // The context is out of step with the peer's now: nothing more decodes.
    let next = independent_compressor(Compression::best())(&raw_block(&[(b"a", b"b")]));
    assert_eq!(decoder.decode(&next), Err(HeaderError::DecoderBroken));
}

#[test]
fn a_block_at_the_size_limit_decodes() {
    let value = vec![b'v'; 1000 - 4 - 8 - 1];
    let block = raw_block(&[(b"n", &value)]);
    assert_eq!(block.len(), 1000);
    let compressed = independent_compressor(Compression::best())(&block);
    let mut decoder = HeaderDecoder::new(HeaderLimits {
        max_block_size: 1000,
        max_pairs: 1,
    });
    assert_eq!(decoder.decompress_block(&compressed).unwrap(), block);
}

#[test]
fn another_dictionary_or_garbage_is_refused() {
    let mut compress = Compress::new(Compression::default(), true);
    compress.set_dictionary(b"not the spdy dictionary").unwrap();
    let mut out = Vec::with_capacity(256);
    compress
        .compress_vec(&raw_block(&[(b"a", b"b")]), &mut out, FlushCompress::Sync)
        .unwrap();
    let mut decoder = HeaderDecoder::new(HeaderLimits::default());
    assert!(matches!(
        decoder.decode(&out),
        Err(HeaderError::WrongDictionary { .. })
    ));
    let mut decoder = HeaderDecoder::new(HeaderLimits::default());
    let error = decoder.decode(b"\x00\x01\x02\x03garbage").unwrap_err();
    assert!(matches!(error, HeaderError::Decompression(_)), "{error}");
}
