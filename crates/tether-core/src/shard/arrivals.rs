//! Messages that reach a core while a persistent session is being claimed
//! on it, delivered to the session once it is installed.
//!
//! A session that moves to this node is claimed in Redis, which first asks
//! its old node to hand it over (close the connection, flush its writes),
//! then loads what that node stored. Until the session is installed here
//! it has no subscriptions on this core, so every copy that reaches the
//! core for it meanwhile found nobody:
//! - a message published on this node, or consumed from the cluster inbox
//!   for the node's other subscribers, after the old node's last write;
//! - a copy the old node hands on (`Scope::Session`) for a session that
//!   left it, which goes to every node and lands here before the install.
//!
//! The fault harness lost such copies after takeovers over a lossy link,
//! where the claim took a second. So while a claim that may restore a
//! session is in flight, the core keeps every message it fans out
//! ([`Arrivals`], bounded by [`ARRIVALS_MAX`]), and other cores route to
//! it even without a matching subscription (`CoreVisible::claims_open`).
//! The install replays what came since its claim began against the
//! restored subscriptions. Copies the old node stored too arrive twice
//! (at least once); the order of first copies holds, since what the store
//! had came first.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::delivery::count;
use super::fanout::one_copy;
use super::{Core, CoreState};
use crate::codec::{topic, QoS};
use crate::id::{ConnKey, GroupKey};
use crate::session::Message;
use crate::stats::bump;

/// Messages a core holds at most for its claims in flight. A claim lasts
/// a Redis round trip, or a handover (milliseconds; seconds when the old
/// node does not answer): 64k covers seconds of a busy core's fan-out at
/// a few MB of `Arc`s. Past it, messages are counted
/// (`tether_claim_arrivals_overflowed_total`) and not held.
pub const ARRIVALS_MAX: usize = 64 * 1024;
/// A claim open longer than this stops holding messages for it: its
/// answer waits at most `store.request_timeout_ms` and a handover's lease
/// (seconds), so one this old lost its entry without closing.
pub const ARRIVALS_MAX_AGE_MS: u64 = 60_000;

/// The claims in flight on a core and the messages it fanned out since
/// the oldest of them began.
#[derive(Debug, Default)]
pub struct Arrivals {
    /// Each claim: its entry, the number (see `dropped`) of the first
    /// message after it began, and when it began (tick).
    open: Vec<(ConnKey, usize, u64)>,
    /// Messages since the oldest open claim began.
    held: VecDeque<Arc<Message>>,
    /// Messages dropped from the front of `held` so far: `held[0]` is
    /// message number `dropped`.
    dropped: usize,
}

impl Arrivals {
    /// Whether a claim is in flight (the fan-out then holds its messages).
    #[inline]
    pub fn is_open(&self) -> bool {
        !self.open.is_empty()
    }

    /// Keeps `msg` for the claims in flight; `false` when full.
    pub fn hold(&mut self, msg: &Arc<Message>) -> bool {
        if self.held.len() >= ARRIVALS_MAX {
            return false;
        }
        self.held.push_back(msg.clone());
        true
    }

    fn open(&mut self, key: ConnKey, tick: u64) {
        self.close(key);
        self.open.push((key, self.dropped + self.held.len(), tick));
    }

    /// Ends `key`'s claim; what arrived since it began, if it was open.
    fn close(&mut self, key: ConnKey) -> Option<Vec<Arc<Message>>> {
        let i = self.open.iter().position(|(k, _, _)| *k == key)?;
        let (_, from, _) = self.open.swap_remove(i);
        let since = self.held.range(from - self.dropped..).cloned().collect();
        self.forget_unneeded();
        Some(since)
    }

    /// Drops the messages no open claim needs (older than the oldest
    /// one's start), so that overlapping claims (a reconnect storm) do not
    /// keep everything since the first.
    fn forget_unneeded(&mut self) {
        let oldest = self
            .open
            .iter()
            .map(|(_, from, _)| *from)
            .min()
            .unwrap_or(self.dropped + self.held.len());
        while self.dropped < oldest && self.held.pop_front().is_some() {
            self.dropped += 1;
        }
    }

    /// Ends the claims open since before `oldest` (ticks).
    fn expire(&mut self, oldest: u64) {
        self.open.retain(|(_, _, at)| *at >= oldest);
        self.forget_unneeded();
    }

    fn len(&self) -> u32 {
        self.open.len() as u32
    }
}

impl Core {
    /// A claim that may restore a session began for `key`.
    pub(super) fn open_arrivals(&self, st: &mut CoreState, key: ConnKey) {
        st.arrivals.open(key, self.now_tick());
        self.publish_claims_open(st);
    }

    /// `key`'s claim ended without a session to install here (refused,
    /// handed over in memory, superseded, or the entry is gone).
    pub(super) fn close_arrivals(&self, st: &mut CoreState, key: ConnKey) {
        if st.arrivals.close(key).is_some() {
            self.publish_claims_open(st);
        }
    }

    /// Ends claims that stayed open past [`ARRIVALS_MAX_AGE_MS`] (on the
    /// core's tick).
    pub(super) fn expire_arrivals(&self, st: &mut CoreState) {
        if st.arrivals.is_open() {
            let oldest = self
                .now_tick()
                .saturating_sub(self.ticks(ARRIVALS_MAX_AGE_MS));
            st.arrivals.expire(oldest);
            self.publish_claims_open(st);
        }
    }

    /// Keeps a message being fanned out for the claims in flight.
    pub(super) fn hold_arrival(&self, st: &mut CoreState, msg: &Arc<Message>) {
        if !st.arrivals.hold(msg) {
            bump(&self.stats().claim_arrivals_overflowed, 1);
        }
    }

    /// The session of `key` was installed: offers it what reached the core
    /// since its claim began and matches its subscriptions.
    pub(super) fn replay_arrivals(&self, st: &mut CoreState, key: ConnKey) {
        let Some(msgs) = st.arrivals.close(key) else {
            return;
        };
        self.publish_claims_open(st);
        let now = self.now();
        let stats = self.stats();
        let CoreState { conns, journal, .. } = st;
        let Some(e) = super::entry_in(conns, key) else {
            return;
        };
        for msg in msgs {
            if !msg
                .scope
                .serves_session(e.client_id.as_deref(), e.session.durable.as_deref())
            {
                continue;
            }
            let origin = e.id;
            let matching = e
                .session
                .subs
                .iter()
                .filter(|(f, opts, _)| {
                    GroupKey::parse(f).is_none()
                        && topic::matches(f, &msg.topic)
                        && !(opts.no_local && msg.origin == Some(origin))
                })
                .map(|(_, opts, id)| (*opts, *id));
            let Some(d) = one_copy(&msg, matching) else {
                continue;
            };
            if d.qos != QoS::AtMostOnce {
                bump(&stats.claim_arrivals_replayed, 1);
            }
            count(self.offer_mirrored(journal, e, d, now), stats);
        }
    }

    fn publish_claims_open(&self, st: &CoreState) {
        self.visible().claims_open.store(st.arrivals.len(), Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Publication;

    fn msg(n: u64) -> Arc<Message> {
        Arc::new(Message::new(
            n,
            Publication {
                topic: "t".into(),
                payload: Default::default(),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: None,
                origin: None,
            },
            std::time::Instant::now(),
        ))
    }

    fn key(index: u32) -> ConnKey {
        ConnKey { index, gen: 0 }
    }

    #[test]
    fn a_claim_gets_what_arrived_since_it_began_and_the_last_one_clears() {
        let mut a = Arrivals::default();
        assert!(!a.is_open());
        a.open(key(1), 0);
        a.hold(&msg(1));
        a.open(key(2), 0);
        a.hold(&msg(2));
        let ids = |v: Vec<Arc<Message>>| v.iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(a.close(key(2)).map(ids), Some(vec![2]));
        assert!(a.is_open(), "claim 1 is still in flight");
        a.hold(&msg(3));
        assert_eq!(a.close(key(1)).map(ids), Some(vec![1, 2, 3]));
        assert!(a.close(key(1)).is_none());
        // Overlapping claims keep only what the oldest open one needs.
        a.open(key(1), 0);
        a.hold(&msg(4));
        a.open(key(2), 0);
        a.hold(&msg(5));
        a.close(key(1));
        assert_eq!(a.held.len(), 1, "message 4 was only claim 1's");
        a.open(key(3), 0);
        a.hold(&msg(6));
        assert_eq!(a.close(key(2)).map(ids), Some(vec![5, 6]));
        assert_eq!(a.close(key(3)).map(ids), Some(vec![6]));
        assert!(!a.is_open());
        assert!(a.held.is_empty(), "nothing kept once no claim is open");
    }

    #[test]
    fn holding_stops_at_the_bound_and_old_claims_expire() {
        let mut a = Arrivals::default();
        a.open(key(1), 5);
        for n in 0..ARRIVALS_MAX as u64 {
            assert!(a.hold(&msg(n)));
        }
        assert!(!a.hold(&msg(0)), "full");
        a.expire(6);
        assert!(!a.is_open());
        assert!(a.held.is_empty());
    }
}
