//! Publish acknowledgements, the outbound bridge, and durability.
//!
//! A client's PUBACK/PUBREC normally goes out as soon as its message is
//! routed. It is *held* while something must confirm the message first:
//! the outbound bridge (with [`OutboundPolicy::Confirm`]) and the durable
//! store (with `store.durability = "sync"`, once the message is stored for
//! every persistent session it reached). Every later ack of the same
//! connection queues behind a held one: MQTT 4.6 wants acks in publish
//! order. A failure gives an MQTT 5 client 0x80 in that ack; a 3.1.1
//! client, which has no negative ack, is disconnected without one (it
//! resends). A message is never acknowledged and then dropped.
//!
//! A SUBACK of a persistent session is held the same way, with sync
//! durability, until its subscriptions are stored: a client told it is
//! subscribed finds the subscription on any node it resumes on. If the
//! store fails, each granted filter gets 0x80 (both versions have it).

use std::collections::VecDeque;
use std::sync::Arc;

use tracing::warn;

use super::{ConnMut, Core, CoreState, Pending, Waiting};
use crate::bridge::outbound::{OutboundError, OutboundPolicy, Outgoing, Produced};
use crate::bridge::Refusal;
use crate::codec::{reason, Packet, QoS, SubAck};
use crate::id::ConnKey;
use crate::session::{AckKind, Confirm, Frame, Message};
use crate::stats::bump;

/// A connection's acks waiting for the outbound bridge, oldest first.
#[derive(Debug, Default)]
pub struct HeldAcks {
    /// Sequence number of the front entry.
    first: u64,
    acks: VecDeque<HeldAck>,
}

#[derive(Debug)]
struct HeldAck {
    what: Held,
    /// Confirmations still to come (0: ready).
    waits: u8,
    /// One of them failed.
    failed: bool,
    /// The reason code once ready (and not failed).
    code: u8,
}

/// What a held entry sends once ready.
#[derive(Debug)]
enum Held {
    /// A PUBACK (QoS 1) or PUBREC (QoS 2).
    Publish { qos: QoS, pkid: u16 },
    /// A SUBACK; `None` while its SUBSCRIBE is still being applied.
    SubAck(Option<Box<SubAck>>),
}

impl HeldAcks {
    fn push(&mut self, what: Held, waits: u8, code: u8) -> u64 {
        self.acks.push_back(HeldAck {
            what,
            waits,
            failed: false,
            code,
        });
        self.first + self.acks.len() as u64 - 1
    }

    /// Acks waiting (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.acks.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }
}

/// Queues the ack as its compact outbox frame (no `Packet` is built: one
/// is 400 bytes, and this runs for every QoS 1/2 publish).
fn send_ack(link: &mut super::Link, qos: QoS, pkid: u16, code: u8) {
    let kind = match qos {
        QoS::AtMostOnce => return,
        QoS::AtLeastOnce => AckKind::PubAck,
        QoS::ExactlyOnce => AckKind::PubRec,
    };
    link.push(Frame::Ack { kind, pkid, code });
}

impl Core {
    /// Holds the SUBACK of the SUBSCRIBE being applied to `key` until its
    /// subscriptions are stored: the returned confirm takes one share per
    /// stored subscription, and the caller gives the SUBACK to
    /// [`Core::suback_ready`] when it is built. With `[kafka.cluster]` it
    /// also waits for a filter new to this core to be announced to the
    /// other nodes, so a message published anywhere after the SUBACK finds
    /// the subscription. `None`: nothing to wait for (not a persistent
    /// session, or durability is async, and no cluster).
    pub fn hold_suback(&self, st: &mut CoreState, key: ConnKey) -> Option<(u64, Arc<Confirm>)> {
        let cluster = st.cluster.on;
        if !self.waits_for_durability() && !cluster {
            return None;
        }
        let e = st.entry(key)?;
        if !cluster {
            e.session.durable.as_ref()?;
        }
        let seq = e
            .link
            .as_mut()?
            .rare()
            .held_acks
            .push(Held::SubAck(None), 1, reason::SUCCESS);
        Some((
            seq,
            self.confirm_for(&mut st.pending, Waiting::Produce { key, seq }),
        ))
    }

    /// The SUBACK held at `seq` is built: it goes out once the confirm
    /// (whose creator share this releases) completes.
    pub fn suback_ready(
        &self,
        st: &mut CoreState,
        key: ConnKey,
        seq: u64,
        confirm: &Confirm,
        ack: SubAck,
    ) {
        if let Some(held) = st.link(key).and_then(|l| l.rare.as_mut()) {
            let held = &mut held.held_acks;
            if let Some(a) = seq
                .checked_sub(held.first)
                .and_then(|i| held.acks.get_mut(i as usize))
            {
                a.what = Held::SubAck(Some(Box::new(ack)));
            }
        }
        confirm.release(true);
    }

    /// A confirm whose completion answers `waiting` (a held ack, an API
    /// receipt) through this core's reply queue.
    pub fn confirm_for(&self, pending: &mut Pending, waiting: Waiting) -> Arc<Confirm> {
        let token = pending.insert_past_bound(waiting);
        let reply = self.returns.produced.reply_to(token);
        Confirm::new(Box::new(move |ok| {
            reply.send(if ok {
                Produced::Done
            } else {
                Produced::Failed(OutboundError::NotStored)
            })
        }))
    }

    /// Whether a publisher's acknowledgement waits for durability.
    pub fn waits_for_durability(&self) -> bool {
        self.durability == Some(crate::config::Durability::Sync)
    }

    /// Whether the outbound bridge can take one more message from this
    /// core (otherwise the caller waits: the core's readers are paused).
    pub fn outbound_room(&self, st: &CoreState) -> bool {
        st.pending.has_room(super::PendingKind::Produce)
    }

    /// An API publish leaves through the outbound bridge; with `done`, the
    /// HTTP caller learns the outcome once the bridge answers.
    pub fn publish_out_api(
        &self,
        st: &mut CoreState,
        msg: &Arc<Message>,
        policy: OutboundPolicy,
        done: Option<crate::bridge::Receipt>,
    ) {
        let out = Outgoing {
            msg: msg.clone(),
            client_id: None,
            username: None,
        };
        match (policy, done) {
            (OutboundPolicy::Skip, done) => {
                if let Some(done) = done {
                    let _ = done.send(Ok(msg.id));
                }
            }
            (OutboundPolicy::Confirm, Some(done)) if msg.qos != QoS::AtMostOnce => {
                let id = msg.id;
                self.send_out(&mut st.pending, out, Waiting::ApiProduce { done, id });
            }
            (_, done) => {
                self.send_out(&mut st.pending, out, Waiting::Forgotten);
                if let Some(done) = done {
                    let _ = done.send(Ok(msg.id));
                }
            }
        }
    }

    fn send_out(&self, pending: &mut Pending, out: Outgoing, waiting: Waiting) {
        let token = pending.insert_past_bound(waiting);
        bump(&self.stats().outbound_sent, 1);
        let ack = self.returns.produced.reply_to(token);
        self.node.outbound.send(out, ack);
    }

    /// The outbound bridge answered for `token`.
    pub fn on_produced(&self, token: u32, produced: Produced) {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let was_saturated = st.pending.saturated();
        let Some(waiting) = st.pending.take(token) else {
            return;
        };
        if let Produced::Failed(e) = &produced {
            bump(&self.stats().outbound_failed, 1);
            // One per message while Redis or Kafka is away: throttled.
            static REPEATS: crate::logging::Throttle = crate::logging::Throttle::new();
            if let Some(held_back) = REPEATS.admit() {
                warn!(
                    core = self.id,
                    held_back, "outbound bridge: {e} (tether_outbound_failed_total counts them)"
                );
            }
        }
        let ok = produced == Produced::Done;
        match waiting {
            Waiting::Produce { key, seq } => self.release_acks(st, key, seq, ok),
            Waiting::ApiProduce { done, id } => {
                let outcome = match produced {
                    Produced::Done => Ok(id),
                    Produced::Failed(e) => Err(Refusal::Undelivered(e.to_string())),
                };
                let _ = done.send(outcome);
            }
            Waiting::Forgotten => {}
            _ => debug_assert!(false, "a produce answer for another kind of request"),
        }
        self.after_answer(st, was_saturated);
    }

    /// Marks the `seq`-th held ack of `key` and sends every ack at the
    /// front that is ready, in order.
    fn release_acks(&self, st: &mut CoreState, key: ConnKey, seq: u64, ok: bool) {
        let Some(e) = st.entry(key) else { return };
        let link_id = e.id;
        let (session, Some(link)) = (&mut e.session, e.link.as_mut()) else {
            return;
        };
        let v5 = link.version.is_v5();
        let Some(held) = link.rare.as_mut().map(|r| &mut r.held_acks) else {
            return;
        };
        let Some(i) = seq.checked_sub(held.first).map(|i| i as usize) else {
            return;
        };
        let Some(a) = held.acks.get_mut(i) else {
            return;
        };
        a.waits = a.waits.saturating_sub(1);
        a.failed |= !ok;
        let mut ready = Vec::new();
        let mut close = false;
        while let Some(front) = held.acks.front() {
            let code = match (front.waits, front.failed, &front.what) {
                (1.., _, _) => break,
                (0, false, _) => front.code,
                (0, true, Held::SubAck(_)) => reason::UNSPECIFIED_ERROR,
                (0, true, _) if v5 => reason::UNSPECIFIED_ERROR,
                (0, true, _) => {
                    // 3.1.1 has no negative ack: close without this ack
                    // (or any later one), so the client resends.
                    close = true;
                    held.acks.clear();
                    break;
                }
            };
            let a = held.acks.pop_front().expect("front exists");
            held.first += 1;
            ready.push((a.what, code));
        }
        for (what, code) in ready {
            match what {
                Held::Publish { qos, pkid } => {
                    if qos == QoS::ExactlyOnce && code >= 0x80 {
                        // An error PUBREC ends the QoS 2 exchange.
                        session.incoming_qos2.retain(|&id| id != pkid);
                    }
                    send_ack(link, qos, pkid, code);
                }
                Held::SubAck(Some(mut ack)) => {
                    if code >= 0x80 {
                        warn!(conn = %link_id, "subscriptions not stored; SUBACK says 0x80");
                        for c in ack.codes.iter_mut().filter(|c| **c < 0x80) {
                            *c = reason::UNSPECIFIED_ERROR;
                        }
                    }
                    link.control(Packet::SubAck(*ack));
                }
                Held::SubAck(None) => {}
            }
        }
        if close {
            link.request_close_why(None, false, Some("a message could not be handed on"));
        }
    }
}

impl ConnMut<'_> {
    /// Queues the acknowledgement a client's PUBLISH of `qos` gets (PUBACK
    /// for QoS 1, PUBREC for QoS 2, nothing for QoS 0): at once, or behind
    /// the acks this connection has held.
    pub fn ack_publish(&mut self, qos: QoS, pkid: u16, code: u8) {
        if qos == QoS::AtMostOnce {
            return;
        }
        let Some(link) = self.link() else { return };
        match link
            .rare
            .as_mut()
            .map(|r| &mut r.held_acks)
            .filter(|h| !h.is_empty())
        {
            Some(held) => {
                held.push(Held::Publish { qos, pkid }, 0, code);
            }
            None => send_ack(link, qos, pkid, code),
        }
    }

    /// Holds the acknowledgement of a client's QoS 1/2 PUBLISH until
    /// `waits` confirmations arrive; returns its place, which each
    /// confirmation names ([`Waiting::Produce`]).
    pub fn hold_ack(&mut self, qos: QoS, pkid: u16, waits: u8) -> u64 {
        match self.link() {
            Some(link) => {
                link.rare()
                    .held_acks
                    .push(Held::Publish { qos, pkid }, waits, reason::SUCCESS)
            }
            None => 0,
        }
    }

    /// A confirm whose completion answers `waiting` through `core`'s reply
    /// queue ([`Core::confirm_for`]).
    pub fn confirm_for(&mut self, core: &Core, waiting: Waiting) -> Arc<Confirm> {
        core.confirm_for(self.pending, waiting)
    }

    /// This connection's PUBLISH, already delivered locally, leaves
    /// through the outbound bridge per `policy`. With
    /// [`OutboundPolicy::Confirm`] the bridge's answer is one of the
    /// confirmations the ack held at `held` waits for. The caller checked
    /// [`Core::outbound_room`].
    pub fn publish_out(
        &mut self,
        core: &Core,
        msg: &Arc<Message>,
        policy: OutboundPolicy,
        held: Option<u64>,
    ) {
        if policy == OutboundPolicy::Skip {
            return;
        }
        let client_id = self.entry.client_id.clone();
        let Some(link) = self.entry.link.as_ref() else {
            return;
        };
        let out = Outgoing {
            msg: msg.clone(),
            client_id,
            username: link.username.clone(),
        };
        let waiting = match held {
            Some(seq) if policy == OutboundPolicy::Confirm => {
                Waiting::Produce { key: self.key, seq }
            }
            _ => Waiting::Forgotten,
        };
        core.send_out(self.pending, out, waiting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_acks_number_in_order() {
        let mut h = HeldAcks::default();
        let ack = |pkid| Held::Publish {
            qos: QoS::AtLeastOnce,
            pkid,
        };
        assert_eq!(h.push(ack(1), 1, 0), 0);
        assert_eq!(h.push(ack(2), 0, 0), 1);
        h.acks.pop_front();
        h.first += 1;
        assert_eq!(h.push(ack(3), 2, 0), 2);
        assert_eq!(h.len(), 2);
    }
}
