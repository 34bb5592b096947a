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
//! knew the session's new node. A copy that was itself handed on went to
//! every node; it is handed on again only by a node the session left
//! after it was sent, so copies do not go round. A departure is kept for [`KEEP`] (a copy
//! consumed later than that is not handed on: README's limit), and is
//! forgotten at once when the session is claimed on this node again.
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
    /// left this node at `at_ms` (ms since the Unix epoch) for another.
    pub fn record(&self, client_id: &Arc<str>, filters: Vec<Arc<str>>, at_ms: u64) {
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
        inner
            .by_client
            .insert(client_id.clone(), Departure { n, at_ms, filters });
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

    /// The departed sessions a copy of `topic`, sent at `sent_ms` (ms since
    /// the Unix epoch), was for; with `only`, that session or none.
    pub fn claimants(&self, topic_name: &str, sent_ms: u64, only: Option<&str>) -> Vec<Arc<str>> {
        if !self.any.load(Relaxed) {
            return Vec::new();
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.expire(Instant::now());
        self.any.store(!inner.by_client.is_empty(), Relaxed);
        let mut out: Vec<Arc<str>> = Vec::new();
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
            let margin = if only.is_some() { 0 } else { HAND_ON_MARGIN_MS };
            let meant = sent_ms <= d.at_ms + margin
                && d.filters.iter().any(|f| topic::matches(f, topic_name));
            if meant {
                out.push(c.clone());
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

    #[test]
    fn a_departed_sessions_filters_claim_copies_sent_before_it_left_and_shortly_after() {
        let d = on();
        d.record(&id("dev1"), vec![id("user/ann/inbox"), id("chat/+")], 1_000);
        assert_eq!(d.claimants("user/ann/inbox", 900, None), vec![id("dev1")]);
        assert_eq!(
            d.claimants("chat/room", 1_000 + HAND_ON_MARGIN_MS, None),
            vec![id("dev1")]
        );
        assert!(d
            .claimants("chat/room", 1_001 + HAND_ON_MARGIN_MS, None)
            .is_empty());
        assert!(d.claimants("user/bob/inbox", 900, None).is_empty());
        assert!(d.claimants("chat/room", 900, Some("dev2")).is_empty());
        assert_eq!(
            d.claimants("chat/room", 900, Some("dev1")),
            vec![id("dev1")]
        );
    }

    #[test]
    fn a_copy_handed_on_goes_on_again_only_from_where_the_session_was_when_it_was_sent() {
        let d = on();
        d.record(&id("dev1"), vec![id("a/b")], 1_000);
        assert_eq!(d.claimants("a/b", 1_000, Some("dev1")), vec![id("dev1")]);
        // Sent after it left: every node had it, its new one too.
        assert!(d.claimants("a/b", 1_001, Some("dev1")).is_empty());
    }

    #[test]
    fn a_session_claimed_here_again_is_no_longer_claimant() {
        let d = on();
        d.record(&id("dev1"), vec![id("a/b"), id("a/#")], 1_000);
        d.record(&id("dev2"), vec![id("a/b")], 1_000);
        d.forget("dev1");
        assert_eq!(d.claimants("a/b", 1_000, None), vec![id("dev2")]);
        assert_eq!(d.len(), 1);
        d.forget("dev2");
        assert!(d.is_empty());
        assert!(d.claimants("a/b", 1_000, None).is_empty());
    }

    #[test]
    fn one_claim_per_session_however_many_of_its_filters_match() {
        let d = on();
        d.record(&id("dev1"), vec![id("a/b"), id("a/+"), id("#")], 1_000);
        d.record(&id("dev1"), vec![id("a/b")], 2_000);
        assert_eq!(d.claimants("a/b", 1_500, None), vec![id("dev1")]);
    }

    #[test]
    fn off_without_the_cluster_bus() {
        let d = Departures::new(false);
        d.record(&id("dev1"), vec![id("a/b")], 1_000);
        assert!(d.claimants("a/b", 1_000, None).is_empty());
        assert!(d.is_empty());
    }
}
