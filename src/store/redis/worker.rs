//! The `tether-redis` bridge thread: a current-thread tokio runtime that
//! owns every Redis connection of the node. Cores never wait on it: they
//! queue [`Job`]s, and answers go back through `ReplyTo` handles, the
//! messages' `Confirm`s, or the cores' inboxes.
//!
//! - **Claims** run as soon as they arrive, concurrently (the multiplexed
//!   connection pipelines them), except that claims of one client id from
//!   this node keep their order ([`ClaimTurn`]). A CONNECT costs one round
//!   trip (CLAIM and ADMIT side by side), or two under a per-user limit
//!   (ADMIT first, so a refused connection claims nothing). A session to
//!   load that is attached on another live node is handed over first: that
//!   node closes the connection, flushes its writes and answers `handed`;
//!   after `store.handoff_timeout_ms` the claim goes ahead anyway, and
//!   fencing keeps the old node's late writes out. The writes that undo a
//!   claim (its presence entry leaving, its clean session ending) wait
//!   until the claim has landed, so they cannot overtake it.
//! - **Writes** go through one writer task, batch after batch: everything
//!   queued while the previous batch was in flight goes out together, in
//!   journal order, as one pipeline (one pipeline per session on a Redis
//!   Cluster, where a pipeline cannot cross slots). A batch that fails for
//!   want of a connection is retried until `store.request_timeout_ms`,
//!   then its waiting publishers are told it failed. After NOSCRIPT (a
//!   restarted Redis) the scripts are loaded and the whole batch runs again:
//!   every write is idempotent, and no later batch has been sent.
//! - **Control messages** for this node arrive on its pub/sub channel.
//! - **The node lease** is refreshed every third of `presence.node_lease_secs`.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::{RedisError, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tracing::{debug, info, warn};

use super::conn::{Client, Conn};
use super::scripts::Scripts;
use super::{blob, keys, Job, Metrics, Settings};
use crate::bridge::{Bridge, BridgeMsg};
use crate::codec::{reason, QoS, SubOptions};
use crate::id::ConnId;
use crate::session::{Durable, Inflight, Session};
use crate::store::{
    Claim, ClaimResult, Claimed, Connection, Lookup, Presence, SessionRef, StoreError, StoreOp,
    StoredSession,
};

/// First pause after a failed connection attempt; doubles up to
/// [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Pause before retrying a write batch whose connection failed.
const WRITE_RETRY: Duration = Duration::from_millis(100);

/// What the worker tasks share.
pub(super) struct Ctx {
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    pub bridge: Arc<Bridge>,
    pub scripts: Scripts,
    pub client: Client,
    /// The live node incarnations as last read with the node lease, and
    /// when (Unix ms): ADMIT discounts older entries of nodes not in it.
    pub live: std::cell::RefCell<(u64, Vec<String>)>,
    /// Connections whose claim is in flight, with the writes held back
    /// until it lands ([`defer_behind_claims`]).
    pub claiming: std::cell::RefCell<HashMap<ConnId, Vec<StoreOp>>>,
    /// Claims waiting for another node to hand a session over, by the
    /// connection that holds it there.
    pub handoffs: std::cell::RefCell<HashMap<ConnId, tokio::sync::oneshot::Sender<()>>>,
    /// Per client id, the last claim in line ([`ClaimTurn`]).
    pub claim_lines: std::cell::RefCell<ClaimLines>,
    /// Numbers the claims for [`ClaimTurn`].
    pub next_claim: std::cell::Cell<u64>,
}

/// The last claim in line per client id, and what resolves when it is done.
pub(super) type ClaimLines = HashMap<Arc<str>, (u64, tokio::sync::oneshot::Receiver<()>)>;

/// How much older than the live-node view an entry must be before a
/// missing node discounts it: room for clock skew between nodes.
const SKEW_MARGIN_MS: u64 = 5_000;

/// Runs the worker until `Job::Stop` or until every sender is gone.
pub(super) async fn run(ctx: Rc<Ctx>, mut jobs: UnboundedReceiver<Job>) {
    let timeout = ctx.settings.request_timeout;
    let mut backoff = MIN_BACKOFF;
    let conn = loop {
        match ctx.client.connect(timeout).await {
            Ok(c) => break c,
            Err(e) => {
                warn!("Redis is not reachable ({e}); retrying in {backoff:?}: CONNECTs that need the store get 0x88 meanwhile");
                ctx.metrics.errors.fetch_add(1, Relaxed);
                let until = tokio::time::sleep(backoff);
                tokio::pin!(until);
                // Answer at once, failing, while there is no connection.
                loop {
                    tokio::select! {
                        _ = &mut until => break,
                        job = jobs.recv() => match job {
                            None | Some(Job::Stop) => return,
                            Some(job) => fail(&ctx, job),
                        },
                    }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    info!("Redis session store connected");
    let (writes_tx, writes_rx) = unbounded_channel();
    let writer = tokio::task::spawn_local(writer(ctx.clone(), conn.clone(), writes_rx));
    let others = [
        tokio::task::spawn_local(control(ctx.clone())),
        tokio::task::spawn_local(node_lease(ctx.clone(), conn.clone())),
    ];
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Stop => break,
            Job::Write(ops) => {
                let ops = defer_behind_claims(&ctx, ops);
                if !ops.is_empty() {
                    let _ = writes_tx.send(ops);
                }
            }
            Job::Claim {
                claim,
                previous,
                reply,
            } => {
                let (ctx, mut conn, writes) = (ctx.clone(), conn.clone(), writes_tx.clone());
                ctx.claiming.borrow_mut().insert(claim.conn, Vec::new());
                let turn = ClaimTurn::take(&ctx, &claim.client_id);
                tokio::task::spawn_local(async move {
                    let turn = turn.wait().await;
                    let started = Instant::now();
                    let result = claim_one(&ctx, &mut conn, &claim, previous.is_some()).await;
                    ctx.metrics.observe(started);
                    reply.send(result.map(|c| Claimed { previous, ..c }));
                    claim_done(&ctx, &claim, &writes);
                    turn.done(&ctx, &claim.client_id);
                });
            }
            Job::Lookup(q) => {
                let (ctx, conn) = (ctx.clone(), conn.clone());
                tokio::task::spawn_local(async move { lookup(&ctx, conn, q).await });
            }
            Job::Background { claim } => {
                let (ctx, mut conn, writes) = (ctx.clone(), conn.clone(), writes_tx.clone());
                ctx.claiming.borrow_mut().insert(claim.conn, Vec::new());
                let turn = ClaimTurn::take(&ctx, &claim.client_id);
                tokio::task::spawn_local(async move {
                    let turn = turn.wait().await;
                    if let Err(e) = claim_one(&ctx, &mut conn, &claim, true).await {
                        debug!(client_id = %claim.client_id, "background claim failed: {e}");
                    }
                    claim_done(&ctx, &claim, &writes);
                    turn.done(&ctx, &claim.client_id);
                });
            }
        }
    }
    drop(writes_tx);
    // Let the writer flush what is queued before the thread ends.
    let _ = tokio::time::timeout(timeout, writer).await;
    for t in others {
        t.abort();
    }
}

/// Holds back the writes that undo a connection's claim (its presence
/// entry leaving, its clean session ending) while that claim is still in
/// flight: claims run beside the writer, and a `ZREM` that overtook its
/// `ZADD` would leave the entry behind for a whole lease.
fn defer_behind_claims(ctx: &Ctx, ops: Vec<StoreOp>) -> Vec<StoreOp> {
    let mut claiming = ctx.claiming.borrow_mut();
    if claiming.is_empty() {
        return ops;
    }
    ops.into_iter()
        .filter_map(|op| {
            let conn = match &op {
                StoreOp::Left { presence } => presence.conn,
                StoreOp::EndClean { conn, .. } => *conn,
                _ => return Some(op),
            };
            match claiming.get_mut(&conn) {
                Some(held) => {
                    held.push(op);
                    None
                }
                None => Some(op),
            }
        })
        .collect()
}

/// A claim's place in line behind this node's earlier claim of the same
/// client id. Claims otherwise run concurrently, and one may wait for a
/// handover: without the line, a later local claim could reach Redis first
/// and the earlier one would then own the session it had already lost here.
pub(super) struct ClaimTurn {
    /// This claim's number (the line's entry is removed by its last claim).
    seq: u64,
    /// Resolves when the claim before it is done.
    before: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Tells the claim after it.
    after: tokio::sync::oneshot::Sender<()>,
}

impl ClaimTurn {
    /// Joins the line for `client_id`.
    fn take(ctx: &Ctx, client_id: &Arc<str>) -> ClaimTurn {
        let (after, rx) = tokio::sync::oneshot::channel();
        let mut lines = ctx.claim_lines.borrow_mut();
        let seq = ctx.next_claim.get();
        ctx.next_claim.set(seq + 1);
        let before = lines.insert(client_id.clone(), (seq, rx)).map(|(_, rx)| rx);
        ClaimTurn { seq, before, after }
    }

    /// Waits for the claim before this one.
    async fn wait(mut self) -> ClaimTurn {
        if let Some(before) = self.before.take() {
            let _ = before.await;
        }
        self
    }

    /// Lets the next claim go; the last one leaves no entry behind.
    fn done(self, ctx: &Ctx, client_id: &Arc<str>) {
        let _ = self.after.send(());
        let mut lines = ctx.claim_lines.borrow_mut();
        if lines
            .get(client_id)
            .is_some_and(|(seq, _)| *seq == self.seq)
        {
            lines.remove(client_id);
        }
    }
}

/// A claim finished: what was held back behind it goes to the writer.
fn claim_done(ctx: &Ctx, claim: &Claim, writes: &UnboundedSender<Vec<StoreOp>>) {
    let held = ctx.claiming.borrow_mut().remove(&claim.conn);
    if let Some(held) = held.filter(|h| !h.is_empty()) {
        let _ = writes.send(held);
    }
}

/// Answers a job while Redis is unreachable.
fn fail(ctx: &Ctx, job: Job) {
    ctx.metrics.errors.fetch_add(1, Relaxed);
    match job {
        Job::Claim { reply, .. } => reply.send(Err(StoreError::Unavailable(
            "Redis is not reachable".into(),
        ))),
        Job::Write(ops) => finish(ctx, ops, Err(())),
        Job::Lookup(q) => answer_unavailable(q),
        Job::Background { .. } | Job::Stop => {}
    }
}

/// Asks node `node`, holding `client`'s session on connection `prev`, to
/// close it and flush its writes, and waits (at most
/// `store.handoff_timeout_ms`) until it says so. A node that is not live
/// is not waited for: fencing covers whatever it might still write.
async fn handoff(ctx: &Ctx, conn: &mut Conn, c: &Claim, node: &str, prev: &str) {
    let (Ok(node), Some(prev)) = (node.parse::<u16>(), ConnId::parse(prev)) else {
        return;
    };
    let live = ctx
        .live
        .borrow()
        .1
        .iter()
        .any(|l| l.split(':').next() == Some(&*node.to_string()));
    if !live {
        return;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    ctx.handoffs.borrow_mut().insert(prev, tx);
    let msg = format!("handoff {prev} {} {}", ctx.settings.node, c.client_id);
    publish(ctx, conn, node, msg).await;
    match tokio::time::timeout(ctx.settings.handoff_timeout, rx).await {
        Ok(Ok(())) => {
            ctx.metrics.handoffs.fetch_add(1, Relaxed);
        }
        _ => {
            ctx.metrics.handoff_timeouts.fetch_add(1, Relaxed);
            ctx.handoffs.borrow_mut().remove(&prev);
            debug!(client_id = %c.client_id, "node {node} did not hand the session over in time; claiming (fenced)");
        }
    }
}

/// Releases what the ops hold: their confirms, and the queue's count.
fn finish(ctx: &Ctx, ops: Vec<StoreOp>, outcome: Result<(), ()>) {
    ctx.metrics
        .queued
        .fetch_sub(ops.len(), std::sync::atomic::Ordering::AcqRel);
    for op in ops {
        release(op, outcome.is_ok());
    }
}

fn release(op: StoreOp, ok: bool) {
    match op {
        StoreOp::Put { d, .. } => {
            if let Some(c) = &d.msg.confirm {
                c.release(ok);
            }
        }
        StoreOp::Subscribe {
            confirm: Some(c), ..
        } => c.release(ok),
        _ => {}
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ----- claims -----------------------------------------------------------------

/// CLAIM (and ADMIT into the user's presence), then tell the previous
/// owner on another node to close its connection. `handed_over`: the
/// previous owner is on this node and hands the session over in memory, so
/// nothing is loaded and the epoch stays (the old connection's writes in
/// flight describe the same session).
async fn claim_one(ctx: &Ctx, conn: &mut Conn, c: &Claim, handed_over: bool) -> ClaimResult {
    let s = &ctx.settings;
    let keys = keys::session(&s.prefix, &c.client_id);
    let user = c.presence.as_ref().map_or("", |p| &p.user);
    let load = !handed_over && c.persistent && !c.clean_start;
    let claim = |wait: bool| {
        let mut inv = ctx.scripts.claim.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        inv.arg(s.node)
            .arg(c.loc.core)
            .arg(c.conn.to_string())
            .arg(if c.clean_start { "1" } else { "0" })
            .arg(if c.persistent { "1" } else { "0" })
            .arg(user)
            .arg(if handed_over { "1" } else { "0" })
            .arg(if wait { "1" } else { "0" });
        inv
    };
    // A session to load that is attached elsewhere is first handed over.
    let inv = claim(load);
    // ADMIT runs beside CLAIM (another slot on a Redis Cluster).
    let admit = c.presence.as_ref().map(|p| {
        let mut inv = ctx.scripts.admit.prepare_invoke();
        inv.key(keys::user(&s.prefix, &p.user))
            .arg(member(s, p))
            .arg(now_ms())
            .arg(s.presence_lease_ms)
            .arg(s.max_per_user)
            .arg(if s.evict_oldest { "evict" } else { "refuse" })
            .arg(&*c.client_id);
        let live = ctx.live.borrow();
        inv.arg(live.0.saturating_sub(SKEW_MARGIN_MS));
        for node in &live.1 {
            inv.arg(node);
        }
        inv
    });
    let (claimed, admitted) = match admit {
        // Under a limit, admission comes first: a refused connection must
        // not take the session (or hand it over) on its way out. Two round
        // trips.
        Some(admit) if s.max_per_user > 0 => {
            let admitted: Vec<String> = admit
                .invoke_async(conn)
                .await
                .map_err(|e| unavailable(ctx, e))?;
            if admitted.first().map(String::as_str) == Some("0") {
                return Ok(Claimed {
                    over_limit: true,
                    ..Default::default()
                });
            }
            (inv.invoke_async::<Value>(conn).await, Some(admitted))
        }
        // Without one, ADMIT cannot refuse: both in one round trip.
        admit => {
            let mut conn2 = conn.clone();
            let (claimed, admitted) = tokio::join!(inv.invoke_async::<Value>(conn), async {
                match &admit {
                    Some(inv) => Some(inv.invoke_async::<Vec<String>>(&mut conn2).await),
                    None => None,
                }
            });
            (
                claimed,
                admitted.transpose().map_err(|e| unavailable(ctx, e))?,
            )
        }
    };
    let mut claimed = claimed.map_err(|e| unavailable(ctx, e))?;
    if let Value::Array(v) = &claimed {
        if text(v.first()) == "busy" {
            handoff(ctx, conn, c, &text(v.get(1)), &text(v.get(3))).await;
            claimed = claim(false)
                .invoke_async::<Value>(conn)
                .await
                .map_err(|e| unavailable(ctx, e))?;
        }
    }
    let Value::Array(v) = claimed else {
        return Err(StoreError::Unavailable("unexpected CLAIM reply".into()));
    };
    let epoch: u64 = text(v.first()).parse().unwrap_or(0);
    let (prev_node, prev_conn) = (text(v.get(1)), text(v.get(3)));
    let mut out = Claimed {
        epoch,
        ..Default::default()
    };
    if let Some(a) = admitted {
        if a.first().map(String::as_str) == Some("0") {
            out.over_limit = true;
        }
        for evicted in a.iter().skip(1) {
            kick_member(ctx, conn, evicted).await;
        }
    }
    // The previous owner is another node: it closes the old connection, or
    // forgets its offline copy (its writes are already refused: the epoch
    // moved).
    if !prev_node.is_empty() && prev_node != s.node.to_string() && !prev_conn.is_empty() {
        if let Ok(node) = prev_node.parse::<u16>() {
            let msg = format!(
                "kick {prev_conn} {} {}",
                reason::SESSION_TAKEN_OVER,
                c.client_id
            );
            publish(ctx, conn, node, msg).await;
        }
    }
    if c.persistent {
        out.durable = Some(Durable {
            client_id: c.client_id.clone(),
            epoch,
            last_seq: text(v.get(9)).parse().unwrap_or(0),
        });
    }
    if load && text(v.get(10)) == "1" {
        out.restored = Some(Box::new(restore(ctx, &c.client_id, &v)));
    }
    Ok(out)
}

fn unavailable(ctx: &Ctx, e: RedisError) -> StoreError {
    ctx.metrics.errors.fetch_add(1, Relaxed);
    StoreError::Unavailable(e.to_string())
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        Some(Value::Int(i)) => i.to_string(),
        _ => String::new(),
    }
}

fn pairs(v: Option<&Value>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let items: Vec<Vec<u8>> = match v {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::BulkString(b) => b.clone(),
                other => text(Some(other)).into_bytes(),
            })
            .collect(),
        Some(Value::Map(m)) => m
            .iter()
            .flat_map(|(k, v)| [text(Some(k)).into_bytes(), text(Some(v)).into_bytes()])
            .collect(),
        _ => Vec::new(),
    };
    items
        .chunks_exact(2)
        .map(|kv| (kv[0].clone(), kv[1].clone()))
        .collect()
}

/// Rebuilds a session from CLAIM's load: subscriptions, messages in seq
/// order (those sent before go back in flight with their packet ids, to be
/// resent with DUP), inbound QoS 2 state.
fn restore(ctx: &Ctx, client_id: &Arc<str>, v: &[Value]) -> Session {
    let mut s = Session::default();
    for (filter, opts) in pairs(v.get(5)) {
        let (Ok(filter), Some((opts, id))) = (String::from_utf8(filter), sub_from(&opts)) else {
            continue;
        };
        s.subs.push((filter.into(), opts, id));
    }
    let sent: HashMap<u64, (u16, bool)> = pairs(v.get(7))
        .into_iter()
        .filter_map(|(seq, state)| {
            let seq = std::str::from_utf8(&seq).ok()?.parse().ok()?;
            let state = std::str::from_utf8(&state).ok()?;
            let (pkid, released) = match state.strip_suffix(":r") {
                Some(p) => (p, true),
                None => (state, false),
            };
            Some((seq, (pkid.parse().ok()?, released)))
        })
        .collect();
    let mut messages: Vec<(u64, Vec<u8>)> = pairs(v.get(6))
        .into_iter()
        .filter_map(|(seq, blob)| Some((std::str::from_utf8(&seq).ok()?.parse().ok()?, blob)))
        .collect();
    messages.sort_unstable_by_key(|(seq, _)| *seq);
    let mut last_pkid = 0;
    for (seq, bytes) in messages {
        let id = ctx.metrics.next_message_id();
        match blob::decode_delivery(&bytes, id, seq) {
            Ok(Some(d)) => match sent.get(&seq) {
                Some(&(pkid, released)) => {
                    last_pkid = last_pkid.max(pkid);
                    s.inflight.push_back(Inflight { pkid, d, released });
                }
                None => s.queued.push_back(d),
            },
            Ok(None) => {}
            Err(e) => {
                warn!(client_id = %client_id, seq, "a stored message is unreadable, skipped: {e:?}")
            }
        }
    }
    s.set_last_pkid(last_pkid);
    if let Some(Value::Array(rx)) = v.get(8) {
        s.incoming_qos2 = rx
            .iter()
            .filter_map(|p| text(Some(p)).parse().ok())
            .collect();
    }
    s
}

/// Subscription options as stored: `qos,no_local,retain_as_published,retain_handling,id`.
pub(super) fn sub_to(opts: &SubOptions, id: u32) -> String {
    format!(
        "{},{},{},{},{id}",
        opts.qos as u8,
        u8::from(opts.no_local),
        u8::from(opts.retain_as_published),
        opts.retain_handling
    )
}

fn sub_from(b: &[u8]) -> Option<(SubOptions, u32)> {
    let s = std::str::from_utf8(b).ok()?;
    let mut f = s.split(',');
    let qos = QoS::from_u8(f.next()?.parse().ok()?)?;
    let no_local = f.next()? == "1";
    let retain_as_published = f.next()? == "1";
    let retain_handling = f.next()?.parse().ok()?;
    let id = f.next()?.parse().ok()?;
    Some((
        SubOptions {
            qos,
            no_local,
            retain_as_published,
            retain_handling,
        },
        id,
    ))
}

// ----- presence -----------------------------------------------------------------

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

/// Evicted by the per-user limit: its node closes it.
async fn kick_member(ctx: &Ctx, conn: &mut Conn, member: &str) {
    let Some(e) = parse_member(member) else {
        return;
    };
    ctx.metrics.evicted.fetch_add(1, Relaxed);
    let msg = format!("evict {} {}", e.conn, e.client_id);
    publish(ctx, conn, e.conn.node, msg).await;
}

/// Sends a control message to `node` (delivered locally without Redis
/// when it is this node).
async fn publish(ctx: &Ctx, conn: &mut Conn, node: u16, msg: String) {
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
async fn control(ctx: Rc<Ctx>) {
    let channel = keys::control(&ctx.settings.prefix, ctx.settings.node);
    let mut backoff = MIN_BACKOFF;
    loop {
        match ctx.client.pubsub().await {
            Ok(mut ps) => match ps.subscribe(&channel).await {
                Ok(()) => {
                    backoff = MIN_BACKOFF;
                    let mut stream = ps.into_on_message();
                    while let Some(m) = stream.next().await {
                        if let Ok(text) = m.get_payload::<String>() {
                            on_control(&ctx, &text);
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

/// A control message for this node (the client id comes last: it may hold
/// spaces):
/// - `kick <conn> <reason code> <client>`: close that connection (taken
///   over, 0x8E; or the administrator's, 0x98);
/// - `evict <conn> <client>`: close it, over its user's connection limit
///   (0x98);
/// - `handoff <conn> <node> <client>`: close it, flush its writes, and
///   answer `handed` to `node`, whose claim waits;
/// - `handed <conn> <client>`: the answer; the waiting claim goes ahead.
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
        ("kick", Some(code), Some(client_id)) => match code.parse::<u8>() {
            Ok(code) => (code, None, client_id),
            Err(_) => return warn!("control channel: cannot read {text:?}"),
        },
        ("handoff", Some(node), Some(client_id)) => match node.parse::<u16>() {
            Ok(node) => (reason::SESSION_TAKEN_OVER, Some(node), client_id),
            Err(_) => return warn!("control channel: cannot read {text:?}"),
        },
        ("handed", _, _) => {
            if let Some(tx) = ctx.handoffs.borrow_mut().remove(&conn) {
                let _ = tx.send(());
            }
            return;
        }
        _ => return warn!("control channel: cannot read {text:?}"),
    };
    let why = match code {
        reason::SESSION_TAKEN_OVER => "session taken over on another node",
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
    let msg = BridgeMsg::KickClient {
        client_id: client_id.into(),
        conn: Some(conn),
        code,
        why,
        handoff_to,
    };
    if ctx.bridge.send(core, msg).is_err() {
        warn!("control channel: core {core} is busy; kick of {conn} not delivered");
    }
}

/// Refreshes this node's lease every third of it.
async fn node_lease(ctx: Rc<Ctx>, mut conn: Conn) {
    let s = &ctx.settings;
    let key = keys::nodes(&s.prefix);
    let member = format!("{}:{}", s.node, s.incarnation);
    loop {
        let started = now_ms();
        let r: redis::RedisResult<(Vec<String>,)> = redis::pipe()
            .cmd("ZADD")
            .arg(&key)
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
            .query_async(&mut conn)
            .await;
        match r {
            Ok((live,)) => *ctx.live.borrow_mut() = (started, live),
            Err(e) => {
                ctx.metrics.errors.fetch_add(1, Relaxed);
                debug!("node lease: {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(s.node_lease_ms / 3)).await;
    }
}

// ----- lookups ------------------------------------------------------------------

fn answer_unavailable(q: Lookup) {
    let e = || StoreError::Unavailable("Redis is not reachable".into());
    match q {
        Lookup::User { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Lookup::Client { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Lookup::Kick { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
    }
}

/// Node incarnations whose lease is current.
async fn live_nodes(ctx: &Ctx, conn: &mut Conn) -> redis::RedisResult<Vec<String>> {
    redis::cmd("ZRANGEBYSCORE")
        .arg(keys::nodes(&ctx.settings.prefix))
        .arg(now_ms())
        .arg("+inf")
        .query_async(conn)
        .await
}

async fn lookup(ctx: &Ctx, mut conn: Conn, q: Lookup) {
    let s = &ctx.settings;
    match q {
        Lookup::User { user, reply } => {
            let r = async {
                let live = live_nodes(ctx, &mut conn).await?;
                let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                    .arg(keys::user(&s.prefix, &user))
                    .arg(now_ms())
                    .arg("+inf")
                    .query_async(&mut conn)
                    .await?;
                Ok::<_, RedisError>(
                    members
                        .iter()
                        .filter_map(|m| parse_member(m))
                        .filter(|e| live.contains(&format!("{}:{}", e.conn.node, e.incarnation)))
                        .map(|e| Connection {
                            client_id: e.client_id,
                            conn: e.conn,
                            transport: e.transport,
                            since_ms: e.since_ms,
                        })
                        .collect(),
                )
            }
            .await;
            let _ = reply.send(r.map_err(|e| unavailable(ctx, e)));
        }
        Lookup::Client { client_id, reply } => {
            let k = keys::session(&s.prefix, &client_id);
            let r = async {
                let (own, subs, messages, inflight): (
                    HashMap<String, String>,
                    HashMap<String, Vec<u8>>,
                    usize,
                    usize,
                ) = redis::pipe()
                    .cmd("HGETALL")
                    .arg(&k[0])
                    .cmd("HGETALL")
                    .arg(&k[1])
                    .cmd("HLEN")
                    .arg(&k[2])
                    .cmd("HLEN")
                    .arg(&k[3])
                    .query_async(&mut conn)
                    .await?;
                if own.is_empty() {
                    return Ok(None);
                }
                let live = live_nodes(ctx, &mut conn).await?;
                let node_alive = own
                    .get("node")
                    .is_some_and(|n| live.iter().any(|l| l.split(':').next() == Some(n)));
                let mut subscriptions: Vec<(String, u8)> = subs
                    .into_iter()
                    .filter_map(|(f, o)| Some((f, sub_from(&o)?.0.qos as u8)))
                    .collect();
                subscriptions.sort();
                Ok::<_, RedisError>(Some(StoredSession {
                    conn: own.get("conn").and_then(|c| ConnId::parse(c)),
                    online: own.get("up").map(String::as_str) == Some("1") && node_alive,
                    user: own.get("user").filter(|u| !u.is_empty()).cloned(),
                    subscriptions,
                    messages,
                    inflight,
                }))
            }
            .await;
            let _ = reply.send(r.map_err(|e| unavailable(ctx, e)));
        }
        Lookup::Kick { client_id, reply } => {
            let k = keys::session(&s.prefix, &client_id);
            let r: redis::RedisResult<Vec<Option<String>>> = redis::cmd("HMGET")
                .arg(&k[0])
                .arg("conn")
                .arg("up")
                .query_async(&mut conn)
                .await;
            let r = match r {
                Ok(v) => match (v.first().cloned().flatten(), v.get(1).cloned().flatten()) {
                    (Some(c), Some(up)) if up == "1" => match ConnId::parse(&c) {
                        Some(id) => {
                            let msg =
                                format!("kick {id} {} {client_id}", reason::ADMINISTRATIVE_ACTION);
                            publish(ctx, &mut conn, id.node, msg).await;
                            Ok(true)
                        }
                        None => Ok(false),
                    },
                    _ => Ok(false),
                },
                Err(e) => Err(unavailable(ctx, e)),
            };
            let _ = reply.send(r);
        }
    }
}

// ----- writes -------------------------------------------------------------------

/// Applies write batches one after another (see the module docs).
async fn writer(ctx: Rc<Ctx>, mut conn: Conn, mut rx: UnboundedReceiver<Vec<StoreOp>>) {
    while let Some(mut ops) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            ops.extend(more);
        }
        let started = Instant::now();
        let deadline = started + ctx.settings.request_timeout;
        loop {
            match apply(&ctx, &mut conn, &ops).await {
                Ok(results) => {
                    ctx.metrics.observe(started);
                    settle(&ctx, ops, results);
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    ctx.metrics.errors.fetch_add(1, Relaxed);
                    debug!("write batch failed, retrying: {e}");
                    tokio::time::sleep(WRITE_RETRY).await;
                }
                Err(e) => {
                    warn!(
                        "{} writes to Redis failed for {:?}; publishers waiting on them are told: {e}",
                        ops.len(),
                        ctx.settings.request_timeout
                    );
                    finish(&ctx, ops, Err(()));
                    break;
                }
            }
        }
    }
}

/// The result of one op: done, refused as stale, or failed.
enum Outcome {
    Done,
    Stale,
    Failed,
}

/// Sends the batch; on NOSCRIPT loads the scripts and sends it again.
async fn apply(ctx: &Ctx, conn: &mut Conn, ops: &[StoreOp]) -> Result<Vec<Outcome>, RedisError> {
    for attempt in 0..2 {
        let results = send(ctx, conn, ops).await?;
        let noscript = results
            .iter()
            .any(|r| matches!(r, Value::ServerError(e) if e.code() == "NOSCRIPT"));
        if !noscript {
            return Ok(results.iter().map(outcome).collect());
        }
        if attempt == 0 {
            debug!("Redis lost its scripts (restarted?): loading them again");
            ctx.metrics.script_reloads.fetch_add(1, Relaxed);
            for s in [&ctx.scripts.claim, &ctx.scripts.write, &ctx.scripts.admit] {
                s.prepare_invoke().load_async(conn).await?;
            }
        }
    }
    Err(RedisError::from((
        redis::ErrorKind::Io,
        "scripts missing after reload",
    )))
}

fn outcome(v: &Value) -> Outcome {
    match v {
        Value::ServerError(e) if e.code() == "STALE" => Outcome::Stale,
        Value::ServerError(_) => Outcome::Failed,
        _ => Outcome::Done,
    }
}

/// One pipeline (a Redis), or one per session or user (a Redis Cluster,
/// where a pipeline must stay in one slot), each in journal order.
async fn send(ctx: &Ctx, conn: &mut Conn, ops: &[StoreOp]) -> Result<Vec<Value>, RedisError> {
    let cmds: Vec<(String, redis::Cmd)> = ops.iter().map(|op| command(ctx, op)).collect();
    match conn {
        Conn::Single(_) => {
            let mut p = redis::pipe();
            p.ignore_errors();
            for (_, c) in &cmds {
                p.add_command(c.clone());
            }
            p.query_async(conn).await
        }
        Conn::Cluster(_) => {
            let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
            for (i, (tag, _)) in cmds.iter().enumerate() {
                groups.entry(tag.as_str()).or_default().push(i);
            }
            let mut results = vec![Value::Nil; cmds.len()];
            let runs = groups.into_values().map(|idx| {
                let mut conn = conn.clone();
                let mut p = redis::pipe();
                p.ignore_errors();
                for &i in &idx {
                    p.add_command(cmds[i].1.clone());
                }
                async move { (idx, p.query_async::<Vec<Value>>(&mut conn).await) }
            });
            for (idx, r) in futures_util::future::join_all(runs).await {
                for (i, v) in idx.into_iter().zip(r?) {
                    results[i] = v;
                }
            }
            Ok(results)
        }
    }
}

/// The command for one op, and its hash tag (the slot it goes to).
fn command(ctx: &Ctx, op: &StoreOp) -> (String, redis::Cmd) {
    let prefix = &ctx.settings.prefix;
    let write = |session: &SessionRef, args: &mut dyn FnMut(&mut redis::Cmd)| {
        let keys = keys::session(prefix, &session.client_id);
        let mut c = redis::cmd("EVALSHA");
        c.arg(ctx.scripts.write.get_hash()).arg(keys.len());
        for k in &keys {
            c.arg(k);
        }
        c.arg(session.epoch);
        args(&mut c);
        (format!("c:{}", session.client_id), c)
    };
    match op {
        StoreOp::Put { session, d } => write(session, &mut |c| {
            c.arg("put").arg(d.seq).arg(blob::encode(d)).arg("");
        }),
        StoreOp::Sent {
            session,
            seq,
            pkid,
            released,
        } => write(session, &mut |c| {
            let state = if *released {
                format!("{pkid}:r")
            } else {
                pkid.to_string()
            };
            c.arg("sent").arg(*seq).arg(state);
        }),
        StoreOp::Forget { session, seqs } => write(session, &mut |c| {
            c.arg("forget");
            for s in seqs {
                c.arg(*s);
            }
        }),
        StoreOp::Subscribe {
            session,
            filter,
            opts,
            id,
            ..
        } => write(session, &mut |c| {
            c.arg("sub").arg(&**filter).arg(sub_to(opts, *id));
        }),
        StoreOp::Unsubscribe { session, filter } => write(session, &mut |c| {
            c.arg("unsub").arg(&**filter);
        }),
        StoreOp::Incoming { session, pkid, add } => write(session, &mut |c| {
            c.arg(if *add { "rx+" } else { "rx-" }).arg(*pkid);
        }),
        StoreOp::Release {
            session,
            expiry_secs,
        } => write(session, &mut |c| {
            c.arg("release").arg(*expiry_secs);
        }),
        StoreOp::End { session } => write(session, &mut |c| {
            c.arg("end");
        }),
        StoreOp::EndClean { client_id, conn } => {
            let keys = keys::session(prefix, client_id);
            let mut c = redis::cmd("EVALSHA");
            c.arg(ctx.scripts.write.get_hash()).arg(keys.len());
            for k in &keys {
                c.arg(k);
            }
            c.arg(conn.to_string()).arg("endc");
            (format!("c:{client_id}"), c)
        }
        StoreOp::Left { presence } => {
            let mut c = redis::cmd("ZREM");
            c.arg(keys::user(prefix, &presence.user))
                .arg(member(&ctx.settings, presence));
            (format!("u:{}", presence.user), c)
        }
        StoreOp::Handed {
            client_id,
            conn,
            to,
        } => {
            // In the session's pipeline, after the old connection's writes.
            let mut c = redis::cmd("PUBLISH");
            c.arg(keys::control(prefix, *to))
                .arg(format!("handed {conn} {client_id}"));
            (format!("c:{client_id}"), c)
        }
        StoreOp::Refresh { presence } => {
            // XX: an entry that was evicted (or expired) is not re-created.
            let mut c = redis::cmd("ZADD");
            c.arg(keys::user(prefix, &presence.user))
                .arg("XX")
                .arg("GT")
                .arg(now_ms() + ctx.settings.presence_lease_ms)
                .arg(member(&ctx.settings, presence));
            (format!("u:{}", presence.user), c)
        }
    }
}

/// Releases confirms with each op's outcome, and tells cores about writes
/// refused as stale.
fn settle(ctx: &Ctx, ops: Vec<StoreOp>, results: Vec<Outcome>) {
    ctx.metrics
        .queued
        .fetch_sub(ops.len(), std::sync::atomic::Ordering::AcqRel);
    let mut fenced: Vec<SessionRef> = Vec::new();
    for (op, r) in ops.into_iter().zip(results) {
        let ok = match r {
            Outcome::Done => true,
            Outcome::Failed => {
                ctx.metrics.errors.fetch_add(1, Relaxed);
                false
            }
            Outcome::Stale => {
                ctx.metrics.stale.fetch_add(1, Relaxed);
                if let Some(s) = session_of(&op) {
                    if !fenced.contains(s) {
                        fenced.push(s.clone());
                    }
                }
                false
            }
        };
        if let StoreOp::Refresh { .. } = &op {
            ctx.metrics.refreshed.fetch_add(1, Relaxed);
        }
        release(op, ok);
    }
    for s in fenced {
        // Every core may hold it (a local handover moved it): each checks.
        for core in 0..ctx.bridge.cores() {
            let msg = BridgeMsg::Fenced {
                client_id: s.client_id.clone(),
                epoch: s.epoch,
            };
            let _ = ctx.bridge.send(core, msg);
        }
    }
}

fn session_of(op: &StoreOp) -> Option<&SessionRef> {
    match op {
        StoreOp::Put { session, .. }
        | StoreOp::Sent { session, .. }
        | StoreOp::Forget { session, .. }
        | StoreOp::Subscribe { session, .. }
        | StoreOp::Unsubscribe { session, .. }
        | StoreOp::Incoming { session, .. }
        | StoreOp::Release { session, .. }
        | StoreOp::End { session } => Some(session),
        StoreOp::EndClean { .. }
        | StoreOp::Left { .. }
        | StoreOp::Refresh { .. }
        | StoreOp::Handed { .. } => None,
    }
}
