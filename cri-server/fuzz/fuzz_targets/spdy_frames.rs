//! SPDY/3 frames and header blocks from arbitrary bytes: the frame decoder
//! with a re-encoding check and one session-wide header decoder, then the
//! same bytes as the peer's side of a server session.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cri_server::stream::spdy::fuzzing::frames_and_headers(data);
    cri_server::stream::spdy::fuzzing::session(data);
});
