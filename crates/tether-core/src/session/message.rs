//! What travels: a [`Message`] as routed through the gateway (one per
//! publish, shared by every subscriber and every core), and a [`Delivery`],
//! the message plus what is specific to one subscriber.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Durable;
use crate::codec::{encoded_len_publish, Properties, QoS, Version};
use crate::id::{ConnId, GroupKey};

/// An application message as routed through the gateway; shared by every
/// subscriber (and every core) that receives it. Built only by
/// [`Message::new`].
#[derive(Debug)]
pub struct Message {
    /// Node-unique id (publishing core in the top byte, then a sequence), so
    /// a session can recognise the two copies a cross-core move may produce.
    pub id: u64,
    /// Topic name (never a wildcard, never an alias).
    pub topic: Arc<str>,
    /// Opaque payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// Whether it was published with RETAIN.
    pub retain: bool,
    /// v5 properties forwarded to subscribers (never topic alias,
    /// subscription identifiers or will delay, which are not the message's).
    pub properties: Option<Box<Properties>>,
    /// Connection that published it (for No Local); `None` from the HTTP
    /// API, a bridge or the gateway itself.
    pub origin: Option<ConnId>,
    /// MQTT 5 Message Expiry: past this instant it is never delivered, and
    /// subscribers get the remaining interval.
    pub expires_at: Option<Instant>,
    /// When the gateway took the message in: the start of its fan-out
    /// latency (`tether_fanout_latency_seconds`).
    pub born: Instant,
    /// Set when the publisher's acknowledgement waits for the message to be
    /// durable wherever it goes (see [`Confirm`]).
    pub confirm: Option<Arc<Confirm>>,
    /// Whom on this node it is for (see [`Scope`]).
    pub scope: Scope,
    /// Offered again with the same id (`bridge::Numbered`): a session
    /// that holds it already stores that copy instead of taking another.
    pub again: bool,
    /// Where its delivery receipts go, when its publisher asked for them
    /// (see [`super::Receipts`]).
    pub receipts: Option<super::Receipts>,
}

/// Whom on this node a message is for.
#[derive(Debug, Clone, Default)]
pub enum Scope {
    /// Every matching subscription: the usual.
    #[default]
    All,
    /// Every plain subscription, and of the shared-subscription groups
    /// only those named: another node forwarded it and picked this node
    /// for them (`[kafka.cluster]`).
    Groups(Arc<[GroupKey]>),
    /// Only the persistent session of this client id, through its plain
    /// subscriptions: a copy handed on for a session that had left the
    /// node it was sent to (`bridge::departures`).
    Session(Arc<str>),
    /// Only persistent sessions that came from node `of` (its earlier
    /// life, before it restarted), through their plain subscriptions, if
    /// the copy was sent to that node before they left it
    /// (`session::Arrival::missed`): a copy that reached `of` after it
    /// died with its sessions, handed on by it once it was back.
    Orphan {
        /// The node the copy was first sent to.
        of: u16,
        /// When it was first sent, ms since the Unix epoch.
        sent_ms: u64,
    },
}

impl Scope {
    /// Whether the shared group `g` is served here.
    pub fn serves_group(&self, g: &GroupKey) -> bool {
        match self {
            Scope::All => true,
            Scope::Groups(only) => only.contains(g),
            Scope::Session(_) | Scope::Orphan { .. } => false,
        }
    }

    /// Whether the session of `client_id` (`durable`: its place in the
    /// durable store, for a persistent one) is served through its plain
    /// subscriptions: a copy handed on for one session reaches nobody
    /// else, and a restarted node's copy only the persistent sessions that
    /// came from there before it was sent.
    pub fn serves_session(&self, client_id: Option<&str>, durable: Option<&Durable>) -> bool {
        match self {
            Scope::All | Scope::Groups(_) => true,
            Scope::Session(only) => durable.is_some() && client_id == Some(&**only),
            Scope::Orphan { of, sent_ms } => {
                durable.is_some_and(|d| d.came_from.iter().any(|a| a.missed(*of, *sent_ms)))
            }
        }
    }
}

/// What a publisher (a client, a will, the HTTP API, `$SYS`) asks to
/// publish; [`Message::new`] turns it into a [`Message`].
#[derive(Debug)]
pub struct Publication {
    /// Topic name, already validated.
    pub topic: Arc<str>,
    /// Opaque payload.
    pub payload: Bytes,
    /// QoS it is published with.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// The publisher's properties, when it sent any.
    pub properties: Option<Box<Properties>>,
    /// The publishing connection, for No Local.
    pub origin: Option<ConnId>,
}

impl Message {
    /// The one way a message is made: per-connection properties are
    /// stripped, a Message Expiry Interval becomes a deadline from `now`,
    /// and properties that end up empty are dropped.
    pub fn new(id: u64, p: Publication, now: Instant) -> Message {
        let properties = p.properties.and_then(|mut props| {
            props.topic_alias = None;
            props.subscription_identifiers.clear();
            props.will_delay_interval = None;
            (!props.is_empty()).then_some(props)
        });
        let expires_at = properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .map(|secs| now + Duration::from_secs(secs.into()));
        Message {
            id,
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties,
            origin: p.origin,
            expires_at,
            born: now,
            confirm: None,
            scope: Scope::All,
            again: false,
            receipts: None,
        }
    }

    /// The same message, whose publisher waits for `confirm`.
    pub fn with_confirm(mut self, confirm: Arc<Confirm>) -> Message {
        self.confirm = Some(confirm);
        self
    }

    /// Approximate memory a queued copy pins, for byte limits.
    pub fn weight(&self) -> usize {
        Message::weight_of(&self.topic, self.payload.len())
    }

    /// [`Message::weight`] of a message not built yet.
    pub fn weight_of(topic: &str, payload_len: usize) -> usize {
        topic.len() + payload_len + 64
    }

    /// Whether its Message Expiry Interval ran out at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// Counts what must happen before a publisher's acknowledgement may go
/// out, wherever it happens (any core, a bridge thread), and runs the
/// completion once the count reaches zero.
///
/// The publishing core starts it at one (its own share) and adds one for
/// every core it routes the message to and for every onward hop (a shared
/// subscription's member, a tombstone's forward). Each of those releases
/// its share once it has processed the message, after holding one more for
/// every durable write it started; the store releases those when the write
/// is done. So the count cannot reach zero before every write has been
/// counted, and the completion learns whether any of them failed.
pub struct Confirm {
    remaining: AtomicUsize,
    failed: AtomicBool,
    done: Mutex<Option<ConfirmDone>>,
}

/// What a [`Confirm`] runs once: `true` when every share succeeded.
pub type ConfirmDone = Box<dyn FnOnce(bool) + Send>;

impl Confirm {
    /// A confirm with one share (the creator's), running `done` at zero.
    pub fn new(done: ConfirmDone) -> Arc<Confirm> {
        Arc::new(Confirm {
            remaining: AtomicUsize::new(1),
            failed: AtomicBool::new(false),
            done: Mutex::new(Some(done)),
        })
    }

    /// One more share to wait for.
    pub fn hold(&self) {
        self.remaining.fetch_add(1, Ordering::AcqRel);
    }

    /// One share is done (`ok`: it succeeded).
    pub fn release(&self, ok: bool) {
        if !ok {
            self.failed.store(true, Ordering::Release);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Taken once: whoever releases the last share runs it.
            let done = self.done.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(done) = done {
                done(!self.failed.load(Ordering::Acquire));
            }
        }
    }
}

impl std::fmt::Debug for Confirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Confirm({})", self.remaining.load(Ordering::Relaxed))
    }
}

/// Subscription identifiers of the subscriptions a delivery matched
/// (MQTT 5); `None` for most deliveries.
pub type SubIds = Option<Box<[u32]>>;

/// Subscription identifiers worth sending (0 means none).
pub fn sub_ids(ids: impl IntoIterator<Item = u32>) -> SubIds {
    let ids: Vec<u32> = ids.into_iter().filter(|&id| id != 0).collect();
    (!ids.is_empty()).then(|| ids.into_boxed_slice())
}

/// One message on its way to one session: the shared message plus what is
/// specific to this subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub msg: Arc<Message>,
    /// min(published QoS, granted QoS).
    pub qos: QoS,
    /// Retain flag as sent: set for retained messages sent on subscribe and
    /// with Retain As Published.
    pub retain: bool,
    /// Identifiers of the matching subscriptions (MQTT 5).
    pub sub_ids: SubIds,
    /// Set when it came through a shared subscription: the group it goes
    /// back to if this member leaves before acknowledging it.
    pub share: Option<Box<GroupKey>>,
    /// Its sequence number in a durable session (0: not stored). The store
    /// identifies messages by it, never by packet id.
    pub seq: u64,
    /// Its message asked for receipts (`msg.receipts`), copied here where
    /// an acknowledgement finds it without reading the shared message.
    pub receipts: bool,
}

impl Delivery {
    /// A plain (not shared) delivery of `msg`.
    pub fn new(msg: Arc<Message>, qos: QoS, retain: bool, sub_ids: SubIds) -> Delivery {
        Delivery {
            receipts: msg.receipts.is_some(),
            msg,
            qos,
            retain,
            sub_ids,
            share: None,
            seq: 0,
        }
    }

    /// The PUBLISH properties for this subscriber: the publisher's, plus
    /// subscription identifiers and the remaining expiry interval. Borrowed
    /// when nothing is added (the common case).
    pub fn properties(&self) -> Option<Cow<'_, Properties>> {
        if self.sub_ids.is_none() && self.msg.expires_at.is_none() {
            return self.msg.properties.as_deref().map(Cow::Borrowed);
        }
        let mut p = self.msg.properties.as_deref().cloned().unwrap_or_default();
        if let Some(ids) = &self.sub_ids {
            p.subscription_identifiers = ids.to_vec();
        }
        if let Some(at) = self.msg.expires_at {
            // The clock is read only for messages that expire.
            let left = at.saturating_duration_since(Instant::now());
            p.message_expiry_interval = Some(left.as_secs_f64().ceil() as u32);
        }
        Some(Cow::Owned(p))
    }

    /// Encoded size for a peer speaking `v`.
    pub fn encoded_len(&self, v: Version) -> usize {
        let props = if v.is_v5() { self.properties() } else { None };
        encoded_len_publish(
            &self.msg.topic,
            self.msg.payload.len(),
            self.qos,
            props.as_deref(),
            v,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_strips_per_connection_properties_and_sets_the_deadline() {
        let now = Instant::now();
        let props = Properties {
            topic_alias: Some(3),
            will_delay_interval: Some(5),
            subscription_identifiers: vec![7],
            message_expiry_interval: Some(10),
            ..Default::default()
        };
        let m = Message::new(
            1,
            Publication {
                topic: "a".into(),
                payload: Bytes::from_static(b"x"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Some(Box::new(props)),
                origin: None,
            },
            now,
        );
        let p = m.properties.as_deref().expect("expiry is kept");
        assert_eq!(p.topic_alias, None);
        assert_eq!(p.will_delay_interval, None);
        assert!(p.subscription_identifiers.is_empty());
        assert_eq!(m.expires_at, Some(now + Duration::from_secs(10)));
        assert!(!m.expired(now + Duration::from_secs(9)));
        assert!(m.expired(now + Duration::from_secs(10)));
        let bare = Message::new(
            2,
            Publication {
                topic: "a".into(),
                payload: Bytes::new(),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Some(Box::default()),
                origin: None,
            },
            now,
        );
        assert!(bare.properties.is_none(), "empty properties are dropped");
    }

    #[test]
    fn a_scoped_copy_serves_only_the_sessions_it_names() {
        let from_3 = Durable {
            client_id: "dev".into(),
            epoch: 1,
            last_seq: 0,
            lease_term: 0,
            retaken: Vec::new(),
            came_from: vec![super::super::Arrival {
                node: 3,
                at_ms: 1_000,
            }],
        };
        let one = Scope::Session("dev".into());
        assert!(one.serves_session(Some("dev"), Some(&from_3)));
        assert!(!one.serves_session(Some("other"), Some(&from_3)));
        assert!(!one.serves_session(Some("dev"), None), "a clean session");
        let orphan = |of, sent_ms| Scope::Orphan { of, sent_ms };
        assert!(orphan(3, 900).serves_session(Some("dev"), Some(&from_3)));
        assert!(!orphan(2, 900).serves_session(Some("dev"), Some(&from_3)));
        let late = 1_000 + super::super::HAND_ON_MARGIN_MS + 1;
        assert!(!orphan(3, late).serves_session(Some("dev"), Some(&from_3)));
        assert!(Scope::All.serves_session(Some("dev"), None));
    }
}
