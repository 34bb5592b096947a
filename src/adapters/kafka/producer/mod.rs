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
//!
//! | file | concern |
//! | --- | --- |
//! | `mod.rs` | the thread: jobs, the loop, records handed to librdkafka, connection events |
//! | `routing.rs` | where a message's records go (route, nodes by the cluster view, copies handed on, messages held until the view is whole) |
//! | `reports.rs` | delivery reports and who waits for them, errors that end a producer, the figures |
//! | `receipts.rs` | delivery receipts and dead letters |

mod receipts;
mod reports;
mod routing;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bridge::oneshot;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use tracing::warn;

pub(crate) use reports::{any_broker_up, KafkaProducer, Metrics};
use reports::{failed, Answer, Gather, Pending, Reports};
use routing::{announce, expire_held, hand_on, plan, release_held};
pub(crate) use routing::{Cluster, ClusterFigures};

use super::cluster::{self, Update};
use super::routes::{headers, Routes};
use super::{HandTo, FIRST_SENT, ORPHAN_OF, TO_SESSION};
use crate::bridge::adoption::Adoption;
use crate::bridge::departures::Departures;
use crate::bridge::outbound::{
    ConnEvent, ConnEventKind, InterestChange, OutboundError, Outgoing, Produced,
};
use crate::bridge::ReplyTo;

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
        /// The node the session went to, not yet seen interested in
        /// copies for it: the view is looked at (`routing::watch`).
        watch: Option<u16>,
        /// The consuming task.
        ack: oneshot::Sender<Produced>,
    },
    /// Produce one connection event to `kafka.events_topic`.
    Event(ConnEvent),
    /// Produce one delivery receipt (and its dead letter, if any).
    Receipt(crate::session::Receipt),
    /// Announce a core's interest change on the interest topic.
    Interest(InterestChange),
    /// An announcement read from the interest topic, for the view.
    View(Update),
    /// What the thread needs of the bridge, once it exists: the node's
    /// departed sessions (`bridge::departures`: messages published here
    /// for a session that just left are handed on), and the adoption of
    /// its earlier life's sessions, which the hello waits for
    /// (`bridge::adoption`).
    Start {
        /// The node's departed sessions.
        departures: Arc<Departures>,
        /// The adoption's gate.
        adoption: Arc<Adoption>,
    },
    /// The interest topic was read to its end: the view is whole.
    Loaded,
    /// Flush and stop.
    Stop,
}

/// What the thread owns.
pub(crate) struct Ctx {
    pub producer: KafkaProducer,
    pub routes: Routes,
    /// `kafka.push_topic` (empty: pushes are not produced).
    pub push_topic: String,
    /// `kafka.events_topic` (empty: no connection events).
    pub events_topic: String,
    /// `kafka.receipts_topic` (empty: no receipts).
    pub receipts_topic: String,
    /// `kafka.dead_letter_topic` (empty: no dead letters).
    pub dead_letter_topic: String,
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
    /// See [`Job::Start`].
    pub departures: Option<Arc<Departures>>,
    /// See [`Job::Start`].
    pub adoption: Option<Arc<Adoption>>,
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

/// Whether the node's hello is due now: not said yet, the adoption of its
/// earlier life's sessions is over (`bridge::adoption`), and the nodes
/// that took that life's other sessions while it was down are seen
/// announcing them (`Departures::awaiting`, judged once the view is
/// whole); or the adoption's deadline passed. Until then the other nodes
/// go on routing by what the earlier life announced, which is what both
/// kinds of sessions want (copies for the departed ones are handed on);
/// the hello voids that, and the interest changes held meanwhile follow
/// it (`release_held`).
fn say_hello(ctx: &Ctx) -> bool {
    let (Some(c), Some(adoption)) = (&ctx.cluster, &ctx.adoption) else {
        return false;
    };
    if c.greeted || !adoption.open() {
        return false;
    }
    let Some(departures) = ctx.departures.as_ref().filter(|d| !d.is_empty()) else {
        return true;
    };
    if adoption.overdue() {
        return true;
    }
    let now = crate::wallclock::now_ms();
    c.loaded && !departures.awaiting(|node, f| c.view.announces(node, f), now)
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
    loop {
        if say_hello(&ctx) {
            if let Some(c) = &mut ctx.cluster {
                c.greeted = true;
                let hello = Rec::Registry {
                    key: cluster::node_key(c.me),
                    value: Some(cluster::hello_value(c.incarnation)),
                };
                offer(&ctx, hello, Answer::Nobody, &mut waiting);
            }
        }
        let fatal = ctx.metrics.fatal_now();
        if fatal {
            ctx.rebuild();
        }
        let holding = ctx
            .cluster
            .as_ref()
            .is_some_and(|c| !c.held.is_empty() || !c.greeted);
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
            Ok(Job::HandOn {
                out,
                to,
                watch,
                ack,
            }) => {
                routing::watch(&ctx, &out, &to, watch);
                (hand_on(&ctx, out, to), Answer::Api(ack))
            }
            Ok(Job::Interest(change)) => match &mut ctx.cluster {
                // Said before the hello, it would be voided by it.
                Some(c) if !c.greeted => {
                    c.unannounced.push_back(change);
                    continue;
                }
                _ => announce(&ctx, change),
            },
            Ok(Job::View(u)) => {
                tracing::debug!(update = ?u, "cluster view");
                if let Some(c) = &mut ctx.cluster {
                    c.view.apply(u);
                    c.figures.nodes.store(c.view.nodes(), Relaxed);
                    c.figures.entries.store(c.view.entries(), Relaxed);
                }
                continue;
            }
            Ok(Job::Start {
                departures,
                adoption,
            }) => {
                ctx.departures = Some(departures);
                ctx.adoption = Some(adoption);
                continue;
            }
            Ok(Job::Event(ev)) => {
                event(&ctx, ev);
                (Vec::new(), Answer::Nobody)
            }
            Ok(Job::Receipt(r)) => {
                receipts::receipt(&ctx, r);
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
