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
//! - **Adoption.** Once, at start: the persistent sessions this node held
//!   before it restarted that no other node claimed since are claimed
//!   again and parked offline (`adopt.rs`).
//!
//! | file | concern |
//! | --- | --- |
//! | `mod.rs` | the thread's loop, its shared `Ctx`, answers while Redis is down |
//! | `claims.rs` | CLAIM and ADMIT, handoffs, claim order, restoring a session |
//! | `adopt.rs` | at start, the sessions of this node's earlier life: claimed again, or recorded as departed |
//! | `writer.rs` | the journal's writes: batches, pipelines, outcomes |
//! | `control.rs` | presence entries, the control channel, the node lease |
//! | `lookup.rs` | the HTTP API's cluster-wide questions |

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::{RedisError, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tracing::{debug, info, warn};

mod adopt;
mod claims;
mod control;
mod lookup;
mod writer;

pub(crate) use adopt::ADOPT_WAIT_MS;
use claims::{
    claim_done, claim_one, defer_behind_claims, sub_from, sub_to, until_let_go, ClaimLines,
    ClaimTurn, SKEW_MARGIN_MS,
};
pub use control::Entry;
use control::{control, kick_member, member, node_lease, parse_member, publish, renew_lease};
use lookup::{answer_unavailable, lookup};
use writer::{finish, writer};

use super::conn::{Client, Conn};
use super::scripts::Scripts;
use super::{blob, keys, Job, Metrics, Settings};
use crate::bridge::{Bridge, BridgeMsg, Kick};
use crate::codec::{reason, QoS, SubOptions};
use crate::id::ConnId;
use crate::session::{Arrival, Durable, Inflight, Session};
use crate::store::{
    Claim, ClaimResult, Claimed, Connection, Idempotency, Lookup, Presence, SessionRef, StoreError,
    StoreOp, StoredSession,
};

/// First pause after a failed connection attempt; doubles up to
/// [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the worker tasks share.
pub(super) struct Ctx {
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    pub bridge: Arc<Bridge>,
    /// The node's directory.
    pub local: Arc<crate::store::MemoryStore>,
    pub scripts: Scripts,
    pub client: Client,
    /// The live node incarnations as last read with the node lease, and
    /// when (Unix ms): ADMIT discounts older entries of nodes not in it.
    pub live: std::cell::RefCell<(u64, Vec<String>)>,
    /// How far Redis's clock is ahead of this node's (ms, negative when
    /// behind), as measured with the last node lease renewal: requests'
    /// deadlines are stated by Redis's clock ([`deadline_ms`]).
    pub redis_ahead_ms: std::cell::Cell<Option<i64>>,
    /// The last lease renewal failed (Redis out of reach).
    pub renewal_failed: std::cell::Cell<bool>,
    /// Told once a renewal succeeds after a failure: the control task
    /// subscribes again on a new connection (`control::control`).
    pub resubscribe: tokio::sync::Notify,
    /// Connections whose claim is in flight, with the writes held back
    /// until it lands ([`defer_behind_claims`]).
    pub claiming: std::cell::RefCell<HashMap<ConnId, Vec<StoreOp>>>,
    /// Claims waiting for another node to hand a session over, by the
    /// connection that holds it there.
    pub handoffs: std::cell::RefCell<HashMap<ConnId, tokio::sync::oneshot::Sender<()>>>,
    /// Connections of this node another node's claim took over, and that
    /// node (`went`, which comes just before the `kick`).
    pub went: std::cell::RefCell<HashMap<ConnId, u16>>,
    /// Per client id, the last claim in line ([`ClaimTurn`]).
    pub claim_lines: std::cell::RefCell<ClaimLines>,
    /// Numbers the claims for [`ClaimTurn`].
    pub next_claim: std::cell::Cell<u64>,
}

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
    // The lease holds before the first claim is made: a durable session
    // is served only while it does.
    renew_lease(&ctx, &mut conn.clone()).await;
    tokio::task::spawn_local(adopt::adopt(ctx.clone(), conn.clone()));
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
                    if matches!(
                        &result,
                        Err(_)
                            | Ok(Claimed {
                                over_limit: true,
                                ..
                            })
                    ) {
                        // Refused: the session stays where it was, and the
                        // next claim hands it over from there.
                        ctx.local.put_back(&claim.client_id, claim.loc, previous);
                    }
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

/// When, by Redis's clock (Unix ms), the worker stops waiting for a
/// request sent now: CLAIM and ADMIT do nothing after it (`scripts`,
/// Deadlines). Until a lease renewal has measured the clocks' offset, the
/// skew margin stands in for it.
pub(super) fn deadline_ms(ctx: &Ctx) -> u64 {
    let wait = ctx.settings.request_timeout.as_millis() as u64;
    match ctx.redis_ahead_ms.get() {
        Some(ahead) => now_ms().saturating_add_signed(ahead) + wait,
        None => now_ms() + wait + SKEW_MARGIN_MS,
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

use crate::wallclock::now_ms;

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
