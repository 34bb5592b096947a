//! PUBLISH from a client and the acknowledgements of both directions
//! (PUBACK, PUBREC, PUBREL, PUBCOMP); publishes from the HTTP API and
//! bridges, which follow the same rules.
//!
//! A publish is checked against the protocol, then put to the
//! [`Authorizer`](crate::auth::Authorizer) (which may defer: the packet is
//! then parked and the connection reads nothing more until the answer
//! comes), then routed to the node's subscribers, then handed to the
//! outbound bridge when a rule says so, and only then acknowledged.

use std::sync::Arc;

use tracing::debug;

use super::{max_qos, violation, Flow, Violation};
use crate::auth::{AclRequest, Action, Permit, Source};
use crate::bridge::outbound::OutboundPolicy;
use crate::bridge::{Numbered, PublishRequest, Receipt, Refusal};
use crate::codec::{reason, topic, Ack, Packet, Publish, QoS};
use crate::id::ConnKey;
use crate::session::{Message, Outcome, Publication, Scope};
use crate::shard::{ApiPublish, ConnMut, Core, CoreState, Parked, PendingKind, Waiting};
use crate::stats::bump;
use crate::store::StoreOp;

/// PUBLISH from a client. One handle on the connection serves the checks,
/// the authorizer and the making of the message; the fan-out takes the
/// whole core (it may reach any connection, this one too); a second handle
/// then acknowledges and decides how the connection reads on.
pub(super) fn publish(
    core: &Core,
    st: &mut CoreState,
    key: ConnKey,
    p: &mut Publish,
) -> Result<Flow, Violation> {
    let Some(mut c) = super::accepted(st, key)? else {
        return Ok(Flow::Stop);
    };
    let policy = match check(core, &mut c, p)? {
        Checked::Go(policy) => policy,
        Checked::Done => return Ok(super::after(&c, None)),
        Checked::NoRoom => return Ok(Flow::Retry),
    };
    match authorize(core, &mut c, p, None, policy) {
        Authorized::Route(ready) => Ok(route(core, st, key, ready)),
        Authorized::Done => Ok(super::after(&c, None)),
        Authorized::NoRoom => Ok(Flow::Retry),
    }
}

/// What the protocol's checks made of a client PUBLISH.
enum Checked {
    /// On to the authorizer; the outbound rules say this for its topic.
    Go(OutboundPolicy),
    /// Nothing more to do (a QoS 2 retransmission, acknowledged again).
    Done,
    /// No room for what it would wait on (see [`Flow::Retry`]).
    NoRoom,
}

/// The protocol's rules for a client PUBLISH, and room for what it will
/// wait on. Resolves the topic alias: a parked packet keeps its topic.
fn check(core: &Core, c: &mut ConnMut<'_>, p: &mut Publish) -> Result<Checked, Violation> {
    let m = &core.cfg.mqtt;
    let Some(link) = c.entry.link.as_mut() else {
        return Ok(Checked::Done);
    };
    let v5 = link.version.is_v5();
    if p.qos as u8 > m.max_qos {
        return Err(violation(
            reason::QOS_NOT_SUPPORTED,
            "PUBLISH QoS above the maximum",
        ));
    }
    if p.retain && !m.retain_available {
        if v5 {
            return Err(violation(
                reason::RETAIN_NOT_SUPPORTED,
                "retained messages are not available",
            ));
        }
        p.retain = false; // 3.1.1 cannot be refused: deliver, do not store
    }
    if !p.properties.subscription_identifiers.is_empty() {
        return Err(violation(
            reason::PROTOCOL_ERROR,
            "subscription identifier in a client PUBLISH",
        ));
    }
    match p.properties.topic_alias.take() {
        Some(alias) => {
            // The table the CONNACK granted, allocated on first use.
            let granted = if v5 { m.topic_alias_maximum } else { 0 };
            let slot = (alias as usize)
                .checked_sub(1)
                .filter(|&i| i < usize::from(granted));
            let Some(slot) = slot else {
                return Err(violation(
                    reason::TOPIC_ALIAS_INVALID,
                    "topic alias out of range",
                ));
            };
            if p.topic.is_empty() {
                let Some(t) = link.aliases.get(slot).cloned().flatten() else {
                    return Err(violation(reason::PROTOCOL_ERROR, "unknown topic alias"));
                };
                p.topic = t.to_string();
            } else {
                if link.aliases.is_empty() {
                    link.aliases.resize(usize::from(granted), None);
                }
                link.aliases[slot] = Some(p.topic.as_str().into());
            }
        }
        None if p.topic.is_empty() => {
            return Err(violation(
                reason::PROTOCOL_ERROR,
                "empty topic without a topic alias",
            ))
        }
        None => {}
    }
    if p.qos == QoS::ExactlyOnce {
        let ids = &c.entry.session.incoming_qos2;
        if ids.contains(&p.pkid) {
            // A retransmission of a message already routed: ack only.
            c.ack_publish(p.qos, p.pkid, reason::SUCCESS);
            return Ok(Checked::Done);
        }
        if ids.len() >= m.receive_maximum as usize {
            return Err(violation(
                reason::RECEIVE_MAXIMUM_EXCEEDED,
                "more QoS 2 publishes than Receive Maximum",
            ));
        }
    }
    let policy = core.node.outbound.policy(&p.topic);
    let waits =
        policy != OutboundPolicy::Skip || (p.qos != QoS::AtMostOnce && core.waits_for_durability());
    if waits && !c.has_room(PendingKind::Produce) {
        return Ok(Checked::NoRoom);
    }
    Ok(Checked::Go(policy))
}

/// What the authorizer's answer made of a checked PUBLISH.
enum Authorized {
    /// Allowed, and made into a message: the fan-out is next.
    Route(Ready),
    /// Nothing more now: parked for the slow path, or refused (and
    /// acknowledged so).
    Done,
    /// The slow path has no room for one more question (see
    /// [`Flow::Retry`]).
    NoRoom,
}

/// Puts the publish to the authorizer (unless `answer` is the slow path's
/// answer already); an allowed one is made into its message. Takes the
/// packet by reference: it is 400 bytes, and only a parked one moves.
fn authorize(
    core: &Core,
    c: &mut ConnMut<'_>,
    p: &mut Publish,
    answer: Option<Permit>,
    policy: OutboundPolicy,
) -> Authorized {
    let room = c.has_room(PendingKind::Permit);
    let e = &mut *c.entry;
    let Some(link) = e.link.as_mut() else {
        return Authorized::Done;
    };
    let permit = answer.unwrap_or_else(|| {
        core.node.authz.check(&link.acl_request(
            e.client_id.as_deref(),
            Action::Publish,
            &p.topic,
            p.qos,
            p.retain,
        ))
    });
    match permit {
        Permit::Allow => prepare(core, c, p, policy).map_or(Authorized::Done, Authorized::Route),
        Permit::Ask if answer.is_none() => {
            if !room {
                return Authorized::NoRoom;
            }
            let req = link
                .acl_request(
                    e.client_id.as_deref(),
                    Action::Publish,
                    &p.topic,
                    p.qos,
                    p.retain,
                )
                .to_owned();
            let parked = Publish {
                topic: std::mem::take(&mut p.topic),
                properties: std::mem::take(&mut p.properties),
                payload: std::mem::take(&mut p.payload),
                ..*p
            };
            link.rare().parked = Some(Parked::Publish(parked));
            let token = c
                .insert_pending(Waiting::Permit { key: c.key })
                .expect("room checked above");
            bump(&core.stats().acl_deferred, 1);
            core.node
                .authz
                .ask(req, core.returns.permits.reply_to(token));
            Authorized::Done
        }
        Permit::Deny | Permit::Ask => {
            let origin = e.id;
            debug!(conn = %origin, topic = %p.topic, "publish refused by the authorizer");
            bump(&core.stats().denied_publishes, 1);
            refuse_publish(core, c, p.qos, p.pkid, reason::NOT_AUTHORIZED);
            Authorized::Done
        }
    }
}

/// An authorized publish made into its message, ready to be routed.
struct Ready {
    msg: Arc<Message>,
    /// The packet id its ack names.
    pkid: u16,
    policy: OutboundPolicy,
    /// Where its ack is held, when it waits for confirmations.
    held: Option<u64>,
    /// The publisher's own share of the durability confirm.
    confirm: Option<Arc<crate::session::Confirm>>,
}

/// Makes an authorized publish into its message: recorded (QoS 2), its ack
/// held for what it waits on. `None`: refused by the full retained store.
fn prepare(
    core: &Core,
    c: &mut ConnMut<'_>,
    p: &mut Publish,
    policy: OutboundPolicy,
) -> Option<Ready> {
    let origin = c.entry.id;
    let v5 = c.entry.link.as_ref()?.version.is_v5();
    let (qos, pkid) = (p.qos, p.pkid);
    let topic: Arc<str> = std::mem::take(&mut p.topic).into();
    // A retained message the full store refuses: MQTT 5 publishers get a
    // clear refusal (0x97) and the message goes nowhere; 3.1.1 has no way to
    // say no, so there it is delivered without being stored (and counted).
    let weight = Message::weight_of(&topic, p.payload.len());
    if p.retain
        && v5
        && core.retained_would_refuse(c.retained, &topic, weight, p.payload.is_empty())
    {
        bump(&core.stats().retained_refused, 1);
        refuse_publish(core, c, qos, pkid, reason::QUOTA_EXCEEDED);
        return None;
    }
    if qos == QoS::ExactlyOnce {
        c.await_pubrel(core, pkid);
    }
    // The ack waits for the outbound bridge's confirmation and for the
    // message to be stored wherever it goes, as configured.
    let durable = qos != QoS::AtMostOnce && core.waits_for_durability();
    let out = qos != QoS::AtMostOnce && policy == OutboundPolicy::Confirm;
    let waits = u8::from(durable) + u8::from(out);
    let held = (waits > 0).then(|| c.hold_ack(qos, pkid, waits));
    let mut msg = Message::new(
        core.message_id(),
        Publication {
            topic,
            payload: std::mem::take(&mut p.payload),
            qos,
            retain: p.retain,
            // Most publishes carry none: no copy, no allocation.
            properties: (!p.properties.is_empty())
                .then(|| Box::new(std::mem::take(&mut p.properties))),
            origin: Some(origin),
        },
        core.clock().instant(),
    );
    let key = c.key;
    let confirm = held
        .filter(|_| durable)
        .map(|seq| c.confirm_for(core, Waiting::Produce { key, seq }));
    if let Some(confirm) = &confirm {
        msg = msg.with_confirm(confirm.clone());
    }
    Some(Ready {
        msg: Arc::new(msg),
        pkid,
        policy,
        held,
        confirm,
    })
}

/// Routes a ready publish: stored (retained), delivered to every
/// subscriber, handed out, acknowledged. Returns how the publishing
/// connection reads on.
fn route(core: &Core, st: &mut CoreState, key: ConnKey, ready: Ready) -> Flow {
    let Ready {
        msg,
        pkid,
        policy,
        held,
        confirm,
    } = ready;
    if msg.retain {
        // Room was checked above; a store filled by another core meanwhile
        // keeps the message undelivered-as-retained (counted), delivered.
        core.retain(st, &msg);
    }
    bump(&core.stats().publishes_in, 1);
    core.publish(st, msg.clone());
    let pace = st.take_pace();
    let mut c = st.conn(key);
    if let Some(c) = c.as_mut() {
        c.publish_out(core, &msg, policy, held);
    }
    // The origin's own share: every write it started is counted by now.
    if let Some(confirm) = confirm {
        confirm.release(true);
    }
    let Some(mut c) = c else {
        return Flow::Stop;
    };
    if held.is_none() {
        c.ack_publish(msg.qos, pkid, reason::SUCCESS);
    }
    super::after(&c, pace)
}

/// Acknowledges a refused PUBLISH: MQTT 5 gets `code`, 3.1.1 (which has no
/// negative acks) a plain ack, and its QoS 2 exchange goes on to PUBCOMP as
/// usual. A failed PUBREC ends a QoS 2 exchange, so its packet id is not
/// kept awaiting PUBREL.
fn refuse_publish(core: &Core, c: &mut ConnMut<'_>, qos: QoS, pkid: u16, code: u8) {
    let Some(link) = c.entry.link.as_ref() else {
        return;
    };
    let code = if link.version.is_v5() {
        code
    } else {
        reason::SUCCESS
    };
    if qos == QoS::ExactlyOnce && code < 0x80 && !c.entry.session.incoming_qos2.contains(&pkid) {
        c.await_pubrel(core, pkid);
    }
    c.ack_publish(qos, pkid, code);
}

/// The authorizer's slow path answered for `token`: a client's parked
/// PUBLISH or SUBSCRIBE goes on, or an API publish is finished.
pub fn on_permit(core: &Core, token: u32, permit: Permit) {
    let mut st = core.st.borrow_mut();
    let st = &mut *st;
    let was_saturated = st.pending.saturated();
    let waiting = st.pending.take(token);
    // An answer of Ask is no answer: refuse (fail closed).
    let permit = if permit == Permit::Ask {
        Permit::Deny
    } else {
        permit
    };
    match waiting {
        Some(Waiting::Permit { key }) => resume(core, st, key, permit),
        Some(Waiting::ApiPermit(api)) => {
            let ApiPublish { msg, done } = *api;
            match permit {
                Permit::Allow => {
                    let policy = core.node.outbound.policy(&msg.topic);
                    finish_api(core, st, msg, policy, done);
                }
                Permit::Deny | Permit::Ask => {
                    bump(&core.stats().denied_publishes, 1);
                    if let Some(done) = done {
                        let _ = done.send(Err(Refusal::Denied));
                    }
                }
            }
        }
        _ => debug_assert!(false, "a permit for another kind of request"),
    }
    core.after_answer(st, was_saturated);
}

/// Resumes the packet `key` parked for a permit.
fn resume(core: &Core, st: &mut CoreState, key: ConnKey, permit: Permit) {
    let Some(mut c) = st.conn(key) else { return };
    let Some(link) = c.link() else { return };
    let Some(parked) = link.rare.as_mut().and_then(|r| r.parked.take()) else {
        return;
    };
    // Whatever happens next, the connection reads again.
    link.wake();
    match parked {
        Parked::Publish(mut p) => {
            // The rules may have changed while it waited.
            let policy = core.node.outbound.policy(&p.topic);
            if let Authorized::Route(ready) = authorize(core, &mut c, &mut p, Some(permit), policy)
            {
                route(core, st, key, ready);
            }
        }
        Parked::Subscribe {
            subscribe,
            mut permits,
        } => {
            if let Some(slot) = permits.iter_mut().find(|p| p.is_none()) {
                *slot = Some(permit == Permit::Allow);
            }
            if let Err(v) = super::subscribe::subscribe(core, st, key, subscribe, permits) {
                if let Some(link) = st.link(key) {
                    let code = link.version.is_v5().then_some(v.code);
                    link.request_close_why(code, false, Some(v.why));
                }
            }
        }
    }
}

/// PUBACK from the client, with its reason code (0 for a plain one; an
/// MQTT 5 client may refuse with 0x80 or above).
pub(super) fn puback(core: &Core, c: &mut ConnMut<'_>, pkid: u16, code: u8) {
    settle(
        core,
        c,
        pkid,
        |f| f.d.qos == QoS::AtLeastOnce && !f.released,
        outcome(code),
    );
}

/// What a client's acknowledgement says of the delivery.
fn outcome(code: u8) -> Outcome {
    if code >= 0x80 {
        Outcome::Refused(code)
    } else {
        Outcome::Acked
    }
}

/// Ends the in-flight delivery `pkid` that `is_it` accepts, with its
/// receipt (if its message asked) saying `outcome`; then the queue is
/// pumped into the window and the store is told the delivery is done.
#[inline]
fn settle(
    core: &Core,
    c: &mut ConnMut<'_>,
    pkid: u16,
    is_it: impl Fn(&crate::session::Inflight) -> bool,
    outcome: Outcome,
) {
    let e = &mut *c.entry;
    let done = e.session.take_inflight(pkid, is_it);
    if let Some(f) = done.as_ref().filter(|f| f.d.receipts) {
        e.report(&f.d.msg, outcome);
    }
    crate::shard::pump(e, core.stats(), || core.clock().instant());
    if let Some(f) = done {
        c.forget(core, f.d.seq);
    }
}

/// PUBREC from the client: release with PUBREL (or end on an error code).
pub(super) fn pubrec(core: &Core, c: &mut ConnMut<'_>, a: Ack) {
    if a.code >= 0x80 {
        // MQTT 5 4.3.3: an error PUBREC ends the exchange.
        let is_it = |f: &crate::session::Inflight| f.d.qos == QoS::ExactlyOnce && !f.released;
        settle(core, c, a.pkid, is_it, outcome(a.code));
        return;
    }
    let e = &mut *c.entry;
    let Some(link) = e.link.as_mut() else {
        return;
    };
    let found = e
        .session
        .inflight
        .iter_mut()
        .find(|f| f.pkid == a.pkid && f.d.qos == QoS::ExactlyOnce);
    let mut rel = Ack::new(a.pkid);
    let mut released = None;
    match found {
        Some(f) => {
            f.released = true;
            released = Some(f.d.seq);
        }
        None if link.version.is_v5() => rel.code = reason::PACKET_ID_NOT_FOUND,
        None => {}
    }
    link.control(Packet::PubRel(rel));
    if let Some(seq) = released.filter(|&s| s > 0) {
        let pkid = a.pkid;
        c.journal_for(core, |session| StoreOp::Sent {
            session,
            seq,
            pkid,
            released: true,
        });
    }
}

/// PUBCOMP from the client: the QoS 2 delivery is complete.
pub(super) fn pubcomp(core: &Core, c: &mut ConnMut<'_>, a: Ack) {
    settle(core, c, a.pkid, |f| f.released, Outcome::Acked);
}

/// PUBREL from the client: its QoS 2 publish is released (PUBCOMP).
pub(super) fn pubrel(core: &Core, c: &mut ConnMut<'_>, a: Ack) {
    let e = &mut *c.entry;
    let Some(link) = e.link.as_mut() else {
        return;
    };
    let ids = &mut e.session.incoming_qos2;
    let mut comp = Ack::new(a.pkid);
    let mut removed = false;
    match ids.iter().position(|&id| id == a.pkid) {
        Some(i) => {
            ids.swap_remove(i);
            removed = true;
        }
        None if link.version.is_v5() => comp.code = reason::PACKET_ID_NOT_FOUND,
        None => {}
    }
    link.control(Packet::PubComp(comp));
    if removed {
        let pkid = a.pkid;
        c.journal_for(core, |session| StoreOp::Incoming {
            session,
            pkid,
            add: false,
        });
    }
}

/// A publish from outside MQTT (the HTTP API, a bridge): the same checks
/// as a client's, then routed as if a client had published it. `done`
/// learns the message id once the message reached every local subscriber
/// and every interested core's queue (and, when an outbound rule confirms
/// it, the bridge), or why not.
pub fn on_bridge_publish(
    core: &Core,
    mut req: PublishRequest,
    source: Source,
    scope: Scope,
    numbered: Option<Numbered>,
    done: Option<Receipt>,
) {
    let refuse = |done: Option<Receipt>, r: Refusal| {
        if let Some(done) = done {
            // A caller that gave up waiting dropped its receiver; sending
            // to it is then a no-op.
            let _ = done.send(Err(r));
        }
    };
    if req.topic.is_empty() {
        return refuse(done, Refusal::TopicInvalid("empty topic name"));
    }
    if let Err(why) = topic::validate_name(&req.topic) {
        return refuse(done, Refusal::TopicInvalid(why));
    }
    if req.qos > max_qos(core) {
        return refuse(done, Refusal::QosNotSupported);
    }
    let mut st = core.st.borrow_mut();
    let st = &mut *st;
    // What a bridge brings in (a Kafka record) never goes back out.
    let policy = match source {
        Source::Bridge => OutboundPolicy::Skip,
        _ => core.node.outbound.policy(&req.topic),
    };
    let waits = policy != OutboundPolicy::Skip
        || (req.qos != QoS::AtMostOnce && core.waits_for_durability());
    // A Kafka record is never refused for room: a refusal after it was
    // queued would be offered again behind records queued later, and the
    // order of a publisher's messages would break. The consumer bounds
    // what it has in the cores' hands (its window), so this goes at most
    // that far past the pending bounds.
    let ordered = source == Source::Bridge;
    if waits && !ordered && !core.outbound_room(st) {
        return refuse(done, Refusal::Busy);
    }
    let acl = AclRequest {
        action: Action::Publish,
        topic: &req.topic,
        qos: req.qos,
        retain: req.retain,
        source,
        client_id: None,
        username: None,
        peer: None,
        grants: None,
    };
    let permit = core.node.authz.check(&acl);
    if permit == Permit::Ask && !ordered && !st.pending.has_room(PendingKind::Permit) {
        return refuse(done, Refusal::Busy);
    }
    let owned = (permit == Permit::Ask).then(|| acl.to_owned());
    let id = numbered.map_or_else(|| core.message_id(), |n| n.id);
    // A named receipts stream needs no Kafka: the outbound port routes
    // each receipt by its `to`.
    let asked = req.receipts_to.is_some() || (req.receipts && core.node.outbound.receipts());
    let receipts = asked.then(|| crate::session::Receipts {
        sink: std::sync::Arc::new(crate::bridge::outbound::ToOutbound(
            core.node.outbound.clone(),
        )),
        id: req.receipt_id.unwrap_or(id),
        to: req.receipts_to.take(),
    });
    let mut msg = Message::new(id, req.into_publication(), core.clock().instant());
    msg.scope = scope;
    msg.receipts = receipts;
    msg.again = numbered.is_some_and(|n| n.again);
    match (permit, owned) {
        (Permit::Allow, _) => finish_api(core, st, msg, policy, done),
        (Permit::Ask, Some(acl)) => {
            let waiting = Waiting::ApiPermit(Box::new(ApiPublish { msg, done }));
            let token = st.pending.insert_past_bound(waiting);
            bump(&core.stats().acl_deferred, 1);
            core.node
                .authz
                .ask(acl, core.returns.permits.reply_to(token));
        }
        (Permit::Deny | Permit::Ask, _) => {
            bump(&core.stats().denied_publishes, 1);
            refuse(done, Refusal::Denied);
        }
    }
}

/// An authorized API publish: stored (retained), routed, handed out.
fn finish_api(
    core: &Core,
    st: &mut CoreState,
    msg: Message,
    policy: OutboundPolicy,
    done: Option<Receipt>,
) {
    if msg.retain
        && core.retained_would_refuse(
            &st.retained,
            &msg.topic,
            msg.weight(),
            msg.payload.is_empty(),
        )
    {
        bump(&core.stats().retained_refused, 1);
        if let Some(done) = done {
            let _ = done.send(Err(Refusal::RetainedStoreFull));
        }
        return;
    }
    // With durability, the receipt waits until the message is stored
    // wherever it goes (the outbound bridge then goes unconfirmed).
    let (msg, confirm, done) = match done {
        Some(done) if msg.qos != QoS::AtMostOnce && core.waits_for_durability() => {
            let id = msg.id;
            let c = core.confirm_for(&mut st.pending, Waiting::ApiProduce { done, id });
            (msg.with_confirm(c.clone()), Some(c), None)
        }
        done => (msg, None, done),
    };
    let msg = Arc::new(msg);
    if msg.retain {
        core.retain(st, &msg);
    }
    bump(&core.stats().publishes_in, 1);
    core.publish(st, msg.clone());
    core.publish_out_api(st, &msg, policy, done);
    if let Some(c) = confirm {
        c.release(true);
    }
}
