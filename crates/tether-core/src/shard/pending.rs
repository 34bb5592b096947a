//! Requests a core has waiting on bridge threads, and the queues their
//! answers come back on.
//!
//! Every request that leaves the core for a seam's slow path (an
//! authentication verdict, an authorization permit, a session claim, an
//! outbound acknowledgement) takes a slot in [`Pending`]; the slot's index
//! is the token of the [`ReplyTo`](crate::bridge::ReplyTo) handed out, and
//! the answer, arriving on the matching queue of [`ReplyReceivers`], frees
//! it. Each kind has its own bound (`runtime.max_pending_*`,
//! `runtime.max_outbound_inflight`): over it, a CONNECT is refused with
//! 0x89, and publishers stop being read until slots free up.

use std::sync::Arc;

use crossbeam_channel::Receiver;
use slab::Slab;

use crate::auth::{Permit, Verdict};
use crate::bridge::outbound::Produced;
use crate::bridge::{Bell, Receipt, ReplyQueue};
use crate::config::RuntimeConfig;
use crate::id::ConnKey;
use crate::session::Message;
use crate::store::ClaimResult;

/// The kinds of pending requests, each with its own bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingKind {
    /// Authentication verdicts.
    Verdict,
    /// Session claims.
    Claim,
    /// Authorization permits.
    Permit,
    /// Messages handed to the outbound bridge.
    Produce,
}

impl PendingKind {
    fn index(self) -> usize {
        self as usize
    }
}

/// What waits for one answer.
pub enum Waiting {
    /// A CONNECT (in `AwaitingVerdict`) for its authentication verdict.
    Verdict {
        /// The connection.
        key: ConnKey,
    },
    /// A CONNECT (in `AwaitingHandover`) for its claim of a client id.
    Claim {
        /// The connection.
        key: ConnKey,
        /// The id claimed (released if the connection is gone by then).
        client_id: Arc<str>,
    },
    /// A client's parked PUBLISH or SUBSCRIBE for a permit.
    Permit {
        /// The connection.
        key: ConnKey,
    },
    /// An API publish for a permit.
    ApiPermit(Box<ApiPublish>),
    /// A client's message for the outbound bridge; its publish ack is the
    /// `seq`-th held ack of the connection.
    Produce {
        /// The connection.
        key: ConnKey,
        /// Position among the connection's held acks.
        seq: u64,
    },
    /// An API publish's receipt for the outbound bridge.
    ApiProduce {
        /// Where the HTTP handler waits.
        done: Receipt,
        /// The message id it answers with.
        id: u64,
    },
    /// A message sent out without waiting (its answer is only counted).
    Forgotten,
}

impl Waiting {
    /// The bound it counts against.
    pub fn kind(&self) -> PendingKind {
        match self {
            Waiting::Verdict { .. } => PendingKind::Verdict,
            Waiting::Claim { .. } => PendingKind::Claim,
            Waiting::Permit { .. } | Waiting::ApiPermit(_) => PendingKind::Permit,
            Waiting::Produce { .. } | Waiting::ApiProduce { .. } | Waiting::Forgotten => {
                PendingKind::Produce
            }
        }
    }
}

/// An API publish waiting for the authorizer.
pub struct ApiPublish {
    /// The message, built and validated.
    pub msg: Message,
    /// Where the HTTP handler waits for the outcome.
    pub done: Option<Receipt>,
}

/// One core's table of pending requests.
pub struct Pending {
    table: Slab<Waiting>,
    counts: [usize; 4],
    limits: [usize; 4],
}

impl Pending {
    /// An empty table with the bounds from `[runtime]`.
    pub fn new(r: &RuntimeConfig) -> Pending {
        Pending {
            table: Slab::new(),
            counts: [0; 4],
            limits: [
                r.max_pending_verdicts,
                r.max_pending_claims,
                r.max_pending_permits,
                r.max_outbound_inflight,
            ],
        }
    }

    /// Whether one more request of `kind` fits.
    pub fn has_room(&self, kind: PendingKind) -> bool {
        self.counts[kind.index()] < self.limits[kind.index()]
    }

    /// Records `w`; its token, or `None` when its kind is at its bound.
    pub fn insert(&mut self, w: Waiting) -> Option<u32> {
        let kind = w.kind();
        if !self.has_room(kind) {
            return None;
        }
        self.counts[kind.index()] += 1;
        Some(self.table.insert(w) as u32)
    }

    /// Records `w` even past its kind's bound. For the outbound bridge,
    /// whose callers check [`Pending::has_room`] before taking a packet (a
    /// publish resumed after a deferred permit was taken before, so the
    /// bound is exceeded by at most `runtime.max_pending_permits`), and
    /// for Kafka records, which are never refused for room (the consumer's
    /// window bounds them instead).
    pub fn insert_past_bound(&mut self, w: Waiting) -> u32 {
        self.counts[w.kind().index()] += 1;
        self.table.insert(w) as u32
    }

    /// Takes what waited for `token`'s answer.
    pub fn take(&mut self, token: u32) -> Option<Waiting> {
        let w = self.table.try_remove(token as usize)?;
        self.counts[w.kind().index()] -= 1;
        Some(w)
    }

    /// Requests of `kind` waiting.
    pub fn count(&self, kind: PendingKind) -> usize {
        self.counts[kind.index()]
    }

    /// Whether publishers must stop being read: permits or outbound
    /// acknowledgements are at their bound.
    pub fn saturated(&self) -> bool {
        !self.has_room(PendingKind::Permit) || !self.has_room(PendingKind::Produce)
    }
}

/// The core's side of its reply queues: where [`ReplyTo`](crate::bridge::ReplyTo)
/// handles come from.
pub struct Returns {
    /// Authentication verdicts.
    pub verdicts: ReplyQueue<Verdict>,
    /// Authorization permits.
    pub permits: ReplyQueue<Permit>,
    /// Session claims.
    pub claims: ReplyQueue<ClaimResult>,
    /// Outbound acknowledgements.
    pub produced: ReplyQueue<Produced>,
}

/// The receiving ends, drained by the core's inbox task.
pub struct ReplyReceivers {
    /// Authentication verdicts.
    pub verdicts: Receiver<(u32, Verdict)>,
    /// Authorization permits.
    pub permits: Receiver<(u32, Permit)>,
    /// Session claims.
    pub claims: Receiver<(u32, ClaimResult)>,
    /// Outbound acknowledgements.
    pub produced: Receiver<(u32, Produced)>,
}

impl Returns {
    /// One queue per kind of answer, all ringing `bell`.
    pub fn new(bell: Arc<Bell>) -> (Returns, ReplyReceivers) {
        let (verdicts, verdicts_rx) = ReplyQueue::new(bell.clone());
        let (permits, permits_rx) = ReplyQueue::new(bell.clone());
        let (claims, claims_rx) = ReplyQueue::new(bell.clone());
        let (produced, produced_rx) = ReplyQueue::new(bell);
        (
            Returns {
                verdicts,
                permits,
                claims,
                produced,
            },
            ReplyReceivers {
                verdicts: verdicts_rx,
                permits: permits_rx,
                claims: claims_rx,
                produced: produced_rx,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_own_bound_and_taking_frees_the_slot() {
        let r = RuntimeConfig {
            max_pending_verdicts: 1,
            max_pending_permits: 2,
            ..Default::default()
        };
        let mut p = Pending::new(&r);
        let key = ConnKey { index: 0, gen: 0 };
        let v = p.insert(Waiting::Verdict { key }).unwrap();
        assert!(
            p.insert(Waiting::Verdict { key }).is_none(),
            "verdicts full"
        );
        assert!(!p.saturated());
        p.insert(Waiting::Permit { key }).unwrap();
        p.insert(Waiting::Permit { key }).unwrap();
        assert!(p.saturated(), "permits at their bound pause publishers");
        assert!(matches!(p.take(v), Some(Waiting::Verdict { .. })));
        assert!(p.take(v).is_none(), "one answer per token");
        assert!(p.insert(Waiting::Verdict { key }).is_some());
        assert_eq!(p.count(PendingKind::Permit), 2);
    }
}
