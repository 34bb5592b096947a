//! CONNECT, its authentication (at once, or deferred to the
//! authenticator's slow path), the enhanced-authentication exchange (AUTH),
//! the claim of the client id, and DISCONNECT.

use std::sync::Arc;

use tracing::{debug, info};

use super::connack::{self, Granted};
use super::{violation, Violation};
use crate::auth::{AuthStep, Credentials, Identity, Step, Verdict};
use crate::codec::{reason, Connect, Packet, ReasonOnly, Version};
use crate::id::{ConnId, ConnKey, TRANSPORT_NAMES};
use crate::shard::{AuthInProgress, ConnectInfo, Core, CoreState, Link, Phase, Waiting};
use crate::stats::bump;
use crate::store::ClaimResult;

/// Refuses a CONNECT with a CONNACK carrying `code`, then closes.
fn refuse(st: &mut CoreState, key: ConnKey, code: u8) {
    refuse_why(st, key, code, None);
}

fn refuse_why(st: &mut CoreState, key: ConnKey, code: u8, why: Option<&str>) {
    if let Some(link) = st.link(key) {
        let v5 = link.version.is_v5();
        link.control(connack::refused(code, v5, why));
        link.request_close(None, false);
    }
}

/// What the authenticators see of a CONNECT on `link`.
fn credentials<'a>(c: &'a Connect, link: &'a Link) -> Credentials<'a> {
    Credentials {
        client_id: &c.client_id,
        username: c.username.as_deref(),
        password: c.password.as_deref(),
        peer: link.peer.addr(),
        listener: TRANSPORT_NAMES[usize::from(link.transport) % TRANSPORT_NAMES.len()],
        protocol: match c.version {
            Version::V31 => 3,
            Version::V311 => 4,
            Version::V5 => 5,
        },
        certificate_cn: link.rare.as_ref().and_then(|r| r.certificate_cn.as_deref()),
    }
}

/// CONNECT: authenticate (now, or park the connection until the verdict
/// comes back), then admit.
pub(super) fn connect(
    core: &Core,
    st: &mut CoreState,
    key: ConnKey,
    c: Connect,
) -> Result<(), Violation> {
    let Some(e) = st.entry(key) else {
        return Ok(());
    };
    let id = e.id;
    let Some(link) = e.link.as_mut() else {
        return Ok(());
    };
    link.version = c.version;
    let peer = link.peer.addr();
    if core.overloaded() {
        info!(conn = %id, %peer, lag_ms = core.lag_ms.get(), "CONNECT refused: the core is overloaded (listeners.overload_lag_ms)");
        bump(&core.stats().overload_refused, 1);
        refuse_why(st, key, reason::SERVER_BUSY, Some("server busy, try again"));
        return Ok(());
    }
    if core.node.bans.banned(peer.ip(), core.node.elapsed_ms()) {
        info!(conn = %id, %peer, "CONNECT refused: the address is banned after failed logins (auth.ban_secs)");
        bump(&core.stats().banned_connects, 1);
        refuse(st, key, reason::BANNED);
        return Ok(());
    }
    walk(core, st, key, c, 0);
    Ok(())
}

/// Asks the listener's chain from `from` and acts on its verdict.
fn walk(core: &Core, st: &mut CoreState, key: ConnKey, c: Connect, from: Step) {
    let Some(link) = st.link(key) else { return };
    let listener = link.transport;
    let who = credentials(&c, link);
    let (step, verdict) = core.node.auth.authenticate(listener, from, &who);
    let identity = (verdict == Verdict::Ask).then(|| who.to_identity());
    decided(core, st, key, c, (listener, step), verdict, identity);
}

/// Acts on the verdict of step `at` (listener, step) of the chain:
/// admit, refuse, or park the CONNECT while the step asks elsewhere.
fn decided(
    core: &Core,
    st: &mut CoreState,
    key: ConnKey,
    c: Connect,
    at: (u8, Step),
    verdict: Verdict,
    identity: Option<Identity>,
) {
    let Some(e) = st.entry(key) else { return };
    let id = e.id;
    let Some(link) = e.link.as_mut() else { return };
    let peer = link.peer.addr();
    match verdict {
        Verdict::Allow => admit(core, st, key, c),
        Verdict::AllowWith(grants) => {
            let mut c = c;
            if c.username.is_none() {
                c.username.clone_from(&grants.username);
            }
            link.rare().grants = Some(grants);
            admit(core, st, key, c)
        }
        Verdict::Deny(code) => {
            info!(conn = %id, %peer, reason = format_args!("{code:#04x}"), "CONNECT refused by the authenticator");
            strike(core, peer.ip(), code);
            refuse(st, key, code);
        }
        // The step after it decides (only a slow path answers this).
        Verdict::Pass => walk(core, st, key, c, at.1.saturating_add(1)),
        Verdict::Ask => {
            let Some(identity) = identity else {
                // An answer from the slow path cannot ask again.
                return refuse(st, key, reason::UNSPECIFIED_ERROR);
            };
            let Some(token) = st.pending.insert(Waiting::Verdict { key }) else {
                info!(conn = %id, %peer, "CONNECT refused: too many verdicts pending (runtime.max_pending_verdicts)");
                bump(&core.stats().pending_refused, 1);
                refuse_why(st, key, reason::SERVER_BUSY, Some("server busy, try again"));
                return;
            };
            if let Some(e) = st.entry(key) {
                e.phase = Phase::AwaitingVerdict {
                    connect: Box::new(c),
                    step: at.1,
                };
            }
            bump(&core.stats().auth_deferred, 1);
            let reply = core.returns.verdicts.reply_to(token);
            core.node.auth.ask(at.0, at.1, identity, reply);
        }
    }
}

/// The authenticator's slow path answered for `token`.
pub fn on_verdict(core: &Core, token: u32, verdict: Verdict) {
    let mut st = core.st.borrow_mut();
    let st = &mut *st;
    let Some(Waiting::Verdict { key }) = st.pending.take(token) else {
        debug_assert!(false, "a verdict for another kind of request");
        return;
    };
    // The connection may have closed (or hit its CONNECT deadline) while
    // the verdict was being decided.
    let Some(e) = st.entry(key) else { return };
    let phase = std::mem::replace(&mut e.phase, Phase::Connecting);
    let Phase::AwaitingVerdict { connect, step } = phase else {
        e.phase = phase;
        return;
    };
    let Some(link) = e.link.as_mut() else { return };
    link.wake();
    let listener = link.transport;
    decided(core, st, key, *connect, (listener, step), verdict, None);
}

/// Counts a refusal of bad credentials against the source address (other
/// refusals, such as an unavailable service, are not the client's doing).
fn strike(core: &Core, ip: std::net::IpAddr, code: u8) {
    if matches!(
        code,
        reason::BAD_USERNAME_OR_PASSWORD | reason::NOT_AUTHORIZED
    ) && core.node.bans.failed(ip, core.node.elapsed_ms())
    {
        info!(%ip, "address banned after repeated failed logins (auth.ban_after_failures)");
        bump(&core.stats().bans, 1);
    }
}

/// The rest of a CONNECT once authenticated: enhanced authentication,
/// client id, keep-alive, windows, will, session expiry; then the claim.
fn admit(core: &Core, st: &mut CoreState, key: ConnKey, c: Connect) {
    let m = &core.cfg.mqtt;
    let v5 = c.version.is_v5();
    let tick_ms = core.cfg.runtime.tick_ms;
    let Some(e) = st.entry(key) else {
        return;
    };
    let id = e.id;
    let Some(link) = e.link.as_mut() else {
        return;
    };
    // MQTT 5 4.12: an Authentication Method starts an enhanced exchange.
    let exchange = match &c.properties.authentication_method {
        Some(method) => {
            let who = credentials(&c, link);
            match core.node.auth.enhanced(link.transport, method, &who) {
                Some(ex) => Some((method.clone(), ex)),
                None => {
                    refuse(st, key, reason::BAD_AUTHENTICATION_METHOD);
                    return;
                }
            }
        }
        None => None,
    };
    if let Some(w) = &c.will {
        if w.qos as u8 > m.max_qos {
            refuse(st, key, reason::QOS_NOT_SUPPORTED);
            return;
        }
        if w.retain && !m.retain_available && v5 {
            refuse(st, key, reason::RETAIN_NOT_SUPPORTED);
            return;
        }
    }
    let mut granted = Granted::default();
    let client_id = if c.client_id.is_empty() {
        // 3.1.1 [MQTT-3.1.3-8]: an empty id needs clean session; 3.1 forbids it.
        if !v5 && (!c.clean_start || c.version == Version::V31) {
            refuse(st, key, reason::CLIENT_ID_NOT_VALID);
            return;
        }
        let generated = format!("tether-{id}");
        if v5 {
            granted.assigned_id = Some(generated.clone());
        }
        generated
    } else {
        c.client_id
    };
    // A will is a publish the client makes in advance: the authorizer
    // decides it now, while the client can still be told (MQTT 5 0x87).
    // An authorizer that would have to ask elsewhere is not waited for
    // here; the will is then published as the client asked.
    if let Some(w) = &c.will {
        let mut req = link.acl_request(
            Some(&client_id),
            crate::auth::Action::Publish,
            &w.topic,
            w.qos,
            w.retain,
        );
        // Set below, with the rest of the CONNECT.
        req.username = c.username.as_deref();
        if core.node.authz.check(&req) == crate::auth::Permit::Deny {
            bump(&core.stats().denied_publishes, 1);
            refuse(st, key, reason::NOT_AUTHORIZED);
            return;
        }
    }
    let mut keep_alive = c.keep_alive;
    if v5 && (keep_alive > m.max_keep_alive || (keep_alive == 0 && m.max_keep_alive < u16::MAX)) {
        keep_alive = m.max_keep_alive;
        granted.server_keep_alive = Some(keep_alive);
    }
    link.keep_alive_ticks = (u64::from(keep_alive) * 1500).div_ceil(tick_ms) as u32;
    link.window = if v5 {
        c.properties
            .receive_maximum
            .unwrap_or(u16::MAX)
            .min(m.max_inflight)
    } else {
        m.inflight_window.min(m.max_inflight)
    };
    link.max_packet = c.properties.maximum_packet_size.unwrap_or(u32::MAX);
    if v5 {
        let out = c
            .properties
            .topic_alias_maximum
            .unwrap_or(0)
            .min(m.topic_alias_outbound);
        if out > 0 {
            link.out_aliases = Some(Box::new(crate::session::alias::OutAliases::new(out)));
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
    if v5 && expiry != requested {
        granted.session_expiry = Some(expiry);
    }
    granted.response_information = (v5
        && c.properties.request_response_information == Some(1)
        && !m.response_information.is_empty())
    .then(|| m.response_information.replace("%c", &client_id));
    let mut info = ConnectInfo {
        clean_start: c.clean_start,
        expiry_secs: expiry,
        connack: connack::accepted(m, v5, granted),
        durable: None,
        stale_handover: false,
        from_store: None,
    };
    debug!(conn = %id, client_id, version = ?c.version, "CONNECT");
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
                    link.rare().auth = Some(Box::new(AuthInProgress {
                        method,
                        exchange,
                        connect,
                    }));
                }
                return;
            }
            AuthStep::Success(data) => {
                if let Some(link) = st.link(key) {
                    link.rare().auth_method = Some(method.as_str().into());
                }
                connack::with_auth(&mut info.connack, method, data);
            }
            AuthStep::Fail(code) => {
                refuse(st, key, code);
                return;
            }
        }
    }
    claim(core, st, key, client_id.into(), info);
}

/// Claims the client id; a claim that cannot go through refuses the
/// CONNECT.
fn claim(core: &Core, st: &mut CoreState, key: ConnKey, client_id: Arc<str>, info: ConnectInfo) {
    if let Err(refused) = core.claim(st, key, client_id, info) {
        if let Some(e) = st.entry(key) {
            info!(conn = %e.id, reason = format_args!("{:#04x}", refused.code), "CONNECT refused: {}", refused.why);
        }
        refuse(st, key, refused.code);
    }
}

/// The store lost its answer to the claim of `conn` and is asking what
/// the claim did ([`BridgeMsg::ClaimUnanswered`]): the client is refused
/// now, as a failed claim would be, and the entry stays in
/// `AwaitingHandover` without its link, for [`on_claim`] to park the
/// session if the claim landed or to remove the entry if not.
///
/// [`BridgeMsg::ClaimUnanswered`]: crate::bridge::BridgeMsg::ClaimUnanswered
pub fn on_claim_unanswered(core: &Core, key: ConnKey, conn: ConnId) {
    let mut st = core.st.borrow_mut();
    let st = &mut *st;
    let waiting = st.entry(key).is_some_and(|e| {
        e.id == conn && e.link.is_some() && matches!(e.phase, Phase::AwaitingHandover { .. })
    });
    if !waiting {
        return;
    }
    // Counted in store_errors once the claim's outcome is known, if it failed.
    info!(%conn, reason = "0x88", "CONNECT refused: the session store's answer to the claim was lost; it is asked what the claim did (a claim that landed keeps the session here, offline)");
    refuse_why(
        st,
        key,
        reason::SERVER_UNAVAILABLE,
        Some("the session store did not answer in time; connect again"),
    );
}

/// The session store's slow path answered the claim for `token`.
pub fn on_claim(core: &Core, token: u32, result: ClaimResult) {
    let mut st = core.st.borrow_mut();
    let st = &mut *st;
    let Some(Waiting::Claim { key, client_id }) = st.pending.take(token) else {
        debug_assert!(false, "a claim answer for another kind of request");
        return;
    };
    let mine = st
        .entry(key)
        .is_some_and(|e| e.client_id.as_ref() == Some(&client_id));
    if !mine {
        // The entry is gone: do not leave the directory pointing at it.
        if result.is_ok() {
            let loc = crate::id::Location { core: core.id, key };
            core.node.store.release(&client_id, loc);
        }
        return;
    }
    if let Err(refused) = core.claimed(st, key, result) {
        match st.entry(key) {
            Some(e) if e.link.is_some() => {
                info!(conn = %e.id, reason = format_args!("{:#04x}", refused.code), "CONNECT refused: {}", refused.why);
            }
            // Its client was refused already, or it is an adoption.
            _ => {
                debug!(%client_id, "a claim without a connection did not go through: {}", refused.why)
            }
        }
        refuse(st, key, refused.code);
    }
}

fn auth_packet(code: u8, method: &str, data: Option<bytes::Bytes>) -> Packet {
    let properties = crate::codec::Properties {
        authentication_method: Some(method.to_owned()),
        authentication_data: data,
        ..Default::default()
    };
    Packet::Auth(ReasonOnly { code, properties })
}

/// AUTH from the client: the next step of a CONNECT-time exchange (0x18),
/// or the start (0x19) or next step of a re-authentication.
pub(super) fn auth(
    core: &Core,
    st: &mut CoreState,
    key: ConnKey,
    a: ReasonOnly,
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
    let in_progress = link.rare.as_mut().and_then(|r| r.auth.take());
    let method_used = link.rare.as_ref().and_then(|r| r.auth_method.as_deref());
    let mut progress = match (a.code, in_progress) {
        (reason::CONTINUE_AUTHENTICATION, Some(p)) if p.method == method => p,
        (reason::RE_AUTHENTICATE, None) if !connecting && method_used == Some(method.as_str()) => {
            let who = Credentials {
                client_id: &client_id,
                username: None,
                password: None,
                peer: link.peer.addr(),
                listener: TRANSPORT_NAMES[usize::from(link.transport) % TRANSPORT_NAMES.len()],
                protocol: 5,
                certificate_cn: None,
            };
            let Some(exchange) = core.node.auth.enhanced(link.transport, &method, &who) else {
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
            link.rare().auth = Some(progress);
            Ok(())
        }
        AuthStep::Success(data) => match progress.connect.take() {
            Some((client_id, mut info)) => {
                link.rare().auth_method = Some(method.as_str().into());
                connack::with_auth(&mut info.connack, method, data);
                claim(core, st, key, client_id, info);
                Ok(())
            }
            None => {
                link.control(auth_packet(reason::SUCCESS, &method, data));
                Ok(())
            }
        },
        AuthStep::Fail(code) if progress.connect.is_some() => {
            refuse(st, key, code);
            Ok(())
        }
        AuthStep::Fail(code) => Err(violation(code, "re-authentication failed")),
    }
}

/// DISCONNECT from the client: a normal close (no will, unless 0x04), with
/// a new session expiry if MQTT 5 allows it.
pub(super) fn disconnect(
    core: &Core,
    st: &mut CoreState,
    key: ConnKey,
    d: ReasonOnly,
) -> Result<(), Violation> {
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
