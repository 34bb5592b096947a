//! A Kafka consumer's context, [`Seen`]: what its statistics and errors
//! say, for `/metrics` and `/readyz`. Every consumer of the
//! `tether-kafka-in` thread has one: the sources' and the inbox's
//! (`super`), and the interest topic's reader (`kafka::registry`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::Statistics;
use tracing::warn;

use crate::logging::Throttle;

/// The consumer's context: keeps what its statistics report (every
/// [`super::STATS_INTERVAL_MS`]) for `/metrics` and `/readyz`.
#[derive(Clone, Default)]
pub(crate) struct Seen(Arc<SeenInner>);

#[derive(Default)]
pub(crate) struct SeenInner {
    /// The last report listed no broker up.
    brokers_down: std::sync::atomic::AtomicBool,
    /// `(topic, partition, lag)` of the partitions this node consumes
    /// (librdkafka's `consumer_lag`: the high watermark less the committed
    /// offset), from the last report.
    lag: Mutex<Vec<(String, i32, i64)>>,
}

impl ClientContext for Seen {
    fn stats(&self, s: Statistics) {
        self.0.brokers_down.store(
            !crate::adapters::kafka::producer::any_broker_up(&s),
            Relaxed,
        );
        let mut lag: Vec<(String, i32, i64)> = s
            .topics
            .values()
            .flat_map(|t| {
                t.partitions
                    .values()
                    // -1: not this consumer's partition, or not known yet.
                    .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                    .map(|p| (t.topic.clone(), p.partition, p.consumer_lag))
            })
            .collect();
        lag.sort();
        *self.0.lag.lock().unwrap_or_else(|p| p.into_inner()) = lag;
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // The interest topic's reader asks for end-of-partition events to
        // know it has read everything; they are news, not errors.
        if matches!(error, rdkafka::error::KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        {
            return;
        }
        // A broker that is down reports every reconnect attempt; /readyz
        // and the statistics say it all along.
        static REPEATS: Throttle = Throttle::new();
        if let Some(held_back) = REPEATS.admit() {
            warn!(held_back, "librdkafka consumer: {error}: {reason}");
        }
    }
}

impl ConsumerContext for Seen {}

impl Seen {
    /// Whether the last report listed no broker up.
    pub(crate) fn brokers_down(&self) -> bool {
        self.0.brokers_down.load(Relaxed)
    }

    /// `(topic, partition, lag)` from the last report (a poisoned lock
    /// still holds plain figures).
    pub(crate) fn lag(&self) -> MutexGuard<'_, Vec<(String, i32, i64)>> {
        self.0.lag.lock().unwrap_or_else(|p| p.into_inner())
    }
}
