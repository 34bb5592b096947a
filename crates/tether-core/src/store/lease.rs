//! The node's lease on the durable sessions it owns.
//!
//! A node owns a persistent session only while its own lease in Redis (the
//! `nodes` sorted set, renewed every third of `presence.node_lease_secs`)
//! holds. Another node takes a session from a node that does not answer
//! its handover only once that node's lease has expired in Redis, plus a
//! margin for clock skew (`worker::claims`). So a node that cannot renew
//! (partitioned from Redis, or paused) must stop serving its durable
//! sessions by the time its lease runs out, by its own clock: it writes
//! nothing more to their connections (no delivery, no acknowledgement),
//! and closes them instead.
//!
//! A lease that lapsed and is renewed later is a new *term*. Sessions
//! claimed in an older term stay lost: while the lease was out, another
//! node may have taken them, and its word (a kick) may not have arrived
//! yet. A node that wakes from a pause therefore drops its durable
//! connections at their first write, before its control channel has told
//! it anything; their clients connect again and claim afresh.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// `until_ms` of a lease never held yet.
const NEVER_HELD: u64 = 0;

/// The lease as every core sees it. Times are ms since `origin` (the
/// monotonic clock: a wall-clock step cannot extend it).
#[derive(Debug)]
pub struct Lease {
    origin: Instant,
    /// The lease holds before this (ms since `origin`).
    until_ms: AtomicU64,
    /// Bumped by a renewal that found the lease lapsed.
    term: AtomicU64,
    /// When the current term began (ms since `origin`).
    term_began_ms: AtomicU64,
}

impl Default for Lease {
    fn default() -> Self {
        Lease {
            origin: Instant::now(),
            until_ms: AtomicU64::new(NEVER_HELD),
            term: AtomicU64::new(0),
            term_began_ms: AtomicU64::new(0),
        }
    }
}

impl Lease {
    /// The current term: a claim records it, and its session is served
    /// only while the lease holds in that term.
    pub fn term(&self) -> u64 {
        self.term.load(SeqCst)
    }

    /// A renewal sent at `sent` succeeded: the lease holds for `length`
    /// from then (Redis counts it from a moment after `sent`).
    pub fn renewed(&self, sent: Instant, length: Duration) {
        let sent_ms = self.ms(sent);
        let until = self.until_ms.load(SeqCst);
        if until != NEVER_HELD && sent_ms >= until {
            // It lapsed in between: what was claimed before is lost. The
            // term moves before the lease is extended, so a reader that
            // sees the new end also sees the new term.
            self.term_began_ms.store(sent_ms, SeqCst);
            self.term.fetch_add(1, SeqCst);
        }
        let new_until = sent_ms + length.as_millis() as u64;
        self.until_ms.fetch_max(new_until, SeqCst);
    }

    /// Whether a session claimed in `term` may still be served now.
    pub fn holds(&self, term: u64) -> bool {
        // The end first, then the term (see `renewed`).
        let until = self.until_ms.load(SeqCst);
        let now = self.ms(Instant::now());
        now < until && self.term.load(SeqCst) == term
    }

    /// Whether the lease lapsed once and its current term began less than
    /// `window` ago: what other nodes removed meanwhile (this node's
    /// presence entries, expired while it could not refresh them) is put
    /// back during that window.
    pub fn new_term_within(&self, window: Duration) -> bool {
        self.term.load(SeqCst) > 0
            && self.ms(Instant::now()) < self.term_began_ms.load(SeqCst) + window.as_millis() as u64
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEN: Duration = Duration::from_secs(6);

    #[test]
    fn holds_within_its_term_until_it_runs_out() {
        let l = Lease::default();
        assert!(!l.holds(0), "never renewed: not held");
        let t0 = Instant::now();
        l.renewed(t0, LEN);
        assert!(l.holds(0));
        assert!(!l.holds(1), "another term");
        // Renewed in time: the same term.
        l.renewed(t0 + Duration::from_secs(2), LEN);
        assert_eq!(l.term(), 0);
    }

    #[test]
    fn a_renewal_after_a_lapse_starts_a_new_term() {
        // A node up for a minute, renewed last 20 s ago.
        let l = Lease {
            origin: Instant::now() - Duration::from_secs(60),
            ..Lease::default()
        };
        let t0 = Instant::now() - Duration::from_secs(20);
        l.renewed(t0, LEN);
        assert!(!l.holds(0), "ran out 14 s ago");
        assert!(!l.new_term_within(LEN), "no lapse yet");
        l.renewed(Instant::now(), LEN);
        assert_eq!(l.term(), 1);
        assert!(l.new_term_within(LEN), "a term that just began");
        assert!(!l.holds(0), "what was claimed before the lapse stays lost");
        assert!(l.holds(1));
    }
}
