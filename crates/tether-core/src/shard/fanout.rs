//! Publishing: a message reaches every matching session of the node.
//!
//! [`Core::publish`] checks every other core's interest summary and queues
//! the message for the cores that might match (cores without interest are
//! never woken), then delivers locally: the trie yields the matching
//! subscriptions, overlapping ones of one session collapse to one copy at
//! the highest granted QoS, and each copy goes through the delivery policy.
//! The peer cores run the same local delivery when the batch arrives.

use std::sync::Arc;

use super::delivery::{deliver, Offer};
use super::{count, entry_in, Core, CoreState, Entry, Phase};
use crate::codec::{QoS, SubOptions, Will};
use crate::id::{ConnId, ConnKey};
use crate::session::{sub_ids, Delivery, Message, Publication};

/// A QoS 0 copy added to an outbox already holding this much is behind:
/// one socket write's worth (`net::conn`'s write chunk), which the
/// connection's next poll writes at once.
const LAG_OUTBOX_BYTES: usize = 64 * 1024;

impl Core {
    /// Whether the copy just offered to `e` waits on the core: it was
    /// queued behind the client's full window (QoS 0: added to an outbox
    /// already [`LAG_OUTBOX_BYTES`] long) while the connection is itself
    /// queued in the core's driver, with acknowledgements unread or frames
    /// unwritten. Then the publisher must not bring more until the core
    /// caught up: it yields (`CoreState::lagging`). A client that is slow
    /// or stalled on its own is not queued in the driver, so it never slows
    /// a publisher: its queue grows to `session.max_queued_messages` and it
    /// is disconnected (0x97), as before.
    fn lags(&self, e: &Entry, offer: &Offer, qos0: bool) -> bool {
        let (Some(probe), Some(link)) = (self.queued_probe.get(), e.link.as_ref()) else {
            return false;
        };
        let behind = match offer {
            Offer::Queued => true,
            Offer::Sent => qos0 && link.outbox_bytes as usize >= LAG_OUTBOX_BYTES,
            _ => false,
        };
        // No waker: the core woke the connection and the driver has not
        // polled it since, so it is queued.
        behind && link.waker.as_ref().is_none_or(probe)
    }

    /// Routes a message published on this core to every matching session of
    /// the node.
    pub fn publish(&self, st: &mut CoreState, msg: Arc<Message>) {
        for (core, visible) in self.node.cores.iter().enumerate() {
            if core != self.id
                && (visible.interest.might_match(&msg.topic)
                    || visible
                        .claims_open
                        .load(std::sync::atomic::Ordering::Relaxed)
                        > 0)
            {
                // That core is behind on what it was sent: the publisher
                // waits for it (`Pace::UntilResumed`).
                if visible.lagging.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                    st.peer_lagging = true;
                }
                // The receiving core releases this share once it has
                // offered the message to its sessions.
                if let Some(c) = &msg.confirm {
                    c.hold();
                }
                self.routes.publish(core, msg.clone());
            }
        }
        self.deliver_local(st, &msg);
    }

    /// A message this core publishes (a will, `$SYS`): the next id, born now.
    pub fn message(&self, p: Publication) -> Arc<Message> {
        Arc::new(Message::new(self.message_id(), p, self.clock().instant()))
    }

    /// Publishes a connection's will (retained if it says so).
    pub(super) fn publish_will(&self, st: &mut CoreState, will: Will, origin: Option<ConnId>) {
        let msg = self.message(Publication {
            topic: will.topic.into(),
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties: Some(Box::new(will.properties)),
            origin,
        });
        if msg.retain {
            self.retain(st, &msg);
        }
        self.publish(st, msg);
    }

    /// Offers `msg` to every matching session of this core. One copy per
    /// session: overlapping subscriptions are merged at the highest QoS.
    pub fn deliver_local(&self, st: &mut CoreState, msg: &Arc<Message>) {
        if st.arrivals.is_open() {
            self.hold_arrival(st, msg);
        }
        let CoreState {
            subs,
            conns,
            matches,
            journal,
            lagging,
            ..
        } = st;
        matches.clear();
        let groups = subs.for_each_match(&msg.topic, |s| matches.extend_from_slice(s));
        if groups > 1 {
            // Overlapping filters: bring each session's matches together.
            matches.sort_unstable_by_key(|s| s.key);
        }
        let stats = self.stats();
        let now = self.now();
        let mut rest = &matches[..];
        while let Some(first) = rest.first() {
            let n = rest.iter().take_while(|s| s.key == first.key).count();
            let (same, tail) = rest.split_at(n);
            rest = tail;
            let Some(e) = entry_in(conns, first.key) else {
                continue;
            };
            if same.iter().all(|s| s.opts.no_local) && msg.origin == Some(e.id) {
                continue;
            }
            if !msg
                .scope
                .serves_session(e.client_id.as_deref(), e.session.durable.as_deref())
            {
                continue;
            }
            let Some(d) = one_copy(msg, same.iter().map(|s| (s.opts, s.id))) else {
                continue;
            };
            if let Phase::Moved { ref to, .. } = e.phase {
                self.forward_out(**to, d);
                continue;
            }
            let qos0 = d.qos == QoS::AtMostOnce;
            let offer = self.offer_mirrored(journal, e, d, now);
            if !*lagging && self.lags(e, &offer, qos0) {
                *lagging = true;
            }
            count(offer, stats);
        }
        self.deliver_shared(st, msg);
    }

    /// Sends the retained messages matching `filter` to a new subscription
    /// (retain flag set, QoS capped by the subscription).
    pub fn deliver_retained(&self, st: &mut CoreState, key: ConnKey, filter: &str, max_qos: QoS) {
        let msgs = st.retained.matching(filter);
        let stats = self.stats();
        let now = self.now();
        let CoreState { conns, journal, .. } = st;
        let Some(e) = entry_in(conns, key) else {
            return;
        };
        let id = e
            .session
            .subscription(filter)
            .map_or(0, |i| e.session.subs[i].2);
        for msg in msgs {
            let qos = msg.qos.min(max_qos);
            let d = Delivery::new(msg, qos, true, sub_ids([id]));
            // A deliberate second copy: past any move window.
            let deliver = |e: &mut super::Entry, d| deliver(e, d, &self.cfg, stats, now.at);
            count(self.mirror(journal, e, d, deliver), stats);
        }
    }
}

/// One copy of `msg` for a session whose subscriptions `matching`
/// (options and identifier of each) match it: at the best QoS and retain
/// option among them, carrying all their identifiers. `None` when nothing
/// matches.
pub(super) fn one_copy(
    msg: &Arc<Message>,
    matching: impl Iterator<Item = (SubOptions, u32)> + Clone,
) -> Option<Delivery> {
    let qos = matching.clone().map(|(o, _)| msg.qos.min(o.qos)).max()?;
    let retain = msg.retain && matching.clone().any(|(o, _)| o.retain_as_published);
    let ids = sub_ids(matching.map(|(_, id)| id));
    Some(Delivery::new(msg.clone(), qos, retain, ids))
}
