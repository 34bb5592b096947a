//! The `tether-kafka` thread: owns the rdkafka producer. Cores queue
//! [`Job`]s on a channel and never wait; the thread turns each message into
//! a record and hands it to librdkafka, which batches, retries and keeps
//! order per partition (idempotence is on). Delivery reports are answered
//! where librdkafka reports them, in [`Reports::delivery`] on the
//! producer's poll thread: no task, future or wake-up per message here (a
//! `FutureProducer` cost a spawned task, a oneshot and a cross-thread wake
//! per message, 40 % of this thread's time; bench/RESULTS.md).
//!
//! A fatal error ends an idempotent producer for good: librdkafka then
//! refuses every message (a broker that fenced its producer id after a
//! hang longer than `kafka.delivery_timeout_ms` does this). The thread
//! notices, drops that producer (what it held is answered as failed) and
//! makes a new one from the same configuration, whoever the broker is.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::Statistics;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::cluster::{self, ClusterView, Update};
use super::routes::{headers, Routes};
use super::{HandTo, FIRST_SENT, ORPHAN_OF, TO_SESSION};
use crate::bridge::departures::Departures;
use crate::bridge::outbound::{
    ConnEvent, ConnEventKind, InterestChange, OutboundError, Outgoing, Produced,
};
use crate::bridge::ReplyTo;
use crate::codec::QoS;
use crate::logging::Throttle;
use crate::session::Confirm;
use crate::stats::Histogram;

/// Pause before offering messages again to a full librdkafka queue.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(10);
/// How long the thread waits, when it stops, for what is in flight.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often client messages held for the cluster view
/// ([`Cluster::loaded`]) are looked at, to fail those held past
/// `kafka.delivery_timeout_ms`.
const HELD_CHECK: Duration = Duration::from_millis(100);
/// Least time between two rebuilds of a producer that failed fatally: a
/// broker that fences every new producer id at once gets one new producer
/// per second, not one per message.
const REBUILD_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// A job for the thread.
pub(crate) enum Job {
    /// Produce one client message; answer `ack` with its delivery report.
    Send {
        /// The message and its publisher.
        out: Outgoing,
        /// Where the answer goes.
        ack: ReplyTo<Produced>,
    },
    /// Produce one HTTP API publish to `kafka.push_topic`; answer `ack`.
    Push {
        /// The message (its publisher is the API: no client, no user).
        out: Outgoing,
        /// The waiting request handler.
        ack: oneshot::Sender<Produced>,
    },
    /// Forward a record an owner-mode source took to the other nodes with
    /// interest (`[kafka.cluster]`); answer `ack` once every copy is in.
    Forward {
        /// The message (its publisher is the source: no client, no user).
        out: Outgoing,
        /// The consuming task.
        ack: oneshot::Sender<Produced>,
    },
    /// Hand on a cluster-bus copy this node received for a persistent
    /// session that had left it (`bridge::departures`), or that reached
    /// its earlier life (before it restarted): one copy to every node up,
    /// this one included, scoped by `to`, so that whichever node holds the
    /// session now delivers it; answer `ack` once every copy is in.
    HandOn {
        /// The message and its publisher.
        out: Outgoing,
        /// Whom it is for.
        to: HandTo,
        /// The consuming task.
        ack: oneshot::Sender<Produced>,
    },
    /// Produce one connection event to `kafka.events_topic`.
    Event(ConnEvent),
    /// Announce a core's interest change on the interest topic.
    Interest(InterestChange),
    /// An announcement read from the interest topic, for the view.
    View(Update),
    /// The node's departed sessions (`bridge::departures`), once the
    /// bridge exists: messages published here for a session that just
    /// left are handed on.
    Departures(Arc<Departures>),
    /// The interest topic was read to its end: the view is whole.
    Loaded,
    /// Flush and stop.
    Stop,
}

/// The bridge's figures (written by its threads, read by `/metrics`).
#[derive(Default)]
pub(crate) struct Metrics {
    /// Messages handed to librdkafka and not yet reported (gauge).
    pub inflight: AtomicUsize,
    /// Messages Kafka acknowledged.
    pub produced: AtomicU64,
    /// Messages not acknowledged within `kafka.delivery_timeout_ms`.
    pub timed_out: AtomicU64,
    /// Messages Kafka or librdkafka refused (too large, unknown topic,
    /// not authorized, ...).
    pub refused: AtomicU64,
    /// Times a message met librdkafka's full queue and was offered again.
    pub queue_full: AtomicU64,
    /// From hand-over to delivery report.
    pub latency: Histogram,
    /// The last statistics listed no broker up (written every
    /// [`super::STATS_INTERVAL_MS`]).
    pub brokers_down: AtomicBool,
    /// When Kafka last acknowledged a message, ms since the Unix epoch (0:
    /// never); with messages in flight and this old, the route is stuck.
    pub last_ok_ms: AtomicU64,
    /// When a message last timed out or met a fatal error, ms since the
    /// Unix epoch (0: never); later than `last_ok_ms`, Kafka is not taking
    /// messages.
    pub last_failed_ms: AtomicU64,
    /// The producer in use: 0 for the first, then one more per rebuild.
    pub generation: AtomicU64,
    /// One more than the generation of the last producer that met a fatal
    /// error (0: none). Equal to `generation + 1`, the producer in use is
    /// done for and the thread makes a new one; a dropped producer's late
    /// reports cannot raise it for its successor.
    pub fatal_in: AtomicU64,
    /// New producers made after a fatal error.
    pub rebuilds: AtomicU64,
}

/// Whether a statistics report lists a broker that is up. Bootstrap
/// entries (node id -1) count too: before metadata they are all there is.
pub(crate) fn any_broker_up(s: &Statistics) -> bool {
    s.brokers.values().any(|b| b.state == "UP")
}

/// Who waits for a delivery report.
pub(crate) enum Answer {
    /// A core, for a publisher's acknowledgement.
    Core(ReplyTo<Produced>),
    /// The HTTP API (a push) or the consumer (a forward).
    Api(oneshot::Sender<Produced>),
    /// A SUBACK waiting for an interest announcement.
    Confirm(Arc<Confirm>),
    /// One of several records of one message.
    Part(Arc<Gather>),
    /// Nobody (a connection event): only the figures count it.
    Nobody,
}

impl Answer {
    fn send(self, p: Produced) {
        match self {
            Answer::Core(r) => r.send(p),
            // A handler that gave up does not need the answer.
            Answer::Api(tx) => drop(tx.send(p)),
            Answer::Confirm(c) => c.release(p == Produced::Done),
            Answer::Part(g) => g.part(p),
            Answer::Nobody => {}
        }
    }
}

/// The records of one message (a route's and one per node with interest):
/// its answer goes out when the last report is in, a failure if any failed.
pub(crate) struct Gather {
    left: AtomicUsize,
    failure: std::sync::Mutex<Option<Produced>>,
    whole: std::sync::Mutex<Option<Answer>>,
}

impl Gather {
    fn part(&self, p: Produced) {
        if p != Produced::Done {
            *lock(&self.failure) = Some(p);
        }
        if self.left.fetch_sub(1, Relaxed) == 1 {
            let answer = lock(&self.failure).take().unwrap_or(Produced::Done);
            if let Some(whole) = lock(&self.whole).take() {
                whole.send(answer);
            }
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What travels with a record through librdkafka and comes back with its
/// delivery report.
pub(crate) struct Pending {
    ack: Answer,
    started: Instant,
}

impl Metrics {
    /// Producer `generation` met a fatal error.
    fn fatal(&self, generation: u64) {
        self.fatal_in.fetch_max(generation + 1, Relaxed);
    }

    /// Whether the producer in use met a fatal error (it is being made
    /// again).
    pub fn fatal_now(&self) -> bool {
        self.fatal_in.load(Relaxed) == self.generation.load(Relaxed) + 1
    }
}

/// The producer's context: answers delivery reports on librdkafka's poll
/// thread.
pub(crate) struct Reports {
    pub metrics: Arc<Metrics>,
    /// Which producer this is ([`Metrics::generation`]).
    pub generation: u64,
}

impl ClientContext for Reports {
    fn stats(&self, s: Statistics) {
        self.metrics.brokers_down.store(!any_broker_up(&s), Relaxed);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.metrics.fatal(self.generation);
            warn!("Kafka producer: fatal error: {reason}; making a new producer");
        } else {
            // Brokers going and coming are news for /readyz (the
            // statistics), not a log line per reconnect attempt.
            debug!("librdkafka: {error}: {reason}");
        }
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Box<Pending>) {
        let m = &self.metrics;
        m.inflight.fetch_sub(1, Relaxed);
        let answer = match result {
            Ok(_) => {
                m.produced.fetch_add(1, Relaxed);
                m.last_ok_ms.store(crate::wallclock::now_ms(), Relaxed);
                m.latency
                    .observe(pending.started.elapsed().as_micros() as u64);
                Produced::Done
            }
            Err((e, _)) => failed(m, self.generation, e.clone()),
        };
        pending.ack.send(answer);
    }
}

/// The producer the thread owns.
pub(crate) type KafkaProducer = ThreadedProducer<Reports>;

/// What the thread owns.
pub(crate) struct Ctx {
    pub producer: KafkaProducer,
    pub routes: Routes,
    /// `kafka.push_topic` (empty: pushes are not produced).
    pub push_topic: String,
    /// `kafka.events_topic` (empty: no connection events).
    pub events_topic: String,
    /// `[kafka.cluster]`, when on.
    pub cluster: Option<Cluster>,
    /// This node's id, as the `x-node` header writes it.
    pub node: String,
    pub delivery_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// What the producer was made from, to make another after a fatal
    /// error.
    pub config: ClientConfig,
    /// When the producer was last made again.
    pub rebuilt: Option<Instant>,
    /// See [`Job::Departures`].
    pub departures: Option<Arc<Departures>>,
}

/// A producer from `config`, reporting to `metrics`.
pub(crate) fn make(config: &ClientConfig, metrics: &Arc<Metrics>) -> KafkaResult<KafkaProducer> {
    config.create_with_context(Reports {
        metrics: metrics.clone(),
        generation: metrics.generation.load(Relaxed),
    })
}

impl Ctx {
    /// After a fatal error: drops the producer (what it still held is
    /// purged and answered as failed, within half a second) and makes a
    /// new one. Keeps the old one, to try again later, if that fails.
    fn rebuild(&mut self) {
        if self
            .rebuilt
            .is_some_and(|t| t.elapsed() < REBUILD_AT_MOST_EVERY)
        {
            // Still fatal: the thread asks again within the second.
            return;
        }
        self.rebuilt = Some(Instant::now());
        let m = &self.metrics;
        let generation = m.generation.load(Relaxed);
        // The new producer reports as the next generation.
        m.generation.store(generation + 1, Relaxed);
        match make(&self.config, m) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut self.producer, fresh);
                drop(old);
                m.rebuilds.fetch_add(1, Relaxed);
                warn!("Kafka producer: made a new producer after a fatal error");
            }
            Err(e) => {
                m.generation.store(generation, Relaxed);
                warn!("Kafka producer: a new producer could not be made ({e}); trying again");
            }
        }
    }
}

/// The cluster bus as the thread sees it.
pub(crate) struct Cluster {
    /// `kafka.cluster.node_topic`, to render per node.
    pub config: crate::config::ClusterConfig,
    /// This node's id.
    pub me: u16,
    /// This process's incarnation (start time, ms): its hello.
    pub incarnation: u64,
    /// Who subscribed to what, cluster-wide.
    pub view: ClusterView,
    /// The interest topic was read to its end once (`Job::Loaded`): the
    /// view is whole. Until then a client message is held, not routed:
    /// routed by a partial view, it would reach none of the nodes not
    /// read yet, and its publisher would be acknowledged all the same (a
    /// node that just started).
    pub loaded: bool,
    /// Client messages that came before the view was whole, in order,
    /// with when they came.
    pub held: VecDeque<(Outgoing, ReplyTo<Produced>, Instant)>,
    /// The view's size, for `/metrics` (written here only).
    pub figures: Arc<ClusterFigures>,
}

/// The cluster view's size and what was routed by it.
#[derive(Default)]
pub(crate) struct ClusterFigures {
    /// Nodes that are up (this one included).
    pub nodes: AtomicUsize,
    /// Interest announcements held.
    pub entries: AtomicUsize,
    /// Copies of client messages produced to other nodes.
    pub forwarded: AtomicU64,
    /// Client messages no other node wanted (not produced).
    pub local_only: AtomicU64,
    /// Client messages handed on for a persistent session that had just
    /// left this node, one per session.
    pub handed_on: AtomicU64,
}

/// One record to produce.
enum Rec {
    /// A message to its route's topic.
    Route(Outgoing),
    /// An API publish to the push topic.
    Push(Outgoing),
    /// A message to another node's topic, with the groups it serves, or
    /// for one session only (a copy handed on).
    Node {
        out: Outgoing,
        node: u16,
        shares: Vec<Arc<str>>,
        to: Option<HandTo>,
    },
    /// An announcement on the interest topic (`None`: a tombstone).
    Registry { key: String, value: Option<String> },
}

/// A record librdkafka's full queue turned away, to offer again.
struct Waiting {
    rec: Rec,
    pending: Box<Pending>,
}

/// Runs until [`Job::Stop`] or until every sender is gone, then flushes.
pub(crate) fn run(mut ctx: Ctx, jobs: Receiver<Job>) {
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    if let Some(c) = &ctx.cluster {
        let hello = Rec::Registry {
            key: cluster::node_key(c.me),
            value: Some(cluster::hello_value(c.incarnation)),
        };
        offer(&ctx, hello, Answer::Nobody, &mut waiting);
    }
    loop {
        let fatal = ctx.metrics.fatal_now();
        if fatal {
            ctx.rebuild();
        }
        let holding = ctx.cluster.as_ref().is_some_and(|c| !c.held.is_empty());
        if holding {
            expire_held(&mut ctx);
        }
        let job = if let Some(job) = release_held(&mut ctx) {
            Ok(job)
        } else if !waiting.is_empty() {
            jobs.recv_timeout(QUEUE_FULL_RETRY)
        } else if holding {
            jobs.recv_timeout(HELD_CHECK)
        } else if fatal {
            // A rebuild put off (at most one a second) is not left waiting
            // for a job.
            jobs.recv_timeout(REBUILD_AT_MOST_EVERY)
        } else {
            jobs.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        let (recs, ack) = match job {
            Ok(Job::Send { out, ack }) => match &mut ctx.cluster {
                Some(c) if !c.loaded => {
                    c.held.push_back((out, ack, Instant::now()));
                    continue;
                }
                _ => (plan(&mut ctx, out, true), Answer::Core(ack)),
            },
            Ok(Job::Loaded) => {
                if let Some(c) = &mut ctx.cluster {
                    c.loaded = true;
                }
                continue;
            }
            Ok(Job::Push { out, ack }) => (vec![Rec::Push(out)], Answer::Api(ack)),
            Ok(Job::Forward { out, ack }) => (plan(&mut ctx, out, false), Answer::Api(ack)),
            Ok(Job::HandOn { out, to, ack }) => (hand_on(&ctx, out, to), Answer::Api(ack)),
            Ok(Job::Interest(change)) => announce(&ctx, change),
            Ok(Job::View(u)) => {
                if let Some(c) = &mut ctx.cluster {
                    c.view.apply(u);
                    c.figures.nodes.store(c.view.nodes(), Relaxed);
                    c.figures.entries.store(c.view.entries(), Relaxed);
                }
                continue;
            }
            Ok(Job::Departures(d)) => {
                ctx.departures = Some(d);
                continue;
            }
            Ok(Job::Event(ev)) => {
                event(&ctx, ev);
                (Vec::new(), Answer::Nobody)
            }
            Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => (Vec::new(), Answer::Nobody),
        };
        match recs.len() {
            0 => ack.send(Produced::Done),
            1 => {
                let rec = recs.into_iter().next().expect("one record");
                offer(&ctx, rec, ack, &mut waiting);
            }
            n => {
                let gather = Arc::new(Gather {
                    left: AtomicUsize::new(n),
                    failure: Default::default(),
                    whole: std::sync::Mutex::new(Some(ack)),
                });
                for rec in recs {
                    offer(&ctx, rec, Answer::Part(gather.clone()), &mut waiting);
                }
            }
        }
        // Offer again what waits, oldest first, until the queue is full.
        while let Some(w) = waiting.pop_front() {
            let before = waiting.len();
            produce(&ctx, w, &mut waiting);
            if waiting.len() > before {
                // Put back at the front: it stays first in line.
                let w = waiting.pop_back().expect("just pushed");
                waiting.push_front(w);
                break;
            }
        }
    }
    // What waits is answered "abandoned" as it drops; every message
    // already handed to librdkafka gets its report (and its publisher its
    // answer, if the core still listens) before the end.
    drop(waiting);
    if let Some(c) = &ctx.cluster {
        // Gone: the other nodes stop sending here.
        let bye = Rec::Registry {
            key: cluster::node_key(c.me),
            value: None,
        };
        produce(
            &ctx,
            Waiting {
                rec: bye,
                pending: pending(Answer::Nobody),
            },
            &mut VecDeque::new(),
        );
    }
    if let Err(e) = ctx.producer.flush(FLUSH_TIMEOUT) {
        warn!(
            "Kafka: {} messages not flushed at shutdown: {e}",
            ctx.metrics.inflight.load(Relaxed)
        );
    }
}

fn pending(ack: Answer) -> Box<Pending> {
    Box::new(Pending {
        ack,
        started: Instant::now(),
    })
}

/// Hands a record to librdkafka, or queues it behind what already waits
/// (so a publisher's order holds).
fn offer(ctx: &Ctx, rec: Rec, ack: Answer, waiting: &mut VecDeque<Waiting>) {
    let w = Waiting {
        rec,
        pending: pending(ack),
    };
    if waiting.is_empty() {
        produce(ctx, w, waiting);
    } else {
        waiting.push_back(w);
    }
}

/// The records of one message: its route's (`routed`: a client's message,
/// when a route matches) and, with the cluster bus, one per other node
/// with interest, and the copies handed on for persistent sessions that
/// just left this node ([`departed`]). None: nothing leaves, and the
/// publisher is answered at once.
fn plan(ctx: &mut Ctx, out: Outgoing, routed: bool) -> Vec<Rec> {
    let mut recs = Vec::new();
    if let Some(c) = &mut ctx.cluster {
        if !out.msg.topic.starts_with('$') {
            let targets = c.view.targets(&out.msg.topic, out.msg.retain);
            if targets.is_empty() {
                c.figures.local_only.fetch_add(1, Relaxed);
            }
            for (node, shares) in targets {
                c.figures.forwarded.fetch_add(1, Relaxed);
                recs.push(Rec::Node {
                    out: out.clone(),
                    node,
                    shares,
                    to: None,
                });
            }
        }
    }
    if routed {
        departed(ctx, &out, &mut recs);
    }
    if routed && ctx.routes.find(&out.msg.topic).is_some() {
        recs.push(Rec::Route(out));
    }
    recs
}

/// A client message published here after a persistent session it
/// matches left this node (a takeover elsewhere, a fenced write): the
/// cores delivered it to nobody for that session, and the other nodes
/// route by a view that may not know the session's new node yet (until
/// they read its announcement). So it is handed on for that session, as
/// a copy consumed from the inbox would be (`Job::HandOn`), within
/// [`crate::bridge::departures::HAND_ON_MARGIN_MS`] of the departure. A
/// view that already knew the new node makes this a duplicate (at least
/// once).
fn departed(ctx: &Ctx, out: &Outgoing, recs: &mut Vec<Rec>) {
    let (Some(c), Some(d)) = (&ctx.cluster, &ctx.departures) else {
        return;
    };
    if out.msg.qos == QoS::AtMostOnce || out.msg.topic.starts_with('$') {
        return;
    }
    for session in d.claimants(&out.msg.topic, crate::wallclock::now_ms(), None) {
        c.figures.handed_on.fetch_add(1, Relaxed);
        recs.extend(hand_on(ctx, out.clone(), HandTo::Session(session)));
    }
}

/// The next client message held for the view, once the view is whole.
fn release_held(ctx: &mut Ctx) -> Option<Job> {
    let c = ctx.cluster.as_mut()?;
    if !c.loaded {
        return None;
    }
    let (out, ack, _) = c.held.pop_front()?;
    Some(Job::Send { out, ack })
}

/// Fails the client messages held for the view longer than the delivery
/// timeout (the interest topic cannot be read): their publishers are told,
/// as for a message Kafka did not take in time.
fn expire_held(ctx: &mut Ctx) {
    let timeout = ctx.delivery_timeout;
    let Some(c) = ctx.cluster.as_mut() else {
        return;
    };
    while c
        .held
        .front()
        .is_some_and(|(_, _, at)| at.elapsed() >= timeout)
    {
        if let Some((_, ack, _)) = c.held.pop_front() {
            ctx.metrics.timed_out.fetch_add(1, Relaxed);
            ack.send(Produced::Failed(OutboundError::TimedOut));
        }
    }
}

/// The records of a copy handed on (`Job::HandOn`): one per node up.
fn hand_on(ctx: &Ctx, out: Outgoing, to: HandTo) -> Vec<Rec> {
    let Some(c) = &ctx.cluster else {
        return Vec::new();
    };
    c.view
        .all_nodes()
        .map(|node| Rec::Node {
            out: out.clone(),
            node,
            shares: Vec::new(),
            to: Some(to.clone()),
        })
        .collect()
}

/// A core's interest change, as a record of the interest topic.
fn announce(ctx: &Ctx, change: InterestChange) -> (Vec<Rec>, Answer) {
    let ack = match change.confirm {
        Some(c) => Answer::Confirm(c),
        None => Answer::Nobody,
    };
    let Some(c) = &ctx.cluster else {
        return (Vec::new(), ack);
    };
    let rec = Rec::Registry {
        key: cluster::interest_key(c.me, change.core, &change.filter),
        value: change.on.then(|| "1".to_string()),
    };
    (vec![rec], ack)
}

/// What a record is made of.
struct Parts<'a> {
    topic: std::borrow::Cow<'a, str>,
    key: String,
    /// `None`: a tombstone.
    payload: Option<&'a [u8]>,
    headers: Option<OwnedHeaders>,
    /// Set for announcements (one partition keeps their order).
    partition: Option<i32>,
}

/// Hands one record to librdkafka; on a full queue it goes to the back
/// of `waiting` (or fails, past its delivery timeout).
fn produce(ctx: &Ctx, w: Waiting, waiting: &mut VecDeque<Waiting>) {
    let m = &ctx.metrics;
    let Waiting { rec, pending } = w;
    let Parts {
        topic,
        key,
        payload,
        headers,
        partition,
    } = match &rec {
        Rec::Route(out) => {
            let Some(route) = ctx.routes.find(&out.msg.topic) else {
                pending.ack.send(Produced::Failed(OutboundError::Refused(
                    "no route matches the topic".into(),
                )));
                return;
            };
            Parts {
                topic: route.topic.as_str().into(),
                key: route.key(out),
                payload: Some(&out.msg.payload[..]),
                headers: Some(headers(out, "publish", &ctx.node)),
                partition: None,
            }
        }
        // A push is keyed by its MQTT topic: one user's pushes keep their
        // order.
        Rec::Push(out) => Parts {
            topic: ctx.push_topic.as_str().into(),
            key: out.msg.topic.to_string(),
            payload: Some(&out.msg.payload[..]),
            headers: Some(headers(out, "push", &ctx.node)),
            partition: None,
        },
        Rec::Node {
            out,
            node,
            shares,
            to,
        } => {
            let c = ctx.cluster.as_ref().expect("node records need the cluster");
            let mut h = headers(out, "publish", &ctx.node);
            for s in shares {
                h = h.insert(Header {
                    key: "x-share",
                    value: Some(s.as_bytes()),
                });
            }
            let (me, sent);
            match to {
                Some(HandTo::Session(s)) => {
                    h = h.insert(Header {
                        key: TO_SESSION,
                        value: Some(s.as_bytes()),
                    });
                }
                Some(HandTo::Orphans { sent_ms }) => {
                    (me, sent) = (c.me.to_string(), sent_ms.to_string());
                    h = h
                        .insert(Header {
                            key: ORPHAN_OF,
                            value: Some(me.as_bytes()),
                        })
                        .insert(Header {
                            key: FIRST_SENT,
                            value: Some(sent.as_bytes()),
                        });
                }
                None => {}
            }
            // Keyed by publisher: its messages keep their order on the
            // receiving node's partition.
            let key = match out.client_id.as_deref() {
                Some(c) => c.to_string(),
                None => out.msg.topic.to_string(),
            };
            Parts {
                topic: c.config.topic_of(*node).into(),
                key,
                payload: Some(&out.msg.payload[..]),
                headers: Some(h),
                partition: None,
            }
        }
        // One partition: announcements keep their order.
        Rec::Registry { key, value } => {
            let c = ctx
                .cluster
                .as_ref()
                .expect("announcements need the cluster");
            Parts {
                topic: c.config.interest_topic.as_str().into(),
                key: key.clone(),
                payload: value.as_deref().map(str::as_bytes),
                headers: None,
                partition: Some(0),
            }
        }
    };
    let mut record = BaseRecord::with_opaque_to(&topic, pending).key(&key);
    if let Some(p) = payload {
        record = record.payload(p);
    }
    if let Some(h) = headers {
        record = record.headers(h);
    }
    if let Some(p) = partition {
        record = record.partition(p);
    }
    m.inflight.fetch_add(1, Relaxed);
    match ctx.producer.send(record) {
        Ok(()) => {}
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
            if back.delivery_opaque.started.elapsed() < ctx.delivery_timeout =>
        {
            m.inflight.fetch_sub(1, Relaxed);
            m.queue_full.fetch_add(1, Relaxed);
            let pending = back.delivery_opaque;
            waiting.push_back(Waiting { rec, pending });
        }
        Err((e, back)) => {
            m.inflight.fetch_sub(1, Relaxed);
            back.delivery_opaque
                .ack
                .send(failed(m, m.generation.load(Relaxed), e));
        }
    }
}

/// Produces one connection event; a full queue or a failure is counted
/// (events are at most once, and never wait behind client messages).
fn event(ctx: &Ctx, ev: ConnEvent) {
    let m = &ctx.metrics;
    let kind = match ev.kind {
        ConnEventKind::Connect => "connect",
        ConnEventKind::Disconnect => "disconnect",
    };
    let body = serde_json::json!({
        "event": kind,
        "client_id": &*ev.client_id,
        "username": ev.username.as_deref(),
        "node": ctx.node.parse::<u16>().unwrap_or_default(),
        "transport": ev.transport,
        "graceful": (ev.kind == ConnEventKind::Disconnect).then_some(ev.graceful),
        "at_ms": ev.at_ms,
    })
    .to_string();
    let mut h = OwnedHeaders::new_with_capacity(4)
        .insert(Header {
            key: "x-event",
            value: Some(kind),
        })
        .insert(Header {
            key: "x-client",
            value: Some(&*ev.client_id),
        })
        .insert(Header {
            key: "x-node",
            value: Some(&ctx.node),
        });
    if let Some(u) = ev.username.as_deref() {
        h = h.insert(Header {
            key: "x-uid",
            value: Some(u),
        });
    }
    let pending = Box::new(Pending {
        ack: Answer::Nobody,
        started: Instant::now(),
    });
    let record = BaseRecord::with_opaque_to(&ctx.events_topic, pending)
        .payload(&body)
        .key(&*ev.client_id)
        .headers(h);
    m.inflight.fetch_add(1, Relaxed);
    if let Err((e, _)) = ctx.producer.send(record) {
        m.inflight.fetch_sub(1, Relaxed);
        failed(m, m.generation.load(Relaxed), e);
    }
}

/// A delivery failure of producer `generation`, counted by kind.
fn failed(m: &Metrics, generation: u64, e: KafkaError) -> Produced {
    let timed_out = matches!(
        e,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::QueueFull
        )
    );
    let code = e.rdkafka_error_code();
    let fatal = code.is_some_and(ends_the_producer);
    // Purged: a producer dropped after a fatal error took it along.
    let purged = matches!(
        code,
        Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
    );
    if timed_out || fatal || purged {
        m.last_failed_ms.store(crate::wallclock::now_ms(), Relaxed);
    }
    if fatal {
        m.fatal(generation);
    }
    if timed_out {
        m.timed_out.fetch_add(1, Relaxed);
        debug!("Kafka: a message timed out: {e}");
        Produced::Failed(OutboundError::TimedOut)
    } else {
        m.refused.fetch_add(1, Relaxed);
        static REPEATS: Throttle = Throttle::new();
        if let Some(held_back) = REPEATS.admit() {
            warn!(
                held_back,
                "Kafka refused a message: {e} (tether_kafka_refused_total counts them)"
            );
        }
        Produced::Failed(OutboundError::Refused(e.to_string()))
    }
}

/// Errors after which an idempotent producer refuses every message: its
/// producer id or epoch is no longer the broker's. Only a new producer
/// gets past them.
fn ends_the_producer(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fatal
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::UnknownProducerId
            | RDKafkaErrorCode::OutOfOrderSequenceNumber
            | RDKafkaErrorCode::InvalidProducerIdMapping
    )
}
