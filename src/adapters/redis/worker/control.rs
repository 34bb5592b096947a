//! Presence entries, the control channel (kicks, evictions, handoffs) and
//! the node lease.

// The worker's files share its imports and helpers.
use super::*;

/// A presence entry as a member of the user's sorted set. It sorts by
/// connect time (the oldest is evicted first) and names the node's
/// incarnation, so a restarted node's old entries are told apart.
pub(super) fn member(s: &Settings, p: &Presence) -> String {
    format!(
        "{:015}|{}|{}|{}|{}",
        p.since_ms, p.conn, s.incarnation, p.transport, p.client_id
    )
}

/// A presence entry read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When it connected, Unix ms.
    pub since_ms: u64,
    /// The connection (node and core in its id).
    pub conn: ConnId,
    /// The node's incarnation.
    pub incarnation: u64,
    /// `mqtt`, `ws`, `mqtts`, `wss`.
    pub transport: String,
    /// The client id.
    pub client_id: String,
}

pub(super) fn parse_member(m: &str) -> Option<Entry> {
    let mut f = m.splitn(5, '|');
    Some(Entry {
        since_ms: f.next()?.parse().ok()?,
        conn: ConnId::parse(f.next()?)?,
        incarnation: f.next()?.parse().ok()?,
        transport: f.next()?.to_owned(),
        client_id: f.next()?.to_owned(),
    })
}

/// Evicted by the per-user limit: its node closes it, and the claim that
/// evicted it waits until it did (or until that node's lease ran out, if
/// it does not answer: cut off from Redis, it never heard), so the user
/// never holds more connections than the limit.
pub(super) async fn kick_member(ctx: &Ctx, conn: &mut Conn, member: &str) {
    let Some(e) = parse_member(member) else {
        return;
    };
    ctx.metrics.evicted.fetch_add(1, Relaxed);
    let msg = format!(
        "evict-answer {} {} {}",
        e.conn, ctx.settings.node, e.client_id
    );
    if !until_let_go(ctx, conn, e.conn.node, e.conn, msg).await {
        debug!(client_id = %e.client_id, "node {} did not answer an eviction in time; its lease ran out", e.conn.node);
    }
}

/// Sends a control message to `node` (delivered locally without Redis
/// when it is this node).
pub(super) async fn publish(ctx: &Ctx, conn: &mut Conn, node: u16, msg: String) {
    if node == ctx.settings.node {
        on_control(ctx, &msg);
        return;
    }
    let channel = keys::control(&ctx.settings.prefix, node);
    let r: redis::RedisResult<i64> = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(msg)
        .query_async(conn)
        .await;
    if let Err(e) = r {
        ctx.metrics.errors.fetch_add(1, Relaxed);
        debug!("control message to node {node} not sent: {e}");
    }
}

/// Subscribes to this node's control channel and hands each message to the
/// core it concerns. Reconnects with backoff.
pub(super) async fn control(ctx: Rc<Ctx>) {
    let channel = keys::control(&ctx.settings.prefix, ctx.settings.node);
    let mut backoff = MIN_BACKOFF;
    loop {
        match ctx.client.pubsub().await {
            Ok(mut ps) => match ps.subscribe(&channel).await {
                Ok(()) => {
                    backoff = MIN_BACKOFF;
                    let mut stream = ps.into_on_message();
                    loop {
                        tokio::select! {
                            m = stream.next() => match m {
                                Some(m) => {
                                    if let Ok(text) = m.get_payload::<String>() {
                                        on_control(&ctx, &text);
                                    }
                                }
                                None => break,
                            },
                            // Back from a partition: the old socket waits out
                            // TCP's retransmission backoff, holding what was
                            // published meanwhile (the askers ask again).
                            _ = ctx.resubscribe.notified() => {
                                debug!("control channel: subscribing again on a new connection");
                                break;
                            }
                        }
                    }
                }
                Err(e) => debug!("control channel: {e}"),
            },
            Err(e) => debug!("control channel: {e}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// At most this many `went` notes wait for their `kick` (each is taken by
/// the kick published right behind it, so only lost kicks leave any).
const WENT_MAX: usize = 10_000;

/// A control message for this node (the client id comes last: it may hold
/// spaces):
/// - `kick <conn> <reason code> <client>`: close that connection (taken
///   over, 0x8E; or the administrator's, 0x98);
/// - `evict <conn> <client>`: close it, over its user's connection limit
///   (0x98);
/// - `evict-answer <conn> <node> <client>`: the same, then answer
///   `handed` to `node`, whose claim waits (a node that does not know it
///   ignores it, and the claim waits for its lease instead);
/// - `handoff <conn> <node> <client>`: close it, flush its writes, and
///   answer `handed` to `node`, whose claim waits;
/// - `handed <conn> <client>`: the answer; the waiting claim goes ahead;
/// - `went <conn> <node> <client>`: `node`'s claim took that connection's
///   session; the `kick` that follows closes it (the copies this node
///   hands on for the session wait for `node`: `bridge::departures`).
fn on_control(ctx: &Ctx, text: &str) {
    let mut f = text.splitn(4, ' ');
    let (Some(kind), Some(conn)) = (f.next(), f.next().and_then(ConnId::parse)) else {
        warn!("control channel: cannot read {text:?}");
        return;
    };
    if kind == "evict" {
        // The client id may hold spaces: it is the rest of the line.
        let client_id = text.splitn(3, ' ').nth(2).unwrap_or_default();
        return kick(
            ctx,
            conn,
            client_id,
            reason::ADMINISTRATIVE_ACTION,
            "over the user's connection limit",
            None,
        );
    }
    let (code, handoff_to, client_id) = match (kind, f.next(), f.next()) {
        ("evict-answer", Some(node), Some(client_id)) => match node.parse::<u16>() {
            Ok(node) => (reason::ADMINISTRATIVE_ACTION, Some(node), client_id),
            Err(_) => return warn!("control channel: cannot read {text:?}"),
        },
        ("kick", Some(code), Some(client_id)) => match code.parse::<u8>() {
            Ok(code) => (code, None, client_id),
            Err(_) => return warn!("control channel: cannot read {text:?}"),
        },
        ("handoff", Some(node), Some(client_id)) => match node.parse::<u16>() {
            Ok(node) => (reason::SESSION_TAKEN_OVER, Some(node), client_id),
            Err(_) => return warn!("control channel: cannot read {text:?}"),
        },
        ("went", Some(node), Some(_)) => {
            let Ok(node) = node.parse::<u16>() else {
                return warn!("control channel: cannot read {text:?}");
            };
            let mut went = ctx.went.borrow_mut();
            // Each is taken by the kick right behind it; a kick that never
            // came (its publish failed) leaves one behind.
            if went.len() >= WENT_MAX {
                went.clear();
            }
            went.insert(conn, node);
            return;
        }
        ("handed", _, _) => {
            if let Some(tx) = ctx.handoffs.borrow_mut().remove(&conn) {
                let _ = tx.send(());
            }
            return;
        }
        _ => return warn!("control channel: cannot read {text:?}"),
    };
    let why = match (kind, code) {
        (_, reason::SESSION_TAKEN_OVER) => "session taken over on another node",
        ("evict-answer", _) => "over the user's connection limit",
        _ => "disconnected by the administrator",
    };
    kick(ctx, conn, client_id, code, why, handoff_to);
}

/// Tells the core holding `conn` to close it.
fn kick(
    ctx: &Ctx,
    conn: ConnId,
    client_id: &str,
    code: u8,
    why: &'static str,
    handoff_to: Option<u16>,
) {
    let core = usize::from(conn.core) % ctx.bridge.cores();
    let taken_by = ctx.went.borrow_mut().remove(&conn);
    let msg = BridgeMsg::KickClient {
        client_id: client_id.into(),
        kick: Kick {
            conn: Some(conn),
            code,
            why,
            handoff_to,
            taken_by,
        },
    };
    if ctx.bridge.send(core, msg).is_err() {
        warn!("control channel: core {core} is busy; kick of {conn} not delivered");
    }
}

/// Refreshes this node's lease every third of it (the worker renewed it
/// once before taking jobs: [`renew_lease`]).
pub(super) async fn node_lease(ctx: Rc<Ctx>, mut conn: Conn) {
    loop {
        tokio::time::sleep(Duration::from_millis(ctx.settings.node_lease_ms / 3)).await;
        renew_lease(&ctx, &mut conn).await;
    }
}

/// Renews this node's lease in Redis, drops the nodes whose lease ran
/// out, learns who is live, and measures how far Redis's clock is from
/// this node's ([`deadline_ms`]). On success the cores' [`Lease`] holds
/// for one more lease from when the renewal was sent.
///
/// `GT`: a renewal never shortens the lease. One sent before a partition
/// arrives after it, behind newer ones on a fresh connection, and would
/// otherwise set the lease back into the past, where the other nodes'
/// next view leaves this node out.
///
/// [`Lease`]: crate::store::Lease
/// [`deadline_ms`]: super::deadline_ms
pub(super) async fn renew_lease(ctx: &Ctx, conn: &mut Conn) {
    let s = &ctx.settings;
    let key = keys::nodes(&s.prefix);
    let member = format!("{}:{}", s.node, s.incarnation);
    let started = now_ms();
    let sent = Instant::now();
    let r: redis::RedisResult<(Vec<String>, (u64, u64))> = redis::pipe()
        .cmd("ZADD")
        .arg(&key)
        .arg("GT")
        .arg(now_ms() + s.node_lease_ms)
        .arg(&member)
        .ignore()
        .cmd("ZREMRANGEBYSCORE")
        .arg(&key)
        .arg("-inf")
        .arg(now_ms())
        .ignore()
        .cmd("ZRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .cmd("TIME")
        .query_async(conn)
        .await;
    match r {
        Ok((live, (secs, micros))) => {
            s.lease
                .renewed(sent, Duration::from_millis(s.node_lease_ms));
            // Redis read its clock about halfway through the round trip.
            let halfway = started + sent.elapsed().as_millis() as u64 / 2;
            let redis = secs * 1000 + micros / 1000;
            ctx.redis_ahead_ms.set(Some(redis as i64 - halfway as i64));
            *ctx.live.borrow_mut() = (started, live);
            if ctx.renewal_failed.replace(false) {
                ctx.resubscribe.notify_one();
            }
        }
        Err(e) => {
            ctx.metrics.errors.fetch_add(1, Relaxed);
            ctx.renewal_failed.set(true);
            debug!("node lease: {e}");
        }
    }
}
