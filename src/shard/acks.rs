//! Publish acknowledgements and the outbound bridge.
//!
//! A client's PUBACK/PUBREC normally goes out as soon as its message is
//! routed. When the message also goes to the outbound bridge with
//! [`OutboundPolicy::Confirm`], its ack is *held* until the bridge answers,
//! and every later ack of the same connection queues behind it: MQTT
//! 4.6 wants acks in publish order. A failed hand-off gives an MQTT 5
//! client 0x80 in that ack; a 3.1.1 client, which has no negative ack, is
//! disconnected without one (it resends). A message is never acknowledged
//! and then dropped.

use std::collections::VecDeque;
use std::sync::Arc;

use tracing::warn;

use super::{Core, CoreState, Waiting};
use crate::bridge::outbound::{OutboundPolicy, Outgoing, Produced};
use crate::bridge::Refusal;
use crate::codec::{reason, QoS};
use crate::id::ConnKey;
use crate::session::{AckKind, Frame, Message};
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
    qos: QoS,
    pkid: u16,
    state: AckState,
}

#[derive(Debug, Clone, Copy)]
enum AckState {
    /// The bridge has not answered.
    Waiting,
    /// Ready to go out with this reason code.
    Ready(u8),
    /// The bridge failed to hand the message on.
    Failed,
}

impl HeldAcks {
    fn push(&mut self, qos: QoS, pkid: u16, state: AckState) -> u64 {
        self.acks.push_back(HeldAck { qos, pkid, state });
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
    /// Queues the acknowledgement a client's PUBLISH of `qos` gets (PUBACK
    /// for QoS 1, PUBREC for QoS 2, nothing for QoS 0): at once, or behind
    /// the acks this connection has held.
    pub fn ack_publish(&self, st: &mut CoreState, key: ConnKey, qos: QoS, pkid: u16, code: u8) {
        if qos == QoS::AtMostOnce {
            return;
        }
        let Some(link) = st.link(key) else { return };
        match link
            .rare
            .as_mut()
            .map(|r| &mut r.held_acks)
            .filter(|h| !h.is_empty())
        {
            Some(held) => {
                held.push(qos, pkid, AckState::Ready(code));
            }
            None => send_ack(link, qos, pkid, code),
        }
    }

    /// Whether the outbound bridge can take one more message from this
    /// core (otherwise the caller waits: the core's readers are paused).
    pub fn outbound_room(&self, st: &CoreState) -> bool {
        st.pending.has_room(super::PendingKind::Produce)
    }

    /// A client's PUBLISH, already delivered locally, leaves through the
    /// outbound bridge per `policy`; its ack goes out now or, for
    /// [`OutboundPolicy::Confirm`], once the bridge answers. The caller
    /// checked [`Core::outbound_room`].
    pub fn publish_out(
        &self,
        st: &mut CoreState,
        key: ConnKey,
        msg: &Arc<Message>,
        policy: OutboundPolicy,
        pkid: u16,
    ) {
        let qos = msg.qos;
        if policy == OutboundPolicy::Skip {
            return self.ack_publish(st, key, qos, pkid, reason::SUCCESS);
        }
        let Some(e) = st.entry(key) else { return };
        let client_id = e.client_id.clone();
        let Some(link) = e.link.as_mut() else { return };
        let out = Outgoing {
            msg: msg.clone(),
            client_id,
            username: link.username.clone(),
        };
        let waiting = if policy == OutboundPolicy::Confirm && qos != QoS::AtMostOnce {
            let held = &mut link.rare().held_acks;
            let seq = held.push(qos, pkid, AckState::Waiting);
            Waiting::Produce { key, seq }
        } else {
            Waiting::Forgotten
        };
        let forgotten = matches!(waiting, Waiting::Forgotten);
        self.send_out(st, out, waiting);
        if forgotten {
            self.ack_publish(st, key, qos, pkid, reason::SUCCESS);
        }
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
                self.send_out(st, out, Waiting::ApiProduce { done, id });
            }
            (_, done) => {
                self.send_out(st, out, Waiting::Forgotten);
                if let Some(done) = done {
                    let _ = done.send(Ok(msg.id));
                }
            }
        }
    }

    fn send_out(&self, st: &mut CoreState, out: Outgoing, waiting: Waiting) {
        let token = st.pending.insert_past_bound(waiting);
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
            warn!(core = self.id, "outbound bridge: {e}");
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
        a.state = if ok {
            AckState::Ready(reason::SUCCESS)
        } else {
            AckState::Failed
        };
        let mut ready = Vec::new();
        let mut close = false;
        while let Some(front) = held.acks.front() {
            let code = match front.state {
                AckState::Waiting => break,
                AckState::Ready(code) => code,
                AckState::Failed if v5 => reason::UNSPECIFIED_ERROR,
                AckState::Failed => {
                    // 3.1.1 has no negative ack: close without this ack
                    // (or any later one), so the client resends.
                    close = true;
                    held.acks.clear();
                    break;
                }
            };
            let a = held.acks.pop_front().expect("front exists");
            held.first += 1;
            ready.push((a.qos, a.pkid, code));
        }
        for (qos, pkid, code) in ready {
            if qos == QoS::ExactlyOnce && code >= 0x80 {
                // An error PUBREC ends the QoS 2 exchange.
                session.incoming_qos2.retain(|&id| id != pkid);
            }
            send_ack(link, qos, pkid, code);
        }
        if close {
            link.request_close_why(None, false, Some("a message could not be handed on"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_acks_number_in_order() {
        let mut h = HeldAcks::default();
        assert_eq!(h.push(QoS::AtLeastOnce, 1, AckState::Waiting), 0);
        assert_eq!(h.push(QoS::AtLeastOnce, 2, AckState::Ready(0)), 1);
        h.acks.pop_front();
        h.first += 1;
        assert_eq!(h.push(QoS::AtLeastOnce, 3, AckState::Waiting), 2);
        assert_eq!(h.len(), 2);
    }
}
