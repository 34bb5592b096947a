//! How a partition's offsets follow one another, and what the consumer
//! does about a gap.
//!
//! A partition's offsets only grow, so a record at or below the last one
//! read means the broker handed out a batch wrongly. tansu 0.6 did so
//! under the fault harness: it served a batch of five records all at the
//! batch's last offset (the records in between never reached the node),
//! and served two records again after a restarted node's catch-up
//! (duplicates). Counted (`tether_kafka_offsets_repeated_total`) and
//! logged; the record still goes to the cores (at least once).
//!
//! A gap is normal where a transaction's marker or compaction took the
//! offsets, so a source's gap is only counted
//! (`tether_kafka_offsets_skipped_total`). The cluster bus's inboxes have
//! neither (nodes write them with an idempotent producer, and nothing
//! compacts them), yet the soak saw tansu skip offsets of one, copies that
//! subscribers then missed. tansu 0.6 does so in two ways:
//! - A fetch from an offset inside a batch serves from the next batch: the
//!   rest of the batch is skipped. A node that restarts resumes its inbox
//!   from the offset it committed, which can be inside a batch.
//! - Its in-memory store moves a partition's high watermark before it
//!   writes the batch that took the offsets, and a fetch lists the batches
//!   below the watermark: one that runs in between serves the next batch
//!   and not that one.
//!
//! So an inbox reads a gap again ([`OnGap::ReadAgain`]): the consumer drops
//! the record after the gap and seeks back, up to [`REREADS`] times, with a
//! growing pause (for the second case) and from further back each time
//! (for the first: an offset at or before the batch's first one is served
//! whole). Records before the gap that a re-read serves again are dropped.
//! A gap a re-read fills was the broker's (`tether_kafka_gaps_filled_total`);
//! one still there after the last is passed over and counted as skipped.
//! The inbox knows where it resumes ([`Offsets::expect`]), so a gap at its
//! first record is noticed too.

use std::time::Duration;

/// How many times the consumer reads a cluster inbox's gap again before
/// it takes those offsets as never written. The `n`th re-read starts
/// `2^(n-1) - 1` offsets before the gap, so the last one reaches a batch
/// of up to 2,048 records begun before it.
pub(super) const REREADS: u32 = 12;
/// Pause before the first re-read of a gap; it doubles at each after, up
/// to [`REREAD_PAUSE_MAX`] (1.4 s in all). The batch a fetch missed
/// because the broker had not written it yet was in flight while the
/// record after it was fetched, sent and handed to the consumer, so the
/// first re-read usually finds it; the later pauses cover a broker that
/// was descheduled in between. The consumer waits out the pause (other
/// partitions too): a gap is rare, and the wait is bounded.
const REREAD_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between two re-reads of one gap.
const REREAD_PAUSE_MAX: Duration = Duration::from_millis(160);

/// What a consumer does about a gap in a partition's offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OnGap {
    /// Counts it and hands the record on (sources: a transaction's marker
    /// or compaction leaves gaps).
    Pass,
    /// Reads the partition again around the gap (a cluster inbox).
    ReadAgain,
}

/// What [`Offsets::advance`] saw.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Advance {
    /// The next offset, or the partition's first.
    Next,
    /// The first offset of a gap, served by a re-read after `times`.
    Filled { times: u32 },
    /// Offsets after `last` and before this one were not served, and will
    /// not be asked for again.
    Skipped { last: i64 },
    /// Offsets after the partition's last one and before this one were not
    /// served: drop this record, wait `pause`, and read the partition
    /// again from `at`.
    ReadAgain { at: i64, pause: Duration },
    /// Read before, served again by a gap's re-read: drop it.
    Before,
    /// Not past `last`: served again.
    Repeated { last: i64 },
}

/// A gap being read again: it starts after its partition's last offset.
struct Gap {
    topic: String,
    partition: i32,
    /// Re-reads so far.
    times: u32,
}

/// The last offset read per partition, and the gaps being read again.
pub(super) struct Offsets {
    on_gap: OnGap,
    last: Vec<(String, i32, i64)>,
    gaps: Vec<Gap>,
}

impl Offsets {
    pub(super) fn new(on_gap: OnGap) -> Self {
        Self {
            on_gap,
            last: Vec::new(),
            gaps: Vec::new(),
        }
    }

    /// The partition's next record is `next`: where its consumer resumes.
    pub(super) fn expect(&mut self, topic: &str, partition: i32, next: i64) {
        self.set_last(topic, partition, next - 1);
    }

    /// Notes `offset` and says how it follows the partition's last one.
    pub(super) fn advance(&mut self, topic: &str, partition: i32, offset: i64) -> Advance {
        let Some(last) = self.last_of(topic, partition) else {
            self.last.push((topic.to_string(), partition, offset));
            return Advance::Next;
        };
        let gap = self
            .gaps
            .iter()
            .position(|g| g.partition == partition && g.topic == topic);
        if offset <= last {
            return match gap {
                Some(_) => Advance::Before,
                None => Advance::Repeated { last },
            };
        }
        if offset == last + 1 {
            self.set_last(topic, partition, offset);
            return match gap {
                Some(i) => Advance::Filled {
                    times: self.gaps.swap_remove(i).times,
                },
                None => Advance::Next,
            };
        }
        // `last` stays before the gap until it is filled or given up.
        let from = last + 1;
        if self.on_gap == OnGap::ReadAgain {
            let times = match gap {
                Some(i) => {
                    self.gaps[i].times += 1;
                    self.gaps[i].times
                }
                None => {
                    self.gaps.push(Gap {
                        topic: topic.to_string(),
                        partition,
                        times: 1,
                    });
                    1
                }
            };
            if times <= REREADS {
                let back = (1i64 << (times - 1)) - 1;
                let pause = REREAD_PAUSE * (1 << (times - 1).min(8));
                return Advance::ReadAgain {
                    at: (from - back).max(0),
                    pause: pause.min(REREAD_PAUSE_MAX),
                };
            }
        }
        self.skip(topic, partition, offset);
        Advance::Skipped { last }
    }

    /// Takes the records before `offset` as never written: the partition
    /// goes on from `offset` (after the last re-read, or when a seek back
    /// failed).
    pub(super) fn skip(&mut self, topic: &str, partition: i32, offset: i64) {
        self.set_last(topic, partition, offset);
        self.gaps
            .retain(|g| !(g.partition == partition && g.topic == topic));
    }

    fn last_of(&self, topic: &str, partition: i32) -> Option<i64> {
        self.last
            .iter()
            .find(|(t, p, _)| *p == partition && t == topic)
            .map(|(_, _, last)| *last)
    }

    fn set_last(&mut self, topic: &str, partition: i32, offset: i64) {
        match self
            .last
            .iter_mut()
            .find(|(t, p, _)| *p == partition && t == topic)
        {
            Some((_, _, last)) => *last = offset,
            None => self.last.push((topic.to_string(), partition, offset)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Advance, Offsets, OnGap, REREADS, REREAD_PAUSE, REREAD_PAUSE_MAX};

    #[test]
    fn an_offset_that_does_not_advance_or_skips_is_noticed_per_partition() {
        let mut o = Offsets::new(OnGap::Pass);
        assert_eq!(o.advance("t", 0, 5), Advance::Next, "a partition's first");
        assert_eq!(o.advance("t", 1, 3), Advance::Next, "another partition");
        assert_eq!(o.advance("u", 0, 1), Advance::Next, "another topic");
        assert_eq!(o.advance("t", 0, 6), Advance::Next);
        assert_eq!(o.advance("t", 0, 10), Advance::Skipped { last: 6 });
        assert_eq!(
            o.advance("t", 0, 10),
            Advance::Repeated { last: 10 },
            "served again"
        );
        assert_eq!(o.advance("t", 0, 9), Advance::Repeated { last: 10 });
        assert_eq!(o.advance("t", 0, 11), Advance::Next);
    }

    #[test]
    fn an_inbox_reads_a_gap_again_from_further_back_until_it_is_filled() {
        let mut o = Offsets::new(OnGap::ReadAgain);
        assert_eq!(o.advance("i", 1, 7), Advance::Next);
        assert_eq!(
            o.advance("i", 1, 10),
            Advance::ReadAgain {
                at: 8,
                pause: REREAD_PAUSE
            },
            "first from the gap itself"
        );
        assert_eq!(
            o.advance("i", 0, 3),
            Advance::Next,
            "other partitions go on meanwhile"
        );
        assert_eq!(
            o.advance("i", 1, 10),
            Advance::ReadAgain {
                at: 7,
                pause: REREAD_PAUSE * 2
            },
            "the same gap again: from before it, after a longer pause"
        );
        assert_eq!(
            o.advance("i", 1, 10),
            Advance::ReadAgain {
                at: 5,
                pause: REREAD_PAUSE * 4
            }
        );
        assert_eq!(
            o.advance("i", 1, 5),
            Advance::Before,
            "read before: dropped"
        );
        assert_eq!(o.advance("i", 1, 7), Advance::Before);
        assert_eq!(o.advance("i", 1, 8), Advance::Filled { times: 3 });
        assert_eq!(o.advance("i", 1, 9), Advance::Next);
        assert_eq!(o.advance("i", 1, 10), Advance::Next);
        assert_eq!(
            o.advance("i", 1, 10),
            Advance::Repeated { last: 10 },
            "no gap being read: a repeat again"
        );
        assert_eq!(
            o.advance("i", 1, 12),
            Advance::ReadAgain {
                at: 11,
                pause: REREAD_PAUSE
            },
            "a later gap starts its count again"
        );
    }

    #[test]
    fn an_inbox_gap_still_there_after_the_last_re_read_is_passed_over() {
        let mut o = Offsets::new(OnGap::ReadAgain);
        assert_eq!(o.advance("i", 0, 4000), Advance::Next);
        let mut pauses = std::time::Duration::ZERO;
        for times in 1..=REREADS {
            match o.advance("i", 0, 4006) {
                Advance::ReadAgain { at, pause } => {
                    assert_eq!(at, 4001 - ((1 << (times - 1)) - 1), "re-read {times}");
                    assert!(pause <= REREAD_PAUSE_MAX);
                    pauses += pause;
                }
                other => panic!("re-read {times}: {other:?}"),
            }
        }
        assert!(pauses < std::time::Duration::from_secs(2), "{pauses:?}");
        assert_eq!(o.advance("i", 0, 4006), Advance::Skipped { last: 4000 });
        assert_eq!(o.advance("i", 0, 4007), Advance::Next, "and it goes on");
        assert!(
            matches!(o.advance("i", 0, 4009), Advance::ReadAgain { at: 4008, .. }),
            "a new gap is read again"
        );
        o.skip("i", 0, 4009);
        assert_eq!(
            o.advance("i", 0, 4010),
            Advance::Next,
            "skip: a failed seek goes on"
        );
    }

    #[test]
    fn where_the_inbox_resumes_is_known_so_a_gap_at_its_first_record_is_read_again() {
        let mut o = Offsets::new(OnGap::ReadAgain);
        o.expect("i", 0, 50);
        assert!(matches!(
            o.advance("i", 0, 60),
            Advance::ReadAgain { at: 50, .. }
        ));
        o.expect("i", 1, 0);
        assert_eq!(o.advance("i", 1, 0), Advance::Next);
        assert!(matches!(o.advance("i", 1, 1), Advance::Next));
        assert_eq!(
            o.advance("i", 2, 9),
            Advance::Next,
            "nothing expected: the first is taken"
        );
    }

    #[test]
    fn a_re_read_never_seeks_before_the_partitions_start() {
        let mut o = Offsets::new(OnGap::ReadAgain);
        o.expect("i", 0, 1);
        assert!(matches!(
            o.advance("i", 0, 5),
            Advance::ReadAgain { at: 1, .. }
        ));
        assert!(matches!(
            o.advance("i", 0, 5),
            Advance::ReadAgain { at: 0, .. }
        ));
        assert!(matches!(
            o.advance("i", 0, 5),
            Advance::ReadAgain { at: 0, .. }
        ));
    }
}
