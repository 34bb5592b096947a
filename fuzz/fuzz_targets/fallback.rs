//! Fuzzes the HTTP fallback's request parser the way an exchange drives
//! it: the classification a WebSocket connection makes of its first bytes,
//! then requests one after another from the same bytes (keep-alive). The
//! parser must never panic, never claim more bytes than it was given or a
//! body over the limit, and must stop (a request takes at least one byte).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_core::net::fallback::request::{is_fallback, parse, Parsed};

/// Limits the fuzzer exercises: small, so both are reachable.
const MAX_HEAD: usize = 2048;
const MAX_BODY: usize = 512;

fuzz_target!(|data: &[u8]| {
    let _ = is_fallback(data, "/push");
    let mut at = 0;
    while at < data.len() {
        match parse(&data[at..], MAX_HEAD, MAX_BODY) {
            Parsed::Complete(req, used) => {
                assert!(used > 0 && at + used <= data.len());
                assert!(req.body.len() <= MAX_BODY);
                at += used;
            }
            Parsed::Bad { status, .. } => {
                assert!((400..500).contains(&status));
                break;
            }
            Parsed::Incomplete { .. } => break,
        }
    }
});
