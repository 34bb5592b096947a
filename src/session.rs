//! Session state: what a client keeps across connections (subscriptions,
//! in-flight and queued messages, QoS 2 receive state), the outbound window
//! and the slow-consumer policy.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::codec::{encoded_len_publish, Packet, Properties, QoS, SubOptions, Version};
use crate::id::ConnId;

/// An application message as routed through the gateway; shared by every
/// subscriber (and every core) that receives it.
#[derive(Debug)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// v5 properties forwarded to subscribers (never topic alias or
    /// subscription identifiers, which are per connection).
    pub properties: Option<Box<Properties>>,
    /// Connection that published it (for No Local).
    pub origin: Option<ConnId>,
}

impl Message {
    /// Approximate memory a queued copy pins, for byte limits.
    pub fn weight(&self) -> usize {
        self.topic.len() + self.payload.len() + 64
    }
}

/// Something waiting in a connection's outbox, encoded when written.
#[derive(Debug)]
pub enum Frame {
    Publish { msg: Arc<Message>, qos: QoS, pkid: u16, dup: bool, retain: bool },
    Control(Packet),
}

impl Frame {
    pub fn weight(&self) -> usize {
        match self {
            Frame::Publish { msg, .. } => msg.weight(),
            Frame::Control(_) => 32,
        }
    }

    /// Encoded size for a peer speaking `v`.
    pub fn encoded_len(&self, v: Version) -> usize {
        match self {
            Frame::Publish { msg, qos, .. } => {
                encoded_len_publish(&msg.topic, msg.payload.len(), *qos, msg.properties.as_deref(), v)
            }
            Frame::Control(_) => 0,
        }
    }
}

/// A message sent to the client and not yet fully acknowledged.
#[derive(Debug)]
pub struct Inflight {
    pub pkid: u16,
    pub msg: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    /// QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP.
    pub released: bool,
}

/// A QoS 1/2 message waiting for window space (or for the client).
#[derive(Debug)]
pub struct Queued {
    pub msg: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
}

/// Everything of a session that survives its connection. Moves between
/// cores on takeover, so it holds only `Send` data.
#[derive(Debug, Default)]
pub struct Session {
    /// Subscriptions by filter, in subscribe order.
    pub subs: Vec<(Box<str>, SubOptions)>,
    /// Sent, unacknowledged; oldest first (so acks usually hit the front).
    pub inflight: VecDeque<Inflight>,
    /// QoS 1/2 messages not yet sent; bounded by `session.max_queued_messages`.
    pub queued: VecDeque<Queued>,
    /// Packet ids of QoS 2 publishes received and awaiting PUBREL: a DUP
    /// retransmission with one of these ids is acknowledged, not re-routed.
    pub incoming_qos2: Vec<u16>,
    /// Seconds the session outlives its connection (0: ends with it).
    pub expiry_secs: u32,
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
        self.subs.iter().position(|(f, _)| &**f == filter)
    }

    /// Removes the in-flight entry `pkid` when its state matches `pred`.
    pub fn take_inflight(&mut self, pkid: u16, pred: impl Fn(&Inflight) -> bool) -> Option<Inflight> {
        let i = self.inflight.iter().position(|e| e.pkid == pkid && pred(e))?;
        self.inflight.remove(i)
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
}
