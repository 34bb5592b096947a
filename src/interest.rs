//! Cross-core interest summary: a cheap, conservative "might this core have
//! a subscriber for this topic?" test, so a PUBLISH wakes only cores that may
//! match.
//!
//! Each core owns the counts for its own subscriptions ([`LocalInterest`])
//! and mirrors "count > 0" into atomic bits ([`Interest`]) that other cores
//! read without locks. Filters are bucketed by their first topic level;
//! filters starting with a wildcard are counted separately. False positives
//! only cost a wasted batch; false negatives cannot happen because a core
//! sets the bit before it acknowledges the SUBSCRIBE.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

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
    wildcard_root: AtomicU32,
}

impl Default for Interest {
    fn default() -> Self {
        Interest {
            bits: (0..BUCKETS / 64).map(|_| AtomicU64::new(0)).collect(),
            wildcard_root: AtomicU32::new(0),
        }
    }
}

impl Interest {
    pub fn might_match(&self, topic: &str) -> bool {
        if !topic.starts_with('$') && self.wildcard_root.load(Ordering::Acquire) > 0 {
            return true;
        }
        let b = bucket(first_level(topic));
        self.bits[b / 64].load(Ordering::Acquire) & (1 << (b % 64)) != 0
    }
}

/// The owning core's counts.
pub struct LocalInterest {
    counts: Vec<u32>,
}

impl Default for LocalInterest {
    fn default() -> Self {
        LocalInterest {
            counts: vec![0; BUCKETS],
        }
    }
}

impl LocalInterest {
    /// Records one more subscription to `filter` (its non-shared form).
    pub fn add(&mut self, shared: &Interest, filter: &str) {
        let level = first_level(filter);
        if level == "+" || level == "#" {
            shared.wildcard_root.fetch_add(1, Ordering::Release);
            return;
        }
        let b = bucket(level);
        self.counts[b] += 1;
        if self.counts[b] == 1 {
            shared.bits[b / 64].fetch_or(1 << (b % 64), Ordering::Release);
        }
    }

    pub fn remove(&mut self, shared: &Interest, filter: &str) {
        let level = first_level(filter);
        if level == "+" || level == "#" {
            shared.wildcard_root.fetch_sub(1, Ordering::Release);
            return;
        }
        let b = bucket(level);
        debug_assert!(self.counts[b] > 0);
        self.counts[b] = self.counts[b].saturating_sub(1);
        if self.counts[b] == 0 {
            shared.bits[b / 64].fetch_and(!(1 << (b % 64)), Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_first_level_and_root_wildcards() {
        let shared = Interest::default();
        let mut local = LocalInterest::default();
        assert!(!shared.might_match("a/b"));
        local.add(&shared, "a/+");
        local.add(&shared, "a/b");
        assert!(shared.might_match("a/b"));
        assert!(shared.might_match("a"));
        local.remove(&shared, "a/+");
        assert!(
            shared.might_match("a/x"),
            "one subscription under 'a' remains"
        );
        local.remove(&shared, "a/b");
        assert!(!shared.might_match("a/b"));
        local.add(&shared, "#");
        assert!(shared.might_match("anything"));
        assert!(
            !shared.might_match("$SYS/x"),
            "root wildcards never match $ topics"
        );
        local.remove(&shared, "#");
        assert!(!shared.might_match("anything"));
    }
}
