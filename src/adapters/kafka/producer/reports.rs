//! What comes back from librdkafka: delivery reports, answered on the
//! producer's poll thread ([`Reports::delivery`]) to whoever waits
//! ([`Answer`]), errors that end a producer, and the bridge's figures.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crate::bridge::oneshot;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::Statistics;
use tracing::{debug, warn};

use crate::bridge::outbound::{OutboundError, Produced};
use crate::bridge::ReplyTo;
use crate::logging::Throttle;
use crate::session::Confirm;
use crate::stats::Histogram;

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
    /// [`crate::adapters::kafka::STATS_INTERVAL_MS`]).
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
    /// Delivery receipts handed to librdkafka (`kafka.receipts_topic`).
    pub receipts: AtomicU64,
    /// Dead letters handed to librdkafka (`kafka.dead_letter_topic`).
    pub dead_letters: AtomicU64,
    /// Receipts handed to the node that holds the Upstream receipts
    /// stream they name.
    pub receipts_forwarded: AtomicU64,
    /// Receipts for another node's receipts stream, dropped: no cluster
    /// bus to reach it.
    pub receipts_unforwardable: AtomicU64,
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
    pub(super) fn send(self, p: Produced) {
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
    pub(super) left: AtomicUsize,
    pub(super) failure: std::sync::Mutex<Option<Produced>>,
    pub(super) whole: std::sync::Mutex<Option<Answer>>,
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
    pub(super) ack: Answer,
    pub(super) started: Instant,
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

/// A delivery failure of producer `generation`, counted by kind.
pub(super) fn failed(m: &Metrics, generation: u64, e: KafkaError) -> Produced {
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
