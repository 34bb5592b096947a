//! Persistent sessions that left this node while copies for them may still
//! be on their way here: the cluster bus's hand-on list.
//!
//! Under the cluster bus (`[kafka.cluster]`) a publishing node sends a copy
//! to each node where a matching subscription *was*, as far as it knew, and
//! acknowledges its publisher once the copy is in Kafka. If the persistent
//! subscriber's session leaves that node before the copy is stored there
//! (taken over by a connection on another node, fenced, or its node's lease
//! lapsed and another node claimed it), the copy would reach nobody: an
//! acknowledged message lost. So a core that lets go of a durable session
//! for that reason records its departure here (client id and plain
//! filters), and the inbox consumer, for each record the cores accepted,
//! asks [`Departures::claimants`] which departed sessions it was for; each
//! gets a copy handed on to every node, scoped to that session
//! (`session::Scope::Session`), before the record's offset is stored.
//!
//! A record is handed on for a departed session when one of its filters
//! matches and the record was sent no later than [`HAND_ON_MARGIN_MS`]
//! after the departure: later copies were routed by a view that already
//! knew the session's new node. Unless that node could not tell the
//! cluster: a node cut off from Kafka announces its new subscriptions
//! only once it is back, and until then the other nodes route the
//! session's copies here, not there (the 30-minute soak lost 3.6 s of a
//! subscriber's messages that way, from the margin's end to the
//! announcement). So when the departure names the node the session went
//! to (a takeover's claim says so: [`Departures::record`]'s `to`), copies
//! sent after the margin are still handed on until this node's view shows
//! that node interested in them ([`Claimant::watch`]: the producer, which
//! holds the view, looks as it hands a copy on, and says so with
//! [`Departures::seen`]), and for a margin after that, as the other
//! nodes' views may lag behind this one's. [`UNSEEN_MAX_MS`] bounds the
//! wait. While a departure hands on, this node keeps announcing its
//! filters ([`Departures::holds`]), or the other nodes would stop sending
//! it the copies to hand on.
//!
//! A copy that was itself handed on went to every node; it is handed on
//! again only by a node the session left after it was sent, so copies do
//! not go round. A departure is kept for [`KEEP`] (a copy consumed later
//! than that is not handed on: README's limit), and is forgotten at once
//! when the session is claimed on this node again.
//!
//! A node-wide table behind one mutex, not a per-core one: it is written
//! only when a session leaves the node or comes back (rare, never per
//! message), and read by the one inbox consumer thread, which checks an
//! atomic first, so a node with no departure takes no lock per record.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ahash::{AHashMap, AHashSet};

use crate::codec::topic;

use crate::session::HAND_ON_MARGIN_MS;

/// How long a departure is kept: copies for the session consumed later
/// than this (the node's inbox consumer was stopped that long) are not
/// handed on.
pub const KEEP: Duration = Duration::from_secs(600);

/// At most this many departures are kept (about 100 B each plus filters);
/// past it the oldest go first, counted in [`Departures::overflowed`].
pub const MAX_KEPT: usize = 1_000_000;

/// How long after a departure copies are still handed on while this node
/// has not seen the session's new node announce interest in them: longer
/// than a node stays cut off from Kafka in the fault harness's soak (up
/// to 20 s, then a reconnection), short enough that a node that never
/// announces (it died: the session moves on again) does not have every
/// matching record copied to every node for long.
pub const UNSEEN_MAX_MS: u64 = 60_000;

/// A departed session a copy was meant for ([`Departures::claimants`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant {
    /// The session's client id.
    pub client_id: Arc<str>,
    /// The node the session went to, not yet seen interested in copies
    /// for it: whoever hands this copy on looks whether the cluster view
    /// shows it now, and says so ([`Departures::seen`]).
    pub watch: Option<u16>,
}

/// Persistent sessions that left the node, by client id and filter.
#[derive(Default)]
pub struct Departures {
    /// Recording is on (the cluster bus is configured).
    on: bool,
    /// At least one departure is kept: the consumer's check per record is
    /// this load while there is none.
    any: AtomicBool,
    inner: Mutex<Inner>,
    /// Departures dropped before [`KEEP`] ran out, because [`MAX_KEPT`]
    /// were kept.
    pub overflowed: AtomicU64,
}

#[derive(Default)]
struct Inner {
    by_client: AHashMap<Arc<str>, Departure>,
    /// Filters without wildcards (most of them: one per device), looked up
    /// by topic name.
    exact: AHashMap<Arc<str>, Vec<Arc<str>>>,
    /// Filters with wildcards, matched one by one.
    wild: Vec<(Arc<str>, Arc<str>)>,
    /// Departures oldest first: (when, client id, departure number).
    order: VecDeque<(Instant, Arc<str>, u64)>,
    next: u64,
}

struct Departure {
    /// Its number: a session that left twice is forgotten by the newer one.
    n: u64,
    /// When it left, ms since the Unix epoch (compared with record
    /// timestamps).
    at_ms: u64,
    filters: Vec<Arc<str>>,
    /// The node it went to, when the claim that took it said so.
    to: Option<u16>,
    /// When this node's view first showed that node interested in a copy
    /// for it, ms since the Unix epoch.
    seen_ms: Option<u64>,
}

impl Departure {
    /// Until when (ms since the Unix epoch) copies sent are its own.
    fn hands_on_until(&self) -> u64 {
        match (self.to, self.seen_ms) {
            (_, Some(seen)) => seen.max(self.at_ms) + HAND_ON_MARGIN_MS,
            (Some(_), None) => self.at_ms + UNSEEN_MAX_MS.max(HAND_ON_MARGIN_MS),
            (None, None) => self.at_ms + HAND_ON_MARGIN_MS,
        }
    }
}

impl Departures {
    /// A table that records departures when `on` (the cluster bus is
    /// configured) and is otherwise always empty.
    pub fn new(on: bool) -> Departures {
        Departures {
            on,
            ..Default::default()
        }
    }

    /// Whether departures are recorded at all.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// The session of `client_id`, with these plain filters (QoS 1 or 2),
    /// left this node at `at_ms` (ms since the Unix epoch) for another:
    /// node `to`, when the claim that took it said so.
    pub fn record(
        &self,
        client_id: &Arc<str>,
        filters: Vec<Arc<str>>,
        at_ms: u64,
        to: Option<u16>,
    ) {
        if !self.on || filters.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.expire(now);
        while inner.by_client.len() >= MAX_KEPT {
            if !inner.drop_oldest() {
                break;
            }
            self.overflowed.fetch_add(1, Relaxed);
        }
        let n = inner.next;
        inner.next += 1;
        for f in &filters {
            if topic::has_wildcards(f) {
                inner.wild.push((f.clone(), client_id.clone()));
            } else {
                inner
                    .exact
                    .entry(f.clone())
                    .or_default()
                    .push(client_id.clone());
            }
        }
        inner.order.push_back((now, client_id.clone(), n));
        let d = Departure {
            n,
            at_ms,
            filters,
            to,
            seen_ms: None,
        };
        inner.by_client.insert(client_id.clone(), d);
        self.any.store(true, Relaxed);
    }

    /// The session of `client_id` is claimed on this node again: what
    /// reaches this node from now on is delivered to it here.
    pub fn forget(&self, client_id: &str) {
        if !self.any.load(Relaxed) {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = inner.by_client.remove(client_id) {
            inner.unindex(client_id, &d.filters);
        }
        self.any.store(!inner.by_client.is_empty(), Relaxed);
    }

    /// This node's view showed the node `client_id`'s session went to
    /// interested in a copy for it, at `at_ms` (ms since the Unix epoch):
    /// from then on the margin counts from that moment.
    pub fn seen(&self, client_id: &str, at_ms: u64) {
        if !self.any.load(Relaxed) {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = inner.by_client.get_mut(client_id) {
            d.seen_ms.get_or_insert(at_ms);
        }
    }

    /// Whether a departure waits at `now_ms` (ms since the Unix epoch) for
    /// the node its session went to: named, not yet seen interested, and
    /// still handing on. One whose node `announces` one of its filters
    /// now is seen, and waits no more. A restarted node's hello waits
    /// while this holds for the sessions its earlier life lost while it
    /// was down (`bridge::adoption`): the hello voids the announcements
    /// that route their copies here.
    pub fn awaiting(&self, announces: impl Fn(u16, &str) -> bool, now_ms: u64) -> bool {
        if !self.any.load(Relaxed) {
            return false;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut waiting = false;
        for d in inner.by_client.values_mut() {
            let Some(to) = d.to else { continue };
            if d.seen_ms.is_some() || now_ms > d.hands_on_until() {
                continue;
            }
            if d.filters.iter().any(|f| announces(to, f)) {
                d.seen_ms = Some(now_ms);
            } else {
                waiting = true;
            }
        }
        waiting
    }

    /// Whether a departure still hands on copies of `filter` at `now_ms`
    /// (ms since the Unix epoch): this node keeps announcing it, or the
    /// other nodes would stop sending it those copies.
    pub fn holds(&self, filter: &str, now_ms: u64) -> bool {
        if !self.any.load(Relaxed) {
            return false;
        }
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let hands_on = |c: &Arc<str>| {
            inner
                .by_client
                .get(c)
                .is_some_and(|d| now_ms <= d.hands_on_until())
        };
        if topic::has_wildcards(filter) {
            inner
                .wild
                .iter()
                .any(|(f, c)| &**f == filter && hands_on(c))
        } else {
            inner.exact.get(filter).into_iter().flatten().any(hands_on)
        }
    }

    /// The departed sessions a copy of `topic`, sent at `sent_ms` (ms since
    /// the Unix epoch), was for; with `only`, that session or none.
    pub fn claimants(&self, topic_name: &str, sent_ms: u64, only: Option<&str>) -> Vec<Claimant> {
        if !self.any.load(Relaxed) {
            return Vec::new();
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.expire(Instant::now());
        self.any.store(!inner.by_client.is_empty(), Relaxed);
        let mut out: Vec<Claimant> = Vec::new();
        let mut seen = AHashSet::new();
        let candidates = inner.exact.get(topic_name).into_iter().flatten().chain(
            inner
                .wild
                .iter()
                .filter(|(f, _)| topic::matches(f, topic_name))
                .map(|(_, c)| c),
        );
        for c in candidates {
            if only.is_some_and(|o| o != &**c) || !seen.insert(c.clone()) {
                continue;
            }
            // The index may name a departure forgotten since.
            let Some(d) = inner.by_client.get(c) else {
                continue;
            };
            // A copy handed on went to every node: this node passes it on
            // again only if the session was still here when it was sent
            // (it left while the copy was on its way), or copies would go
            // round for the whole margin.
            let until = if only.is_some() {
                d.at_ms
            } else {
                d.hands_on_until()
            };
            let meant = sent_ms <= until && d.filters.iter().any(|f| topic::matches(f, topic_name));
            if meant {
                out.push(Claimant {
                    client_id: c.clone(),
                    watch: d.to.filter(|_| only.is_none() && d.seen_ms.is_none()),
                });
            }
        }
        out
    }

    /// Departures kept now (a gauge).
    pub fn len(&self) -> usize {
        if !self.any.load(Relaxed) {
            return 0;
        }
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.by_client.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    /// Forgets departures older than [`KEEP`].
    fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(at, ..)| now.duration_since(*at) >= KEEP)
        {
            self.drop_oldest();
        }
    }

    /// Forgets the oldest departure; `false` when there is none.
    fn drop_oldest(&mut self) -> bool {
        let Some((_, client, n)) = self.order.pop_front() else {
            return false;
        };
        if let Entry::Occupied(d) = self.by_client.entry(client.clone()) {
            // A newer departure of the same session stays.
            if d.get().n == n {
                let d = d.remove();
                self.unindex(&client, &d.filters);
            }
        }
        true
    }

    fn unindex(&mut self, client: &str, filters: &[Arc<str>]) {
        let mut wild = false;
        for f in filters {
            if topic::has_wildcards(f) {
                wild = true;
            } else if let Some(v) = self.exact.get_mut(f) {
                v.retain(|c| &**c != client);
                if v.is_empty() {
                    self.exact.remove(f);
                }
            }
        }
        if wild {
            self.wild.retain(|(_, c)| &**c != client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> Departures {
        Departures::new(true)
    }

    fn id(s: &str) -> Arc<str> {
        s.into()
    }

    /// Client ids of sure claims (no `watch`).
    fn sure(v: Vec<Claimant>) -> Vec<Arc<str>> {
        v.into_iter()
            .map(|c| {
                assert_eq!(c.watch, None, "{c:?}");
                c.client_id
            })
            .collect()
    }

    #[test]
    fn a_departure_awaits_its_node_until_that_node_announces_one_of_its_filters() {
        let d = on();
        assert!(!d.awaiting(|_, _| false, 1_000), "nothing recorded");
        d.record(&id("dev1"), vec![id("fleet/#")], 1_000, Some(3));
        d.record(&id("dev2"), vec![id("news/+")], 1_000, None);
        assert!(d.awaiting(|_, _| false, 2_000), "node 3 announced nothing");
        let node3 = |n: u16, f: &str| n == 3 && f == "fleet/#";
        assert!(!d.awaiting(node3, 3_000), "seen: no longer awaited");
        assert!(!d.awaiting(|_, _| false, 4_000), "seen stays seen");
        let c = d.claimants("fleet/a", 3_000 + HAND_ON_MARGIN_MS, None);
        assert_eq!(c.len(), 1, "handed on for a margin after it was seen");
        assert_eq!(c[0].watch, None);

        let late = on();
        late.record(&id("dev3"), vec![id("fleet/#")], 1_000, Some(2));
        let past = 1_000 + UNSEEN_MAX_MS + 1;
        assert!(!late.awaiting(|_, _| false, past), "no longer handing on");
    }

    #[test]
    fn a_departed_sessions_filters_claim_copies_sent_before_it_left_and_shortly_after() {
        let d = on();
        d.record(
            &id("dev1"),
            vec![id("user/ann/inbox"), id("chat/+")],
            1_000,
            None,
        );
        assert_eq!(
            sure(d.claimants("user/ann/inbox", 900, None)),
            vec![id("dev1")]
        );
        assert_eq!(
            sure(d.claimants("chat/room", 1_000 + HAND_ON_MARGIN_MS, None)),
            vec![id("dev1")]
        );
        assert!(d
            .claimants("chat/room", 1_001 + HAND_ON_MARGIN_MS, None)
            .is_empty());
        assert!(d.claimants("user/bob/inbox", 900, None).is_empty());
        assert!(d.claimants("chat/room", 900, Some("dev2")).is_empty());
        assert_eq!(
            sure(d.claimants("chat/room", 900, Some("dev1"))),
            vec![id("dev1")]
        );
    }

    #[test]
    fn a_copy_handed_on_goes_on_again_only_from_where_the_session_was_when_it_was_sent() {
        let d = on();
        d.record(&id("dev1"), vec![id("a/b")], 1_000, None);
        assert_eq!(
            sure(d.claimants("a/b", 1_000, Some("dev1"))),
            vec![id("dev1")]
        );
        // Sent after it left: every node had it, its new one too.
        assert!(d.claimants("a/b", 1_001, Some("dev1")).is_empty());
    }

    #[test]
    fn a_session_claimed_here_again_is_no_longer_claimant() {
        let d = on();
        d.record(&id("dev1"), vec![id("a/b"), id("a/#")], 1_000, None);
        d.record(&id("dev2"), vec![id("a/b")], 1_000, None);
        d.forget("dev1");
        assert_eq!(sure(d.claimants("a/b", 1_000, None)), vec![id("dev2")]);
        assert_eq!(d.len(), 1);
        d.forget("dev2");
        assert!(d.is_empty());
        assert!(d.claimants("a/b", 1_000, None).is_empty());
    }

    #[test]
    fn one_claim_per_session_however_many_of_its_filters_match() {
        let d = on();
        d.record(
            &id("dev1"),
            vec![id("a/b"), id("a/+"), id("#")],
            1_000,
            None,
        );
        d.record(&id("dev1"), vec![id("a/b")], 2_000, None);
        assert_eq!(sure(d.claimants("a/b", 1_500, None)), vec![id("dev1")]);
    }

    #[test]
    fn off_without_the_cluster_bus() {
        let d = Departures::new(false);
        d.record(&id("dev1"), vec![id("a/b")], 1_000, None);
        assert!(d.claimants("a/b", 1_000, None).is_empty());
        assert!(d.is_empty());
    }

    #[test]
    fn copies_for_a_session_that_went_to_a_known_node_go_on_until_that_node_is_seen() {
        let d = on();
        let margin_end = 1_000 + HAND_ON_MARGIN_MS;
        d.record(&id("dev1"), vec![id("fleet/#")], 1_000, Some(3));
        let watched = vec![Claimant {
            client_id: id("dev1"),
            watch: Some(3),
        }];
        // Within the margin and after it, while node 3 is not seen: handed
        // on, and whoever hands it on looks for node 3.
        assert_eq!(d.claimants("fleet/x", margin_end, None), watched);
        assert_eq!(d.claimants("fleet/x", margin_end + 1, None), watched);
        assert!(d.holds("fleet/#", margin_end + 1), "still announced here");
        assert!(!d.holds("fleet/+", margin_end + 1));
        // Node 3 seen at 20 s: a margin from then (the other nodes' views
        // may lag), then none.
        d.seen("dev1", 20_000);
        d.seen("dev1", 25_000);
        assert_eq!(
            sure(d.claimants("fleet/x", 20_000 + HAND_ON_MARGIN_MS, None)),
            vec![id("dev1")]
        );
        assert!(d
            .claimants("fleet/x", 20_001 + HAND_ON_MARGIN_MS, None)
            .is_empty());
        assert!(!d.holds("fleet/#", 20_001 + HAND_ON_MARGIN_MS));
    }

    #[test]
    fn a_node_never_seen_is_waited_for_a_bounded_time() {
        let d = on();
        d.record(&id("dev1"), vec![id("a/b")], 1_000, Some(2));
        assert_eq!(d.claimants("a/b", 1_000 + UNSEEN_MAX_MS, None).len(), 1);
        assert!(d.claimants("a/b", 1_001 + UNSEEN_MAX_MS, None).is_empty());
        assert!(d.holds("a/b", 1_000 + UNSEEN_MAX_MS));
        assert!(!d.holds("a/b", 1_001 + UNSEEN_MAX_MS));
    }

    #[test]
    fn without_a_destination_the_margin_alone_counts() {
        let d = on();
        d.record(&id("dev1"), vec![id("a/b")], 1_000, None);
        assert!(d.holds("a/b", 1_000 + HAND_ON_MARGIN_MS));
        assert!(!d.holds("a/b", 1_001 + HAND_ON_MARGIN_MS));
        assert!(d
            .claimants("a/b", 1_001 + HAND_ON_MARGIN_MS, None)
            .is_empty());
    }
}
