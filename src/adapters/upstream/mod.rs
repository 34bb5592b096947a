//! Upstream (`[grpc.upstream]`): client messages streamed to backends over
//! the gRPC API's `Upstream` call, and, with `ack = "backend"`, their
//! publishers acknowledged only once a backend acknowledged them.
//!
//! [`Upstream`] implements the outbound port in front of the outbound
//! bridge it wraps (the Kafka bridge, or none): a message on a filter a
//! backend holds goes to the hub first, and on to the bridge (when the
//! bridge routes it too) once the backends acknowledged it; everything
//! else goes straight to the bridge. The cores see one `Outbound`.
//!
//! | file | concern |
//! | --- | --- |
//! | `mod.rs` | [`Upstream`], the port's implementation, its thread and figures |
//! | `hub.rs` | the hub's state: routes, windows, acks, redelivery, fallback |
//!
//! The hub lives on its own thread (`tether-upstream`), so a core never
//! waits on it: cores and gRPC calls send it jobs. The gRPC service
//! (the `grpc` module) attaches each stream with [`Upstream::attach`] and
//! forwards its acks; this module knows nothing of gRPC.
//!
//! Upstream is per node: a backend receives the messages published on the
//! nodes it holds a stream to.
//!
//! A stream may take delivery receipts instead: those of the messages
//! published on this node with its name as `receipts_to`. Receipts of
//! deliveries on this node go straight to the hub; other nodes hand theirs
//! over the Kafka cluster bus (the Kafka bridge's job), and the bus's
//! inbox consumer gives them to the hub through
//! [`crate::bridge::Bridge::stream_receipts`], which [`Upstream`] sets at
//! start.

mod hub;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::adapters::thread::{runtime, Worker};
use crate::bridge::outbound::{
    ConnEvent, InterestChange, LabelledGauge, Outbound, OutboundPolicy, Outgoing, Produced,
    PushReceipt, PushRefused,
};
use crate::bridge::{oneshot, PublishRequest, ReplyTo};
use crate::config::{UpstreamAck, UpstreamConfig};
use crate::session::{Receipt, ReceiptRecord};
use crate::stats::{Figure, Histogram};
use hub::{Done, Hub};
pub use hub::{Handed, Item, StreamId, Takes};

/// How often the hub looks for streams past `grpc.upstream.ack_timeout_ms`
/// (a tenth of it, at least every 10 ms and at most every second).
fn sweep_every(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

enum Job {
    Send(Outgoing, Done),
    Attach {
        id: StreamId,
        takes: Takes,
        window: usize,
        sink: hub::Sink,
        /// Answered once the cores' policy sees the filter.
        ready: oneshot::Sender<()>,
    },
    Ack(StreamId, Vec<u64>),
    Detach(StreamId),
    /// A receipt this node's cores reported for one of its receipts
    /// streams (made into a record here, not on the core).
    Reported(Receipt),
    /// A receipt another node handed over, for the receipts streams of
    /// that name.
    HandedOver(Arc<str>, ReceiptRecord),
    Stop,
}

/// The hub's gauges and counters, and the gRPC service's, for `/metrics`.
#[derive(Debug, Default)]
pub struct Figures {
    streams: AtomicU64,
    unacked: AtomicU64,
    backlog: AtomicU64,
    waiting: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    redelivered: AtomicU64,
    refused: AtomicU64,
    unrouted: AtomicU64,
    timed_out: AtomicU64,
    receipts: AtomicU64,
    receipts_dropped: AtomicU64,
    /// gRPC calls answered, by outcome (the service counts).
    pub calls: AtomicU64,
    /// gRPC calls answered with an error status.
    pub call_errors: AtomicU64,
}

/// A backend's stream as the gRPC side holds it: copies arrive on `rx`,
/// acks go through [`Upstream::ack`], and [`Upstream::detach`] ends it.
pub struct Attached {
    /// The stream's number in the hub.
    pub id: StreamId,
    /// The copies to send, in order.
    pub rx: UnboundedReceiver<Handed>,
}

/// The outbound port's implementation for backends' streams, in front of
/// the outbound bridge it wraps.
pub struct Upstream {
    next: Arc<dyn Outbound>,
    ack: UpstreamAck,
    window: usize,
    /// `grpc.upstream.topics`, then every filter a stream holds: the
    /// cores' policy reads it on every publish.
    filters: Arc<ArcSwap<Vec<Arc<str>>>>,
    next_stream: AtomicU64,
    jobs: UnboundedSender<Job>,
    figures: Arc<Figures>,
    /// This node's id (`node` of every upstream message).
    pub node: u16,
    worker: Worker,
}

impl Upstream {
    /// Starts the hub's thread in front of `next`.
    pub fn new(
        cfg: &UpstreamConfig,
        node: u16,
        next: Arc<dyn Outbound>,
    ) -> std::io::Result<Upstream> {
        let configured: Vec<Arc<str>> = cfg.topics.iter().map(|t| Arc::from(t.as_str())).collect();
        let filters = Arc::new(ArcSwap::from_pointee(configured.clone()));
        let figures = Arc::new(Figures::default());
        let (jobs, rx) = unbounded_channel();
        let hub = Hub::new(cfg.ack, cfg.fallback);
        let timeout = Duration::from_millis(cfg.ack_timeout_ms);
        let rt = runtime()?;
        let worker = Worker::drive(
            "tether-upstream",
            rt,
            serve(
                hub,
                rx,
                filters.clone(),
                configured,
                figures.clone(),
                timeout,
                node,
            ),
        )?;
        Ok(Upstream {
            next,
            ack: cfg.ack,
            window: cfg.window as usize,
            filters,
            next_stream: AtomicU64::new(1),
            jobs,
            figures,
            node,
            worker,
        })
    }

    /// The counters the gRPC service adds to.
    pub fn figures_handle(&self) -> Arc<Figures> {
        self.figures.clone()
    }

    /// Attaches a backend's stream taking `takes`; `window` 0 takes
    /// `grpc.upstream.window`. Once this returns, client messages on its
    /// filter (or receipts for its name) reach it.
    pub async fn attach(&self, takes: Takes, window: u32) -> Attached {
        let id = self.next_stream.fetch_add(1, Relaxed);
        let (sink, rx) = unbounded_channel();
        let (ready, wait) = oneshot::channel();
        let window = match window as usize {
            0 => self.window,
            w => w.min(self.window),
        };
        let _ = self.jobs.send(Job::Attach {
            id,
            takes,
            window,
            sink,
            ready,
        });
        // A stopped hub answers nothing: the stream gets no messages.
        let _ = wait.await;
        Attached { id, rx }
    }

    /// The backend acknowledged `seqs` on stream `id`.
    pub fn ack(&self, id: StreamId, seqs: Vec<u64>) {
        let _ = self.jobs.send(Job::Ack(id, seqs));
    }

    /// Stream `id` ended: its unacknowledged messages go to the rest of
    /// its group. Asking twice changes nothing.
    pub fn detach(&self, id: StreamId) {
        let _ = self.jobs.send(Job::Detach(id));
    }

    fn mine(&self, topic: &str) -> OutboundPolicy {
        if topic.starts_with('$') {
            return OutboundPolicy::Skip;
        }
        let filters = self.filters.load();
        if !filters
            .iter()
            .any(|f| crate::codec::topic::matches(f, topic))
        {
            return OutboundPolicy::Skip;
        }
        match self.ack {
            UpstreamAck::Backend => OutboundPolicy::Confirm,
            UpstreamAck::AtOnce => OutboundPolicy::Forget,
        }
    }
}

/// The stronger of two policies: a message leaves when either routes it,
/// and its publisher waits when either confirms.
fn stronger(a: OutboundPolicy, b: OutboundPolicy) -> OutboundPolicy {
    use OutboundPolicy::*;
    match (a, b) {
        (Confirm, _) | (_, Confirm) => Confirm,
        (Forget, _) | (_, Forget) => Forget,
        _ => Skip,
    }
}

impl Outbound for Upstream {
    fn policy(&self, topic: &str) -> OutboundPolicy {
        stronger(self.mine(topic), self.next.policy(topic))
    }

    fn send(&self, out: Outgoing, ack: ReplyTo<Produced>) {
        let next = self.next.policy(&out.msg.topic);
        // API publishes are the backends' own messages: not sent back up.
        if out.client_id.is_none() || self.mine(&out.msg.topic) == OutboundPolicy::Skip {
            return match next {
                OutboundPolicy::Skip => ack.send(Produced::Done),
                _ => self.next.send(out, ack),
            };
        }
        let then: Done = match next {
            OutboundPolicy::Skip => Box::new(move |p| ack.send(p)),
            _ => {
                let bridge = self.next.clone();
                let copy = out.clone();
                Box::new(move |p| match p {
                    Produced::Done => bridge.send(copy, ack),
                    failed => ack.send(failed),
                })
            }
        };
        // A stopped hub drops the job, and the dropped `ack` answers
        // "abandoned".
        let _ = self.jobs.send(Job::Send(out, then));
    }

    fn start(&self, bridge: Arc<crate::bridge::Bridge>) -> Result<(), String> {
        // Before the bridge's consumer runs: receipts other nodes hand
        // over for this node's streams.
        let jobs = self.jobs.clone();
        let _ = bridge.stream_receipts.set(Arc::new(move |to, r| {
            let _ = jobs.send(Job::HandedOver(to, r));
        }));
        self.next.start(bridge)
    }

    fn stop(&self) {
        let _ = self.jobs.send(Job::Stop);
        self.worker.join();
        self.next.stop();
    }

    fn figures(&self) -> Vec<Figure> {
        let f = &self.figures;
        let mut out = self.next.figures();
        out.extend([
            ("grpc_calls", "gRPC calls answered (Upstream streams when they end).", f.calls.load(Relaxed), true),
            ("grpc_call_errors", "gRPC calls answered with an error status.", f.call_errors.load(Relaxed), true),
            ("upstream_streams", "Backends' Upstream streams attached to this node.", f.streams.load(Relaxed), false),
            ("upstream_unacked", "Messages sent to Upstream streams and not yet acknowledged.", f.unacked.load(Relaxed), false),
            ("upstream_lag", "Messages waiting for an Upstream stream with room in its window.", f.backlog.load(Relaxed), false),
            ("upstream_acks_pending", "Client messages whose publisher waits for backends' acknowledgements.", f.waiting.load(Relaxed), false),
            ("upstream_sent", "Messages sent to Upstream streams (redeliveries included).", f.sent.load(Relaxed), true),
            ("upstream_acked", "Messages backends acknowledged.", f.acked.load(Relaxed), true),
            ("upstream_redelivered", "Messages sent again after their stream ended without acknowledging them.", f.redelivered.load(Relaxed), true),
            ("upstream_refused", "Client messages refused because no backend held them (grpc.upstream.fallback = \"refuse\").", f.refused.load(Relaxed), true),
            ("upstream_unrouted", "Client messages acknowledged though no backend held them (grpc.upstream.fallback = \"accept\").", f.unrouted.load(Relaxed), true),
            ("upstream_timed_out", "Streams ended for holding a message past grpc.upstream.ack_timeout_ms.", f.timed_out.load(Relaxed), true),
            ("upstream_receipts", "Delivery receipts taken for Upstream receipts streams (receipts_to).", f.receipts.load(Relaxed), true),
            ("upstream_receipts_dropped", "Delivery receipts dropped: no Upstream stream took their receipts_to name, its streams ended before acknowledging them, or 100,000 already waited for one.", f.receipts_dropped.load(Relaxed), true),
        ]);
        out
    }

    fn latency(&self) -> Option<&Histogram> {
        self.next.latency()
    }

    fn push(&self, req: PublishRequest) -> Result<PushReceipt, PushRefused> {
        self.next.push(req)
    }

    fn event(&self, ev: ConnEvent) {
        self.next.event(ev)
    }

    fn receipts(&self) -> bool {
        self.next.receipts()
    }

    fn receipt(&self, r: Receipt) {
        if r.to.as_ref().is_some_and(|to| to.node == self.node) {
            let _ = self.jobs.send(Job::Reported(r.clone()));
        }
        // The bridge still writes the dead letter, and hands a receipt
        // for another node's stream to that node.
        self.next.receipt(r)
    }

    fn labelled(&self) -> Vec<LabelledGauge> {
        self.next.labelled()
    }

    fn degraded(&self) -> Vec<String> {
        self.next.degraded()
    }

    fn wants_interest(&self) -> bool {
        self.next.wants_interest()
    }

    fn interest(&self, change: InterestChange) {
        self.next.interest(change)
    }
}

/// The hub thread: jobs in order, and a sweep for streams that hold a
/// message too long.
async fn serve(
    mut hub: Hub,
    mut jobs: UnboundedReceiver<Job>,
    filters: Arc<ArcSwap<Vec<Arc<str>>>>,
    configured: Vec<Arc<str>>,
    figures: Arc<Figures>,
    timeout: Duration,
    node: u16,
) {
    let mut sweep = tokio::time::interval(sweep_every(timeout));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let job = tokio::select! {
            job = jobs.recv() => job,
            _ = sweep.tick() => {
                let Some(before) = Instant::now().checked_sub(timeout) else { continue };
                let overdue = hub.overdue(before);
                if !overdue.is_empty() {
                    tracing::warn!(
                        streams = overdue.len(),
                        timeout_ms = timeout.as_millis() as u64,
                        "Upstream streams held a message past grpc.upstream.ack_timeout_ms: \
                         ending them, their messages go to the rest of their groups"
                    );
                    figures.timed_out.fetch_add(overdue.len() as u64, Relaxed);
                    for id in overdue {
                        hub.detach(id);
                    }
                    publish_filters(&hub, &filters, &configured);
                }
                gauges(&hub, &figures);
                continue;
            }
        };
        match job {
            None | Some(Job::Stop) => break,
            Some(Job::Send(out, done)) => hub.send(out, done),
            Some(Job::Attach {
                id,
                takes,
                window,
                sink,
                ready,
            }) => {
                hub.attach(id, takes, window, sink);
                publish_filters(&hub, &filters, &configured);
                let _ = ready.send(());
            }
            Some(Job::Ack(id, seqs)) => hub.ack(id, &seqs),
            Some(Job::Reported(r)) => {
                if let Some(to) = &r.to {
                    hub.receipt(&to.stream, ReceiptRecord::of(&r, node));
                }
            }
            Some(Job::HandedOver(to, r)) => hub.receipt(&to, r),
            Some(Job::Detach(id)) => {
                hub.detach(id);
                publish_filters(&hub, &filters, &configured);
            }
        }
        counts(&hub, &figures);
    }
    // Stopping: every stream ends, and what waited is answered by the
    // fallback (the gateway stops its cores first).
    for id in hub.stream_ids() {
        hub.detach(id);
    }
    gauges(&hub, &figures);
}

/// The filters the cores' policy matches: configured, then held.
fn publish_filters(hub: &Hub, filters: &ArcSwap<Vec<Arc<str>>>, configured: &[Arc<str>]) {
    let mut all = configured.to_vec();
    all.extend(
        hub.filters()
            .into_iter()
            .filter(|f| !configured.contains(f)),
    );
    filters.store(Arc::new(all));
}

/// The gauges that walk the hub's tables: at each sweep, not per job.
fn gauges(hub: &Hub, f: &Figures) {
    f.unacked.store(hub.unacked() as u64, Relaxed);
    f.backlog.store(hub.backlog() as u64, Relaxed);
    f.waiting.store(hub.waiting() as u64, Relaxed);
    counts(hub, f);
}

/// The counters, after every job.
fn counts(hub: &Hub, f: &Figures) {
    let c = hub.counts;
    f.streams.store(hub.streams() as u64, Relaxed);
    f.sent.store(c.sent, Relaxed);
    f.acked.store(c.acked, Relaxed);
    f.redelivered.store(c.redelivered, Relaxed);
    f.refused.store(c.refused, Relaxed);
    f.unrouted.store(c.unrouted, Relaxed);
    f.receipts.store(c.receipts, Relaxed);
    f.receipts_dropped.store(c.receipts_dropped, Relaxed);
}
