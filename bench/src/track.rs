//! Loss, duplicate and order checking per publisher.
//!
//! A subscriber keeps one [`SeqTrack`] per publisher it hears from: a bitmap
//! of the sequence numbers seen (one bit per message, so a 10-million
//! message run costs 1.25 MB per publisher-subscriber pair) and the highest
//! sequence so far. From those:
//! - a sequence already in the bitmap is a **duplicate**;
//! - a new sequence below the highest one is **reordered** (it arrived after
//!   a later message from the same publisher);
//! - what was expected but never arrived is **lost**. Expected is the
//!   publisher's own count when known (the end marker, or the sent count of
//!   an in-process publisher), else highest + 1.
//!
//! Bitmaps of several subscribers can be merged ([`SeqTrack::merge`]): the
//! members of a shared subscription together must see every message once.

use ahash::AHashMap;

/// What one arriving message was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    InOrder,
    Duplicate,
    Reordered,
}

/// The messages of one publisher seen by one subscriber (or merged group).
#[derive(Debug, Clone, Default)]
pub struct SeqTrack {
    bits: Vec<u64>,
    /// Highest sequence seen plus one; 0 before the first message.
    next: u64,
    pub distinct: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// The publisher's own sent count, from its end marker.
    pub announced: Option<u64>,
}

impl SeqTrack {
    pub fn record(&mut self, seq: u32) -> Verdict {
        let s = u64::from(seq);
        let (word, bit) = ((s / 64) as usize, s % 64);
        if word >= self.bits.len() {
            // Grow geometrically so a steady stream costs amortised O(1).
            let want = (word + 1).max(self.bits.len() * 2);
            self.bits.resize(want, 0);
        }
        let mask = 1u64 << bit;
        if self.bits[word] & mask != 0 {
            self.duplicates += 1;
            return Verdict::Duplicate;
        }
        self.bits[word] |= mask;
        self.distinct += 1;
        if s < self.next {
            self.reordered += 1;
            Verdict::Reordered
        } else {
            self.next = s + 1;
            Verdict::InOrder
        }
    }

    /// Number of messages this subscriber should have had.
    pub fn expected(&self) -> u64 {
        self.announced.unwrap_or(self.next).max(self.next)
    }

    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.distinct)
    }

    /// Folds `other` (another member of the same group) into `self`. A
    /// sequence both saw counts as a duplicate of the group.
    pub fn merge(&mut self, other: &SeqTrack) {
        if other.bits.len() > self.bits.len() {
            self.bits.resize(other.bits.len(), 0);
        }
        let mut overlap = 0u64;
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            overlap += u64::from((*a & *b).count_ones());
            *a |= *b;
        }
        self.distinct += other.distinct - overlap;
        self.duplicates += other.duplicates + overlap;
        self.reordered += other.reordered;
        self.next = self.next.max(other.next);
        self.announced = self.announced.max(other.announced);
    }
}

/// Every publisher one subscriber (or group) heard from.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    pub publishers: AHashMap<u32, SeqTrack>,
    /// Messages whose payload carried no harness header.
    pub foreign: u64,
}

impl Tracker {
    pub fn record(&mut self, publisher: u32, seq: u32) -> Verdict {
        self.publishers.entry(publisher).or_default().record(seq)
    }

    pub fn announce(&mut self, publisher: u32, sent: u64) {
        self.publishers.entry(publisher).or_default().announced = Some(sent);
    }

    pub fn merge(&mut self, other: &Tracker) {
        for (p, t) in &other.publishers {
            self.publishers.entry(*p).or_default().merge(t);
        }
        self.foreign += other.foreign;
    }

    /// Totals from this subscriber's own view (see [`SeqTrack::expected`]).
    pub fn totals(&self) -> Integrity {
        let mut t = Integrity::default();
        for s in self.publishers.values() {
            let expected = s.expected();
            t.expected += expected;
            t.distinct += s.distinct;
            t.duplicates += s.duplicates;
            t.reordered += s.reordered;
            t.lost += expected.saturating_sub(s.distinct);
        }
        t
    }
}

/// Summed integrity figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Integrity {
    pub expected: u64,
    pub distinct: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub lost: u64,
}

impl Integrity {
    pub fn add(&mut self, o: &Integrity) {
        self.expected += o.expected;
        self.distinct += o.distinct;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.lost += o.lost;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(seqs: &[u32]) -> SeqTrack {
        let mut t = SeqTrack::default();
        for &s in seqs {
            t.record(s);
        }
        t
    }

    #[test]
    fn in_order_stream_is_clean() {
        let t = track(&(0..1000).collect::<Vec<_>>());
        assert_eq!(
            (t.distinct, t.duplicates, t.reordered, t.lost()),
            (1000, 0, 0, 0)
        );
    }

    #[test]
    fn gaps_are_lost_unless_filled_later() {
        let t = track(&[0, 1, 4, 5]);
        assert_eq!((t.lost(), t.reordered), (2, 0));
        let t = track(&[0, 1, 4, 2, 3, 5]);
        assert_eq!((t.lost(), t.reordered, t.duplicates), (0, 2, 0));
    }

    #[test]
    fn duplicates_are_counted_once_each_and_not_as_reorders() {
        let t = track(&[0, 1, 1, 2, 0, 2]);
        assert_eq!((t.distinct, t.duplicates, t.reordered), (3, 3, 0));
    }

    #[test]
    fn tail_loss_needs_the_announced_count() {
        let mut t = track(&[0, 1, 2]);
        assert_eq!(t.lost(), 0, "without the count, a lost tail is invisible");
        t.announced = Some(5);
        assert_eq!(t.lost(), 2);
    }

    #[test]
    fn large_sequences_grow_the_bitmap() {
        let t = track(&[1_000_000, 5, 70_000]);
        assert_eq!((t.distinct, t.reordered, t.expected()), (3, 2, 1_000_001));
    }

    #[test]
    fn shared_members_merge_into_one_view() {
        let a = track(&[0, 2, 4, 6]);
        let b = track(&[1, 3, 5, 6]);
        let mut g = a.clone();
        g.merge(&b);
        assert_eq!((g.distinct, g.duplicates, g.lost()), (7, 1, 0));
        assert_eq!(g.reordered, 0, "each member saw its own share in order");
    }

    #[test]
    fn tracker_totals_sum_publishers() {
        let mut tr = Tracker::default();
        for s in [0, 1, 3] {
            tr.record(9, s);
        }
        tr.record(4, 0);
        tr.record(4, 0);
        tr.announce(4, 2);
        let t = tr.totals();
        assert_eq!((t.expected, t.distinct, t.lost, t.duplicates), (6, 4, 2, 1));
    }
}
