//! Session state: what a client keeps across connections (subscriptions,
//! in-flight and queued messages, QoS 2 receive state), the outbound window
//! and the slow-consumer policy.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use std::time::Instant;

use crate::alias::{AliasUse, OutAliases};

use crate::codec::{
    encode, encode_publish, encoded_len_publish, Ack, Packet, Properties, QoS, SubOptions, Version,
};
use crate::id::ConnId;

/// An application message as routed through the gateway; shared by every
/// subscriber (and every core) that receives it.
#[derive(Debug)]
pub struct Message {
    /// Node-unique id (publishing core in the top byte, then a sequence), so
    /// a session can recognise the two copies a cross-core move may produce.
    pub id: u64,
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// v5 properties forwarded to subscribers (never topic alias or
    /// subscription identifiers, which are per connection).
    pub properties: Option<Box<Properties>>,
    /// Connection that published it (for No Local).
    pub origin: Option<ConnId>,
    /// MQTT 5 Message Expiry: past this instant it is never delivered, and
    /// subscribers get the remaining interval.
    pub expires_at: Option<Instant>,
    /// When the gateway took the message in: the start of its fan-out
    /// latency (`tether_fanout_latency_seconds`).
    pub born: Instant,
}

impl Message {
    /// Approximate memory a queued copy pins, for byte limits.
    pub fn weight(&self) -> usize {
        self.topic.len() + self.payload.len() + 64
    }

    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// Subscription identifiers of the subscriptions a delivery matched
/// (MQTT 5); `None` for most deliveries.
pub type SubIds = Option<Box<[u32]>>;

/// One message on its way to one session: the shared message plus what is
/// specific to this subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: Arc<Message>,
    /// min(published QoS, granted QoS).
    pub qos: QoS,
    /// Retain flag as sent: set for retained messages sent on subscribe and
    /// with Retain As Published.
    pub retain: bool,
    pub sub_ids: SubIds,
    /// Set when it came through a shared subscription: the group it goes
    /// back to if this member leaves before acknowledging it.
    pub share: Option<Box<crate::shared::GroupKey>>,
}

impl Delivery {
    /// The PUBLISH properties for this subscriber: the publisher's, plus
    /// subscription identifiers and the remaining expiry interval. Borrowed
    /// when nothing is added (the common case).
    pub fn properties(&self) -> Option<std::borrow::Cow<'_, Properties>> {
        if self.sub_ids.is_none() && self.msg.expires_at.is_none() {
            return self
                .msg
                .properties
                .as_deref()
                .map(std::borrow::Cow::Borrowed);
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
        Some(std::borrow::Cow::Owned(p))
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

/// Something waiting in a connection's outbox, encoded when written.
/// Acknowledgements get a compact variant: one is queued per QoS>0 message.
#[derive(Debug)]
pub enum Frame {
    Publish {
        d: Delivery,
        pkid: u16,
        dup: bool,
    },
    /// PUBACK/PUBREC/PUBREL/PUBCOMP without properties.
    Ack {
        kind: AckKind,
        pkid: u16,
        code: u8,
    },
    PingResp,
    Control(Box<Packet>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

impl Frame {
    /// The outbox form of a control packet.
    pub fn control(packet: Packet) -> Frame {
        let ack = |kind, a: &Ack| {
            a.properties.is_empty().then_some(Frame::Ack {
                kind,
                pkid: a.pkid,
                code: a.code,
            })
        };
        let compact = match &packet {
            Packet::PubAck(a) => ack(AckKind::PubAck, a),
            Packet::PubRec(a) => ack(AckKind::PubRec, a),
            Packet::PubRel(a) => ack(AckKind::PubRel, a),
            Packet::PubComp(a) => ack(AckKind::PubComp, a),
            Packet::PingResp => Some(Frame::PingResp),
            _ => None,
        };
        compact.unwrap_or_else(|| Frame::Control(Box::new(packet)))
    }

    /// Memory the frame pins while queued, for the outbox byte limit.
    pub fn weight(&self) -> usize {
        match self {
            Frame::Publish { d, .. } => d.msg.weight(),
            Frame::Ack { .. } | Frame::PingResp | Frame::Control(_) => 32,
        }
    }

    /// Appends the frame's packet encoded for protocol `v`, using the
    /// connection's outbound topic aliases when it has them.
    pub fn encode(&self, v: Version, out: &mut Vec<u8>, aliases: Option<&mut OutAliases>) {
        match self {
            Frame::Publish { d, pkid, dup } => {
                let m = &d.msg;
                let alias = aliases.map_or(AliasUse::None, |a| a.alias(&m.topic));
                let mut props = if v.is_v5() { d.properties() } else { None };
                let topic = match alias {
                    AliasUse::None => &*m.topic,
                    AliasUse::Bind(a) | AliasUse::Reuse(a) => {
                        props
                            .get_or_insert_with(Default::default)
                            .to_mut()
                            .topic_alias = Some(a);
                        if matches!(alias, AliasUse::Reuse(_)) {
                            ""
                        } else {
                            &*m.topic
                        }
                    }
                };
                encode_publish(
                    out,
                    topic,
                    &m.payload,
                    d.qos,
                    *pkid,
                    *dup,
                    d.retain,
                    props.as_deref(),
                    v,
                );
            }
            Frame::Ack { kind, pkid, code } => {
                let a = Ack {
                    pkid: *pkid,
                    code: *code,
                    properties: Properties::default(),
                };
                let p = match kind {
                    AckKind::PubAck => Packet::PubAck(a),
                    AckKind::PubRec => Packet::PubRec(a),
                    AckKind::PubRel => Packet::PubRel(a),
                    AckKind::PubComp => Packet::PubComp(a),
                };
                encode(&p, v, out);
            }
            Frame::PingResp => encode(&Packet::PingResp, v, out),
            Frame::Control(p) => encode(p, v, out),
        }
    }
}

/// A message sent to the client and not yet fully acknowledged.
#[derive(Debug)]
pub struct Inflight {
    pub pkid: u16,
    pub d: Delivery,
    /// QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP.
    pub released: bool,
}

/// Everything of a session that survives its connection. Moves between
/// cores on takeover, so it holds only `Send` data.
#[derive(Debug, Default)]
pub struct Session {
    /// Subscriptions by filter, in subscribe order, with their MQTT 5
    /// subscription identifier (0: none).
    pub subs: Vec<(Box<str>, SubOptions, u32)>,
    /// Sent, unacknowledged; oldest first (so acks usually hit the front).
    pub inflight: VecDeque<Inflight>,
    /// QoS 1/2 messages not yet sent; bounded by `session.max_queued_messages`.
    pub queued: VecDeque<Delivery>,
    /// Packet ids of QoS 2 publishes received and awaiting PUBREL: a DUP
    /// retransmission with one of these ids is acknowledged, not re-routed.
    pub incoming_qos2: Vec<u16>,
    /// Seconds the session outlives its connection (0: ends with it).
    pub expiry_secs: u32,
    /// Set for a while after the session moved in from another core, while
    /// that core's tombstone still forwards (see [`MoveWindow`]).
    pub move_window: Option<Box<MoveWindow>>,
    last_pkid: u16,
}

impl Session {
    /// Allocates the next free packet id. The window bounds `inflight`, so
    /// the scan is short; ids cycle so a just-freed id is not reused at once.
    pub fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.wrapping_add(1).max(1);
            let id = self.last_pkid;
            if !self.inflight.iter().any(|e| e.pkid == id) {
                return id;
            }
        }
    }

    pub fn subscription(&self, filter: &str) -> Option<usize> {
        self.subs.iter().position(|(f, ..)| &**f == filter)
    }

    /// Removes the in-flight entry `pkid` when its state matches `pred`.
    pub fn take_inflight(
        &mut self,
        pkid: u16,
        pred: impl Fn(&Inflight) -> bool,
    ) -> Option<Inflight> {
        let i = self
            .inflight
            .iter()
            .position(|e| e.pkid == pkid && pred(e))?;
        self.inflight.remove(i)
    }
}

/// Most message ids a moved-in session remembers; past this, duplicates
/// during the move window are no longer suppressed (bounded memory first).
pub const MAX_RECENT_IDS: usize = 65_536;

/// A session that moved in from another core, while that core's tombstone
/// may still forward messages to it (see `core::MOVE_GRACE_MS`).
///
/// Messages for the session then arrive on two paths: routed here directly,
/// and forwarded by the old core. Each path keeps its publisher's order, but
/// a forwarded message can be older than a direct one that arrived first.
/// So direct messages are *held*, and go out when their forwarded copy
/// arrives (in the old core's order) or when the old core's forwards end
/// (`CoreMsg::ForwardEnd`, sent behind its last forward).
#[derive(Debug)]
pub struct MoveWindow {
    /// Ids of messages delivered through the old core.
    pub ids: ahash::AHashSet<u64>,
    /// Direct messages not yet seen through the old core, in arrival order.
    pub held: VecDeque<Delivery>,
    /// Tick at which the window closes even if the old core's end marker
    /// never comes (a fallback; the marker normally closes it).
    pub until: u64,
}

impl MoveWindow {
    pub fn new(until: u64) -> MoveWindow {
        MoveWindow {
            ids: Default::default(),
            held: VecDeque::new(),
            until,
        }
    }

    /// Records `id`; false when it was already seen (a duplicate).
    pub fn record(&mut self, id: u64) -> bool {
        if self.ids.len() >= MAX_RECENT_IDS {
            return !self.ids.contains(&id);
        }
        self.ids.insert(id)
    }
}

/// Outcome of offering a message to a session.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Written to the outbox (wake the connection).
    Sent,
    /// Queued for later (window full or client offline).
    Queued,
    /// QoS 0 dropped because the connection is slow (outbox over its limit).
    DroppedSlow,
    /// QoS 0 dropped because the client is not connected.
    DroppedOffline,
    /// QoS 1/2 dropped because the session queue is full.
    DroppedQueueFull,
    /// Second copy of a message during a cross-core move; already offered.
    Duplicate,
    /// Held during a cross-core move until the old core's copy or its end
    /// marker arrives (see [`MoveWindow`]).
    Held,
    /// Its MQTT 5 Message Expiry Interval ran out before delivery.
    Expired,
    /// Larger than the client's Maximum Packet Size.
    TooLarge,
}
