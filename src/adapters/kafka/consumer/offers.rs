//! How consumed records reach the cores.
//!
//! At least once: an offset is stored (and committed with librdkafka's
//! auto-commit) only after the cores accepted its record, which with sync
//! durability means it is stored for every persistent session it reached.
//! Up to [`WINDOW`] records are in the cores' hands at once; their offsets
//! are stored in consumption order, so a crash redelivers from the first
//! record not yet accepted. A core whose inbox is full is asked again after
//! [`BUSY_RETRY`]; a record that can never be delivered (an invalid topic,
//! a denied publish) is counted, logged and passed over.
//!
//! In order: records go into the inboxes one after another, in consumption
//! order, each through the core its key names (its lane), and a core never
//! refuses one it has. So one key's records (one publisher's, on the
//! cluster bus) reach subscribers in their Kafka order, however many cores
//! the node has.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesOrdered, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::Offset;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::offsets::{Advance, Offsets};
use super::records::{HandOn, Request};
use super::{Ctx, SourceConsumer};
use crate::adapters::kafka::producer::Job;
use crate::adapters::kafka::HandTo;
use crate::bridge::outbound::{Outgoing, Produced};
use crate::bridge::{oneshot, Numbered, PublishRequest, Refusal};
use crate::codec::QoS;
use crate::id::Source;
use crate::logging::Throttle;
use crate::session::Scope;

/// Records handed to the cores and not yet accepted, at most.
const WINDOW: usize = 256;
/// Pause before offering a record again to a busy core.
const BUSY_RETRY: Duration = Duration::from_millis(20);
/// Longest pause before offering again a record that was not stored: the
/// pause doubles from [`BUSY_RETRY`] up to this. While the session store
/// is away every record in the window is refused; offered again at the
/// busy pace, their writes outran the store once it was back (a Redis
/// restart in the fault harness), and every write kept failing.
const NOT_STORED_RETRY_MAX: Duration = Duration::from_secs(2);
/// How long the thread waits, when it stops, for records in the cores'
/// hands before it commits what was accepted.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// What became of one record.
#[derive(PartialEq, Eq)]
enum Outcome {
    Accepted,
    Passed,
    Stopping,
}

/// Where a record's offset is stored once it is done.
struct Place {
    topic: String,
    partition: i32,
    offset: i64,
}

/// Reads records and hands them to the cores until the gateway stops;
/// `offsets` knows what a gap in a partition's offsets calls for.
pub(super) async fn run(
    ctx: Arc<Ctx>,
    consumer: SourceConsumer,
    mut offsets: Offsets,
    mut stopped: watch::Receiver<bool>,
) {
    let mut inflight = FuturesOrdered::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            m = consumer.recv(), if inflight.len() < WINDOW => match m {
                Ok(m) => {
                    ctx.metrics.consumed.fetch_add(1, Relaxed);
                    // For whoever traces a record the cores never saw: a
                    // gap in a partition's offsets shows here.
                    tracing::trace!(topic = m.topic(), partition = m.partition(), offset = m.offset(), "record");
                    match offsets.advance(m.topic(), m.partition(), m.offset()) {
                        Advance::Next => {}
                        Advance::Before => continue,
                        Advance::ReadAgain { at, pause } => {
                            ctx.metrics.offsets_reread.fetch_add(1, Relaxed);
                            // Bounded and rare (`offsets::REREAD_PAUSE`): the
                            // other partitions wait that long.
                            tokio::time::sleep(pause).await;
                            // Asynchronous (no timeout): librdkafka discards at
                            // once what it fetched from the old position.
                            match consumer.seek(m.topic(), m.partition(), Offset::Offset(at), Duration::ZERO) {
                                Ok(()) => continue,
                                Err(e) => {
                                    warn!(topic = m.topic(), partition = m.partition(), at, "Kafka consumer: cannot read a gap again: {e}; the records in it are passed over");
                                    offsets.skip(m.topic(), m.partition(), m.offset());
                                    ctx.metrics.offsets_skipped.fetch_add(1, Relaxed);
                                }
                            }
                        }
                        Advance::Filled { times } => {
                            ctx.metrics.gaps_filled.fetch_add(1, Relaxed);
                            static FILLED: Throttle = Throttle::new();
                            if let Some(held_back) = FILLED.admit() {
                                tracing::info!(
                                    held_back,
                                    topic = m.topic(),
                                    partition = m.partition(),
                                    offset = m.offset(),
                                    times,
                                    "the Kafka broker served a gap's records when read again: it had skipped them (tether_kafka_gaps_filled_total)"
                                );
                            }
                        }
                        Advance::Repeated { last } => {
                            ctx.metrics.offsets_repeated.fetch_add(1, Relaxed);
                            static REPEATED: Throttle = Throttle::new();
                            if let Some(held_back) = REPEATED.admit() {
                                tracing::error!(
                                    held_back,
                                    topic = m.topic(),
                                    partition = m.partition(),
                                    offset = m.offset(),
                                    last,
                                    "the Kafka broker served an offset again, after a later one: a broker defect; the records around it were served twice, or some were skipped and never reach this node (tether_kafka_offsets_repeated_total); check the broker"
                                );
                            }
                        }
                        Advance::Skipped { last } => {
                            ctx.metrics.offsets_skipped.fetch_add(1, Relaxed);
                            static SKIPPED: Throttle = Throttle::new();
                            if let Some(held_back) = SKIPPED.admit() {
                                tracing::warn!(
                                    held_back,
                                    topic = m.topic(),
                                    partition = m.partition(),
                                    offset = m.offset(),
                                    last,
                                    "the Kafka broker served no records between two offsets: normal where a transaction's marker or compaction took them; on a cluster inbox (neither; read again before this) a broker defect, and those records never reach this node (tether_kafka_offsets_skipped_total)"
                                );
                            }
                        }
                    }
                    let place = Place {
                        topic: m.topic().to_string(),
                        partition: m.partition(),
                        offset: m.offset(),
                    };
                    let req = ctx.request(&m);
                    // Its turn at the inbox comes before the next record's,
                    // whatever the answers do after.
                    let offered = offer(&ctx, req, m.key()).await;
                    let ctx = ctx.clone();
                    inflight.push_back(async move { (place, settle(&ctx, offered).await) });
                }
                Err(e) => {
                    ctx.metrics.errors.fetch_add(1, Relaxed);
                    static REPEATS: Throttle = Throttle::new();
                    if let Some(held_back) = REPEATS.admit() {
                        warn!(held_back, "Kafka consumer: {e} (tether_kafka_consumer_errors_total counts them)");
                    }
                }
            },
            Some((place, outcome)) = inflight.next(), if !inflight.is_empty() => {
                if !done(&consumer, place, outcome) {
                    break;
                }
            }
        }
    }
    // What the cores already have: wait a little for their answers, then
    // commit what was accepted.
    let drain = async {
        while let Some((place, outcome)) = inflight.next().await {
            if !done(&consumer, place, outcome) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        debug!("Kafka consumer: final commit: {e}");
    }
}

/// Stores a finished record's offset; `false` when the gateway is stopping
/// (nothing after it is stored).
fn done(consumer: &SourceConsumer, place: Place, outcome: Outcome) -> bool {
    match outcome {
        Outcome::Stopping => false,
        Outcome::Accepted | Outcome::Passed => {
            if let Err(e) = consumer.store_offset(&place.topic, place.partition, place.offset) {
                warn!(
                    "Kafka consumer: storing offset {} of {}/{}: {e}",
                    place.offset, place.topic, place.partition
                );
            }
            true
        }
    }
}

/// A record after its turn at the inbox.
enum Offered {
    /// Nothing more to do for it.
    Settled(Outcome),
    /// In its core's inbox (boxed: one per record, on this thread).
    Queued(Box<Queued>),
    /// Sent to this node's earlier life: to hand on to every node
    /// ([`hand_on_orphan`]).
    Orphan(Box<(PublishRequest, HandOn, HandTo)>),
}

/// A record in its core's inbox, and what settling it needs.
struct Queued {
    answer: Answer,
    /// Kept for another offer (the payload is shared, not copied).
    req: PublishRequest,
    /// Its message id, the same at every offer.
    id: u64,
    scope: Scope,
    core: usize,
    /// The copy for the other nodes (owner mode).
    forward: Option<Outgoing>,
    /// A cluster inbox record's sender and publisher.
    hand_on: Option<HandOn>,
}

/// A core's answer to one publish.
type Answer = oneshot::Receiver<Result<u64, Refusal>>;

/// Queues a record in its lane's inbox, waiting while the inbox is full.
///
/// Records are offered one after another in consumption order, and a core
/// never refuses a Kafka record once it has it (`on_bridge_publish`), so
/// records of one lane reach subscribers in their Kafka order. The lane is
/// the record's key (Kafka keeps one key's records in order, and the
/// cluster bus keys by publisher), or its MQTT topic when it has none.
async fn offer(ctx: &Ctx, req: Request, key: Option<&[u8]>) -> Offered {
    let m = &ctx.metrics;
    let (req, scope, forward, hand_on) = match req {
        Request::Publish {
            req,
            scope,
            forward,
            hand_on,
        } => (req, scope, forward, hand_on),
        Request::Orphan { req, hand_on, to } => {
            return Offered::Orphan(Box::new((req, hand_on, to)))
        }
        Request::Stale => {
            m.stale.fetch_add(1, Relaxed);
            return Offered::Settled(Outcome::Passed);
        }
        Request::SkipOwn => {
            m.skipped_own.fetch_add(1, Relaxed);
            return Offered::Settled(Outcome::Passed);
        }
        Request::Undeliverable(why) => {
            m.undeliverable.fetch_add(1, Relaxed);
            warn!("Kafka record passed over: {why}");
            return Offered::Settled(Outcome::Passed);
        }
        Request::Receipt(to, r) => {
            // At most once, as every receipt: a node without the streams'
            // holder (no gRPC API here) passes it over.
            match ctx.bridge.as_ref().and_then(|b| b.stream_receipts.get()) {
                Some(take) => take(to, r),
                None => {
                    m.undeliverable.fetch_add(1, Relaxed);
                    warn!(stream = &*to, "a delivery receipt for an Upstream receipts stream came to a node without the gRPC API (grpc.listen): passed over");
                }
            }
            return Offered::Settled(Outcome::Passed);
        }
    };
    let Some(bridge) = &ctx.bridge else {
        return Offered::Settled(Outcome::Stopping);
    };
    let core = bridge.core_of(key.unwrap_or(req.topic.as_bytes()));
    let forward = forward.then(|| ctx.outgoing(&req, None, None));
    let id = ctx.next_id();
    let first = Numbered { id, again: false };
    let Some(answer) = queue(ctx, core, &req, &scope, first).await else {
        return Offered::Settled(Outcome::Stopping);
    };
    Offered::Queued(Box::new(Queued {
        answer,
        req,
        id,
        scope,
        core,
        forward,
        hand_on,
    }))
}

/// Puts a publish in `core`'s inbox, asking again after [`BUSY_RETRY`]
/// while the inbox is full; `None` once the gateway is stopping.
async fn queue(
    ctx: &Ctx,
    core: usize,
    req: &PublishRequest,
    scope: &Scope,
    numbered: Numbered,
) -> Option<Answer> {
    loop {
        let bridge = ctx.bridge.as_ref()?;
        match bridge.publish_on(
            core,
            Source::Bridge,
            req.clone(),
            scope.clone(),
            Some(numbered),
        ) {
            Ok(answer) => return Some(answer),
            Err(Refusal::Busy) => {
                ctx.metrics.busy_retries.fetch_add(1, Relaxed);
                tokio::time::sleep(BUSY_RETRY).await;
            }
            Err(_) => return None,
        }
    }
}

/// Waits for a queued record's answer, offering it again while it is not
/// stored, and for its forward to the other nodes (owner mode): both must
/// be done before its offset is stored.
async fn settle(ctx: &Ctx, offered: Offered) -> Outcome {
    let mut q = match offered {
        Offered::Settled(outcome) => return outcome,
        Offered::Orphan(o) => return hand_on_orphan(ctx, &o.0, &o.1, o.2).await,
        Offered::Queued(q) => q,
    };
    let forward = q.forward.take();
    let here = deliver_here(ctx, *q);
    let Some(out) = forward else {
        return here.await;
    };
    let (here, there) = tokio::join!(here, forward_out(ctx, out));
    match (here, there) {
        (Outcome::Stopping, _) | (_, Outcome::Stopping) => Outcome::Stopping,
        (Outcome::Accepted, _) => Outcome::Accepted,
        _ => Outcome::Passed,
    }
}

/// Hands an owner-mode record to the producer for the other nodes until
/// every copy is in Kafka (or the gateway stops).
async fn forward_out(ctx: &Ctx, out: Outgoing) -> Outcome {
    let job = |ack| Job::Forward {
        out: out.clone(),
        ack,
    };
    until_in_kafka(ctx, "an owner-mode record is not forwarded", job).await
}

/// Hands the producer the job `job` makes, again after [`BUSY_RETRY`]
/// while it fails, until its records are in Kafka ([`Outcome::Accepted`])
/// or the gateway stops. `what` names the records for the warning.
async fn until_in_kafka(
    ctx: &Ctx,
    what: &str,
    job: impl Fn(oneshot::Sender<Produced>) -> Job,
) -> Outcome {
    loop {
        let (ack, answer) = oneshot::channel();
        if ctx.jobs.send(job(ack)).is_err() {
            return Outcome::Stopping;
        }
        match answer.await {
            Ok(Produced::Done) => return Outcome::Accepted,
            Ok(Produced::Failed(why)) => {
                static REPEATS: Throttle = Throttle::new();
                if let Some(held_back) = REPEATS.admit() {
                    warn!(held_back, "{what} yet ({why}); trying again");
                }
                ctx.metrics.busy_retries.fetch_add(1, Relaxed);
                tokio::time::sleep(BUSY_RETRY).await;
            }
            Err(_) => return Outcome::Stopping,
        }
    }
}

/// Awaits a record's answer from `core`, offering it again until it is
/// stored (or can never be), then hands it on for the persistent sessions
/// it was meant for that left the node meanwhile ([`hand_on_departed`]).
///
/// A record that comes back [`Refusal::Undelivered`] reached the online
/// subscribers but was not stored; its next offer goes behind records
/// queued since, which are duplicates' order, not first copies'. It keeps
/// its message id (`id`), so a session that queued it the first time
/// stores that copy instead of taking another.
async fn deliver_here(ctx: &Ctx, q: Queued) -> Outcome {
    let Queued {
        mut answer,
        req,
        id,
        scope,
        core,
        hand_on,
        ..
    } = q;
    let m = &ctx.metrics;
    let mut not_stored = BUSY_RETRY;
    loop {
        let pause = match answer.await.unwrap_or(Err(Refusal::ShuttingDown)) {
            Ok(_) => {
                m.delivered.fetch_add(1, Relaxed);
                return match hand_on {
                    Some(h) => hand_on_departed(ctx, &req, &scope, &h).await,
                    None => Outcome::Accepted,
                };
            }
            Err(Refusal::ShuttingDown) => return Outcome::Stopping,
            Err(Refusal::Undelivered(why)) => {
                // Not stored (durability): offer it again, it must not be lost.
                debug!("Kafka record not stored yet ({why}); again");
                let pause = not_stored;
                not_stored = (not_stored * 2).min(NOT_STORED_RETRY_MAX);
                pause
            }
            // The core does not refuse a Kafka record for room; a full
            // inbox is the only busy answer left.
            Err(Refusal::Busy) => BUSY_RETRY,
            Err(r) => {
                m.undeliverable.fetch_add(1, Relaxed);
                warn!(topic = %req.topic, "Kafka record passed over: {r}");
                return Outcome::Passed;
            }
        };
        m.busy_retries.fetch_add(1, Relaxed);
        tokio::time::sleep(pause).await;
        let numbered = Numbered { id, again: true };
        let Some(again) = queue(ctx, core, &req, &scope, numbered).await else {
            return Outcome::Stopping;
        };
        answer = again;
    }
}

/// Hands a cluster inbox record the cores accepted on to every node, once
/// for each persistent session it was meant for that left this node since
/// it was sent (`bridge::departures`): the cores delivered it to nobody
/// there, and its publisher was acknowledged. Its offset is stored only
/// once every copy is in Kafka.
async fn hand_on_departed(ctx: &Ctx, req: &PublishRequest, scope: &Scope, h: &HandOn) -> Outcome {
    let Some(bridge) = &ctx.bridge else {
        return Outcome::Stopping;
    };
    if req.qos == QoS::AtMostOnce {
        return Outcome::Accepted;
    }
    let only = match scope {
        Scope::Session(s) => Some(&**s),
        // Handed on already, by a node that restarted.
        Scope::Orphan { .. } => return Outcome::Accepted,
        _ => None,
    };
    let claimants = bridge.departures.claimants(&req.topic, h.sent_ms, only);
    // Handed on to every node the view knows: a node that just started
    // (its departures are the sessions other nodes took while it was
    // down) waits until it knows them all, or the copy reaches only itself.
    if !claimants.is_empty() {
        wait_for_view(ctx).await;
    }
    for claimant in claimants {
        ctx.metrics.handed_on.fetch_add(1, Relaxed);
        let session = claimant.client_id;
        debug!(client_id = %session, topic = %req.topic, "handing a copy on: its session left this node");
        let out = ctx.outgoing(req, h.client.clone(), h.user.clone());
        let job = |ack| Job::HandOn {
            out: out.clone(),
            to: HandTo::Session(session.clone()),
            watch: claimant.watch,
            ack,
        };
        let what = "a copy for a session that left this node is not handed on";
        if until_in_kafka(ctx, what, job).await == Outcome::Stopping {
            return Outcome::Stopping;
        }
    }
    Outcome::Accepted
}

/// Hands a record sent to this node's earlier life (before it restarted)
/// on to every node, `to` the persistent sessions that life held (they
/// are elsewhere now, or back here, and the record was sent while the
/// cluster still routed their copies to this node: `Scope::Orphan`), or
/// to the one session a copy handed on was for (`Scope::Session`).
/// Handed on once the interest topic was read, so that the cluster view
/// knows every node; its offset is stored once every copy is in Kafka.
async fn hand_on_orphan(ctx: &Ctx, req: &PublishRequest, h: &HandOn, to: HandTo) -> Outcome {
    wait_for_view(ctx).await;
    ctx.metrics.orphans.fetch_add(1, Relaxed);
    let out = ctx.outgoing(req, h.client.clone(), h.user.clone());
    let job = |ack| Job::HandOn {
        out: out.clone(),
        to: to.clone(),
        watch: None,
        ack,
    };
    until_in_kafka(
        ctx,
        "a copy sent to this node before it restarted is not handed on",
        job,
    )
    .await
}

/// Waits until the interest topic was read to its end: the cluster view
/// knows every node, and a copy handed on to every node reaches them all.
async fn wait_for_view(ctx: &Ctx) {
    while !ctx.loaded.load(Relaxed) {
        tokio::time::sleep(BUSY_RETRY).await;
    }
}
