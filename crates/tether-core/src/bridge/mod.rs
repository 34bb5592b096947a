//! The boundary between the cores and the threads that are not cores (the
//! HTTP API now; the Redis and Kafka bridge threads, HTTP auth callbacks).
//!
//! Two directions, one doorbell per core:
//! - **In** (this file): each core has an inbox, a bounded crossbeam
//!   channel of [`BridgeMsg`]. A sender pushes the message, then rings the
//!   core's [`Bell`]; the core's inbox task wakes and drains the channel. A
//!   full inbox is refused at once ([`Refusal::Busy`]), never waited on:
//!   backpressure reaches the caller (an HTTP 503), not a core.
//! - **Back** ([`reply`]): answers to requests a core made of a seam (a
//!   deferred authentication verdict or authorization permit, a session
//!   claim, an outbound acknowledgement) come back through [`ReplyTo`]
//!   handles on the same doorbell.
//!
//! [`outbound`] is the seam through which a core hands messages out (the
//! Kafka producer) and learns when they are safe.
//!
//! Publishes pick their core by a hash of the topic, so messages of one
//! topic sent through the bridge keep their order (as one client's would).

pub mod adoption;
pub mod departures;
pub mod outbound;
pub mod reply;

use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::codec::{Properties, QoS};
use crate::id::{ConnKey, Source};
use crate::session::Scope;
use departures::Departures;

pub use reply::{Bell, ReplyQueue, ReplyTo, Unanswered};

/// The oneshot channel that carries an answer out of a core (to the HTTP
/// plane, to an adapter's thread). Any executor can await its receiver and
/// sending needs none, so a port names no runtime: cores run on glommio,
/// the HTTP plane and the adapters on tokio.
pub use futures_channel::oneshot;

/// How and why a client's connection is closed ([`BridgeMsg::KickClient`]).
#[derive(Debug, Clone)]
pub struct Kick {
    /// Only this connection (a newer one of the same client stays).
    pub conn: Option<crate::id::ConnId>,
    /// MQTT 5 reason code.
    pub code: u8,
    /// Reason String.
    pub why: &'static str,
    /// A claim on this node waits for the session: once the connection
    /// is closed and its writes are journaled, tell that node.
    pub handoff_to: Option<u16>,
    /// The node whose claim took the session over, when it said so: the
    /// copies this node hands on for the session wait until that node is
    /// seen interested in them ([`departures`]).
    pub taken_by: Option<u16>,
}

/// A message from a bridge thread to a core.
#[derive(Debug)]
pub enum BridgeMsg {
    /// Publish as if a client had. `done` learns the message id once the
    /// message reached every local subscriber and every interested core's
    /// queue (the point at which a client's PUBACK is sent), or why not.
    Publish {
        /// What to publish.
        req: PublishRequest,
        /// Who publishes, for the authorizer.
        source: Source,
        /// Whom on this node it is for: everyone (the usual), or a
        /// narrower [`Scope`] for a copy another node forwarded.
        scope: Scope,
        /// The message's id when its sender numbers it (see [`Numbered`]).
        numbered: Option<Numbered>,
        /// Where the outcome goes.
        done: Option<Receipt>,
    },
    /// Describe the session at `key` (found in the directory).
    Inspect {
        /// The session's entry.
        key: ConnKey,
        /// Where the answer goes.
        reply: oneshot::Sender<Option<ClientInfo>>,
    },
    /// Disconnect the client at `key` (MQTT 5: reason 0x98, Administrative
    /// action); its session lives on per its expiry. Replies whether a
    /// connection was there to close.
    Kick {
        /// The session's entry.
        key: ConnKey,
        /// Where the answer goes.
        reply: oneshot::Sender<bool>,
    },
    /// Every session on this core, or those of one user.
    List {
        /// Only this user's sessions.
        user: Option<String>,
        /// Where the answer goes.
        reply: oneshot::Sender<Vec<ClientInfo>>,
    },
    /// The session store refused a write of `client_id` at `epoch`: a
    /// newer claim (on another node) owns the session. Its connection here
    /// is closed with 0x8E and its session forgotten, without writing.
    Fenced {
        /// The client.
        client_id: Arc<str>,
        /// The stale epoch.
        epoch: u64,
    },
    /// Close the connection `conn` of `client_id` with DISCONNECT `code`
    /// (MQTT 5) and Reason String `why`: taken over on another node, over
    /// its user's connection limit, or kicked by an administrator anywhere
    /// in the cluster.
    KickClient {
        /// The client.
        client_id: Arc<str>,
        /// Which connection, how and why.
        kick: Kick,
    },
    /// The store's answer to the claim of `conn` (at `key`) was lost (a
    /// slow or silent link), and the store is asking what the claim did:
    /// the client is refused now (0x88) rather than after that, and the
    /// entry waits for the claim's outcome as one whose client hung up
    /// does. A claim that landed then parks the session here, offline,
    /// with what reached the core meanwhile.
    ClaimUnanswered {
        /// The connection's entry.
        key: crate::id::ConnKey,
        /// The connection (the entry may hold another by then).
        conn: crate::id::ConnId,
    },
    /// A persistent session this node's earlier life owned and no other
    /// node claimed since (the store found it at start): claim it again,
    /// without a connection, to park it here offline ([`adoption`]).
    Adopt {
        /// The client.
        client_id: Arc<str>,
        /// Dropped once the claim was answered (or at once, when this
        /// node already has the client id).
        ticket: adoption::Ticket,
    },
    /// This core's session gauges, for `/metrics`.
    Gauges {
        /// Where the answer goes.
        reply: oneshot::Sender<SessionGauges>,
    },
    /// Start draining (`POST /v1/admin/drain`): stop accepting, close the
    /// clients at this core's share of `drain.rate_per_sec`, then stop.
    Drain,
    /// Proof of life for the systemd watchdog: the core stamps
    /// `CoreVisible::alive_ms` with the node clock when it handles this, so
    /// a core whose loop is stuck stops advancing it.
    Heartbeat,
}

/// Session-state gauges of one core, summed over its sessions when asked
/// (one pass over the core's slab per scrape; the core keeps no running
/// totals on its message path).
#[derive(Debug, Clone, Default)]
pub struct SessionGauges {
    /// Sessions with a connection.
    pub online: u64,
    /// Persistent sessions waiting for their client.
    pub offline: u64,
    /// QoS 1/2 messages waiting for a session's in-flight window.
    pub queued: u64,
    /// Sent, not yet acknowledged.
    pub inflight: u64,
    /// Sum of the online sessions' in-flight windows (`inflight` over this
    /// is the window use).
    pub inflight_capacity: u64,
    /// Encoded bytes waiting in online connections' outboxes.
    pub outbox_bytes: u64,
    /// CONNECTs waiting for the authenticator's slow path.
    pub pending_verdicts: u64,
    /// Client-id claims waiting for the session store.
    pub pending_claims: u64,
    /// PUBLISH/SUBSCRIBE waiting for the authorizer's slow path.
    pub pending_permits: u64,
    /// Messages handed to the outbound bridge, not yet acknowledged.
    pub outbound_inflight: u64,
}

/// What the API reports about one session.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientInfo {
    /// The session's client id.
    pub client_id: String,
    /// The user name its connection gave.
    pub username: Option<String>,
    /// Whether a connection is attached.
    pub online: bool,
    /// `n{node}.c{core}.{seq}`, as in the logs.
    pub connection_id: String,
    /// The node holding the session.
    pub node: u16,
    /// The core holding the session.
    pub core: usize,
    /// The listener it connected on: `mqtt`, `ws`, `mqtts` or `wss`
    /// (absent offline).
    pub transport: Option<String>,
    /// Unix time in milliseconds of the current connection (absent offline).
    pub connected_since_ms: Option<u64>,
    /// The client's address.
    pub peer: Option<String>,
    /// "3.1", "3.1.1" or "5.0".
    pub protocol: Option<&'static str>,
    /// Its subscriptions.
    pub subscriptions: Vec<SubscriptionInfo>,
    /// QoS 1/2 messages waiting for the in-flight window.
    pub queued: usize,
    /// Sent and not yet acknowledged.
    pub inflight: usize,
    /// The in-flight window (the client's Receive Maximum, capped).
    pub inflight_window: Option<usize>,
}

/// One subscription in a [`ClientInfo`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct SubscriptionInfo {
    /// The filter, as subscribed.
    pub filter: String,
    /// The granted QoS.
    pub qos: u8,
}

/// Where a core reports the outcome of a bridge publish (a [`oneshot`]:
/// sending needs no runtime, and the HTTP thread awaits it without
/// blocking).
pub type Receipt = oneshot::Sender<Result<u64, Refusal>>;

/// A publish from outside MQTT.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Topic name (validated by the core).
    pub topic: String,
    /// Opaque payload.
    pub payload: Bytes,
    /// QoS of the message.
    pub qos: QoS,
    /// Store as the topic's retained message.
    pub retain: bool,
    /// MQTT 5 properties passed to subscribers (content type, user
    /// properties, message expiry, ...).
    pub properties: Option<Box<Properties>>,
    /// Report what becomes of each QoS 1/2 delivery to the outbound
    /// bridge's receipts ([`crate::session::Receipts`]).
    pub receipts: bool,
    /// The id its receipts carry when another node minted the id the
    /// publisher was told (an API push carried by Kafka); `None`: the
    /// message's own id.
    pub receipt_id: Option<u64>,
    /// Report each QoS 1/2 delivery to this Upstream receipts stream
    /// (with or without `receipts`).
    pub receipts_to: Option<crate::session::ReceiptsTo>,
}

impl PublishRequest {
    /// The message it asks for, from no client (a bridge's publish).
    pub fn into_publication(self) -> crate::session::Publication {
        crate::session::Publication {
            topic: self.topic.into(),
            payload: self.payload,
            qos: self.qos,
            retain: self.retain,
            properties: self.properties,
            origin: None,
        }
    }
}

/// The identity of a bridge publish whose sender numbers it (a Kafka
/// record): offered again after it was not stored, it keeps its id, and a
/// session that queued it the first time stores that copy instead of
/// taking a second. Without it, every offer of a record while Redis was
/// away queued one more copy, until the session's queue was full and
/// dropped what came next (the fault harness, a Redis restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbered {
    /// The message id (unique on the node; not a core's).
    pub id: u64,
    /// Offered before: sessions look for their copy.
    pub again: bool,
}

/// Why a bridge publish was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not a valid topic name (the reason, as for a client's PUBLISH).
    TopicInvalid(&'static str),
    /// The authorizer refused it (by default: it matches `mqtt.deny_publish`).
    Denied,
    /// QoS above `mqtt.max_qos`.
    QosNotSupported,
    /// A retained message the retained store has no room for.
    RetainedStoreFull,
    /// The core's inbox is full; try again later.
    Busy,
    /// The outbound bridge could not hand the message on (it was still
    /// delivered to the node's subscribers).
    Undelivered(String),
    /// The gateway is stopping (or stopped).
    ShuttingDown,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TopicInvalid(why) => write!(f, "invalid topic: {why}"),
            Refusal::Denied => f.write_str("not authorized to publish to this topic"),
            Refusal::QosNotSupported => f.write_str("QoS above mqtt.max_qos"),
            Refusal::RetainedStoreFull => f.write_str("retained store full"),
            Refusal::Busy => f.write_str("gateway busy: inbox full"),
            Refusal::Undelivered(why) => write!(f, "not handed on by the outbound bridge: {why}"),
            Refusal::ShuttingDown => f.write_str("gateway shutting down"),
        }
    }
}

/// One core's inbox, sender side.
struct Inbox {
    tx: Sender<BridgeMsg>,
    bell: Arc<Bell>,
}

/// The sender side of every core's inbox; cheap to share between threads.
pub struct Bridge {
    inboxes: Vec<Inbox>,
    hasher: ahash::RandomState,
    /// Persistent sessions that left the node, for the cluster bus's
    /// inbox consumer (the cores record them through `NodeState`).
    pub departures: Arc<Departures>,
    /// A restarted node's adoption of its earlier life's sessions, which
    /// the cluster bus waits for (see [`adoption`]).
    pub adoption: Arc<adoption::Adoption>,
    /// Where the cluster bus's inbox consumer hands the receipts other
    /// nodes reported for this node's Upstream receipts streams: set once,
    /// before the bridges start, by whoever holds those streams.
    pub stream_receipts: std::sync::OnceLock<StreamReceipts>,
}

/// Takes a receipt for the Upstream receipts stream named first
/// ([`Bridge::stream_receipts`]). Called on a bridge thread: must not
/// block.
pub type StreamReceipts = Arc<dyn Fn(Arc<str>, crate::session::ReceiptRecord) + Send + Sync>;

/// The core side of one inbox, handed to that core at start.
pub struct CoreInbox {
    /// Requests from bridge threads.
    pub rx: Receiver<BridgeMsg>,
    /// Read end of the doorbell, awaited by the core's inbox task.
    pub bell_rx: StdUnixStream,
    /// Write end of the same doorbell, for the core's reply queues.
    pub bell: Arc<Bell>,
}

impl Bridge {
    /// Creates `cores` inboxes of `capacity` messages each.
    pub fn new(
        cores: usize,
        capacity: usize,
        departures: Arc<Departures>,
    ) -> std::io::Result<(Arc<Bridge>, Vec<CoreInbox>)> {
        let mut inboxes = Vec::with_capacity(cores);
        let mut core_side = Vec::with_capacity(cores);
        for _ in 0..cores {
            let (tx, rx) = crossbeam_channel::bounded(capacity);
            let (bell_tx, bell_rx) = StdUnixStream::pair()?;
            let bell = Arc::new(Bell::new(bell_tx)?);
            inboxes.push(Inbox {
                tx,
                bell: bell.clone(),
            });
            core_side.push(CoreInbox { rx, bell_rx, bell });
        }
        let bridge = Bridge {
            inboxes,
            hasher: ahash::RandomState::new(),
            departures,
            adoption: Arc::default(),
            stream_receipts: std::sync::OnceLock::new(),
        };
        Ok((Arc::new(bridge), core_side))
    }

    /// Queues a publish from the HTTP API; the receiver learns the
    /// outcome. Fails at once when the inbox is full or the gateway stopped.
    pub fn publish(
        &self,
        req: PublishRequest,
    ) -> Result<oneshot::Receiver<Result<u64, Refusal>>, Refusal> {
        self.publish_as(Source::Api, req)
    }

    /// [`Bridge::publish`] on behalf of `source` (a bridge thread says
    /// [`Source::Bridge`]), which the authorizer sees.
    pub fn publish_as(
        &self,
        source: Source,
        req: PublishRequest,
    ) -> Result<oneshot::Receiver<Result<u64, Refusal>>, Refusal> {
        let core = self.core_of(req.topic.as_bytes());
        self.publish_on(core, source, req, Scope::All, None)
    }

    /// The core whose inbox serves `lane`: publishes queued in one lane's
    /// inbox, one after another, reach subscribers in that order.
    pub fn core_of(&self, lane: &[u8]) -> usize {
        self.hasher.hash_one(lane) as usize % self.inboxes.len()
    }

    /// [`Bridge::publish_as`] through `core`'s inbox (see
    /// [`Bridge::core_of`]), for whom `scope` names (see
    /// [`BridgeMsg::Publish`]).
    pub fn publish_on(
        &self,
        core: usize,
        source: Source,
        req: PublishRequest,
        scope: Scope,
        numbered: Option<Numbered>,
    ) -> Result<oneshot::Receiver<Result<u64, Refusal>>, Refusal> {
        let (done, outcome) = oneshot::channel();
        self.send(
            core,
            BridgeMsg::Publish {
                req,
                source,
                scope,
                numbered,
                done: Some(done),
            },
        )?;
        Ok(outcome)
    }

    /// Number of cores (inboxes).
    pub fn cores(&self) -> usize {
        self.inboxes.len()
    }

    /// Sends `msg` to `core`'s inbox and rings its bell.
    pub fn send(&self, core: usize, msg: BridgeMsg) -> Result<(), Refusal> {
        let inbox = &self.inboxes[core];
        match inbox.tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(Refusal::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(Refusal::ShuttingDown),
        }
        inbox.bell.ring();
        Ok(())
    }
}
