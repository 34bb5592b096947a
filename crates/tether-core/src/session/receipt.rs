//! Delivery receipts: what became of each QoS 1/2 delivery of a message
//! whose publisher asked for them (`"receipts": true` on an API publish or
//! push). A message that asked carries its [`Receipts`] sink; the core
//! reports each outcome there as it happens, and the sink (the outbound
//! bridge: `kafka.receipts_topic`) takes it without blocking.
//!
//! One receipt per delivery and outcome: `offline-queued` and then `acked`
//! for a session that came back; `dropped` or `expired` instead of
//! `acked` for one that never took it. QoS 0 deliveries have none (nothing
//! is acknowledged). A session restored from Redis, or moved by the Kafka
//! cluster bus, loses the sink: its later outcomes are not reported.

use std::sync::Arc;

use super::Message;

/// What became of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The client acknowledged it (PUBACK, or PUBCOMP at QoS 2).
    Acked,
    /// Its Message Expiry Interval ran out before it was sent.
    Expired,
    /// Not delivered, for the limit named (a config key, MQTT's Maximum
    /// Packet Size, or the end of the session that held it).
    Dropped(&'static str),
    /// Queued for a client that is offline: it is sent when the client
    /// comes back (a later receipt says how that went).
    OfflineQueued,
}

impl Outcome {
    /// The outcome's name in a receipt record.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Acked => "acked",
            Outcome::Expired => "expired",
            Outcome::Dropped(_) => "dropped",
            Outcome::OfflineQueued => "offline-queued",
        }
    }

    /// Whether the message will never reach this client (a dead letter).
    pub fn is_final_loss(self) -> bool {
        matches!(self, Outcome::Expired | Outcome::Dropped(_))
    }
}

/// One receipt.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// The id the publisher was told (the API's answer): on the node that
    /// minted it, the message's own id; on a node that delivers an API
    /// push carried by Kafka, the id in the record's `x-id`.
    pub id: u64,
    /// The message (its topic and payload: a dead letter carries it).
    pub msg: Arc<Message>,
    /// The recipient's client id.
    pub client_id: Arc<str>,
    /// Its user name, when it is connected with one.
    pub username: Option<Arc<str>>,
    /// What happened.
    pub outcome: Outcome,
    /// When it happened, ms since the Unix epoch.
    pub at_ms: u64,
}

/// Where a message's receipts go. Called on a core: must not block.
pub trait ReceiptSink: Send + Sync + 'static {
    /// Takes one receipt.
    fn receipt(&self, r: Receipt);
}

/// A message's receipt sink (see the module docs), and the id its
/// receipts carry (see [`Receipt::id`]).
#[derive(Clone)]
pub struct Receipts {
    /// Where they go.
    pub sink: Arc<dyn ReceiptSink>,
    /// The id they carry.
    pub id: u64,
}

impl std::fmt::Debug for Receipts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Receipts")
    }
}

/// Reports `outcome` for the delivery of `msg` to `client_id`, if the
/// message asked for receipts and a client id is known.
pub fn report(
    msg: &Arc<Message>,
    client_id: Option<&Arc<str>>,
    username: Option<&Arc<str>>,
    outcome: Outcome,
) {
    let (Some(receipts), Some(client_id)) = (&msg.receipts, client_id) else {
        return;
    };
    receipts.sink.receipt(Receipt {
        id: receipts.id,
        msg: msg.clone(),
        client_id: client_id.clone(),
        username: username.cloned(),
        outcome,
        at_ms: crate::wallclock::now_ms(),
    });
}
