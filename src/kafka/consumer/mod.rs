//! The `tether-kafka-in` thread: consumes the sources' topics and turns
//! each record into an MQTT message through the bridge inboxes, as a
//! publish from [`Source::Bridge`] (the authorizer sees it; it never goes
//! back out to Kafka).
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;
use futures_util::stream::{FuturesOrdered, StreamExt};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use super::producer::Job;
use super::KafkaSetupError;
use crate::bridge::outbound::{LabelledGauge, Outgoing, Produced};
use crate::bridge::{Bridge, PublishRequest, Refusal};
use crate::codec::{Properties, QoS};
use crate::config::{Config, SourceConfig, SourceFanout, SourceTarget, Template};
use crate::id::{GroupKey, Source};
use crate::logging::Throttle;
use crate::stats::Figure;

/// Records handed to the cores and not yet accepted, at most.
const WINDOW: usize = 256;
/// Pause before offering a record again to a busy core.
const BUSY_RETRY: Duration = Duration::from_millis(20);
/// How long the thread waits, when it stops, for records in the cores'
/// hands before it commits what was accepted.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// librdkafka's `fetch.wait.max.ms`: how long a fetch may wait at the
/// broker for records. librdkafka's 500 ms is for throughput; a push waits
/// for it whenever the broker holds fetches for the full wait (tansu
/// does), so Tether asks for 100 ms: a fetch per 100 ms per broker when
/// idle. `[kafka.consumer]` can set it.
const FETCH_WAIT_MAX_MS: u32 = 100;
/// The inbox group's session timeout. Its only member is this node, so a
/// node killed and started again waits, before reading its inbox, until
/// the group gives up on its earlier self: librdkafka's 45 s would leave
/// the copies other nodes acknowledged for its subscribers waiting that
/// long. 6 s is the least a Kafka broker accepts by default
/// (`group.min.session.timeout.ms`).
const INBOX_SESSION_TIMEOUT_MS: u32 = 6000;
/// Message ids of owner-mode forwards: the top byte 0xfe, which no core
/// has (nor the API's pushes, 0xff), so `x-id` stays unique on the node.
const FORWARD_IDS: u64 = 0xfe << 56;
/// Headers Tether writes itself: not copied into user properties.
const OWN_HEADERS: [&str; 9] = [
    "x-id",
    "x-uid",
    "x-client",
    "x-event",
    "x-node",
    "x-mqtt-topic",
    "x-qos",
    "x-retain",
    "x-share",
];

/// One `[[kafka.source]]`, ready to map records.
struct SourceRule {
    target: SourceTarget,
    from: Template,
    qos: QoS,
    skip_own: bool,
    kind: RuleKind,
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
    /// Consumer errors (broker unreachable, rebalance failures, ...).
    pub errors: AtomicU64,
}

/// What became of one record.
enum Outcome {
    Accepted,
    Passed,
    Stopping,
}

/// The sources' consumer: made with the gateway, started once the cores'
/// inboxes exist, stopped after the cores.
pub struct KafkaInbound {
    /// The consumers to make and what their tasks need, until
    /// [`KafkaInbound::start`].
    ready: Mutex<Option<(Vec<Plan>, Ctx)>>,
    /// Tells the running tasks to stop.
    stop: Mutex<Option<watch::Sender<bool>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
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
}

/// The consumer, with [`Seen`] as its context.
type SourceConsumer = StreamConsumer<Seen>;

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
        self.0
            .brokers_down
            .store(!super::producer::any_broker_up(&s), Relaxed);
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
        *lock(&self.0.lag) = lag;
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
            // Its own group, read from the earliest record the first time:
            // other nodes send here as soon as they read this node's
            // interest, which can be before the group's first assignment,
            // and "latest" would skip those records.
            let mut cc = base(&format!("tether-{me}-inbox"), "inbox");
            cc.set("auto.offset.reset", "earliest")
                .set("session.timeout.ms", INBOX_SESSION_TIMEOUT_MS.to_string())
                .set(
                    "heartbeat.interval.ms",
                    (INBOX_SESSION_TIMEOUT_MS / 3).to_string(),
                );
            plans.push(Plan {
                cc,
                reads: Reads::Sources(inbox_group),
                seen: Seen::default(),
            });
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
            thread: Mutex::new(None),
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
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(KafkaSetupError::Thread)?;
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
                    tasks.push(Box::pin(run(ctx.clone(), consumer, stopped.clone())));
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
        let thread = std::thread::Builder::new()
            .name("tether-kafka-in".into())
            .spawn(move || {
                rt.block_on(futures_util::future::join_all(tasks));
            })
            .map_err(KafkaSetupError::Thread)?;
        *lock(&self.stop) = Some(stop);
        *lock(&self.thread) = Some(thread);
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
                    lock(&seen.0.lag)
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
        if self.seen.iter().any(|s| s.0.brokers_down.load(Relaxed)) {
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
        let thread = lock(&self.thread).take();
        if let Some(t) = thread {
            let _ = t.join();
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
            ("kafka_records_stale", "Cluster inbox records sent before this process started (for the node's earlier life), passed over.", m.stale.load(Relaxed), true),
            ("kafka_busy_retries", "Times a busy core was offered a record again.", m.busy_retries.load(Relaxed), true),
            ("kafka_consumer_errors", "Consumer errors (broker unreachable, rebalance failures, ...).", m.errors.load(Relaxed), true),
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

/// Where a record's offset is stored once it is done.
struct Place {
    topic: String,
    partition: i32,
    offset: i64,
}

async fn run(ctx: Arc<Ctx>, consumer: SourceConsumer, mut stopped: watch::Receiver<bool>) {
    let mut inflight = FuturesOrdered::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            m = consumer.recv(), if inflight.len() < WINDOW => match m {
                Ok(m) => {
                    ctx.metrics.consumed.fetch_add(1, Relaxed);
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

/// A record made into a publish, or why it is passed over.
enum Request {
    Publish {
        req: PublishRequest,
        /// Only these shared-subscription groups (a cluster inbox record).
        shares: Option<Arc<[GroupKey]>>,
        /// Forward to the other nodes with interest too (owner mode).
        forward: bool,
    },
    SkipOwn,
    /// A cluster inbox record sent before this process started: meant for
    /// the node's earlier life (its clients then), not for whoever
    /// subscribed since.
    Stale,
    Undeliverable(&'static str),
}

impl Ctx {
    fn request(&self, m: &BorrowedMessage<'_>) -> Request {
        let Some(rule) = self.sources.get(m.topic()) else {
            return Request::Undeliverable("no source for the topic");
        };
        let header = |name: &str| -> Option<&[u8]> {
            let h = m.headers()?;
            h.iter().find(|h| h.key == name).and_then(|h| h.value)
        };
        if rule.skip_own && header("x-node") == Some(self.node.as_bytes()) {
            return Request::SkipOwn;
        }
        if rule.kind == RuleKind::Inbox
            && m.timestamp()
                .to_millis()
                .is_some_and(|t| t < self.started_ms)
        {
            return Request::Stale;
        }
        // A broadcast goes to one fixed topic: it needs no key.
        let value = if rule.target == SourceTarget::Broadcast {
            String::new()
        } else if let Some(value) = rule.from.render(m.key(), header) {
            value
        } else {
            return Request::Undeliverable(
                "the record lacks the header or key its source's template names",
            );
        };
        let level_ok = !value.is_empty() && !value.contains(['/', '+', '#']);
        let topic = match rule.target {
            SourceTarget::Topic => value,
            SourceTarget::User if level_ok => self.user_topic.replace("%u", &value),
            SourceTarget::Client if level_ok => self.client_topic.replace("%c", &value),
            SourceTarget::Broadcast => self.broadcast_topic.clone(),
            SourceTarget::User | SourceTarget::Client => {
                return Request::Undeliverable("a user name or client id must be one topic level")
            }
        };
        // The record's own headers travel on as MQTT 5 user properties.
        let mut props = Properties::default();
        if let Some(h) = m.headers() {
            for h in h.iter().filter(|h| !OWN_HEADERS.contains(&h.key)) {
                if let Some(v) = h.value.and_then(|v| std::str::from_utf8(v).ok()) {
                    props
                        .user_properties
                        .push((h.key.to_string(), v.to_string()));
                }
            }
        }
        // Records Tether wrote carry the message's QoS and retain flag: the
        // QoS is kept up to the source's, and a retained message is stored
        // on this node too.
        let qos = match header("x-qos") {
            Some(b"0") => QoS::AtMostOnce,
            Some(b"1") => QoS::AtLeastOnce.min(rule.qos),
            _ => rule.qos,
        };
        let retain = rule.target == SourceTarget::Topic && header("x-retain") == Some(b"1");
        // The sending node picked this one for the groups it names.
        let shares = (rule.kind == RuleKind::Inbox).then(|| {
            m.headers()
                .into_iter()
                .flat_map(|h| h.iter())
                .filter(|h| h.key == "x-share")
                .filter_map(|h| GroupKey::parse(std::str::from_utf8(h.value?).ok()?))
                .collect::<Vec<_>>()
                .into()
        });
        Request::Publish {
            req: PublishRequest {
                topic,
                payload: bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                qos,
                retain,
                properties: (!props.user_properties.is_empty()).then(|| Box::new(props)),
            },
            shares,
            forward: rule.kind == RuleKind::Owner,
        }
    }

    /// An owner-mode record as a message for the other nodes.
    fn outgoing(&self, req: &PublishRequest) -> Outgoing {
        let id = FORWARD_IDS | (self.forward_seq.fetch_add(1, Relaxed) & super::PUSH_SEQ_MASK);
        let msg = crate::session::Message::new(
            id,
            req.clone().into_publication(),
            std::time::Instant::now(),
        );
        Outgoing {
            msg: Arc::new(msg),
            client_id: None,
            username: None,
        }
    }
}

/// A record after its turn at the inbox.
enum Offered {
    /// Nothing more to do for it.
    Settled(Outcome),
    /// In its core's inbox.
    Queued {
        answer: Answer,
        /// Kept for another offer (the payload is shared, not copied).
        req: PublishRequest,
        shares: Option<Arc<[GroupKey]>>,
        core: usize,
        /// The copy for the other nodes (owner mode).
        forward: Option<Outgoing>,
    },
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
    let (req, shares, forward) = match req {
        Request::Publish {
            req,
            shares,
            forward,
        } => (req, shares, forward),
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
    };
    let Some(bridge) = &ctx.bridge else {
        return Offered::Settled(Outcome::Stopping);
    };
    let core = bridge.core_of(key.unwrap_or(req.topic.as_bytes()));
    let forward = forward.then(|| ctx.outgoing(&req));
    loop {
        match bridge.publish_on(core, Source::Bridge, req.clone(), shares.clone()) {
            Ok(answer) => {
                return Offered::Queued {
                    answer,
                    req,
                    shares,
                    core,
                    forward,
                }
            }
            Err(Refusal::Busy) => {
                m.busy_retries.fetch_add(1, Relaxed);
                tokio::time::sleep(BUSY_RETRY).await;
            }
            Err(_) => return Offered::Settled(Outcome::Stopping),
        }
    }
}

/// Waits for a queued record's answer, offering it again while it is not
/// stored, and for its forward to the other nodes (owner mode): both must
/// be done before its offset is stored.
async fn settle(ctx: &Ctx, offered: Offered) -> Outcome {
    let (answer, req, shares, core, forward) = match offered {
        Offered::Settled(outcome) => return outcome,
        Offered::Queued {
            answer,
            req,
            shares,
            core,
            forward,
        } => (answer, req, shares, core, forward),
    };
    let here = deliver_here(ctx, answer, req, shares, core);
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
    loop {
        let (ack, answer) = oneshot::channel();
        let job = Job::Forward {
            out: out.clone(),
            ack,
        };
        if ctx.jobs.send(job).is_err() {
            return Outcome::Stopping;
        }
        match answer.await {
            Ok(Produced::Done) => return Outcome::Accepted,
            Ok(Produced::Failed(why)) => {
                debug!("Kafka record not forwarded yet ({why}); again");
                ctx.metrics.busy_retries.fetch_add(1, Relaxed);
                tokio::time::sleep(BUSY_RETRY).await;
            }
            Err(_) => return Outcome::Stopping,
        }
    }
}

/// Awaits a record's answer from `core`, offering it again until it is
/// stored (or can never be).
///
/// A record that comes back [`Refusal::Undelivered`] reached the online
/// subscribers but was not stored; its next offer goes behind records
/// queued since, which are duplicates' order, not first copies'.
async fn deliver_here(
    ctx: &Ctx,
    mut answer: Answer,
    req: PublishRequest,
    shares: Option<Arc<[GroupKey]>>,
    core: usize,
) -> Outcome {
    let m = &ctx.metrics;
    loop {
        match answer.await.unwrap_or(Err(Refusal::ShuttingDown)) {
            Ok(_) => {
                m.delivered.fetch_add(1, Relaxed);
                return Outcome::Accepted;
            }
            Err(Refusal::ShuttingDown) => return Outcome::Stopping,
            Err(Refusal::Undelivered(why)) => {
                // Not stored (durability): offer it again, it must not be lost.
                debug!("Kafka record not stored yet ({why}); again");
            }
            // The core does not refuse a Kafka record for room; a full
            // inbox is the only busy answer left.
            Err(Refusal::Busy) => {}
            Err(r) => {
                m.undeliverable.fetch_add(1, Relaxed);
                warn!(topic = %req.topic, "Kafka record passed over: {r}");
                return Outcome::Passed;
            }
        }
        m.busy_retries.fetch_add(1, Relaxed);
        let again = loop {
            tokio::time::sleep(BUSY_RETRY).await;
            let Some(bridge) = &ctx.bridge else {
                return Outcome::Stopping;
            };
            match bridge.publish_on(core, Source::Bridge, req.clone(), shares.clone()) {
                Ok(rx) => break rx,
                Err(Refusal::Busy) => m.busy_retries.fetch_add(1, Relaxed),
                Err(_) => return Outcome::Stopping,
            };
        };
        answer = again;
    }
}
