//! Claims: CLAIM beside ADMIT (or after it, under a per-user limit), the
//! handover of a session still attached on another node, this node's
//! order of claims per client id, and the session a claim loads.

// The worker's files share its imports and helpers.
use super::*;

/// The last claim in line per client id, and what resolves when it is done.
pub(super) type ClaimLines = HashMap<Arc<str>, (u64, tokio::sync::oneshot::Receiver<()>)>;

/// How much older than the live-node view an entry must be before a
/// missing node discounts it: room for clock skew between nodes.
pub(super) const SKEW_MARGIN_MS: u64 = 5_000;

/// Holds back the writes that undo a connection's claim (its presence
/// entry leaving, its clean session ending) while that claim is still in
/// flight: claims run beside the writer, and a `ZREM` that overtook its
/// `ZADD` would leave the entry behind for a whole lease.
pub(super) fn defer_behind_claims(ctx: &Ctx, ops: Vec<StoreOp>) -> Vec<StoreOp> {
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
    pub(super) fn take(ctx: &Ctx, client_id: &Arc<str>) -> ClaimTurn {
        let (after, rx) = tokio::sync::oneshot::channel();
        let mut lines = ctx.claim_lines.borrow_mut();
        let seq = ctx.next_claim.get();
        ctx.next_claim.set(seq + 1);
        let before = lines.insert(client_id.clone(), (seq, rx)).map(|(_, rx)| rx);
        ClaimTurn { seq, before, after }
    }

    /// Waits for the claim before this one.
    pub(super) async fn wait(mut self) -> ClaimTurn {
        if let Some(before) = self.before.take() {
            let _ = before.await;
        }
        self
    }

    /// Lets the next claim go; the last one leaves no entry behind.
    pub(super) fn done(self, ctx: &Ctx, client_id: &Arc<str>) {
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
pub(super) fn claim_done(ctx: &Ctx, claim: &Claim, writes: &UnboundedSender<Vec<StoreOp>>) {
    let held = ctx.claiming.borrow_mut().remove(&claim.conn);
    if let Some(held) = held.filter(|h| !h.is_empty()) {
        let _ = writes.send(held);
    }
}

/// Asks node `node`, holding `client`'s session on connection `prev`, to
/// close it and flush its writes, and waits until it says so
/// ([`until_let_go`]).
async fn handoff(ctx: &Ctx, conn: &mut Conn, c: &Claim, node: &str, prev: &str) {
    let (Ok(node), Some(prev)) = (node.parse::<u16>(), ConnId::parse(prev)) else {
        return;
    };
    let msg = format!("handoff {prev} {} {}", ctx.settings.node, c.client_id);
    if until_let_go(ctx, conn, node, prev, msg).await {
        ctx.metrics.handoffs.fetch_add(1, Relaxed);
    } else {
        ctx.metrics.handoff_timeouts.fetch_add(1, Relaxed);
        debug!(client_id = %c.client_id, "node {node} did not hand the session over in time; its lease ran out");
    }
}

/// How many times a node that renews its lease but does not answer is
/// asked (a `handoff` or `evict-answer`). A node back from a partition
/// hears its control channel late, or not at all: its subscription's
/// socket waits out TCP's retransmission backoff, and the control task
/// subscribes afresh once the lease is back, dropping what the old socket
/// held. Taking the answer's absence plus a renewal as consent let a
/// connection evicted there be served 1.9 s after the new one was
/// admitted (the fault harness's `over_cap`).
const ASKS: u32 = 3;

/// Sends `msg` (a `handoff` or an `evict-answer` naming this node) to
/// `node` about its connection `prev`, and waits (at most
/// `store.handoff_timeout_ms`) for its `handed` answer, sent once the
/// connection is closed and its writes are flushed; without one, until
/// `node`'s lease has run out ([`until_lease_out`]), after which it serves
/// nothing that needs Redis. A node that renews its lease meanwhile is
/// alive: it is asked again, up to [`ASKS`] times. A node that is not
/// live is not waited for: its lease ran out already, and fencing covers
/// whatever it might still write. Whether the answer came.
pub(super) async fn until_let_go(
    ctx: &Ctx,
    conn: &mut Conn,
    node: u16,
    prev: ConnId,
    msg: String,
) -> bool {
    let listed = ctx
        .live
        .borrow()
        .1
        .iter()
        .any(|l| l.split(':').next() == Some(&*node.to_string()));
    // The view is refreshed every third of a lease: a node that started
    // since is not in it yet, and Redis has the last word.
    let live = listed
        || matches!(lease_of(conn, &ctx.settings.prefix, node).await,
            Ok(Some(until)) if until + SKEW_MARGIN_MS > now_ms());
    if !live {
        return true;
    }
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    ctx.handoffs.borrow_mut().insert(prev, tx);
    for _ in 0..ASKS {
        publish(ctx, conn, node, msg.clone()).await;
        match tokio::time::timeout(ctx.settings.handoff_timeout, &mut rx).await {
            Ok(Ok(())) => return true,
            Ok(Err(_)) => break,
            Err(_) => {}
        }
        if until_lease_out(ctx, conn, node).await == LeaseEnd::RanOut {
            break;
        }
        // An answer that came while the lease was watched.
        if rx.try_recv().is_ok() {
            return true;
        }
    }
    ctx.handoffs.borrow_mut().remove(&prev);
    false
}

/// How [`until_lease_out`] ended.
#[derive(Debug, PartialEq, Eq)]
enum LeaseEnd {
    /// The node's lease ran out (or it holds none, or Redis cannot say).
    RanOut,
    /// The node renewed it: alive, and reaching Redis.
    Renewed,
}

/// When `node`'s lease in Redis runs out (ms since the Unix epoch, by the
/// clocks of the nodes that wrote it); `None` when it holds none.
async fn lease_of(conn: &mut Conn, prefix: &str, node: u16) -> redis::RedisResult<Option<u64>> {
    let name = node.to_string();
    let scored: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(keys::nodes(prefix))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(conn)
        .await?;
    Ok(scored
        .iter()
        .filter(|(member, _)| member.split(':').next() == Some(name.as_str()))
        .map(|(_, score)| *score as u64)
        .max())
}

/// Waits until `node`'s lease has run out in Redis, by this node's clock,
/// plus [`SKEW_MARGIN_MS`]: by then that node, by its own clock, has
/// stopped serving the durable sessions it claimed (`store::Lease`), so
/// taking one over cannot leave two connections serving it. Returns at
/// once when the node renews meanwhile (alive: the caller asks again) or
/// has no lease left.
async fn until_lease_out(ctx: &Ctx, conn: &mut Conn, node: u16) -> LeaseEnd {
    let s = &ctx.settings;
    let mut first_seen = None;
    let mut waited = false;
    loop {
        // Redis unreachable: the claim that follows fails too.
        let Ok(Some(until)) = lease_of(conn, &s.prefix, node).await else {
            return LeaseEnd::RanOut;
        };
        if *first_seen.get_or_insert(until) < until {
            return LeaseEnd::Renewed;
        }
        let out_at = until + SKEW_MARGIN_MS;
        let now = now_ms();
        if now >= out_at {
            return LeaseEnd::RanOut;
        }
        if first_seen == Some(until) && !std::mem::replace(&mut waited, true) {
            ctx.metrics.lease_waits.fetch_add(1, Relaxed);
        }
        // Looked at again every third of a lease: a renewal ends the wait.
        let step = (out_at - now).min(s.node_lease_ms / 3).max(1);
        tokio::time::sleep(Duration::from_millis(step)).await;
    }
}

/// CLAIM (and ADMIT into the user's presence), then tell the previous
/// owner on another node to close its connection. `handed_over`: the
/// previous owner is on this node and hands the session over in memory, so
/// nothing is loaded and the epoch stays (the old connection's writes in
/// flight describe the same session).
pub(super) async fn claim_one(
    ctx: &Rc<Ctx>,
    conn: &mut Conn,
    c: &Claim,
    handed_over: bool,
) -> ClaimResult {
    let s = &ctx.settings;
    // A lease that lapsed (Redis was out of reach) is renewed first: a
    // renewal after the claim would start a new term and void it.
    if !s.lease.holds(s.lease.term()) {
        renew_lease(ctx, conn).await;
        if !s.lease.holds(s.lease.term()) {
            // A session claimed now could not be served (its first write
            // would close it): CONNACK 0x88 says so instead.
            return Err(StoreError::Unavailable(
                "this node's lease on the session store has lapsed".into(),
            ));
        }
    }
    // Read before the claim: a lapse after it makes the claim void.
    let lease_term = s.lease.term();
    let keys = keys::session(&s.prefix, &c.client_id);
    let user = c.presence.as_ref().map_or("", |p| &p.user);
    // A session handed over in memory is loaded too when another node
    // turns out to have claimed it since (`stale_previous`, below); the
    // claim waits for that node's handover like any other.
    let load = c.persistent && !c.clean_start;
    // What the session records of this claim, to recognise it when its
    // answer is lost (`settle`).
    let token = format!("{}.{}", s.incarnation, c.conn);
    // CLAIM, sent now: `wait` leaves a session attached elsewhere alone
    // (`busy`); `settle` asks what the claim that had that deadline did.
    // On a single Redis the claim adds the session to this node's index
    // itself; on a Redis Cluster the index is in another slot (`index`).
    let cluster = conn.is_cluster();
    let owned = keys::owned(&s.prefix, s.node);
    let claim = |wait: bool, deadline: u64, settle: u64| {
        let mut inv = ctx.scripts.claim.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        if !cluster {
            inv.key(&owned);
        }
        inv.arg(s.node)
            .arg(c.loc.core)
            .arg(c.conn.to_string())
            .arg(if c.clean_start { "1" } else { "0" })
            .arg(if c.persistent { "1" } else { "0" })
            .arg(user)
            .arg(if handed_over { "1" } else { "0" })
            .arg(if wait { "1" } else { "0" })
            .arg(deadline)
            .arg(&token)
            .arg(settle)
            .arg(c.expiry_secs)
            .arg(if c.adopt.is_some() { "1" } else { "0" })
            .arg(&*c.client_id);
        inv
    };
    // On a Redis Cluster, a persistent session joins this node's index
    // just before its claim, beside it: a node killed once the claim
    // landed finds the session when it starts again (`adopt`).
    let index = |mut conn: Conn| {
        let key = owned.clone();
        async move {
            if !cluster || !c.persistent || c.adopt.is_some() {
                return;
            }
            let added: redis::RedisResult<i64> = redis::cmd("SADD")
                .arg(key)
                .arg(&*c.client_id)
                .query_async(&mut conn)
                .await;
            if let Err(e) = added {
                debug!(client_id = %c.client_id, "not added to this node's index of sessions: {e}");
            }
        }
    };
    // Sends a claim and, if its answer is lost, learns what it did.
    let send = |wait: bool, conn: &mut Conn| {
        let mut conn = conn.clone();
        let claim = &claim;
        let index = index(conn.clone());
        async move {
            let deadline = deadline_ms(ctx);
            let mut sending = conn.clone();
            let invocation = claim(wait, deadline, 0);
            let (_, sent) = tokio::join!(index, invocation.invoke_async::<Value>(&mut sending));
            match sent {
                Err(e) if answer_lost(&e) => {
                    ctx.metrics.errors.fetch_add(1, Relaxed);
                    // The client is refused now, not after the asking.
                    let msg = BridgeMsg::ClaimUnanswered {
                        key: c.loc.key,
                        conn: c.conn,
                    };
                    let _ = ctx.bridge.send(c.loc.core, msg);
                    let ask = || claim(false, deadline, deadline);
                    settle(ctx, &mut conn, ask, lease_term, e).await
                }
                r => r.map_err(|e| unavailable(ctx, e)),
            }
        }
    };
    // ADMIT runs beside CLAIM (another slot on a Redis Cluster).
    let admit = c.presence.as_ref().map(|p| {
        let mut inv = ctx.scripts.admit.prepare_invoke();
        inv.key(keys::user(&s.prefix, &p.user))
            .key(keys::evicted(&s.prefix, &p.user, s.incarnation, c.conn))
            .arg(member(s, p))
            .arg(now_ms())
            .arg(s.presence_lease_ms)
            .arg(p.limit.unwrap_or(s.user_limit.max()))
            .arg(match s.user_limit.policy() {
                crate::config::PerUserPolicy::EvictOldest => "evict",
                crate::config::PerUserPolicy::Refuse => "refuse",
            })
            .arg(&*c.client_id);
        let live = ctx.live.borrow();
        inv.arg(live.0.saturating_sub(SKEW_MARGIN_MS))
            .arg(deadline_ms(ctx));
        for node in &live.1 {
            inv.arg(node);
        }
        inv
    });
    let limit = c
        .presence
        .as_ref()
        .and_then(|p| p.limit)
        .unwrap_or(s.user_limit.max());
    let (claimed, admitted) = match admit {
        // Under a limit, admission comes first: a refused connection must
        // not take the session (or hand it over) on its way out. Two round
        // trips.
        Some(admit) if limit > 0 => {
            let admitted: Vec<String> = admit
                .invoke_async(conn)
                .await
                .map_err(|e| admission_lost(ctx, conn, c, e))?;
            if admitted.first().map(String::as_str) == Some("0") {
                return Ok(Claimed {
                    over_limit: true,
                    ..Default::default()
                });
            }
            // A session to load that is attached elsewhere is first
            // handed over (`wait`).
            (send(load, conn).await, Some(admitted))
        }
        // Without one, ADMIT cannot refuse: both in one round trip.
        admit => {
            let mut conn2 = conn.clone();
            let (claimed, admitted) = tokio::join!(send(load, conn), async {
                match &admit {
                    Some(inv) => Some(inv.invoke_async::<Vec<String>>(&mut conn2).await),
                    None => None,
                }
            });
            let admitted = admitted
                .transpose()
                .map_err(|e| admission_lost(ctx, conn, c, e))?;
            (claimed, admitted)
        }
    };
    let claimed: Result<Vec<Value>, StoreError> = async {
        let mut claimed = claimed?;
        if let Value::Array(v) = &claimed {
            if text(v.first()) == "busy" {
                handoff(ctx, conn, c, &text(v.get(1)), &text(v.get(3))).await;
                claimed = send(false, conn).await?;
            }
        }
        let Value::Array(v) = claimed else {
            return Err(StoreError::Unavailable("unexpected CLAIM reply".into()));
        };
        if text(v.first()) == "other" {
            ctx.metrics.adoptions_declined.fetch_add(1, Relaxed);
            super::adopt::left_while_down(ctx, &c.client_id, &v);
            // Not this node's any more: out of its index too. (Unless this
            // life claimed it meanwhile, which the directory should have
            // kept from being adopted at all: its entry stays.)
            if text(v.get(1)) != s.node.to_string() {
                let removed: redis::RedisResult<i64> = redis::cmd("SREM")
                    .arg(&owned)
                    .arg(&*c.client_id)
                    .query_async(conn)
                    .await;
                if let Err(e) = removed {
                    debug!(client_id = %c.client_id, "not removed from this node's index of sessions: {e}");
                }
            }
            return Err(StoreError::Stale);
        }
        Ok(v)
    }
    .await;
    let v = match claimed {
        Ok(v) => v,
        Err(e) => {
            if let Some(a) = admitted {
                void_admission(ctx, conn, c, Some(a));
            }
            return Err(e);
        }
    };
    let epoch: u64 = text(v.first()).parse().unwrap_or(0);
    let (prev_node, prev_conn) = (text(v.get(1)), text(v.get(3)));
    let mut out = Claimed {
        epoch,
        ..Default::default()
    };
    if let Some(a) = admitted {
        debug!(client_id = %c.client_id, answer = ?a, "admitted into the user's presence");
        if a.first().map(String::as_str) == Some("0") {
            out.over_limit = true;
        }
        if limit > 0 {
            out.counted_in = Some(lease_term);
        }
        for evicted in a.iter().skip(1) {
            kick_member(ctx, conn, evicted).await;
        }
    }
    // The previous owner is another node: it closes the old connection, or
    // forgets its offline copy (its writes are already refused: the epoch
    // moved).
    // First it learns which node took it (`went`: a node that does not know
    // that word ignores it), so that the copies it hands on for the
    // session wait until this node is seen interested in them.
    if !prev_node.is_empty() && prev_node != s.node.to_string() && !prev_conn.is_empty() {
        if let Ok(node) = prev_node.parse::<u16>() {
            let went = format!("went {prev_conn} {} {}", s.node, c.client_id);
            publish(ctx, conn, node, went).await;
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
            lease_term,
            retaken: Vec::new(),
            came_from: if load {
                moves(&text(v.get(11)))
            } else {
                prev_node
                    .parse()
                    .ok()
                    .map(|node| Arrival {
                        node,
                        at_ms: now_ms(),
                    })
                    .into_iter()
                    .collect()
            },
        });
    }
    // This node's copy is stale when another node owned the session since
    // (CLAIM took a new epoch): Redis holds the session as it is now.
    out.stale_previous = handed_over && !prev_node.is_empty() && prev_node != s.node.to_string();
    if out.stale_previous {
        ctx.metrics.stale_copies.fetch_add(1, Relaxed);
        info!(client_id = %c.client_id, "this node's copy of the session is stale (node {prev_node} owned it since); loading the session from Redis");
    }
    if load && (!handed_over || out.stale_previous) && text(v.get(10)) == "1" {
        out.restored = Some(Box::new(restore(ctx, &c.client_id, &v)));
    }
    if c.adopt.is_some() {
        ctx.metrics.adopted.fetch_add(1, Relaxed);
        out.expiry_secs = text(v.get(12)).parse().ok();
    }
    Ok(out)
}

/// Whether a request may have run although its answer did not come: it
/// timed out or its connection dropped after it was sent. An error reply
/// (LATE among them) or a refused connection says it did nothing.
fn answer_lost(e: &RedisError) -> bool {
    (e.is_timeout() || e.is_connection_dropped() || e.is_io_error()) && !e.is_connection_refusal()
}

/// How long a settling claim waits before asking again when Redis's clock
/// has not yet passed the lost claim's deadline (`early`: the claim may
/// still run until then, so no answer is final before it), or when an ask
/// failed at once (Redis down, a connection being made again).
const SETTLE_RETRY_WAIT: Duration = Duration::from_millis(100);

/// How long a settling claim asks at least, whether or not this node's
/// lease holds. A link slow enough to lose a claim's answer usually lapses
/// the lease too (the fault harness: every lost answer through a
/// 256 kbit/s link came after the lease had lapsed, and none was asked
/// after), and learning late is still worth it: a parked session's writes
/// carry the claim's epoch, so if another node claimed it meanwhile they
/// are fenced, and if none did they keep what reached this node.
const SETTLE_FOR: Duration = Duration::from_secs(10);

/// A claim's answer was lost (`lost`): it ran before its deadline or
/// never will. Its client has been refused (`ClaimUnanswered`), and its
/// entry waits on the core for what this learns: `ask` (CLAIM in settle
/// mode) is sent until Redis tells, each within a request timeout, for
/// [`SETTLE_FOR`] and as long as this node's lease holds.
///
/// Before, a lost answer refused the connection (0x88) and the claim was
/// forgotten even when it had landed: Redis then named a connection that
/// did not exist as the session's owner, the old owner had let go, and
/// the messages the session's subscriptions matched until the next claim
/// reached nobody (the fault harness, a slow link to one node). Now a
/// claim that landed is answered as it would have been, and the core
/// parks the session offline with the messages it kept meanwhile
/// (`arrivals`), for the client's next connection.
async fn settle<'a>(
    ctx: &Ctx,
    conn: &mut Conn,
    ask: impl Fn() -> redis::ScriptInvocation<'a>,
    lease_term: u64,
    lost: RedisError,
) -> Result<Value, StoreError> {
    let s = &ctx.settings;
    let until = Instant::now() + SETTLE_FOR;
    while Instant::now() < until || s.lease.holds(lease_term) {
        match ask().invoke_async::<Value>(conn).await {
            Ok(Value::Array(v)) if text(v.first()) == "early" => {
                tokio::time::sleep(SETTLE_RETRY_WAIT).await;
            }
            Ok(Value::Array(v)) if text(v.first()) == "absent" => {
                ctx.metrics.claims_absent.fetch_add(1, Relaxed);
                return Err(unavailable(ctx, lost));
            }
            Ok(answer) => {
                ctx.metrics.claims_settled.fetch_add(1, Relaxed);
                info!("a claim whose answer was lost had landed: its session waits here, offline");
                return Ok(answer);
            }
            Err(e) => {
                debug!("asking what a claim with a lost answer did: {e}");
                ctx.metrics.errors.fetch_add(1, Relaxed);
                if !e.is_timeout() {
                    tokio::time::sleep(SETTLE_RETRY_WAIT).await;
                }
            }
        }
    }
    ctx.metrics.claims_unsettled.fetch_add(1, Relaxed);
    warn!("a claim's answer was lost and Redis did not tell what it did in time (store.request_timeout_ms, a few seconds more and the node's lease): until the next claim of that client id, the session may name a connection that is gone (store_claims_unsettled counts these)");
    Err(unavailable(ctx, lost))
}

/// ADMIT's answer did not come (`e`): whatever it did is undone
/// ([`void_admission`]), and the claim fails with `e`.
fn admission_lost(ctx: &Rc<Ctx>, conn: &Conn, c: &Claim, e: RedisError) -> StoreError {
    void_admission(ctx, conn, c, None);
    unavailable(ctx, e)
}

/// How many times a refused connection's admission is read back and
/// undone ([`void_admission`]) while Redis does not answer, one request
/// timeout apart: the record ADMIT keeps lives a presence lease.
const VOID_TRIES: u32 = 5;

/// Undoes the admission of a connection that is refused after it (its
/// CLAIM failed, or ADMIT's own answer was lost: Redis answered late, or
/// not at all), in a task of its own so the refusal is not held up. Its
/// entry leaves the user's presence, and the connections ADMIT evicted
/// for it are closed all the same: ADMIT took them out of the count, and
/// left open they were served uncounted, over the limit (the fault
/// harness's `over_cap` through a slow link). `answer`: ADMIT's answer
/// when it came; without it the record ADMIT keeps of its evictions
/// ([`keys::evicted`]) is read back.
fn void_admission(ctx: &Rc<Ctx>, conn: &Conn, c: &Claim, answer: Option<Vec<String>>) {
    let Some(p) = c.presence.clone() else {
        return;
    };
    let (ctx, mut conn, client_id) = (ctx.clone(), conn.clone(), c.client_id.clone());
    let s = &ctx.settings;
    let record = keys::evicted(&s.prefix, &p.user, s.incarnation, c.conn);
    tokio::task::spawn_local(async move {
        let s = &ctx.settings;
        let mut evicted = answer.map(|a| a.into_iter().skip(1).collect::<Vec<_>>());
        let mut left = false;
        for _ in 0..VOID_TRIES {
            if evicted.is_none() {
                let read: redis::RedisResult<Option<String>> =
                    redis::cmd("GET").arg(&record).query_async(&mut conn).await;
                if let Ok(r) = read {
                    evicted =
                        Some(r.map_or_else(Vec::new, |r| r.lines().map(String::from).collect()));
                }
            }
            if !left {
                let removed: redis::RedisResult<i64> = redis::cmd("ZREM")
                    .arg(keys::user(&s.prefix, &p.user))
                    .arg(member(s, &p))
                    .query_async(&mut conn)
                    .await;
                left = removed.is_ok();
            }
            if left && evicted.is_some() {
                break;
            }
            tokio::time::sleep(s.request_timeout).await;
        }
        if !left {
            // It expires within a presence lease; meanwhile it counts
            // against its user's limit, which errs on the safe side.
            debug!(%client_id, "presence entry of a refused connection not removed");
        }
        match evicted {
            Some(evicted) => {
                for m in evicted {
                    kick_member(&ctx, &mut conn, &m).await;
                }
            }
            None => {
                warn!(%client_id, "a refused connection's admission could not be read back from Redis: connections it evicted may stay open until they leave (store_evicted counts evictions)");
            }
        }
    });
}

/// CLAIM's `moves`: `node:ms,...`, oldest first.
pub(super) fn moves(text: &str) -> Vec<Arrival> {
    text.split(',')
        .filter_map(|m| {
            let (node, at) = m.split_once(':')?;
            Some(Arrival {
                node: node.parse().ok()?,
                at_ms: at.parse().ok()?,
            })
        })
        .collect()
}

pub(super) fn pairs(v: Option<&Value>) -> Vec<(Vec<u8>, Vec<u8>)> {
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
            .collect::<Vec<u16>>()
            .into();
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

pub(super) fn sub_from(b: &[u8]) -> Option<(SubOptions, u32)> {
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
