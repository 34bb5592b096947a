//! Reading the interest topic (`[kafka.cluster]`): every announcement, from
//! the first, goes to the producer thread's cluster view
//! ([`super::cluster`]). Runs on the `tether-kafka-in` thread beside the
//! sources' consumers; it commits nothing, so each start reads the whole
//! (compacted) topic again.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use crossbeam_channel::Sender;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tokio::sync::watch;
use tracing::{info, warn};

use super::cluster;
use super::consumer::seen::Seen;
use super::producer::Job;
use crate::logging::Throttle;

/// Reads announcements until told to stop. `loaded` turns true when the
/// end of the topic is first reached: the view is whole from then on.
pub(crate) async fn run(
    consumer: StreamConsumer<Seen>,
    jobs: Sender<Job>,
    loaded: Arc<AtomicBool>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut read = 0u64;
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            m = consumer.recv() => match m {
                Ok(m) => {
                    read += 1;
                    let Some(key) = m.key() else { continue };
                    if let Some(u) = cluster::parse(key, m.payload()) {
                        if jobs.send(Job::View(u)).is_err() {
                            return;
                        }
                    }
                }
                Err(KafkaError::PartitionEOF(_)) => {
                    if !loaded.swap(true, Relaxed) {
                        info!(announcements = read, "Kafka cluster: interest topic read");
                        // After every announcement read: the producer
                        // routes what it held by the whole view.
                        if jobs.send(Job::Loaded).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    static REPEATS: Throttle = Throttle::new();
                    if let Some(held_back) = REPEATS.admit() {
                        warn!(held_back, "Kafka cluster: reading the interest topic: {e}");
                    }
                }
            },
        }
    }
}
