//! The `tether-kafka` thread: a current-thread tokio runtime that owns the
//! rdkafka producer. Cores queue [`Job`]s and never wait; each message is
//! produced as soon as it arrives, and its delivery report answers the
//! core through the message's `ReplyTo`. librdkafka batches, retries and
//! keeps order per partition (idempotence is on); this thread only turns
//! its answers into the outbound seam's.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, warn};

use super::routes::{headers, Routes};
use crate::bridge::outbound::{OutboundError, Outgoing, Produced};
use crate::bridge::ReplyTo;
use crate::stats::Histogram;

/// Pause before offering a message again to a full librdkafka queue.
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
    /// Flush and stop.
    Stop,
}

/// The bridge's figures (written by its thread, read by `/metrics`).
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
}

/// What the thread's tasks share.
pub(crate) struct Ctx {
    pub producer: FutureProducer,
    pub routes: Routes,
    pub node: u16,
    pub delivery_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

/// Runs until [`Job::Stop`] or until every sender is gone, then flushes.
pub(crate) async fn run(ctx: Rc<Ctx>, mut jobs: UnboundedReceiver<Job>) {
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Send { out, ack } => {
                tokio::task::spawn_local(produce(ctx.clone(), out, ack));
            }
            Job::Stop => break,
        }
    }
    // Every message already handed to librdkafka gets its report (and its
    // publisher its answer, if the core still listens) before the end.
    if let Err(e) = ctx.producer.flush(FLUSH_TIMEOUT) {
        warn!(
            "Kafka: {} messages not flushed at shutdown: {e}",
            ctx.metrics.inflight.load(Relaxed)
        );
    }
    let deadline = Instant::now() + FLUSH_TIMEOUT;
    while ctx.metrics.inflight.load(Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(QUEUE_FULL_RETRY).await;
    }
}

/// Produces one message and answers its publisher's core.
async fn produce(ctx: Rc<Ctx>, out: Outgoing, ack: ReplyTo<Produced>) {
    let Some(route) = ctx.routes.find(&out.msg.topic) else {
        ack.send(Produced::Failed(OutboundError::Refused(
            "no route matches the topic".into(),
        )));
        return;
    };
    let key = route.key(&out);
    let started = Instant::now();
    let deadline = started + ctx.delivery_timeout;
    let m = &ctx.metrics;
    m.inflight.fetch_add(1, Relaxed);
    let mut record = FutureRecord::to(&route.topic)
        .payload(&out.msg.payload[..])
        .key(&key)
        .headers(headers(&out, "publish", ctx.node));
    let answer = loop {
        match ctx.producer.send_result(record) {
            Ok(delivery) => {
                break match delivery.await {
                    Ok(Ok(_)) => {
                        m.produced.fetch_add(1, Relaxed);
                        m.latency.observe(started.elapsed().as_micros() as u64);
                        Produced::Done
                    }
                    Ok(Err((e, _))) => failed(m, e),
                    // The producer went away (shutdown).
                    Err(_) => Produced::Failed(OutboundError::Abandoned),
                };
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if Instant::now() < deadline =>
            {
                m.queue_full.fetch_add(1, Relaxed);
                record = back;
                tokio::time::sleep(QUEUE_FULL_RETRY).await;
            }
            Err((e, _)) => break failed(m, e),
        }
    };
    m.inflight.fetch_sub(1, Relaxed);
    ack.send(answer);
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
