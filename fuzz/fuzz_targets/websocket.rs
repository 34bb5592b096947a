//! Fuzzes the WebSocket layer the way a connection drives it: the first
//! bytes as an upgrade request, the rest as a stream of client frames. The
//! parsers must never panic, never claim more bytes than they were given,
//! and never point a payload outside the frame that carried it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_core::net::ws::{decode_frame, handshake, Handshake};

/// The frame limit the fuzzer exercises: small, so TooBig is reachable.
const MAX_FRAME: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut rest = match handshake(data, "/mqtt") {
        Handshake::Accepted { used, response } => {
            assert!(used > 0 && used <= data.len());
            assert!(response.starts_with(b"HTTP/1.1 101 "));
            data[used..].to_vec()
        }
        Handshake::Refused { response, .. } => {
            assert!(response.starts_with(b"HTTP/1.1 4"));
            data.to_vec()
        }
        Handshake::Incomplete => data.to_vec(),
    };
    let mut at = 0;
    while let Ok(Some(f)) = decode_frame(&mut rest[at..], MAX_FRAME) {
        assert!(f.used > 0 && at + f.used <= rest.len());
        assert!(f.payload.start <= f.payload.end && f.payload.end <= f.used);
        at += f.used;
    }
});
