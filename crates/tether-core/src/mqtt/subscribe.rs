//! SUBSCRIBE and UNSUBSCRIBE.
//!
//! A SUBSCRIBE is decided filter by filter in a first pass with no side
//! effects: protocol checks, then the authorizer. When the authorizer
//! defers a filter, the packet is parked with the answers known so far and
//! the connection reads nothing more; the slow path's answer resumes it
//! here. Once every filter is decided, the second pass indexes the granted
//! subscriptions, sends the SUBACK, and then the retained messages.

use super::{max_qos, violation, Step, Violation};
use crate::auth::{Action, Permit};
use crate::codec::{reason, topic, Packet, SubAck, Subscribe, UnsubAck, Unsubscribe};
use crate::id::ConnKey;
use crate::shard::{Core, CoreState, Parked, PendingKind, Waiting};
use crate::stats::bump;
use crate::store::StoreOp;

/// What the first pass decided for one filter.
enum Decision {
    /// Refused with this SUBACK code.
    Fail(u8),
    /// Allowed by the protocol; the authorizer decides.
    Authorize,
}

/// SUBSCRIBE; `permits` holds the answers already known per filter (empty
/// on first sight).
pub(super) fn subscribe(
    core: &Core,
    st: &mut CoreState,
    key: ConnKey,
    s: Subscribe,
    mut permits: Vec<Option<bool>>,
) -> Result<Step, Violation> {
    let m = &core.cfg.mqtt;
    let Some(e) = st.entry(key) else {
        return Ok(Step::Done);
    };
    let Some(link) = e.link.as_ref() else {
        return Ok(Step::Done);
    };
    let v5 = link.version.is_v5();
    let fail = |code: u8| if v5 { code } else { 0x80 };
    let mut decisions = Vec::with_capacity(s.filters.len());
    for (filter, opts) in &s.filters {
        // `$share/{group}/{filter}`: the rules below apply to `{filter}`.
        let shared = topic::parse_shared(filter);
        let inner = match shared {
            Some(Err(_)) => {
                decisions.push(Decision::Fail(fail(reason::TOPIC_FILTER_INVALID)));
                continue;
            }
            Some(Ok((_, inner))) => inner,
            None => filter.as_str(),
        };
        let decision = if topic::validate_filter(inner).is_err() {
            Decision::Fail(fail(reason::TOPIC_FILTER_INVALID))
        } else if shared.is_some() && !m.shared_subscription_available {
            Decision::Fail(fail(reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED))
        } else if shared.is_some() && opts.no_local {
            return Err(violation(
                reason::PROTOCOL_ERROR,
                "No Local on a shared subscription",
            ));
        } else if !m.wildcard_subscription_available && topic::has_wildcards(inner) {
            Decision::Fail(fail(reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED))
        } else {
            Decision::Authorize
        };
        decisions.push(decision);
    }
    // The authorizer, filter by filter, with the answers already known.
    permits.resize(s.filters.len(), None);
    let mut ask = None;
    for (i, ((filter, opts), decision)) in s.filters.iter().zip(&decisions).enumerate() {
        if permits[i].is_some() {
            continue;
        }
        let Decision::Authorize = decision else {
            permits[i] = Some(false);
            continue;
        };
        let inner = match topic::parse_shared(filter) {
            Some(Ok((_, inner))) => inner,
            _ => filter.as_str(),
        };
        let req = link.acl_request(
            e.client_id.as_deref(),
            Action::Subscribe,
            inner,
            opts.qos,
            false,
        );
        match core.node.authz.check(&req) {
            Permit::Allow => permits[i] = Some(true),
            Permit::Deny => permits[i] = Some(false),
            Permit::Ask if ask.is_none() => ask = Some(req.to_owned()),
            // Asked one at a time; this one is checked again on resumption.
            Permit::Ask => {}
        }
    }
    if let Some(req) = ask {
        if !st.pending.has_room(PendingKind::Permit) {
            return Ok(Step::NoRoom);
        }
        let token = st
            .pending
            .insert(Waiting::Permit { key })
            .expect("room checked above");
        if let Some(link) = st.link(key) {
            link.rare().parked = Some(Parked::Subscribe {
                subscribe: s,
                permits,
            });
        }
        bump(&core.stats().acl_deferred, 1);
        core.node
            .authz
            .ask(req, core.returns.permits.reply_to(token));
        return Ok(Step::Done);
    }
    apply(core, st, key, s, &decisions, &permits);
    Ok(Step::Done)
}

/// The second pass: every filter decided.
fn apply(
    core: &Core,
    st: &mut CoreState,
    key: ConnKey,
    s: Subscribe,
    decisions: &[Decision],
    permits: &[Option<bool>],
) {
    let max_qos = max_qos(core);
    let Some(v5) = st.link(key).map(|l| l.version.is_v5()) else {
        return;
    };
    // MQTT 5 3.8.2.1.2: at most one identifier, for every filter of this SUBSCRIBE.
    let id = s
        .properties
        .subscription_identifiers
        .first()
        .copied()
        .unwrap_or(0);
    let mut codes = Vec::with_capacity(s.filters.len());
    let mut retained = Vec::new();
    // A persistent session's SUBACK waits for its subscriptions to be
    // stored (sync durability).
    let held = core.hold_suback(st, key);
    for (i, (filter, mut opts)) in s.filters.into_iter().enumerate() {
        if let Decision::Fail(code) = decisions[i] {
            codes.push(code);
            continue;
        }
        if permits[i] != Some(true) {
            codes.push(if v5 { reason::NOT_AUTHORIZED } else { 0x80 });
            continue;
        }
        opts.qos = opts.qos.min(max_qos);
        let Some(e) = st.entry(key) else { return };
        let existed = match e.session.subscription(&filter) {
            Some(i) => {
                e.session.subs[i].1 = opts;
                e.session.subs[i].2 = id;
                true
            }
            None => {
                e.session.subs.push((filter.as_str().into(), opts, id));
                false
            }
        };
        let is_shared = topic::parse_shared(&filter).is_some();
        core.index_sub(st, &filter, key, opts, id, held.as_ref().map(|(_, c)| c));
        if let Some(mut c) = st.conn(key) {
            c.journal_for(core, |session| StoreOp::Subscribe {
                session,
                filter: filter.as_str().into(),
                opts,
                id,
                // A share only for a write that is made.
                confirm: held.as_ref().map(|(_, c)| {
                    c.hold();
                    c.clone()
                }),
            });
        }
        codes.push(opts.qos as u8);
        // MQTT 5 3.8.3.1 Retain Handling: 0 always, 1 only for a new
        // subscription, 2 never (3.1.1 behaves as 0).
        // Retained messages are not sent to shared subscriptions.
        let send_retained = !is_shared
            && match opts.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
        if send_retained {
            retained.push((filter, opts.qos));
        }
    }
    let ack = SubAck {
        pkid: s.pkid,
        codes,
        properties: Default::default(),
    };
    match held {
        Some((seq, confirm)) => core.suback_ready(st, key, seq, &confirm, ack),
        None => {
            if let Some(link) = st.link(key) {
                link.control(Packet::SubAck(ack));
            }
        }
    }
    // After the SUBACK, so clients see the subscription confirmed first.
    for (filter, qos) in retained {
        core.deliver_retained(st, key, &filter, qos);
    }
}

/// UNSUBSCRIBE.
pub(super) fn unsubscribe(
    core: &Core,
    st: &mut CoreState,
    key: ConnKey,
    u: Unsubscribe,
) -> Result<(), Violation> {
    let mut codes = Vec::with_capacity(u.filters.len());
    for filter in &u.filters {
        let Some(e) = st.entry(key) else {
            return Ok(());
        };
        match e.session.subscription(filter) {
            Some(i) => {
                e.session.subs.remove(i);
                core.unindex_sub(st, filter, key);
                if let Some(mut c) = st.conn(key) {
                    c.journal_for(core, |session| StoreOp::Unsubscribe {
                        session,
                        filter: filter.as_str().into(),
                    });
                }
                codes.push(reason::SUCCESS);
            }
            None => codes.push(reason::NO_SUBSCRIPTION_EXISTED),
        }
    }
    if let Some(link) = st.link(key) {
        link.control(Packet::UnsubAck(UnsubAck {
            pkid: u.pkid,
            codes,
            properties: Default::default(),
        }));
    }
    Ok(())
}
