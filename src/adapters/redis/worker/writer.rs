//! The writer task: the cores' journals of session writes, applied batch
//! after batch in journal order, and what each outcome releases.

// The worker's files share its imports and helpers.
use super::*;

/// Pause before retrying a write batch whose connection failed.
const WRITE_RETRY: Duration = Duration::from_millis(100);

/// Releases what the ops hold: their confirms, and the queue's count.
pub(super) fn finish(ctx: &Ctx, ops: Vec<StoreOp>, outcome: Result<(), ()>) {
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

/// Applies write batches one after another (see the module docs).
pub(super) async fn writer(ctx: Rc<Ctx>, mut conn: Conn, mut rx: UnboundedReceiver<Vec<StoreOp>>) {
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
                    unindex_ended(&ctx, &conn, &ops, &results);
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

/// Takes the sessions whose end just landed out of this node's index of
/// sessions to adopt ([`keys::owned`]), so that it holds the node's live
/// sessions rather than every client id it ever claimed (what another
/// node claimed since leaves it at the next start, declined).
fn unindex_ended(ctx: &Rc<Ctx>, conn: &Conn, ops: &[StoreOp], results: &[Outcome]) {
    let ended: Vec<&str> = ops
        .iter()
        .zip(results)
        .filter_map(|(op, r)| match (op, r) {
            (StoreOp::End { session }, Outcome::Done) => Some(&*session.client_id),
            _ => None,
        })
        .collect();
    if ended.is_empty() {
        return;
    }
    let mut srem = redis::cmd("SREM");
    srem.arg(keys::owned(&ctx.settings.prefix, ctx.settings.node))
        .arg(ended);
    let mut conn = conn.clone();
    tokio::task::spawn_local(async move {
        if let Err(e) = srem.query_async::<i64>(&mut conn).await {
            debug!("ended sessions not removed from this node's index: {e}");
        }
    });
}

/// The result of one op: done, refused as stale, or failed (with what
/// Redis said).
enum Outcome {
    Done,
    Stale,
    Failed(String),
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
            for s in ctx.scripts.all() {
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
        Value::ServerError(e) if is_stale(e) => Outcome::Stale,
        Value::ServerError(e) => Outcome::Failed(e.to_string()),
        _ => Outcome::Done,
    }
}

/// Whether Redis refused a write as fenced (`scripts::WRITE`): the code
/// STALE, or ERR with STALE first, as Redis 7 writes a one-word error a
/// script raised (a script cached from an older release).
fn is_stale(e: &redis::ServerError) -> bool {
    e.code() == "STALE"
        || (e.code() == "ERR" && e.details().is_some_and(|d| d.starts_with("STALE")))
}

/// One pipeline (a Redis), or one per session or user (a Redis Cluster,
/// where a pipeline must stay in one slot), each in journal order.
async fn send(ctx: &Ctx, conn: &mut Conn, ops: &[StoreOp]) -> Result<Vec<Value>, RedisError> {
    let cmds: Vec<(String, redis::Cmd)> = ops.iter().map(|op| command(ctx, op)).collect();
    if !conn.is_cluster() {
        let mut p = redis::pipe();
        p.ignore_errors();
        for (_, c) in &cmds {
            p.add_command(c.clone());
        }
        return p.query_async(conn).await;
    }
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
            // Except for a presence lease after this node's own lease came
            // back from a lapse (partitioned, paused): its entries expired
            // while it could not refresh them, and other nodes removed
            // them, though the connections are still here. Without them
            // presence and the per-user limit would miss those
            // connections for good.
            let lease = ctx.settings.presence_lease_ms;
            let recreate = ctx
                .settings
                .lease
                .new_term_within(Duration::from_millis(lease));
            let mut c = redis::cmd("EVALSHA");
            c.arg(ctx.scripts.refresh.get_hash())
                .arg(1)
                .arg(keys::user(prefix, &presence.user))
                .arg(now_ms() + lease)
                .arg(member(&ctx.settings, presence))
                .arg(lease)
                .arg(u8::from(recreate));
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
            Outcome::Failed(why) => {
                ctx.metrics.errors.fetch_add(1, Relaxed);
                // One per op while Redis refuses them: throttled. A refused
                // write fails its publisher's acknowledgement, so it must
                // not be silent.
                static REFUSED: crate::logging::Throttle = crate::logging::Throttle::new();
                if let Some(held_back) = REFUSED.admit() {
                    warn!(held_back, "Redis refused a session write: {why} (tether_store_errors_total counts them; publishers waiting on it are told: not stored)");
                }
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
