//! The outbound seam: a core hands a client's message to a bridge thread
//! (the Kafka producer) and gets an acknowledgement back.
//!
//! On every publish the core asks [`Outbound::policy`] (rules in memory,
//! answered on the core). For [`OutboundPolicy::Confirm`] the message goes
//! to [`Outbound::send`] with a [`ReplyTo<Produced>`], and the publisher's
//! PUBACK/PUBREC waits for the answer; acknowledgements go out in publish
//! order per client, so a later message's ack waits behind an earlier
//! one's. [`OutboundPolicy::Forget`] sends without waiting. Local
//! subscribers get the message at once either way.
//!
//! Bounded: a core has at most `runtime.max_outbound_inflight` messages
//! waiting for acknowledgements; at the bound its connections stop reading
//! (the same pause as a full mesh), so a stalled bridge pushes back on
//! publishers through TCP instead of growing memory. An implementation may
//! therefore size its own queue from that bound and never refuse.
//!
//! A failed or abandoned send answers [`Produced::Failed`]: an MQTT 5
//! publisher gets 0x80 in its ack, a 3.1.1 publisher (which has no negative
//! ack) is disconnected without one, so it resends. Never acknowledged and
//! then dropped.

use std::sync::Arc;

use super::oneshot;
use super::reply::{ReplyTo, Unanswered};
use crate::error::{Classify, Origin};
use crate::session::{Message, Receipt, ReceiptSink};
use crate::stats::{Figure, Histogram};

/// What to do with one message, decided on the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundPolicy {
    /// Not routed out.
    Skip,
    /// Routed out; the publisher's ack waits for the bridge's answer.
    Confirm,
    /// Routed out; the publisher is acknowledged at once.
    Forget,
}

/// A message on its way to the bridge, with who published it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The message (shared with local subscribers).
    pub msg: Arc<Message>,
    /// Client id of the publisher (`None` from the HTTP API).
    pub client_id: Option<Arc<str>>,
    /// The publisher's user name, when it gave one.
    pub username: Option<Arc<str>>,
}

/// The bridge's answer for one [`Outgoing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Produced {
    /// Durably handed on (for Kafka: the delivery report said so).
    Done,
    /// Not handed on.
    Failed(OutboundError),
}

/// Why a message was not handed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundError {
    /// The destination did not confirm within its delivery timeout.
    TimedOut,
    /// The destination refused it (too large, unknown topic, ...).
    Refused(String),
    /// The bridge dropped the request without answering (stopping).
    Abandoned,
    /// The session store did not confirm the message (it could not be
    /// written for every persistent session it reached).
    NotStored,
}

impl std::fmt::Display for OutboundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutboundError::TimedOut => f.write_str("no delivery confirmation in time"),
            OutboundError::Refused(why) => write!(f, "refused: {why}"),
            OutboundError::Abandoned => f.write_str("the bridge stopped before answering"),
            OutboundError::NotStored => f.write_str("not stored in the session store"),
        }
    }
}

impl std::error::Error for OutboundError {}

impl Classify for OutboundError {
    fn origin(&self) -> Origin {
        Origin::Bridge
    }
}

impl Unanswered for Produced {
    fn unanswered() -> Self {
        Produced::Failed(OutboundError::Abandoned)
    }
}

/// A bridge that takes messages out of the gateway.
pub trait Outbound: Send + Sync + 'static {
    /// Whether and how a message on `topic` leaves; called on the core for
    /// every publish, so it must answer from memory.
    fn policy(&self, topic: &str) -> OutboundPolicy;

    /// Takes one message. The answer goes to `ack` (dropping it answers
    /// [`Produced::Failed`]). Must not block: queue the work for the
    /// bridge's own thread.
    fn send(&self, out: Outgoing, ack: ReplyTo<Produced>);

    /// Starts what the bridge brings in, now that the cores' inboxes exist
    /// (the Kafka sources). The error says what to fix.
    fn start(&self, bridge: Arc<super::Bridge>) -> Result<(), String> {
        drop(bridge);
        Ok(())
    }

    /// Flushes what is in flight and stops the bridge's thread (the
    /// gateway calls it after its cores stopped).
    fn stop(&self) {}

    /// The bridge's own figures for `/metrics`.
    fn figures(&self) -> Vec<Figure> {
        Vec::new()
    }

    /// Latency from hand-over to the destination's confirmation.
    fn latency(&self) -> Option<&Histogram> {
        None
    }

    /// Takes an HTTP API publish to every node (Kafka's `push_topic`): the
    /// answer says whether it is durably on its way, with the message id.
    /// `Err` hands the request back when this bridge does not carry pushes
    /// (the API then publishes on this node), or with the reason it cannot
    /// be sent.
    fn push(&self, req: super::PublishRequest) -> Result<PushReceipt, PushRefused> {
        Err(PushRefused::NotCarried(req))
    }

    /// A client's session became active, or its connection ended. Called
    /// on the core: it must not block. Nobody waits for it.
    fn event(&self, ev: ConnEvent) {
        drop(ev);
    }

    /// Whether this bridge takes delivery receipts ([`Outbound::receipt`]):
    /// the API refuses a publish that asks for them otherwise.
    fn receipts(&self) -> bool {
        false
    }

    /// One delivery receipt. Called on the core: it must not block.
    /// Nobody waits for it.
    fn receipt(&self, r: Receipt) {
        drop(r);
    }

    /// Gauges with a value per label set (consumer lag per partition).
    fn labelled(&self) -> Vec<LabelledGauge> {
        Vec::new()
    }

    /// What does not work right now, one line each, for `/readyz` (which
    /// answers 503 "degraded" while this is not empty).
    fn degraded(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether the bridge shares subscriptions across nodes: when true,
    /// cores report every filter that gains its first subscriber or loses
    /// its last one through [`Outbound::interest`], and hold SUBACKs until
    /// the news is out.
    fn wants_interest(&self) -> bool {
        false
    }

    /// A core's interest changed. Called on the core: it must not block.
    /// A `confirm` share, when given, is released once the change is
    /// durably announced (failed if it cannot be).
    fn interest(&self, change: InterestChange) {
        if let Some(c) = change.confirm {
            c.release(true);
        }
    }
}

/// A filter that gained its first subscription on a core, or lost its
/// last one ([`Outbound::interest`]).
#[derive(Debug)]
pub struct InterestChange {
    /// The core.
    pub core: usize,
    /// The filter; `$share/{group}/{filter}` for a shared subscription's
    /// group (reported by the group's owner core: gained its first
    /// connected member, lost its last).
    pub filter: Arc<str>,
    /// Gained (true) or lost (false).
    pub on: bool,
    /// A SUBACK waits for this share.
    pub confirm: Option<Arc<crate::session::Confirm>>,
}

/// What happened to a client's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEventKind {
    /// Its session became active (after the CONNACK).
    Connect,
    /// Its connection ended.
    Disconnect,
}

/// The outbound bridge as a message's receipt sink.
pub struct ToOutbound(pub Arc<dyn Outbound>);

impl ReceiptSink for ToOutbound {
    fn receipt(&self, r: Receipt) {
        self.0.receipt(r);
    }
}

/// A connection event, for [`Outbound::event`].
#[derive(Debug, Clone)]
pub struct ConnEvent {
    /// Connect or disconnect.
    pub kind: ConnEventKind,
    /// The client's id (assigned by the server when it sent none).
    pub client_id: Arc<str>,
    /// The user name it connected with.
    pub username: Option<Arc<str>>,
    /// `mqtt`, `mqtts`, `ws` or `wss` ([`crate::id::TRANSPORT_NAMES`]).
    pub transport: &'static str,
    /// For a disconnect: whether the client sent DISCONNECT itself.
    pub graceful: bool,
    /// When it happened, ms since the Unix epoch.
    pub at_ms: u64,
}

/// A push on its way: its message id, and the bridge's answer to come.
pub type PushReceipt = (u64, oneshot::Receiver<Produced>);

/// Why [`Outbound::push`] did not take a request.
#[derive(Debug)]
pub enum PushRefused {
    /// This bridge does not carry pushes: publish it on this node.
    NotCarried(super::PublishRequest),
    /// Not a valid topic name.
    TopicInvalid(&'static str),
}

/// A gauge with one value per label set, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledGauge {
    /// Metric name without the `tether_` prefix.
    pub name: &'static str,
    /// The `# HELP` text.
    pub help: &'static str,
    /// `(labels, value)`, the labels as Prometheus writes them inside the
    /// braces (`topic="t",partition="0"`).
    pub values: Vec<(String, i64)>,
}

/// No outbound bridge: nothing leaves (the single-node default).
#[derive(Debug, Default)]
pub struct NoOutbound;

impl Outbound for NoOutbound {
    fn policy(&self, _: &str) -> OutboundPolicy {
        OutboundPolicy::Skip
    }

    fn send(&self, _: Outgoing, ack: ReplyTo<Produced>) {
        ack.send(Produced::Failed(OutboundError::Refused(
            "no outbound bridge".into(),
        )));
    }
}
