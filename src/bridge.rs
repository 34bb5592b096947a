//! The way into the cores from threads that are not cores: the HTTP API,
//! and the Kafka and Redis bridge threads of later issues.
//!
//! Each core has an inbox: a bounded crossbeam channel of [`BridgeMsg`] and
//! a doorbell (a Unix socket pair). A sender pushes the message, then rings
//! the bell with one byte; the core's bridge task wakes on the bell and
//! drains the channel. A full inbox is refused at once ([`Refusal::Busy`]),
//! never waited on: backpressure reaches the caller (an HTTP 503), not a
//! core.
//!
//! Publishes pick their core by a hash of the topic, so messages of one
//! topic sent through the bridge keep their order (as one client's would).

use std::io::Write;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::codec::{reason, topic, Properties, QoS, Version};
use crate::core::{Core, Entry, Phase};
use crate::id::ConnKey;
use crate::session::Message;

/// A message from a bridge thread to a core.
#[derive(Debug)]
pub enum BridgeMsg {
    /// Publish as if a client had. `done` learns the message id once the
    /// message reached every local subscriber and every interested core's
    /// queue (the point at which a client's PUBACK is sent), or why not.
    Publish {
        req: PublishRequest,
        done: Option<Receipt>,
    },
    /// Describe the session at `key` (found in the directory).
    Inspect {
        key: ConnKey,
        reply: tokio::sync::oneshot::Sender<Option<ClientInfo>>,
    },
    /// Disconnect the client at `key` (MQTT 5: reason 0x98, Administrative
    /// action); its session lives on per its expiry. Replies whether a
    /// connection was there to close.
    Kick {
        key: ConnKey,
        reply: tokio::sync::oneshot::Sender<bool>,
    },
    /// Every session on this core, or those of one user.
    List {
        user: Option<String>,
        reply: tokio::sync::oneshot::Sender<Vec<ClientInfo>>,
    },
    /// This core's session gauges, for `/metrics`.
    Gauges {
        reply: tokio::sync::oneshot::Sender<SessionGauges>,
    },
}

/// Session-state gauges of one core, summed over its sessions when asked
/// (one pass over the core's slab per scrape; the core keeps no running
/// totals on its message path).
#[derive(Debug, Clone, Default)]
pub struct SessionGauges {
    pub online: u64,
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
}

/// What the API reports about one session.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientInfo {
    pub client_id: String,
    pub username: Option<String>,
    pub online: bool,
    /// `n{node}.c{core}.{seq}`, as in the logs.
    pub connection_id: String,
    pub core: usize,
    /// Unix time in milliseconds of the current connection (absent offline).
    pub connected_since_ms: Option<u64>,
    pub peer: Option<String>,
    /// "3.1", "3.1.1" or "5.0".
    pub protocol: Option<&'static str>,
    pub subscriptions: Vec<SubscriptionInfo>,
    /// QoS 1/2 messages waiting for the in-flight window.
    pub queued: usize,
    /// Sent and not yet acknowledged.
    pub inflight: usize,
    /// The in-flight window (the client's Receive Maximum, capped).
    pub inflight_window: Option<usize>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SubscriptionInfo {
    pub filter: String,
    pub qos: u8,
}

/// Where a core reports the outcome of a bridge publish. A tokio oneshot:
/// sending needs no runtime (cores are not tokio), and the HTTP thread
/// awaits it without blocking.
pub type Receipt = tokio::sync::oneshot::Sender<Result<u64, Refusal>>;

/// A publish from outside MQTT.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 properties passed to subscribers (content type, user
    /// properties, message expiry, ...).
    pub properties: Option<Box<Properties>>,
}

/// Why a bridge publish was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not a valid topic name (the reason, as for a client's PUBLISH).
    TopicInvalid(&'static str),
    /// Matches `mqtt.deny_publish`.
    Denied,
    /// QoS above `mqtt.max_qos`.
    QosNotSupported,
    /// A retained message the retained store has no room for.
    RetainedStoreFull,
    /// The core's inbox is full; try again later.
    Busy,
    /// The gateway is stopping (or stopped).
    ShuttingDown,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TopicInvalid(why) => write!(f, "invalid topic: {why}"),
            Refusal::Denied => f.write_str("topic denied by mqtt.deny_publish"),
            Refusal::QosNotSupported => f.write_str("QoS above mqtt.max_qos"),
            Refusal::RetainedStoreFull => f.write_str("retained store full"),
            Refusal::Busy => f.write_str("gateway busy: inbox full"),
            Refusal::ShuttingDown => f.write_str("gateway shutting down"),
        }
    }
}

/// One core's inbox, sender side.
struct Inbox {
    tx: Sender<BridgeMsg>,
    /// Write end of the core's bridge doorbell (non-blocking: a full socket
    /// means the bell is already ringing).
    bell: StdUnixStream,
}

/// The sender side of every core's inbox; cheap to share between threads.
pub struct Bridge {
    inboxes: Vec<Inbox>,
    hasher: ahash::RandomState,
}

/// The core side of one inbox, handed to that core at start.
pub struct CoreInbox {
    pub rx: Receiver<BridgeMsg>,
    pub bell: StdUnixStream,
}

impl Bridge {
    /// Creates `cores` inboxes of `capacity` messages each.
    pub fn new(cores: usize, capacity: usize) -> std::io::Result<(Arc<Bridge>, Vec<CoreInbox>)> {
        let mut inboxes = Vec::with_capacity(cores);
        let mut core_side = Vec::with_capacity(cores);
        for _ in 0..cores {
            let (tx, rx) = crossbeam_channel::bounded(capacity);
            let (bell_tx, bell_rx) = StdUnixStream::pair()?;
            bell_tx.set_nonblocking(true)?;
            inboxes.push(Inbox { tx, bell: bell_tx });
            core_side.push(CoreInbox { rx, bell: bell_rx });
        }
        let bridge = Bridge {
            inboxes,
            hasher: ahash::RandomState::new(),
        };
        Ok((Arc::new(bridge), core_side))
    }

    /// Queues a publish; the receiver learns the outcome. Fails at once
    /// when the inbox is full or the gateway stopped.
    pub fn publish(
        &self,
        req: PublishRequest,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<u64, Refusal>>, Refusal> {
        let core = self.hasher.hash_one(req.topic.as_str()) as usize % self.inboxes.len();
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.send(
            core,
            BridgeMsg::Publish {
                req,
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
        // WouldBlock: the bell already holds unread bytes, so the core will
        // wake and drain everything, this message included.
        let _ = (&inbox.bell).write(&[1]);
        Ok(())
    }
}

impl Core {
    /// Handles one message from a bridge thread.
    pub fn on_bridge(&self, msg: BridgeMsg) {
        match msg {
            // A caller that gave up waiting dropped its receiver; sending
            // to it is then a no-op.
            BridgeMsg::Publish { req, done } => {
                let outcome = self.bridge_publish(req);
                if let Some(done) = done {
                    let _ = done.send(outcome);
                }
            }
            BridgeMsg::Inspect { key, reply } => {
                let mut st = self.st.borrow_mut();
                let info = st.entry(key).and_then(|e| self.client_info(e));
                let _ = reply.send(info);
            }
            BridgeMsg::Kick { key, reply } => {
                let mut st = self.st.borrow_mut();
                let link = st
                    .entry(key)
                    .filter(|e| matches!(e.phase, Phase::Active))
                    .and_then(|e| e.link.as_mut());
                let kicked = link.is_some();
                if let Some(link) = link {
                    let code = link
                        .version
                        .is_v5()
                        .then_some(reason::ADMINISTRATIVE_ACTION);
                    link.request_close_why(code, false, Some("disconnected by the administrator"));
                }
                let _ = reply.send(kicked);
            }
            BridgeMsg::Gauges { reply } => {
                let st = self.st.borrow();
                let mut g = SessionGauges::default();
                for (_, e) in st.conns.iter() {
                    match e.phase {
                        Phase::Active => g.online += 1,
                        Phase::Offline { .. } => g.offline += 1,
                        _ => continue,
                    }
                    g.queued += e.session.queued.len() as u64;
                    g.inflight += e.session.inflight.len() as u64;
                    if let Some(link) = &e.link {
                        g.inflight_capacity += link.window as u64;
                        g.outbox_bytes += link.outbox_bytes as u64;
                    }
                }
                let _ = reply.send(g);
            }
            BridgeMsg::List { user, reply } => {
                let st = self.st.borrow();
                let infos = st
                    .conns
                    .iter()
                    .filter_map(|(_, e)| self.client_info(e))
                    .filter(|i| user.is_none() || i.username == user)
                    .collect();
                let _ = reply.send(infos);
            }
        }
    }

    /// The API's view of a session entry; `None` for entries that are not a
    /// session (a socket before CONNECT, a tombstone, a closing socket).
    fn client_info(&self, e: &Entry) -> Option<ClientInfo> {
        let online = match e.phase {
            Phase::Active => true,
            Phase::Offline { .. } => false,
            _ => return None,
        };
        let link = e.link.as_ref().filter(|_| online);
        let since = link.and_then(|l| l.since.duration_since(std::time::UNIX_EPOCH).ok());
        Some(ClientInfo {
            client_id: e.client_id.as_deref()?.to_string(),
            username: link.and_then(|l| l.username.as_deref()).map(str::to_string),
            online,
            connection_id: e.id.to_string(),
            core: self.id,
            connected_since_ms: since.map(|d| d.as_millis() as u64),
            peer: link.map(|l| l.peer.to_string()),
            protocol: link.map(|l| match l.version {
                Version::V31 => "3.1",
                Version::V311 => "3.1.1",
                Version::V5 => "5.0",
            }),
            subscriptions: e
                .session
                .subs
                .iter()
                .map(|(f, o, _)| SubscriptionInfo {
                    filter: f.to_string(),
                    qos: o.qos as u8,
                })
                .collect(),
            queued: e.session.queued.len(),
            inflight: e.session.inflight.len(),
            inflight_window: link.map(|l| l.window),
        })
    }

    fn bridge_publish(&self, req: PublishRequest) -> Result<u64, Refusal> {
        if req.topic.is_empty() {
            return Err(Refusal::TopicInvalid("empty topic name"));
        }
        topic::validate_name(&req.topic).map_err(Refusal::TopicInvalid)?;
        let m = &self.cfg.mqtt;
        if m.deny_publish.iter().any(|f| topic::matches(f, &req.topic)) {
            return Err(Refusal::Denied);
        }
        if req.qos as u8 > m.max_qos {
            return Err(Refusal::QosNotSupported);
        }
        let expires_at = req
            .properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .map(|s| std::time::Instant::now() + std::time::Duration::from_secs(u64::from(s)));
        let msg = Arc::new(Message {
            id: self.message_id(),
            topic: req.topic.into(),
            payload: req.payload,
            qos: req.qos,
            retain: req.retain,
            properties: req.properties,
            origin: None,
            expires_at,
            born: std::time::Instant::now(),
        });
        let mut st = self.st.borrow_mut();
        if msg.retain && !self.retain(&mut st, &msg) {
            return Err(Refusal::RetainedStoreFull);
        }
        crate::stats::bump(&self.stats().publishes_in, 1);
        self.publish(&mut st, msg.clone());
        Ok(msg.id)
    }
}
