//! The `tether-kafka` thread: owns the rdkafka producer. Cores queue
//! [`Job`]s on a channel and never wait; the thread turns each message into
//! a record and hands it to librdkafka, which batches, retries and keeps
//! order per partition (idempotence is on). Delivery reports are answered
//! where librdkafka reports them, in [`Reports::delivery`] on the
//! producer's poll thread: no task, future or wake-up per message here (a
//! `FutureProducer` cost a spawned task, a oneshot and a cross-thread wake
//! per message, 40 % of this thread's time; bench/RESULTS.md).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::Statistics;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::routes::{headers, Routes};
use crate::bridge::outbound::{ConnEvent, ConnEventKind, OutboundError, Outgoing, Produced};
use crate::bridge::ReplyTo;
use crate::stats::Histogram;

/// Pause before offering messages again to a full librdkafka queue.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(10);
/// How long the thread waits, when it stops, for what is in flight.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Produce one connection event to `kafka.events_topic`.
    Event(ConnEvent),
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
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
    /// The HTTP API, for a push.
    Api(oneshot::Sender<Produced>),
    /// Nobody (a connection event): only the figures count it.
    Nobody,
}

impl Answer {
    fn send(self, p: Produced) {
        match self {
            Answer::Core(r) => r.send(p),
            // A handler that gave up does not need the answer.
            Answer::Api(tx) => drop(tx.send(p)),
            Answer::Nobody => {}
        }
    }
}

/// What travels with a record through librdkafka and comes back with its
/// delivery report.
pub(crate) struct Pending {
    ack: Answer,
    started: Instant,
}

/// The producer's context: answers delivery reports on librdkafka's poll
/// thread.
pub(crate) struct Reports {
    pub metrics: Arc<Metrics>,
}

impl ClientContext for Reports {
    fn stats(&self, s: Statistics) {
        self.metrics.brokers_down.store(!any_broker_up(&s), Relaxed);
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
                m.last_ok_ms.store(now_ms(), Relaxed);
                m.latency
                    .observe(pending.started.elapsed().as_micros() as u64);
                Produced::Done
            }
            Err((e, _)) => failed(m, e.clone()),
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
    /// This node's id, as the `x-node` header writes it.
    pub node: String,
    pub delivery_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

/// A message librdkafka's full queue turned away, to offer again.
struct Waiting {
    out: Outgoing,
    push: bool,
    pending: Box<Pending>,
}

/// Runs until [`Job::Stop`] or until every sender is gone, then flushes.
pub(crate) fn run(ctx: Ctx, jobs: Receiver<Job>) {
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    loop {
        let job = if waiting.is_empty() {
            jobs.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            jobs.recv_timeout(QUEUE_FULL_RETRY)
        };
        let job = match job {
            Ok(Job::Send { out, ack }) => Some((out, false, Answer::Core(ack))),
            Ok(Job::Push { out, ack }) => Some((out, true, Answer::Api(ack))),
            Ok(Job::Event(ev)) => {
                event(&ctx, ev);
                None
            }
            Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => None,
        };
        if let Some((out, push, ack)) = job {
            let pending = Box::new(Pending {
                ack,
                started: Instant::now(),
            });
            let w = Waiting { out, push, pending };
            if waiting.is_empty() {
                produce(&ctx, w, &mut waiting);
            } else {
                // Behind what waits, so a publisher's order holds.
                waiting.push_back(w);
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
    if let Err(e) = ctx.producer.flush(FLUSH_TIMEOUT) {
        warn!(
            "Kafka: {} messages not flushed at shutdown: {e}",
            ctx.metrics.inflight.load(Relaxed)
        );
    }
}

/// Hands one message to librdkafka; on a full queue it goes to the back
/// of `waiting` (or fails, past its delivery timeout).
fn produce(ctx: &Ctx, w: Waiting, waiting: &mut VecDeque<Waiting>) {
    let m = &ctx.metrics;
    let Waiting { out, push, pending } = w;
    // A push is keyed by its MQTT topic: one user's pushes keep their order.
    let (topic, key, event) = if push {
        (ctx.push_topic.as_str(), out.msg.topic.to_string(), "push")
    } else {
        let Some(route) = ctx.routes.find(&out.msg.topic) else {
            pending.ack.send(Produced::Failed(OutboundError::Refused(
                "no route matches the topic".into(),
            )));
            return;
        };
        (route.topic.as_str(), route.key(&out), "publish")
    };
    let record = BaseRecord::with_opaque_to(topic, pending)
        .payload(&out.msg.payload[..])
        .key(&key)
        .headers(headers(&out, event, &ctx.node));
    m.inflight.fetch_add(1, Relaxed);
    match ctx.producer.send(record) {
        Ok(()) => {}
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
            if back.delivery_opaque.started.elapsed() < ctx.delivery_timeout =>
        {
            m.inflight.fetch_sub(1, Relaxed);
            m.queue_full.fetch_add(1, Relaxed);
            let pending = back.delivery_opaque;
            waiting.push_back(Waiting { out, push, pending });
        }
        Err((e, back)) => {
            m.inflight.fetch_sub(1, Relaxed);
            back.delivery_opaque.ack.send(failed(m, e));
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
        failed(m, e);
    }
}

/// A delivery failure, counted by kind.
fn failed(m: &Metrics, e: KafkaError) -> Produced {
    let timed_out = matches!(
        e,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::QueueFull
        )
    );
    if timed_out {
        m.timed_out.fetch_add(1, Relaxed);
        debug!("Kafka: a message timed out: {e}");
        Produced::Failed(OutboundError::TimedOut)
    } else {
        m.refused.fetch_add(1, Relaxed);
        warn!("Kafka refused a message: {e}");
        Produced::Failed(OutboundError::Refused(e.to_string()))
    }
}
