//! MQTT semantics of each packet a client sends, applied to core state.
//!
//! Handlers never perform I/O: they update the session and push frames to
//! the connection's outbox. A protocol violation is returned as a
//! [`Violation`]; the connection task logs it and closes (with that reason
//! code for MQTT 5 clients).

use std::sync::Arc;

use crate::auth::AuthStep;
use crate::codec::{
    reason, topic, Ack, Connect, Packet, Publish, QoS, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use crate::core::{pump, AuthInProgress, ConnectInfo, Core, CoreState, Phase};
use crate::id::ConnKey;
use crate::session::Message;

/// A protocol violation: reason code (MQTT 5) and what went wrong (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u8,
    pub why: &'static str,
}

fn violation(code: u8, why: &'static str) -> Violation {
    Violation { code, why }
}

/// Applies one packet received on `key`'s connection.
pub fn handle(
    core: &Core,
    st: &mut CoreState,
    key: ConnKey,
    packet: Packet,
) -> Result<(), Violation> {
    // Between CONNECT and CONNACK only an authentication exchange may run.
    let connecting = st
        .entry(key)
        .is_some_and(|e| matches!(e.phase, Phase::Connecting));
    if connecting
        && !matches!(
            packet,
            Packet::Connect(_) | Packet::Auth(_) | Packet::Disconnect(_)
        )
    {
        return Err(violation(reason::PROTOCOL_ERROR, "packet before CONNACK"));
    }
    match packet {
        Packet::Connect(c) => connect(core, st, key, *c),
        Packet::Publish(p) => publish(core, st, key, p),
        Packet::PubAck(a) => {
            let Some(e) = st.entry(key) else {
                return Ok(());
            };
            e.session
                .take_inflight(a.pkid, |f| f.d.qos == QoS::AtLeastOnce && !f.released);
            pump(e, core.stats());
            Ok(())
        }
        Packet::PubRec(a) => {
            let Some(e) = st.entry(key) else {
                return Ok(());
            };
            let Some(link) = e.link.as_mut() else {
                return Ok(());
            };
            if a.code >= 0x80 {
                // MQTT 5 4.3.3: an error PUBREC ends the exchange.
                e.session
                    .take_inflight(a.pkid, |f| f.d.qos == QoS::ExactlyOnce && !f.released);
                pump(e, core.stats());
                return Ok(());
            }
            let found = e
                .session
                .inflight
                .iter_mut()
                .find(|f| f.pkid == a.pkid && f.d.qos == QoS::ExactlyOnce);
            let mut rel = Ack::new(a.pkid);
            match found {
                Some(f) => f.released = true,
                None if link.version.is_v5() => rel.code = reason::PACKET_ID_NOT_FOUND,
                None => {}
            }
            link.control(Packet::PubRel(rel));
            Ok(())
        }
        Packet::PubComp(a) => {
            let Some(e) = st.entry(key) else {
                return Ok(());
            };
            e.session.take_inflight(a.pkid, |f| f.released);
            pump(e, core.stats());
            Ok(())
        }
        Packet::PubRel(a) => {
            let Some(e) = st.entry(key) else {
                return Ok(());
            };
            let Some(link) = e.link.as_mut() else {
                return Ok(());
            };
            let ids = &mut e.session.incoming_qos2;
            let mut comp = Ack::new(a.pkid);
            match ids.iter().position(|&id| id == a.pkid) {
                Some(i) => {
                    ids.swap_remove(i);
                }
                None if link.version.is_v5() => comp.code = reason::PACKET_ID_NOT_FOUND,
                None => {}
            }
            link.control(Packet::PubComp(comp));
            Ok(())
        }
        Packet::Subscribe(s) => subscribe(core, st, key, s),
        Packet::Unsubscribe(u) => unsubscribe(core, st, key, u),
        Packet::PingReq => {
            if let Some(link) = st.link(key) {
                link.control(Packet::PingResp);
            }
            Ok(())
        }
        Packet::Disconnect(d) => {
            let cap = core.cfg.session.max_expiry_secs;
            let Some(e) = st.entry(key) else {
                return Ok(());
            };
            if let Some(secs) = d.properties.session_expiry_interval {
                // MQTT 5 3.14.2.2.2: cannot turn a 0 expiry into a non-zero one.
                if e.session.expiry_secs == 0 && secs != 0 {
                    return Err(violation(
                        reason::PROTOCOL_ERROR,
                        "session expiry set on DISCONNECT after 0 at CONNECT",
                    ));
                }
                e.session.expiry_secs = secs.min(cap);
            }
            if let Some(link) = e.link.as_mut() {
                link.graceful = d.code != reason::DISCONNECT_WITH_WILL;
                link.request_close(None, false);
            }
            Ok(())
        }
        Packet::Auth(a) => auth(core, st, key, a),
        Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
            Err(violation(
                reason::PROTOCOL_ERROR,
                "server-to-client packet sent by a client",
            ))
        }
    }
}

/// Refuses a CONNECT with a CONNACK carrying `code`, then closes.
fn refuse(st: &mut CoreState, key: ConnKey, code: u8) -> Result<(), Violation> {
    if let Some(link) = st.link(key) {
        link.control(Packet::ConnAck(crate::codec::ConnAck {
            session_present: false,
            code,
            properties: Default::default(),
        }));
        link.request_close(None, false);
    }
    Ok(())
}

fn connect(core: &Core, st: &mut CoreState, key: ConnKey, c: Connect) -> Result<(), Violation> {
    let m = &core.cfg.mqtt;
    let v5 = c.version.is_v5();
    let tick_ms = core.cfg.runtime.tick_ms;
    let Some(e) = st.entry(key) else {
        return Ok(());
    };
    let id = e.id;
    let Some(link) = e.link.as_mut() else {
        return Ok(());
    };
    link.version = c.version;
    let who = crate::auth::Credentials {
        client_id: &c.client_id,
        username: c.username.as_deref(),
        password: c.password.as_deref(),
        peer: link.peer,
    };
    if let crate::auth::Verdict::Deny(code) = core.shared.auth.authenticate(&who) {
        tracing::info!(conn = %id, peer = %link.peer, reason = format_args!("{code:#04x}"), "CONNECT refused by the authenticator");
        return refuse(st, key, code);
    }
    // MQTT 5 4.12: an Authentication Method starts an enhanced exchange.
    let exchange = match &c.properties.authentication_method {
        Some(method) => match core.shared.auth.enhanced(method, &who) {
            Some(ex) => Some((method.clone(), ex)),
            None => return refuse(st, key, reason::BAD_AUTHENTICATION_METHOD),
        },
        None => None,
    };
    if let Some(w) = &c.will {
        if w.qos as u8 > m.max_qos {
            return refuse(st, key, reason::QOS_NOT_SUPPORTED);
        }
        if w.retain && !m.retain_available && v5 {
            return refuse(st, key, reason::RETAIN_NOT_SUPPORTED);
        }
    }
    let mut assigned_id = None;
    let client_id = if c.client_id.is_empty() {
        // 3.1.1 [MQTT-3.1.3-8]: an empty id needs clean session; 3.1 forbids it.
        if !v5 && (!c.clean_start || c.version == crate::codec::Version::V31) {
            return refuse(st, key, reason::CLIENT_ID_NOT_VALID);
        }
        let generated = format!("tether-{id}");
        if v5 {
            assigned_id = Some(generated.clone());
        }
        generated
    } else {
        c.client_id
    };
    let mut server_keep_alive = None;
    let mut keep_alive = c.keep_alive;
    if v5 && (keep_alive > m.max_keep_alive || (keep_alive == 0 && m.max_keep_alive < u16::MAX)) {
        keep_alive = m.max_keep_alive;
        server_keep_alive = Some(keep_alive);
    }
    link.keep_alive_ticks = (u64::from(keep_alive) * 1500).div_ceil(tick_ms);
    link.window = if v5 {
        c.properties
            .receive_maximum
            .unwrap_or(u16::MAX)
            .min(m.max_inflight) as usize
    } else {
        m.inflight_window.min(m.max_inflight) as usize
    };
    link.max_packet = c
        .properties
        .maximum_packet_size
        .map_or(usize::MAX, |v| v as usize);
    if v5 {
        link.aliases = vec![None; m.topic_alias_maximum as usize];
        let out = c
            .properties
            .topic_alias_maximum
            .unwrap_or(0)
            .min(m.topic_alias_outbound);
        if out > 0 {
            link.out_aliases = Some(Box::new(crate::alias::OutAliases::new(out)));
        }
    }
    link.will = c.will.map(Box::new);
    link.username = c.username.as_deref().map(Arc::from);
    if let Some(user) = link.username.clone() {
        // Paired with the -1 in `Core::unregister`, which drops the link.
        core.count_user(st, &user, 1);
    }
    let requested = if v5 {
        c.properties.session_expiry_interval.unwrap_or(0)
    } else if c.clean_start {
        0
    } else {
        u32::MAX
    };
    let expiry = requested.min(core.cfg.session.max_expiry_secs);
    let response_information = (v5
        && c.properties.request_response_information == Some(1)
        && !m.response_information.is_empty())
    .then(|| m.response_information.replace("%c", &client_id));
    let mut info = ConnectInfo {
        clean_start: c.clean_start,
        expiry_secs: expiry,
        requested_expiry_secs: if v5 { requested } else { expiry },
        assigned_id,
        server_keep_alive,
        auth: None,
        response_information,
    };
    tracing::debug!(conn = %id, client_id, version = ?c.version, "CONNECT");
    if let Some((method, mut exchange)) = exchange {
        match exchange.step(c.properties.authentication_data.as_deref()) {
            AuthStep::Continue(challenge) => {
                if let Some(link) = st.link(key) {
                    link.control(auth_packet(
                        reason::CONTINUE_AUTHENTICATION,
                        &method,
                        Some(challenge),
                    ));
                    let connect = Some((client_id.into(), info));
                    link.auth = Some(Box::new(AuthInProgress {
                        method,
                        exchange,
                        connect,
                    }));
                }
                return Ok(());
            }
            AuthStep::Success(data) => {
                if let Some(link) = st.link(key) {
                    link.auth_method = Some(method.as_str().into());
                }
                info.auth = Some((method, data));
            }
            AuthStep::Fail(code) => return refuse(st, key, code),
        }
    }
    core.claim(st, key, client_id.into(), info);
    Ok(())
}

fn auth_packet(code: u8, method: &str, data: Option<bytes::Bytes>) -> Packet {
    let properties = crate::codec::Properties {
        authentication_method: Some(method.to_owned()),
        authentication_data: data,
        ..Default::default()
    };
    Packet::Auth(crate::codec::ReasonOnly { code, properties })
}

/// AUTH from the client: the next step of a CONNECT-time exchange (0x18),
/// or the start (0x19) or next step of a re-authentication.
fn auth(
    core: &Core,
    st: &mut CoreState,
    key: ConnKey,
    a: crate::codec::ReasonOnly,
) -> Result<(), Violation> {
    let Some(e) = st.entry(key) else {
        return Ok(());
    };
    let connecting = matches!(e.phase, Phase::Connecting);
    let client_id = e.client_id.clone().unwrap_or_default();
    let Some(link) = e.link.as_mut() else {
        return Ok(());
    };
    let Some(method) = a.properties.authentication_method.clone() else {
        return Err(violation(
            reason::PROTOCOL_ERROR,
            "AUTH without an authentication method",
        ));
    };
    let mut progress = match (a.code, link.auth.take()) {
        (reason::CONTINUE_AUTHENTICATION, Some(p)) if p.method == method => p,
        (reason::RE_AUTHENTICATE, None)
            if !connecting && link.auth_method.as_deref() == Some(method.as_str()) =>
        {
            let who = crate::auth::Credentials {
                client_id: &client_id,
                username: None,
                password: None,
                peer: link.peer,
            };
            let Some(exchange) = core.shared.auth.enhanced(&method, &who) else {
                return Err(violation(
                    reason::BAD_AUTHENTICATION_METHOD,
                    "authentication method no longer supported",
                ));
            };
            Box::new(AuthInProgress {
                method: method.clone(),
                exchange,
                connect: None,
            })
        }
        _ => return Err(violation(reason::PROTOCOL_ERROR, "unexpected AUTH")),
    };
    match progress
        .exchange
        .step(a.properties.authentication_data.as_deref())
    {
        AuthStep::Continue(challenge) => {
            link.control(auth_packet(
                reason::CONTINUE_AUTHENTICATION,
                &method,
                Some(challenge),
            ));
            link.auth = Some(progress);
            Ok(())
        }
        AuthStep::Success(data) => match progress.connect.take() {
            Some((client_id, mut info)) => {
                link.auth_method = Some(method.as_str().into());
                info.auth = Some((method, data));
                core.claim(st, key, client_id, info);
                Ok(())
            }
            None => {
                link.control(auth_packet(reason::SUCCESS, &method, data));
                Ok(())
            }
        },
        AuthStep::Fail(code) if progress.connect.is_some() => refuse(st, key, code),
        AuthStep::Fail(code) => Err(violation(code, "re-authentication failed")),
    }
}

fn publish(core: &Core, st: &mut CoreState, key: ConnKey, mut p: Publish) -> Result<(), Violation> {
    let m = &core.cfg.mqtt;
    let Some(e) = st.entry(key) else {
        return Ok(());
    };
    let origin = e.id;
    let Some(link) = e.link.as_mut() else {
        return Ok(());
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
    let topic: Arc<str> = match p.properties.topic_alias.take() {
        Some(alias) => {
            let slot = (alias as usize)
                .checked_sub(1)
                .filter(|&i| i < link.aliases.len());
            let Some(slot) = slot else {
                return Err(violation(
                    reason::TOPIC_ALIAS_INVALID,
                    "topic alias out of range",
                ));
            };
            if p.topic.is_empty() {
                let Some(t) = link.aliases[slot].clone() else {
                    return Err(violation(reason::PROTOCOL_ERROR, "unknown topic alias"));
                };
                t
            } else {
                let t: Arc<str> = p.topic.into();
                link.aliases[slot] = Some(t.clone());
                t
            }
        }
        None if p.topic.is_empty() => {
            return Err(violation(
                reason::PROTOCOL_ERROR,
                "empty topic without a topic alias",
            ))
        }
        None => p.topic.into(),
    };
    if p.qos == QoS::ExactlyOnce {
        let ids = &mut e.session.incoming_qos2;
        if ids.contains(&p.pkid) {
            // A retransmission of a message already routed: ack only.
            link.control(Packet::PubRec(Ack::new(p.pkid)));
            return Ok(());
        }
        if ids.len() >= m.receive_maximum as usize {
            return Err(violation(
                reason::RECEIVE_MAXIMUM_EXCEEDED,
                "more QoS 2 publishes than Receive Maximum",
            ));
        }
        ids.push(p.pkid);
    }
    let (qos, pkid) = (p.qos, p.pkid);
    if m.deny_publish.iter().any(|f| topic::matches(f, &topic)) {
        tracing::debug!(conn = %origin, topic = &*topic, "publish denied by mqtt.deny_publish");
        crate::stats::bump(&core.stats().denied_publishes, 1);
        refuse_publish(st, key, qos, pkid, reason::NOT_AUTHORIZED);
        return Ok(());
    }
    let expires_at = p
        .properties
        .message_expiry_interval
        .map(|secs| std::time::Instant::now() + std::time::Duration::from_secs(secs.into()));
    let properties = (!p.properties.is_empty()).then(|| Box::new(p.properties));
    let msg = Arc::new(Message {
        id: core.message_id(),
        topic,
        payload: p.payload,
        qos,
        retain: p.retain,
        properties,
        origin: Some(origin),
        expires_at,
        born: std::time::Instant::now(),
    });
    // A retained message the full store refuses: MQTT 5 publishers get a
    // clear refusal (0x97) and the message goes nowhere; 3.1.1 has no way to
    // say no, so there it is delivered without being stored (and counted).
    if msg.retain && !core.retain(st, &msg) && v5 {
        refuse_publish(st, key, qos, pkid, reason::QUOTA_EXCEEDED);
        return Ok(());
    }
    if let Some(link) = st.link(key) {
        ack_publish(link, qos, Ack::new(pkid));
    }
    crate::stats::bump(&core.stats().publishes_in, 1);
    core.publish(st, msg);
    Ok(())
}

/// Acknowledges a refused PUBLISH: MQTT 5 gets `code`, 3.1.1 (which has no
/// negative acks) a plain ack. A failed PUBREC ends a QoS 2 exchange, so its
/// packet id is not kept awaiting PUBREL.
fn refuse_publish(st: &mut CoreState, key: ConnKey, qos: QoS, pkid: u16, code: u8) {
    let Some(e) = st.entry(key) else { return };
    let Some(link) = e.link.as_mut() else { return };
    let code = if link.version.is_v5() {
        code
    } else {
        reason::SUCCESS
    };
    if qos == QoS::ExactlyOnce && code >= 0x80 {
        e.session.incoming_qos2.retain(|&id| id != pkid);
    }
    let ack = Ack {
        pkid,
        code,
        properties: Default::default(),
    };
    ack_publish(link, qos, ack);
}

/// Queues the acknowledgement a PUBLISH of `qos` gets: PUBACK for QoS 1,
/// PUBREC for QoS 2, nothing for QoS 0.
fn ack_publish(link: &mut crate::core::Link, qos: QoS, ack: Ack) {
    match qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => link.control(Packet::PubAck(ack)),
        QoS::ExactlyOnce => link.control(Packet::PubRec(ack)),
    }
}

fn subscribe(core: &Core, st: &mut CoreState, key: ConnKey, s: Subscribe) -> Result<(), Violation> {
    let max_qos = QoS::from_u8(core.cfg.mqtt.max_qos).unwrap_or(QoS::ExactlyOnce);
    let Some(e) = st.entry(key) else {
        return Ok(());
    };
    let Some(v5) = e.link.as_ref().map(|l| l.version.is_v5()) else {
        return Ok(());
    };
    // MQTT 5 3.8.2.1.2: at most one identifier, for every filter of this SUBSCRIBE.
    let id = s
        .properties
        .subscription_identifiers
        .first()
        .copied()
        .unwrap_or(0);
    let fail = |code: u8| if v5 { code } else { 0x80 };
    let mut codes = Vec::with_capacity(s.filters.len());
    let mut retained = Vec::new();
    for (filter, mut opts) in s.filters {
        // `$share/{group}/{filter}`: the rules below apply to `{filter}`.
        let shared = topic::parse_shared(&filter);
        let inner = match shared {
            Some(Err(_)) => {
                codes.push(fail(reason::TOPIC_FILTER_INVALID));
                continue;
            }
            Some(Ok((_, inner))) => inner,
            None => filter.as_str(),
        };
        if topic::validate_filter(inner).is_err() {
            codes.push(fail(reason::TOPIC_FILTER_INVALID));
            continue;
        }
        if shared.is_some() && !core.cfg.mqtt.shared_subscription_available {
            codes.push(fail(reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED));
            continue;
        }
        if shared.is_some() && opts.no_local {
            return Err(violation(
                reason::PROTOCOL_ERROR,
                "No Local on a shared subscription",
            ));
        }
        if !core.cfg.mqtt.wildcard_subscription_available && topic::has_wildcards(inner) {
            codes.push(fail(reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED));
            continue;
        }
        if core
            .cfg
            .mqtt
            .deny_subscribe
            .iter()
            .any(|d| topic::matches(d, inner))
        {
            codes.push(fail(reason::NOT_AUTHORIZED));
            continue;
        }
        opts.qos = opts.qos.min(max_qos);
        let e = st.entry(key).expect("checked above");
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
        let is_shared = shared.is_some();
        core.index_sub(st, &filter, key, opts, id);
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
    if let Some(link) = st.link(key) {
        link.control(Packet::SubAck(SubAck {
            pkid: s.pkid,
            codes,
            properties: Default::default(),
        }));
    }
    // After the SUBACK, so clients see the subscription confirmed first.
    for (filter, qos) in retained {
        core.deliver_retained(st, key, &filter, qos);
    }
    Ok(())
}

fn unsubscribe(
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
