//! Tests of the SPDY module: frames, header blocks, sessions between two
//! [`Session`]s, and sessions driven frame by frame by a raw peer.

mod frames;
mod headers;
mod raw_peer;
mod session;

use std::time::Duration;

use super::{Headers, Role, Session, SessionLimits};

/// Parses a hex string (test vectors); whitespace is ignored.
pub(super) fn hex(text: &str) -> Vec<u8> {
    let text: String = text.split_whitespace().collect();
    assert!(text.len().is_multiple_of(2), "odd hex length");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
        .collect()
}

pub(super) fn headers(pairs: &[(&str, &str)]) -> Headers {
    Headers::from_pairs(pairs.iter().copied()).expect("valid test headers")
}

/// A client and a server session over an in-memory connection.
pub(super) fn session_pair(
    client_limits: SessionLimits,
    server_limits: SessionLimits,
) -> (Session, Session) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    (
        Session::new(client_io, Role::Client, client_limits),
        Session::new(server_io, Role::Server, server_limits),
    )
}

/// Awaits `future`, failing the test after `seconds`.
pub(super) async fn within<T>(seconds: u64, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(seconds), future)
        .await
        .expect("timed out")
}

/// The test data pattern: byte `i` of a stream.
pub(super) fn pattern_byte(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9)) as u8
}

/// FNV-1a, to compare long streams.
pub(super) fn fnv1a(hash: u64, data: &[u8]) -> u64 {
    data.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

pub(super) const FNV_START: u64 = 0xCBF2_9CE4_8422_2325;
