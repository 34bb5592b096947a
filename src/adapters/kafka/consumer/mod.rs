//! The `tether-kafka-in` thread: consumes the sources' topics and turns
//! each record into an MQTT message through the bridge inboxes, as a
//! publish from [`Source::Bridge`](crate::id::Source::Bridge) (the authorizer sees it; it never goes
//! back out to Kafka).
//!
//! Here: the consumers a node runs (sources, the cluster inbox, the
//! interest topic), their context and figures. `records.rs`: what a record
//! becomes. `offers.rs`: how records reach the cores, in order and at
//! least once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use crossbeam_channel::Sender;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::info;

use super::producer::Job;
use super::KafkaSetupError;
use crate::adapters::thread::{runtime, Worker};
use crate::bridge::outbound::LabelledGauge;
use crate::bridge::Bridge;
use crate::codec::QoS;
use crate::config::{Config, SourceConfig, SourceFanout, SourceTarget, Template};
use crate::stats::Figure;

mod inbox;
mod offers;
mod offsets;
mod records;
pub(crate) mod seen;

use offers::run;
use offsets::{Offsets, OnGap};
use seen::Seen;

/// librdkafka's `fetch.wait.max.ms`: how long a fetch may wait at the
/// broker for records. librdkafka's 500 ms is for throughput; a push waits
/// for it whenever the broker holds fetches for the full wait (tansu
/// does), so Tether asks for 100 ms: a fetch per 100 ms per broker when
/// idle. `[kafka.consumer]` can set it.
const FETCH_WAIT_MAX_MS: u32 = 100;
/// One `[[kafka.source]]`, ready to map records.
struct SourceRule {
    target: SourceTarget,
    from: Template,
    qos: QoS,
    skip_own: bool,
    kind: RuleKind,
    /// Every record asks for delivery receipts (`receipts = true`).
    receipts: bool,
}

/// What else a source's records need besides local delivery.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RuleKind {
    /// Nothing (broadcast sources and the push topic).
    Local,
    /// This node's inbox of the cluster bus: serve only the groups the
    /// sending node named (`x-share`).
    Inbox,
    /// An owner-mode source: forward to the other nodes with interest too.
    Owner,
}

/// The consumer's figures.
#[derive(Default)]
pub(crate) struct InMetrics {
    /// Records read from Kafka.
    pub consumed: AtomicU64,
    /// Records the cores accepted.
    pub delivered: AtomicU64,
    /// Records this node produced itself, passed over (`skip_own`).
    pub skipped_own: AtomicU64,
    /// Records that could not become a message (a header or key the
    /// template needs is missing, an invalid topic, a denied publish).
    pub undeliverable: AtomicU64,
    /// Times a busy core was asked again.
    pub busy_retries: AtomicU64,
    /// Cluster inbox records from before this process started, passed over.
    pub stale: AtomicU64,
    /// Cluster inbox records from before this process started, handed on
    /// to every node for the persistent sessions of the node's earlier
    /// life.
    pub orphans: AtomicU64,
    /// Copies handed on for persistent sessions that left the node
    /// (`bridge::departures`), one per session.
    pub handed_on: AtomicU64,
    /// Consumer errors (broker unreachable, rebalance failures, ...).
    pub errors: AtomicU64,
    /// Records whose offset did not advance past the partition's last
    /// one (`offsets::Offsets`): the broker served records again.
    pub offsets_repeated: AtomicU64,
    /// Gaps in a partition's offsets passed over (`offsets::Offsets`).
    pub offsets_skipped: AtomicU64,
    /// Times a cluster inbox's gap was read again.
    pub offsets_reread: AtomicU64,
    /// Cluster inbox gaps a re-read filled: the broker had skipped them.
    pub gaps_filled: AtomicU64,
}

/// The sources' consumer: made with the gateway, started once the cores'
/// inboxes exist, stopped after the cores.
pub struct KafkaInbound {
    /// The consumers to make and what their tasks need, until
    /// [`KafkaInbound::start`].
    ready: Mutex<Option<(Vec<Plan>, Ctx)>>,
    /// Tells the running tasks to stop.
    stop: Mutex<Option<watch::Sender<bool>>>,
    thread: OnceLock<Worker>,
    metrics: Arc<InMetrics>,
    /// What each consumer's last statistics said.
    seen: Vec<Seen>,
    /// The interest topic was read to its end once (`[kafka.cluster]`;
    /// true without a cluster).
    loaded: Arc<AtomicBool>,
}

/// One consumer to make.
struct Plan {
    cc: ClientConfig,
    reads: Reads,
    seen: Seen,
}

/// What a consumer reads.
enum Reads {
    /// Sources' topics, in a consumer group.
    Sources(Vec<String>),
    /// The interest topic, from its beginning, outside any group.
    Registry(String),
    /// The cluster inbox: every partition assigned (`inbox.rs`).
    Inbox(String),
}

/// The consumer, with [`Seen`] as its context.
type SourceConsumer = StreamConsumer<Seen>;

impl KafkaInbound {
    /// Prepares the consumers of the configured sources, the cluster
    /// bus's inbox and its interest topic (`None`: nothing to read). They
    /// are made, and read, once started. `jobs` reaches the producer
    /// thread (owner-mode forwards, the cluster view).
    pub(crate) fn new(
        cfg: &Config,
        jobs: Sender<Job>,
    ) -> Result<Option<KafkaInbound>, KafkaSetupError> {
        let k = &cfg.kafka;
        let me = cfg.node.id;
        // The push topic is one more source: the API's publishes, to
        // their MQTT topic, at the QoS and retain flag they were made with.
        // So is this node's inbox of the cluster bus.
        let internal = |topic: String| SourceConfig {
            topic,
            to: SourceTarget::Topic,
            from: None,
            qos: 2,
            skip_own: false,
            fanout: SourceFanout::Broadcast,
            receipts: false,
        };
        let push = (!k.push_topic.is_empty()).then(|| internal(k.push_topic.clone()));
        let inbox = k
            .cluster
            .enabled()
            .then(|| internal(k.cluster.topic_of(me)));
        let mut sources = HashMap::new();
        let mut own_group = Vec::new();
        let mut shared_group = Vec::new();
        let mut inbox_group = Vec::new();
        let all = k.source.iter().chain(push.as_ref()).chain(inbox.as_ref());
        for s in all {
            let default = match s.to {
                SourceTarget::Topic => "${header.x-mqtt-topic}",
                _ => "${key}",
            };
            let from = Template::parse(s.from.as_deref().unwrap_or(default))
                .map_err(|why| KafkaSetupError::Config(format!("kafka.source.from: {why}")))?;
            let qos = match s.qos {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            };
            let kind = if inbox.as_ref().is_some_and(|i| std::ptr::eq(i, s)) {
                RuleKind::Inbox
            } else if s.fanout == SourceFanout::Owner {
                RuleKind::Owner
            } else {
                RuleKind::Local
            };
            match kind {
                RuleKind::Owner => shared_group.push(s.topic.clone()),
                RuleKind::Inbox => inbox_group.push(s.topic.clone()),
                RuleKind::Local => own_group.push(s.topic.clone()),
            }
            sources.insert(
                s.topic.clone(),
                SourceRule {
                    target: s.to,
                    from,
                    qos,
                    skip_own: s.skip_own,
                    kind,
                    receipts: s.receipts,
                },
            );
        }
        if sources.is_empty() {
            return Ok(None);
        }
        let base = |group: &str, id: &str| {
            let mut cc = ClientConfig::new();
            cc.set("bootstrap.servers", &k.brokers)
                .set("group.id", group)
                .set("client.id", format!("tether-n{me}-{id}"))
                .set("enable.auto.commit", "true")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "latest")
                .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS.to_string())
                .set(
                    "statistics.interval.ms",
                    super::STATS_INTERVAL_MS.to_string(),
                );
            for (key, value) in &k.consumer {
                cc.set(key, value);
            }
            cc
        };
        let mut plans = Vec::new();
        if !own_group.is_empty() {
            let group = k.group_of(me);
            info!(group, topics = ?own_group, "Kafka sources: consuming");
            plans.push(Plan {
                cc: base(&group, "in"),
                reads: Reads::Sources(own_group),
                seen: Seen::default(),
            });
        }
        if !shared_group.is_empty() {
            info!(group = %k.shared_group, topics = ?shared_group, "Kafka owner-mode sources: consuming");
            plans.push(Plan {
                cc: base(&k.shared_group, "owner"),
                reads: Reads::Sources(shared_group),
                seen: Seen::default(),
            });
        }
        if !inbox_group.is_empty() {
            // Its own group (for its offsets only), read from the earliest
            // record the first time: other nodes send here as soon as they
            // read this node's interest, which can be before the inbox is
            // read, and "latest" would skip those records.
            let mut cc = base(&format!("tether-{me}-inbox"), "inbox");
            cc.set("auto.offset.reset", "earliest");
            for topic in inbox_group {
                plans.push(Plan {
                    cc: cc.clone(),
                    reads: Reads::Inbox(topic),
                    seen: Seen::default(),
                });
            }
        }
        let loaded = Arc::new(AtomicBool::new(!k.cluster.enabled()));
        if k.cluster.enabled() {
            // Read from the start every time, committing nothing: the view
            // is rebuilt from the whole (compacted) topic at each start.
            let mut cc = base(&format!("tether-{me}-interest"), "interest");
            cc.set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .set("enable.partition.eof", "true");
            plans.push(Plan {
                cc,
                reads: Reads::Registry(k.cluster.interest_topic.clone()),
                seen: Seen::default(),
            });
        }
        let metrics = Arc::new(InMetrics::default());
        let ctx = Ctx {
            sources,
            node: me.to_string(),
            user_topic: cfg.http.user_topic.clone(),
            client_topic: cfg.http.client_topic.clone(),
            broadcast_topic: cfg.http.broadcast_topic.clone(),
            bridge: None,
            metrics: metrics.clone(),
            jobs,
            forward_seq: AtomicU64::new(0),
            loaded: loaded.clone(),
            started_ms: crate::wallclock::now_ms() as i64,
        };
        Ok(Some(KafkaInbound {
            seen: plans.iter().map(|p| p.seen.clone()).collect(),
            ready: Mutex::new(Some((plans, ctx))),
            stop: Mutex::new(None),
            thread: OnceLock::new(),
            metrics,
            loaded,
        }))
    }

    /// Starts the `tether-kafka-in` thread, delivering through `bridge`.
    pub fn start(&self, bridge: Arc<Bridge>) -> Result<(), KafkaSetupError> {
        let Some((plans, mut ctx)) = lock(&self.ready).take() else {
            return Ok(());
        };
        ctx.bridge = Some(bridge);
        // rdkafka's stream consumers are made inside the runtime that will
        // drive them; the runtime then moves to the thread.
        let rt = runtime().map_err(KafkaSetupError::Thread)?;
        let ctx = Arc::new(ctx);
        let (stop, stopped) = watch::channel(false);
        let mut tasks: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> =
            Vec::new();
        for plan in plans {
            let consumer: SourceConsumer = {
                let _inside = rt.enter();
                plan.cc
                    .create_with_context(plan.seen)
                    .map_err(|e| KafkaSetupError::Config(e.to_string()))?
            };
            match plan.reads {
                Reads::Sources(topics) => {
                    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
                    consumer
                        .subscribe(&topics)
                        .map_err(|e| KafkaSetupError::Config(e.to_string()))?;
                    let offsets = Offsets::new(OnGap::Pass);
                    tasks.push(Box::pin(run(
                        ctx.clone(),
                        consumer,
                        offsets,
                        stopped.clone(),
                    )));
                }
                Reads::Inbox(topic) => {
                    let read = inbox::read(ctx.clone(), consumer, plan.cc, topic, stopped.clone());
                    tasks.push(Box::pin(read));
                }
                Reads::Registry(topic) => {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
                        .map_err(|e| KafkaSetupError::Config(e.to_string()))?;
                    consumer
                        .assign(&tpl)
                        .map_err(|e| KafkaSetupError::Config(e.to_string()))?;
                    let ctx = ctx.clone();
                    let read = super::registry::run(
                        consumer,
                        ctx.jobs.clone(),
                        ctx.loaded.clone(),
                        stopped.clone(),
                    );
                    tasks.push(Box::pin(read));
                }
            }
        }
        let all = async move {
            futures_util::future::join_all(tasks).await;
        };
        let thread = Worker::drive("tether-kafka-in", rt, all).map_err(KafkaSetupError::Thread)?;
        *lock(&self.stop) = Some(stop);
        let _ = self.thread.set(thread);
        Ok(())
    }

    /// Consumer lag per partition, from the last statistics.
    pub(crate) fn lag(&self) -> LabelledGauge {
        LabelledGauge {
            name: "kafka_consumer_lag",
            help: "Records of a source's partition not yet consumed and committed by this node (librdkafka's consumer_lag).",
            values: self
                .seen
                .iter()
                .flat_map(|seen| {
                    seen.lag()
                        .iter()
                        .map(|(t, p, lag)| (format!("topic=\"{t}\",partition=\"{p}\""), *lag))
                        .collect::<Vec<_>>()
                })
                .collect(),
        }
    }

    /// What does not work, for `/readyz`.
    pub(crate) fn degraded(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.seen.iter().any(|s| s.brokers_down()) {
            out.push("kafka consumer: no broker is up".into());
        }
        if !self.loaded.load(Relaxed) {
            out.push("kafka cluster: the interest topic is not read to its end yet".into());
        }
        out
    }

    /// Stops consuming: what the cores accepted is committed.
    pub fn stop(&self) {
        if let Some(s) = lock(&self.stop).take() {
            let _ = s.send(true);
        }
        if let Some(w) = self.thread.get() {
            w.join();
        }
    }

    /// Figures for `/metrics`.
    pub fn figures(&self) -> Vec<Figure> {
        let m = &self.metrics;
        vec![
            ("kafka_records_consumed", "Records read from the sources' Kafka topics.", m.consumed.load(Relaxed), true),
            ("kafka_records_delivered", "Records the cores accepted as MQTT messages (their offsets may be committed).", m.delivered.load(Relaxed), true),
            ("kafka_records_skipped_own", "Records this node produced itself, passed over (skip_own).", m.skipped_own.load(Relaxed), true),
            ("kafka_records_undeliverable", "Records that could not become an MQTT message (missing header or key, invalid topic, denied).", m.undeliverable.load(Relaxed), true),
            ("kafka_records_stale", "Cluster inbox records sent before this process started (for the node's earlier life) that no session is owed (QoS 0, copies handed on), passed over.", m.stale.load(Relaxed), true),
            ("kafka_cluster_orphans_handed_on", "Cluster inbox records sent before this process started, handed on to every node for the persistent sessions of the node's earlier life (or, for a copy handed on for one session, for that session again).", m.orphans.load(Relaxed), true),
            ("kafka_cluster_handed_on", "Cluster inbox records handed on to every node for a persistent session that had left this node (one per session).", m.handed_on.load(Relaxed), true),
            ("kafka_busy_retries", "Times a busy core was offered a record again.", m.busy_retries.load(Relaxed), true),
            ("kafka_consumer_errors", "Consumer errors (broker unreachable, rebalance failures, ...).", m.errors.load(Relaxed), true),
            ("kafka_offsets_repeated", "Records whose offset did not advance past their partition's last one: a broker defect; records around them were served twice, or skipped and never served to this node.", m.offsets_repeated.load(Relaxed), true),
            ("kafka_offsets_skipped", "Gaps in a partition's offsets passed over (records never served to this node): normal where a transaction's marker or compaction took them; on a cluster inbox, which has neither, a broker defect still there after every re-read.", m.offsets_skipped.load(Relaxed), true),
            ("kafka_offsets_reread", "Times a gap in a cluster inbox's offsets was read again (a seek back to its first offset).", m.offsets_reread.load(Relaxed), true),
            ("kafka_gaps_filled", "Gaps in a cluster inbox's offsets that a re-read filled: the broker had served later records before those.", m.gaps_filled.load(Relaxed), true),
        ]
    }
}

impl Drop for KafkaInbound {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A lock that a panic elsewhere cannot poison for good (each holds plain
/// handles).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the consuming task needs.
struct Ctx {
    sources: HashMap<String, SourceRule>,
    node: String,
    user_topic: String,
    client_topic: String,
    broadcast_topic: String,
    /// Set by [`KafkaInbound::start`].
    bridge: Option<Arc<Bridge>>,
    metrics: Arc<InMetrics>,
    /// The producer thread: owner-mode forwards.
    jobs: Sender<Job>,
    /// Sequence of the ids of forwarded records.
    forward_seq: AtomicU64,
    /// See [`KafkaInbound::loaded`].
    loaded: Arc<AtomicBool>,
    /// When this process started, ms since the Unix epoch.
    started_ms: i64,
}
