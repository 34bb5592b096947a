//! Cross-core interest summary: a cheap, conservative "might this core have
//! a subscriber for this topic?" test, so a PUBLISH wakes only cores that may
//! match.
//!
//! Each core owns the counts for its own subscriptions ([`LocalInterest`])
//! and mirrors "count > 0" into atomic bits ([`Interest`]) that other cores
//! read without locks. Filters are bucketed by their first topic level;
//! filters starting with a wildcard are counted separately. False positives
//! only cost a wasted batch; false negatives must not happen, so:
//! - a bit is set before the SUBSCRIBE is acknowledged, and
//! - a bit is cleared only by [`LocalInterest::sweep`] (on the core's timer
//!   tick), never when a count drops to zero. A session moving between two
//!   entries of the same core unindexes and re-indexes its filters in one
//!   go; clearing eagerly would let another core read "no interest" in that
//!   instant and skip messages (seen as 3 lost messages in the session-hop
//!   test before this rule).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Number of first-level buckets (a power of two).
const BUCKETS: usize = 4096;

/// FNV-1a: stable across cores and processes (unlike a seeded hasher).
fn bucket(level: &str) -> usize {
    let mut h: u32 = 0x811C_9DC5;
    for b in level.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h as usize % BUCKETS
}

fn first_level(s: &str) -> &str {
    s.split('/').next().unwrap_or("")
}

/// The shared, read-mostly half (one per core, read by every core).
pub struct Interest {
    bits: Box<[AtomicU64]>,
    wildcard_root: AtomicBool,
}

impl Default for Interest {
    fn default() -> Self {
        Interest {
            bits: (0..BUCKETS / 64).map(|_| AtomicU64::new(0)).collect(),
            wildcard_root: AtomicBool::new(false),
        }
    }
}

impl Interest {
    pub fn might_match(&self, topic: &str) -> bool {
        if !topic.starts_with('$') && self.wildcard_root.load(Ordering::Acquire) {
            return true;
        }
        let b = bucket(first_level(topic));
        self.bits[b / 64].load(Ordering::Acquire) & (1 << (b % 64)) != 0
    }
}

/// The owning core's counts.
pub struct LocalInterest {
    counts: Vec<u32>,
    /// Subscriptions whose filter starts with `+` or `#`.
    wildcards: u32,
    /// Buckets whose count reached zero since the last sweep.
    stale: Vec<usize>,
}

impl Default for LocalInterest {
    fn default() -> Self {
        LocalInterest {
            counts: vec![0; BUCKETS],
            wildcards: 0,
            stale: Vec::new(),
        }
    }
}

impl LocalInterest {
    /// Records one more subscription to `filter` (its non-shared form).
    pub fn add(&mut self, shared: &Interest, filter: &str) {
        let level = first_level(filter);
        if level == "+" || level == "#" {
            self.wildcards += 1;
            shared.wildcard_root.store(true, Ordering::Release);
            return;
        }
        let b = bucket(level);
        self.counts[b] += 1;
        // Idempotent: the bit may still be set from before (lazy clearing).
        shared.bits[b / 64].fetch_or(1 << (b % 64), Ordering::Release);
    }

    /// Records one subscription fewer. The shared bit stays set until the
    /// next [`LocalInterest::sweep`].
    pub fn remove(&mut self, filter: &str) {
        let level = first_level(filter);
        if level == "+" || level == "#" {
            self.wildcards = self.wildcards.saturating_sub(1);
            return;
        }
        let b = bucket(level);
        debug_assert!(self.counts[b] > 0);
        self.counts[b] = self.counts[b].saturating_sub(1);
        if self.counts[b] == 0 {
            self.stale.push(b);
        }
    }

    /// Clears the shared bits of buckets that are still empty. Called from
    /// the core's tick, never in the middle of an operation that removes and
    /// re-adds subscriptions.
    pub fn sweep(&mut self, shared: &Interest) {
        for b in self.stale.drain(..) {
            if self.counts[b] == 0 {
                shared.bits[b / 64].fetch_and(!(1 << (b % 64)), Ordering::Release);
            }
        }
        if self.wildcards == 0 {
            shared.wildcard_root.store(false, Ordering::Release);
        }
    }
}

/// What this core tells the rest of the cluster about its subscriptions
/// (`[kafka.cluster]`): filters by number of subscriptions, so that the
/// outbound bridge hears only of a filter's first subscription and of its
/// last one going. Off (and empty) unless the bridge asks for interest.
///
/// A filter that loses its last subscription is announced gone only at the
/// next sweep, and only if it is still unused, for the same reason as the
/// interest bits: a session moving between entries unindexes and
/// re-indexes in one go, and other nodes must not see a gap.
#[derive(Default)]
pub struct NodeInterest {
    /// Whether the bridge wants to know.
    pub on: bool,
    /// Subscriptions per filter (for a shared group, `$share/{g}/{f}` with
    /// a count of 1 while it has connected members).
    counts: ahash::AHashMap<Arc<str>, u32>,
    /// Filters whose count reached zero since the last sweep.
    stale: Vec<Arc<str>>,
}

impl NodeInterest {
    /// Tracking when `on`; otherwise every call is a no-op.
    pub fn new(on: bool) -> NodeInterest {
        NodeInterest {
            on,
            ..Default::default()
        }
    }

    /// One more subscription to `filter`; true when it is the first.
    pub fn add(&mut self, filter: &str) -> bool {
        if !self.on {
            return false;
        }
        match self.counts.get_mut(filter) {
            Some(n) => {
                // Also when it comes back from zero before the sweep: it was
                // never announced gone, so the world still knows it is here.
                *n += 1;
                false
            }
            None => {
                self.counts.insert(filter.into(), 1);
                true
            }
        }
    }

    /// One subscription fewer.
    pub fn remove(&mut self, filter: &str) {
        if let Some(n) = self.counts.get_mut(filter) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.stale.push(filter.into());
            }
        }
    }

    /// Filters still unused since they lost their last subscription: they
    /// are forgotten and returned, to be announced gone. Except those
    /// `held` (a departed session's copies are still handed on from this
    /// node: `bridge::departures`), looked at again at the next sweep.
    pub fn sweep(&mut self, held: impl Fn(&str) -> bool) -> Vec<Arc<str>> {
        let mut gone = Vec::new();
        let mut kept: Vec<Arc<str>> = Vec::new();
        for f in std::mem::take(&mut self.stale) {
            if self.counts.get(&f) != Some(&0) {
                continue;
            }
            if held(&f) {
                if !kept.contains(&f) {
                    kept.push(f);
                }
            } else {
                self.counts.remove(&f);
                gone.push(f);
            }
        }
        self.stale = kept;
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_interest_announces_first_and_last() {
        let mut n = NodeInterest::new(true);
        assert!(n.add("a/b"), "first subscription");
        assert!(!n.add("a/b"));
        n.remove("a/b");
        n.remove("a/b");
        assert!(
            !n.add("a/b"),
            "re-added before the sweep: never announced gone"
        );
        n.remove("a/b");
        assert_eq!(n.sweep(|_| false), vec![Arc::<str>::from("a/b")]);
        assert!(n.sweep(|_| false).is_empty());
        assert!(n.add("a/b"), "announced gone, so announced again");
        let mut off = NodeInterest::default();
        assert!(!off.add("x"), "off: nothing to announce");
    }

    #[test]
    fn a_held_filter_stays_announced_until_it_is_let_go() {
        let mut n = NodeInterest::new(true);
        n.add("fleet/#");
        n.remove("fleet/#");
        assert!(n.sweep(|_| true).is_empty(), "held");
        assert!(n.sweep(|_| true).is_empty(), "still held");
        assert_eq!(n.sweep(|_| false), vec![Arc::<str>::from("fleet/#")]);
        n.add("a/b");
        n.remove("a/b");
        assert!(n.sweep(|_| true).is_empty());
        assert!(!n.add("a/b"), "held, so never announced gone");
    }

    #[test]
    fn tracks_first_level_and_root_wildcards() {
        let shared = Interest::default();
        let mut local = LocalInterest::default();
        assert!(!shared.might_match("a/b"));
        local.add(&shared, "a/+");
        local.add(&shared, "a/b");
        assert!(shared.might_match("a/b"));
        assert!(shared.might_match("a"));
        local.remove("a/+");
        local.sweep(&shared);
        assert!(
            shared.might_match("a/x"),
            "one subscription under 'a' remains"
        );
        local.remove("a/b");
        assert!(
            shared.might_match("a/b"),
            "bits are only cleared by a sweep"
        );
        local.add(&shared, "a/c");
        local.sweep(&shared);
        assert!(
            shared.might_match("a/c"),
            "re-added before the sweep: stays set"
        );
        local.remove("a/c");
        local.sweep(&shared);
        assert!(!shared.might_match("a/b"));
        local.add(&shared, "#");
        assert!(shared.might_match("anything"));
        assert!(
            !shared.might_match("$SYS/x"),
            "root wildcards never match $ topics"
        );
        local.remove("#");
        assert!(shared.might_match("anything"), "until the sweep");
        local.sweep(&shared);
        assert!(!shared.might_match("anything"));
    }
}
