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
//!
//! A publisher may name an Upstream receipts stream instead
//! ([`ReceiptsTo`]): the receipts then go to the backends' gRPC streams
//! that took that name on the node it names, as [`ReceiptRecord`]s
//! (handed over the cluster bus when another node delivered).

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
    /// The client refused it: an MQTT 5 PUBACK or PUBREC with this reason
    /// code (0x80 or above). It is not sent again.
    Refused(u8),
}

impl Outcome {
    /// The outcome's name in a receipt record.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Acked => "acked",
            Outcome::Expired => "expired",
            Outcome::Dropped(_) | Outcome::Refused(_) => "dropped",
            Outcome::OfflineQueued => "offline-queued",
        }
    }

    /// What dropped it, for a receipt's `limit` and a dead letter's
    /// `x-reason`: the limit named, or the client's reason code.
    pub fn limit(self) -> Option<String> {
        match self {
            Outcome::Dropped(limit) => Some(limit.to_owned()),
            Outcome::Refused(code) => Some(format!("client reason code 0x{code:02x}")),
            _ => None,
        }
    }

    /// Whether the message will never reach this client (a dead letter).
    pub fn is_final_loss(self) -> bool {
        matches!(
            self,
            Outcome::Expired | Outcome::Dropped(_) | Outcome::Refused(_)
        )
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
    /// The Upstream receipts stream it goes to, if its publisher named
    /// one (else the outbound bridge's `kafka.receipts_topic`).
    pub to: Option<ReceiptsTo>,
}

/// The Upstream receipts stream a publisher named (gRPC `receipts_to`):
/// the node it called, where backends' streams take receipts by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptsTo {
    /// The node whose streams take them.
    pub node: u16,
    /// The name those streams subscribed with.
    pub stream: Arc<str>,
}

impl ReceiptsTo {
    /// As a header value: `{node}/{stream}`.
    pub fn encode(&self) -> String {
        format!("{}/{}", self.node, self.stream)
    }

    /// From [`ReceiptsTo::encode`]'s form; `None` if it is not.
    pub fn decode(s: &str) -> Option<ReceiptsTo> {
        let (node, stream) = s.split_once('/')?;
        let node = node.parse().ok()?;
        (!stream.is_empty()).then(|| ReceiptsTo {
            node,
            stream: stream.into(),
        })
    }
}

/// A receipt as it leaves the node: plain data, no message attached (a
/// receipts topic record, an Upstream stream's receipt, or one handed to
/// the node whose stream takes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptRecord {
    /// See [`Receipt::id`].
    pub id: u64,
    /// The recipient's client id.
    pub client_id: Arc<str>,
    /// Its user name, when known.
    pub username: Option<Arc<str>>,
    /// The node that delivered (or failed to).
    pub node: u16,
    /// The message's topic.
    pub topic: Arc<str>,
    /// [`Outcome::name`].
    pub outcome: String,
    /// [`Outcome::limit`].
    pub limit: Option<String>,
    /// When the message was taken in, ms since the Unix epoch.
    pub published_ms: u64,
    /// When it happened, ms since the Unix epoch.
    pub at_ms: u64,
}

impl ReceiptRecord {
    /// `r` as reported on `node`.
    pub fn of(r: &Receipt, node: u16) -> ReceiptRecord {
        ReceiptRecord {
            id: r.id,
            client_id: r.client_id.clone(),
            username: r.username.clone(),
            node,
            topic: r.msg.topic.clone(),
            outcome: r.outcome.name().to_owned(),
            limit: r.outcome.limit(),
            // By the wall clock: when it happened, less the message's age.
            published_ms: r
                .at_ms
                .saturating_sub(r.msg.born.elapsed().as_millis() as u64),
            at_ms: r.at_ms,
        }
    }
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
    /// The Upstream receipts stream they go to, if named.
    pub to: Option<ReceiptsTo>,
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
        to: receipts.to.clone(),
    });
}

#[cfg(test)]
mod tests {
    use super::{Outcome, ReceiptsTo};

    #[test]
    fn a_receipts_stream_name_crosses_nodes_as_it_was() {
        let to = ReceiptsTo {
            node: 7,
            stream: "billing/receipts".into(),
        };
        assert_eq!(ReceiptsTo::decode(&to.encode()), Some(to));
        assert_eq!(ReceiptsTo::decode("7/"), None);
        assert_eq!(ReceiptsTo::decode("x/name"), None);
    }

    #[test]
    fn a_client_refusal_is_a_drop_with_its_reason_code() {
        let r = Outcome::Refused(0x87);
        assert_eq!(r.name(), "dropped");
        assert_eq!(r.limit().as_deref(), Some("client reason code 0x87"));
        assert!(r.is_final_loss(), "a dead letter");
        assert_eq!(Outcome::Acked.limit(), None);
        assert_eq!(
            Outcome::Dropped("session.max_queued_messages")
                .limit()
                .as_deref(),
            Some("session.max_queued_messages")
        );
    }
}
