//! The 16-byte header every benchmark payload starts with.
//!
//! `publisher id (u32) | sequence (u32) | send time (u64, ns since the Unix
//! epoch)`, big-endian. That is exactly the smallest payload of the standard
//! matrix (16 bytes), so every message can be checked for loss, duplicates
//! and order and timed end to end. The wall clock (not a monotonic one) is
//! used so that publishers and subscribers in different processes, or on
//! different load hosts kept in sync by NTP/PTP, share one time base.
//!
//! A publisher that stops sends an *end marker*: sequence [`END_MARKER`] and,
//! in the time field, how many messages it sent. A subscriber that gets it
//! knows the exact count to expect even when the publisher ran in another
//! process (the `pub` / `sub` fleets).

use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes taken by the header; the smallest payload the harness accepts.
pub const HEADER_LEN: usize = 16;

/// Sequence value of the end marker.
pub const END_MARKER: u32 = u32::MAX;

/// The decoded header of one benchmark message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub publisher: u32,
    pub seq: u32,
    /// Send time in ns since the epoch; for an end marker, the sent count.
    pub stamp: u64,
}

impl Header {
    pub fn is_end_marker(&self) -> bool {
        self.seq == END_MARKER
    }
}

/// Writes `h` into the first [`HEADER_LEN`] bytes of `buf`.
pub fn write(buf: &mut [u8], h: Header) {
    buf[0..4].copy_from_slice(&h.publisher.to_be_bytes());
    buf[4..8].copy_from_slice(&h.seq.to_be_bytes());
    buf[8..16].copy_from_slice(&h.stamp.to_be_bytes());
}

/// Reads the header, or `None` when the payload is too short to carry one
/// (a message that did not come from this harness).
pub fn read(buf: &[u8]) -> Option<Header> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    Some(Header {
        publisher: u32::from_be_bytes(buf[0..4].try_into().ok()?),
        seq: u32::from_be_bytes(buf[4..8].try_into().ok()?),
        stamp: u64::from_be_bytes(buf[8..16].try_into().ok()?),
    })
}

/// Wall-clock time in ns since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_short_payloads_are_foreign() {
        let mut buf = [0u8; 20];
        let h = Header {
            publisher: 7,
            seq: 0xDEAD_BEEF,
            stamp: 1_700_000_000_123_456_789,
        };
        write(&mut buf, h);
        assert_eq!(read(&buf), Some(h));
        assert_eq!(read(&buf[..15]), None);
    }
}
