//! Retained messages: a replica on every core, writes sequenced per topic.
//!
//! Every core holds the whole retained index (topic → `Arc<Message>`; the
//! payloads themselves are shared, only the index is per core), so a
//! SUBSCRIBE finds its retained messages locally and synchronously, with no
//! cross-core request on the subscribe path. Writes for a topic all go to
//! one *owner* core (FNV hash of the topic), which applies them and
//! broadcasts them to every other core over the FIFO channels: all replicas
//! see a topic's updates in the same order and converge. Caps are checked
//! against node-wide totals that only owners update.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ahash::AHashMap;

use super::{Core, CoreState};
use crate::codec::topic;
use crate::id::owner_core;
use crate::mesh::CoreMsg;
use crate::session::Message;
use crate::stats::bump;

/// Node-wide retained totals, updated only by owner cores.
#[derive(Default)]
pub struct Totals {
    /// Retained topics.
    pub count: AtomicUsize,
    /// Their weight (topics + payloads).
    pub bytes: AtomicUsize,
}

/// One core's replica.
#[derive(Default)]
pub struct Replica {
    map: AHashMap<Arc<str>, Arc<Message>>,
}

impl Replica {
    /// Retained topics in this replica.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether `topic` has a retained message.
    pub fn contains(&self, topic: &str) -> bool {
        self.map.contains_key(topic)
    }

    /// Stores `msg` (an empty payload deletes the topic, MQTT 3.3.1.3).
    /// Returns the change in (count, bytes).
    pub fn apply(&mut self, msg: Arc<Message>) -> (isize, isize) {
        let old = if msg.payload.is_empty() {
            self.map.remove(&msg.topic)
        } else {
            let weight = msg.weight() as isize;
            let old = self.map.insert(msg.topic.clone(), msg);
            let (dc, db) = old.as_ref().map_or((0, 0), |o| (1, o.weight() as isize));
            return (1 - dc, weight - db);
        };
        old.map_or((0, 0), |o| (-1, -(o.weight() as isize)))
    }

    /// Retained messages whose topic matches `filter`. A linear scan: the
    /// retained set is small next to the subscription index; a topic trie
    /// here is the next step if stores grow large.
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        self.map
            .values()
            .filter(|m| topic::matches(filter, &m.topic))
            .cloned()
            .collect()
    }
}

/// Applies a change in (count, bytes) to the node totals.
pub fn account(totals: &Totals, (dc, db): (isize, isize)) {
    if dc >= 0 {
        totals.count.fetch_add(dc as usize, Ordering::Relaxed);
    } else {
        totals.count.fetch_sub((-dc) as usize, Ordering::Relaxed);
    }
    if db >= 0 {
        totals.bytes.fetch_add(db as usize, Ordering::Relaxed);
    } else {
        totals.bytes.fetch_sub((-db) as usize, Ordering::Relaxed);
    }
}

impl Core {
    /// Whether a retained message for `topic` (`weight`, an empty payload
    /// deletes) would be refused because the store is full.
    pub fn retained_would_refuse(
        &self,
        replica: &Replica,
        topic: &str,
        weight: usize,
        empty: bool,
    ) -> bool {
        let cap = &self.cfg.retained;
        let totals = &self.node.retained;
        let is_new = !empty && !replica.contains(topic);
        let full = totals.count.load(Ordering::Relaxed) >= cap.max_messages
            || totals.bytes.load(Ordering::Relaxed) + weight > cap.max_bytes;
        is_new && full
    }

    /// Stores a retained message (or deletes one, for an empty payload).
    /// Returns false when a new topic is refused because the store is full.
    pub fn retain(&self, st: &mut CoreState, msg: &Arc<Message>) -> bool {
        if self.retained_would_refuse(
            &st.retained,
            &msg.topic,
            msg.weight(),
            msg.payload.is_empty(),
        ) {
            bump(&self.stats().retained_refused, 1);
            return false;
        }
        let owner = owner_core(&msg.topic, self.node.cores.len());
        if owner == self.id {
            self.retain_sequence(st, msg.clone());
        } else {
            self.route(owner, CoreMsg::RetainSet(msg.clone()));
        }
        true
    }

    /// Owner core: apply, account, and broadcast in order to every replica.
    pub(super) fn retain_sequence(&self, st: &mut CoreState, msg: Arc<Message>) {
        for core in (0..self.node.cores.len()).filter(|&c| c != self.id) {
            self.route(core, CoreMsg::RetainApply(msg.clone()));
        }
        let delta = self.apply_retained(st, msg);
        account(&self.node.retained, delta);
    }

    /// Applies a sequenced update to this core's replica.
    pub(super) fn apply_retained(&self, st: &mut CoreState, msg: Arc<Message>) -> (isize, isize) {
        let delta = st.retained.apply(msg);
        self.visible()
            .retained
            .store(st.retained.len(), Ordering::Relaxed);
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;

    fn msg(topic: &str, payload: &'static [u8]) -> Arc<Message> {
        let p = crate::session::Publication {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
            origin: None,
        };
        Arc::new(Message::new(0, p, std::time::Instant::now()))
    }

    #[test]
    fn store_replace_delete_and_match() {
        let mut r = Replica::default();
        assert_eq!(r.apply(msg("a/b", b"1")).0, 1);
        assert_eq!(r.apply(msg("a/b", b"2")).0, 0, "replace keeps the count");
        assert_eq!(r.apply(msg("a/c", b"3")).0, 1);
        assert_eq!(r.apply(msg("$SYS/x", b"4")).0, 1);
        let mut got: Vec<_> = r
            .matching("a/+")
            .iter()
            .map(|m| m.payload.clone())
            .collect();
        got.sort();
        assert_eq!(got, vec![&b"2"[..], &b"3"[..]]);
        assert_eq!(r.matching("#").len(), 2, "# does not match $SYS topics");
        assert_eq!(r.apply(msg("a/b", b"")).0, -1, "empty payload deletes");
        assert_eq!(
            r.apply(msg("a/zz", b"")),
            (0, 0),
            "deleting nothing changes nothing"
        );
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn owner_is_stable_and_in_range() {
        for t in ["a", "b/c", "$SYS/uptime", ""] {
            assert_eq!(crate::id::owner_core(t, 4), crate::id::owner_core(t, 4));
            assert!(crate::id::owner_core(t, 3) < 3);
        }
    }
}
