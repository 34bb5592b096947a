//! The Kafka bridge (`[kafka]`): client messages that match a route leave
//! for Kafka through the outbound seam, and with `ack = "kafka"` their
//! publishers are acknowledged only once Kafka's delivery report says the
//! record is stored. Records of the sources' topics come back in as MQTT
//! messages, committed only once the cores accepted them.
//!
//! | file | concern |
//! | --- | --- |
//! | `mod.rs` | [`KafkaOutbound`], the seam's implementation, and its setup |
//! | `routes.rs` | the routes: matching, record keys, headers |
//! | `producer.rs` | the `tether-kafka` thread and its figures |
//! | `consumer.rs` | [`KafkaInbound`]: the `tether-kafka-in` thread, sources' records to MQTT, at least once |
//! | `cluster.rs` | the cluster view: who subscribed to what, and where a message goes |
//! | `registry.rs` | reading the interest topic into the view |
//! | `receipt_body.rs` | a delivery receipt as a record's JSON body |

mod cluster;
mod consumer;
mod producer;
mod receipt_body;
mod registry;
mod routes;

use std::sync::Arc;

use crossbeam_channel::{unbounded, Sender};
use rdkafka::config::ClientConfig;

use crate::adapters::thread::Worker;
use crate::bridge::outbound::{
    LabelledGauge, Outbound, OutboundPolicy, Outgoing, Produced, PushReceipt, PushRefused,
};
use crate::bridge::ReplyTo;
use crate::bridge::{oneshot, PublishRequest};
use crate::config::Config;
use crate::error::{Classify, Origin};
use crate::session::{Message, ReceiptSink, Receipts};
use crate::stats::{Figure, Histogram};
pub use consumer::KafkaInbound;
use producer::{Job, Metrics};
pub use routes::Routes;

/// librdkafka's own queue, in messages: above what every core may have in
/// flight (`runtime.max_outbound_inflight` each), so it never refuses a
/// message the cores' bound let through.
const MIN_LIBRDKAFKA_QUEUE: usize = 100_000;
/// librdkafka's `statistics.interval.ms`: how often the producer and the
/// consumer report broker states and consumer lag (`/readyz`, `/metrics`).
/// A report costs a JSON document per interval.
pub(crate) const STATS_INTERVAL_MS: u32 = 1000;
/// With messages in flight and no acknowledgement from Kafka for this
/// long, `/readyz` reports the producer stuck (a hung broker keeps its
/// connections up, so broker states alone do not show it).
const STUCK_AFTER_MS: u64 = 5000;
/// How long a message that timed out (or met a fatal error), with none
/// acknowledged since, keeps `/readyz` degraded: long enough for a
/// balancer's health checks to see it, short enough that a node without
/// traffic to prove Kafka works again does not stay out for long.
const FAILED_RECENTLY_MS: u64 = 60_000;
/// The header of a copy handed on for one persistent session (the
/// client id): the receiving node delivers it to that session only.
pub(crate) const TO_SESSION: &str = "x-to-session";
/// The header of a copy handed on by a node that restarted, for the
/// sessions that came from its earlier life (its node id; with
/// [`FIRST_SENT`]): `session::Scope::Orphan`.
pub(crate) const ORPHAN_OF: &str = "x-orphan-of";
/// When an orphan's first copy was sent, ms since the Unix epoch.
pub(crate) const FIRST_SENT: &str = "x-first-sent";
/// The header of a message whose publisher named an Upstream receipts
/// stream (`session::ReceiptsTo::encode`: `{node}/{stream}`): every node
/// that delivers it hands its receipts to that node.
pub(crate) const RECEIPTS_TO: &str = "x-receipts-to";
/// The header of a receipt handed to the node that holds the receipts
/// stream it names (a record on that node's cluster inbox, with a
/// `receipt_body` JSON body).
pub(crate) const RECEIPT_FOR: &str = "x-receipt-for";

/// Whom a copy handed on to every node is for (`producer::Job::HandOn`).
#[derive(Clone, Debug)]
pub(crate) enum HandTo {
    /// One persistent session that left this node (`x-to-session`).
    Session(Arc<str>),
    /// The persistent sessions that this node's earlier life held: a copy
    /// sent to it at `sent_ms`, before it restarted (`x-orphan-of`).
    Orphans { sent_ms: u64 },
}

/// The producer thread as a message's receipt sink.
struct ReceiptJobs(crossbeam_channel::Sender<Job>);

impl ReceiptSink for ReceiptJobs {
    fn receipt(&self, r: crate::session::Receipt) {
        let _ = self.0.send(Job::Receipt(r));
    }
}

/// The Kafka producer behind the outbound seam.
pub struct KafkaOutbound {
    routes: Routes,
    /// `kafka.brokers`, for `/readyz`.
    brokers: String,
    /// `kafka.push_topic` (empty: the API publishes locally).
    push_topic: String,
    /// Whether `kafka.receipts_topic` or `kafka.dead_letter_topic` is set.
    receipts: bool,
    /// Whether `kafka.events_topic` is set.
    events: bool,
    /// Whether the cluster bus (`[kafka.cluster]`) is on.
    cluster: bool,
    /// The cluster view's figures.
    cluster_figures: Arc<producer::ClusterFigures>,
    /// Sequence of the API's pushes (their ids).
    push_seq: std::sync::atomic::AtomicU64,
    /// When the bridge started, ms since the Unix epoch (the producer is
    /// not "stuck" before it had a chance).
    started_ms: u64,
    /// The sources' consumer, when there are sources.
    inbound: Option<KafkaInbound>,
    jobs: Sender<Job>,
    metrics: Arc<Metrics>,
    /// The `tether-kafka` thread, joined by [`Outbound::stop`].
    thread: Worker,
}

/// Why the Kafka bridge could not start.
#[derive(Debug)]
pub enum KafkaSetupError {
    /// librdkafka refused the producer's configuration.
    Config(String),
    /// The bridge's thread could not start.
    Thread(std::io::Error),
}

impl std::fmt::Display for KafkaSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KafkaSetupError::Config(why) => write!(
                f,
                "the Kafka producer's configuration is refused: {why} (check kafka.brokers and kafka.producer)"
            ),
            KafkaSetupError::Thread(e) => write!(f, "the Kafka thread cannot start: {e}"),
        }
    }
}

impl std::error::Error for KafkaSetupError {}

impl Classify for KafkaSetupError {
    fn origin(&self) -> Origin {
        match self {
            KafkaSetupError::Config(_) => Origin::Config,
            KafkaSetupError::Thread(_) => Origin::Internal,
        }
    }
}

impl KafkaOutbound {
    /// Builds the producer from `[kafka]` and starts its thread. Brokers
    /// need not be reachable yet: librdkafka connects and reconnects on
    /// its own, and messages wait (up to `kafka.delivery_timeout_ms`).
    pub fn new(cfg: &Config) -> Result<KafkaOutbound, KafkaSetupError> {
        let k = &cfg.kafka;
        let queue = MIN_LIBRDKAFKA_QUEUE.max(cfg.cores() * cfg.runtime.max_outbound_inflight * 2);
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &k.brokers)
            .set("client.id", format!("tether-n{}", cfg.node.id))
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", k.delivery_timeout_ms.to_string())
            .set("queue.buffering.max.messages", queue.to_string())
            .set("statistics.interval.ms", STATS_INTERVAL_MS.to_string());
        for (key, value) in &k.producer {
            cc.set(key, value);
        }
        let metrics = Arc::new(Metrics::default());
        let producer =
            producer::make(&cc, &metrics).map_err(|e| KafkaSetupError::Config(e.to_string()))?;
        let routes = Routes::new(&k.route);
        let cluster_figures = Arc::new(producer::ClusterFigures::default());
        let cluster = k.cluster.enabled().then(|| producer::Cluster {
            config: k.cluster.clone(),
            me: cfg.node.id,
            incarnation: crate::wallclock::now_ms(),
            view: cluster::ClusterView::new(cfg.node.id),
            figures: cluster_figures.clone(),
            loaded: false,
            held: Default::default(),
            greeted: false,
            unannounced: Default::default(),
        });
        let ctx = producer::Ctx {
            producer,
            routes: routes.clone(),
            push_topic: k.push_topic.clone(),
            events_topic: k.events_topic.clone(),
            receipts_topic: k.receipts_topic.clone(),
            dead_letter_topic: k.dead_letter_topic.clone(),
            cluster,
            node: cfg.node.id.to_string(),
            delivery_timeout: std::time::Duration::from_millis(k.delivery_timeout_ms),
            metrics: metrics.clone(),
            config: cc,
            rebuilt: None,
            departures: None,
            adoption: None,
        };
        let (jobs, rx) = unbounded();
        let thread = Worker::spawn("tether-kafka", move || producer::run(ctx, rx))
            .map_err(KafkaSetupError::Thread)?;
        Ok(KafkaOutbound {
            inbound: KafkaInbound::new(cfg, jobs.clone())?,
            cluster: k.cluster.enabled(),
            cluster_figures,
            routes,
            brokers: k.brokers.clone(),
            push_topic: k.push_topic.clone(),
            events: !k.events_topic.is_empty(),
            receipts: !k.receipts_topic.is_empty() || !k.dead_letter_topic.is_empty(),
            push_seq: std::sync::atomic::AtomicU64::new(0),
            started_ms: crate::wallclock::now_ms(),
            jobs,
            metrics,
            thread,
        })
    }
}

impl Outbound for KafkaOutbound {
    fn policy(&self, topic: &str) -> OutboundPolicy {
        if self.cluster && !topic.starts_with('$') {
            // Other nodes may want it: the thread knows which, and answers
            // at once when none does.
            return OutboundPolicy::Confirm;
        }
        self.routes.policy(topic)
    }

    fn wants_interest(&self) -> bool {
        self.cluster
    }

    fn interest(&self, change: crate::bridge::outbound::InterestChange) {
        // A stopped thread drops it (and a SUBACK's share with it: the
        // gateway is stopping).
        let _ = self.jobs.send(Job::Interest(change));
    }

    fn send(&self, out: Outgoing, ack: ReplyTo<Produced>) {
        // A stopped thread drops the job, and the dropped `ack` answers
        // "abandoned".
        let _ = self.jobs.send(Job::Send { out, ack });
    }

    fn start(&self, bridge: Arc<crate::bridge::Bridge>) -> Result<(), String> {
        if self.cluster {
            // Before any core runs: the cores start after the bridge.
            let _ = self.jobs.send(Job::Start {
                departures: bridge.departures.clone(),
                adoption: bridge.adoption.clone(),
            });
        }
        match &self.inbound {
            Some(i) => i.start(bridge).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    fn stop(&self) {
        // Records first (what the cores accepted is committed), then the
        // producer (what is in flight gets its report).
        if let Some(i) = &self.inbound {
            i.stop();
        }
        let _ = self.jobs.send(Job::Stop);
        self.thread.join();
    }

    fn figures(&self) -> Vec<Figure> {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.metrics;
        let inbound = self
            .inbound
            .as_ref()
            .map(|i| i.figures())
            .unwrap_or_default();
        let mut figures = vec![
            ("kafka_inflight", "Messages handed to Kafka and not yet acknowledged.", m.inflight.load(Relaxed) as u64, false),
            ("kafka_produced", "Messages Kafka acknowledged.", m.produced.load(Relaxed), true),
            ("kafka_timed_out", "Messages not acknowledged within kafka.delivery_timeout_ms (their publishers were told).", m.timed_out.load(Relaxed), true),
            ("kafka_refused", "Messages Kafka refused (too large, unknown topic, not authorized, ...).", m.refused.load(Relaxed), true),
            ("kafka_queue_full", "Times a message met librdkafka's full queue and was offered again.", m.queue_full.load(Relaxed), true),
            ("kafka_producer_rebuilds", "New producers made after a fatal error (a broker fenced the producer id, e.g. after a hang past kafka.delivery_timeout_ms).", m.rebuilds.load(Relaxed), true),
            ("kafka_receipts", "Delivery receipts handed to Kafka (kafka.receipts_topic).", m.receipts.load(Relaxed), true),
            ("kafka_dead_letters", "Messages that will not reach a client handed to kafka.dead_letter_topic.", m.dead_letters.load(Relaxed), true),
            ("kafka_receipts_forwarded", "Delivery receipts handed over the cluster bus to the node whose Upstream receipts stream they name.", m.receipts_forwarded.load(Relaxed), true),
            ("kafka_receipts_unforwardable", "Delivery receipts for another node's Upstream receipts stream dropped: no cluster bus ([kafka.cluster]) to reach it.", m.receipts_unforwardable.load(Relaxed), true),
        ];
        figures.extend(inbound);
        if self.cluster {
            let c = &self.cluster_figures;
            figures.extend([
                (
                    "kafka_cluster_nodes",
                    "Nodes up in the cluster, as their announcements say (this one included).",
                    c.nodes.load(Relaxed) as u64,
                    false,
                ),
                (
                    "kafka_cluster_interest_entries",
                    "Interest announcements (filter, node, core) held in the cluster view.",
                    c.entries.load(Relaxed) as u64,
                    false,
                ),
                (
                    "kafka_cluster_forwarded",
                    "Copies of messages produced to other nodes' topics.",
                    c.forwarded.load(Relaxed),
                    true,
                ),
                (
                    "kafka_cluster_local_only",
                    "Messages no other node had subscribers for (nothing produced).",
                    c.local_only.load(Relaxed),
                    true,
                ),
                (
                    "kafka_cluster_published_handed_on",
                    "Messages published here handed on to every node for a persistent session that had just left this node (one per session).",
                    c.handed_on.load(Relaxed),
                    true,
                ),
            ]);
        }
        figures
    }

    fn push(&self, req: PublishRequest) -> Result<PushReceipt, PushRefused> {
        if self.push_topic.is_empty() {
            return Err(PushRefused::NotCarried(req));
        }
        // Checked here, where the API can still say so; every node's
        // authorizer still decides on delivery.
        crate::codec::topic::validate_name(&req.topic).map_err(PushRefused::TopicInvalid)?;
        let id = crate::id::Minter::Push.id(self
            .push_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let receipts = (req.receipts && self.receipts) || req.receipts_to.is_some();
        let to = req.receipts_to.clone();
        let mut msg = Message::new(id, req.into_publication(), std::time::Instant::now());
        if receipts {
            // Marks the record (`x-receipts: 1`, and `x-receipts-to`): each
            // node that delivers it reports to its own sink.
            msg.receipts = Some(Receipts {
                sink: Arc::new(ReceiptJobs(self.jobs.clone())),
                id,
                to,
            });
        }
        let (tx, rx) = oneshot::channel();
        let out = Outgoing {
            msg: Arc::new(msg),
            client_id: None,
            username: None,
        };
        // A stopped thread drops the job, and the dropped sender answers.
        let _ = self.jobs.send(Job::Push { out, ack: tx });
        Ok((id, rx))
    }

    fn receipts(&self) -> bool {
        self.receipts
    }

    fn receipt(&self, r: crate::session::Receipt) {
        // A stopped thread drops it: receipts are at most once.
        let _ = self.jobs.send(Job::Receipt(r));
    }

    fn event(&self, ev: crate::bridge::outbound::ConnEvent) {
        if self.events {
            // A stopped thread drops it: events are at most once.
            let _ = self.jobs.send(Job::Event(ev));
        }
    }

    fn labelled(&self) -> Vec<LabelledGauge> {
        self.inbound.as_ref().map(|i| i.lag()).into_iter().collect()
    }

    fn degraded(&self) -> Vec<String> {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.metrics;
        let mut out = Vec::new();
        if m.brokers_down.load(Relaxed) {
            out.push(format!(
                "kafka producer: no broker is up ({})",
                self.brokers
            ));
        }
        let inflight = m.inflight.load(Relaxed);
        let last = m.last_ok_ms.load(Relaxed).max(self.started_ms);
        let now = crate::wallclock::now_ms();
        let quiet = now.saturating_sub(last);
        if inflight > 0 && quiet >= STUCK_AFTER_MS {
            out.push(format!(
                "kafka producer: {inflight} messages in flight and no acknowledgement for {} s",
                quiet / 1000
            ));
        }
        // Nothing in flight, but the last message failed and none went
        // through since: Kafka is not taking messages (a broker that hangs
        // keeps its connections up, so the statistics still say "up").
        let failed = m.last_failed_ms.load(Relaxed);
        if failed > last && now.saturating_sub(failed) < FAILED_RECENTLY_MS {
            out.push(format!(
                "kafka producer: a message failed {} s ago (timed out or refused for good) and none was acknowledged since",
                now.saturating_sub(failed) / 1000
            ));
        }
        if m.fatal_now() {
            out.push("kafka producer: fatal error, making a new producer".into());
        }
        if let Some(i) = &self.inbound {
            out.extend(i.degraded());
        }
        out
    }

    fn latency(&self) -> Option<&Histogram> {
        Some(&self.metrics.latency)
    }
}

impl Drop for KafkaOutbound {
    fn drop(&mut self) {
        self.stop();
    }
}
