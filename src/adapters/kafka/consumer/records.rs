//! What a consumed record becomes: the MQTT publish its source's rule
//! makes of it (topic, QoS, retain flag, user properties from its
//! headers), or why it is passed over.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use rdkafka::message::{BorrowedMessage, Headers, Message};

use super::{Ctx, RuleKind};
use crate::adapters::kafka::receipt_body;
use crate::adapters::kafka::HandTo;
use crate::bridge::outbound::Outgoing;
use crate::bridge::PublishRequest;
use crate::codec::{Properties, QoS};
use crate::config::SourceTarget;
use crate::id::GroupKey;
use crate::session::{ReceiptRecord, ReceiptsTo, Scope};

/// Headers Tether writes itself: not copied into user properties.
const OWN_HEADERS: [&str; 14] = [
    "x-id",
    "x-uid",
    "x-client",
    "x-event",
    "x-node",
    "x-mqtt-topic",
    "x-qos",
    "x-retain",
    "x-share",
    crate::adapters::kafka::TO_SESSION,
    crate::adapters::kafka::ORPHAN_OF,
    crate::adapters::kafka::FIRST_SENT,
    "x-receipts",
    crate::adapters::kafka::RECEIPTS_TO,
];

/// A record made into a publish, or why it is passed over.
pub(super) enum Request {
    Publish {
        req: PublishRequest,
        /// Whom on this node: a cluster inbox record serves only the
        /// shared-subscription groups it names, or only one session.
        scope: Scope,
        /// Forward to the other nodes with interest too (owner mode).
        forward: bool,
        /// A cluster inbox record: handed on for persistent sessions that
        /// left this node meanwhile.
        hand_on: Option<HandOn>,
    },
    SkipOwn,
    /// A cluster inbox record sent before this process started, for the
    /// node's earlier life: not for whoever subscribed here since, but for
    /// the persistent sessions that life held, wherever they are now.
    /// Handed on to every node: a first copy for whoever came from here
    /// (`HandTo::Orphans`), a copy handed on for one session for that
    /// session again (`HandTo::Session`).
    Orphan {
        req: PublishRequest,
        hand_on: HandOn,
        to: HandTo,
    },
    /// A cluster inbox record sent before this process started that no
    /// session is owed: QoS 0, or an orphan handed on already.
    Stale,
    Undeliverable(&'static str),
    /// A receipt another node handed over for this node's Upstream
    /// receipts stream named first (`x-receipt-for`).
    Receipt(Arc<str>, ReceiptRecord),
}

/// What a cluster inbox record needs to be handed on
/// (`bridge::departures`).
pub(super) struct HandOn {
    /// When its sender produced it, ms since the Unix epoch.
    pub sent_ms: u64,
    /// Its publisher's client id (`x-client`): the copies handed on are
    /// keyed by it, as the first copy was.
    pub client: Option<Arc<str>>,
    /// Its publisher's user name (`x-uid`), carried on.
    pub user: Option<Arc<str>>,
}

impl Ctx {
    pub(super) fn request(&self, m: &BorrowedMessage<'_>) -> Request {
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
        if rule.kind == RuleKind::Inbox {
            if let Some(to) = header(crate::adapters::kafka::RECEIPT_FOR) {
                let to = std::str::from_utf8(to).ok().map(Arc::from);
                let r = m.payload().and_then(receipt_body::decode);
                return match (to, r) {
                    (Some(to), Some(r)) => Request::Receipt(to, r),
                    _ => Request::Undeliverable("a handed-over receipt that does not parse"),
                };
            }
        }
        let before_start = rule.kind == RuleKind::Inbox
            && m.timestamp()
                .to_millis()
                .is_some_and(|t| t < self.started_ms);
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
        let text = |name: &str| header(name).and_then(|v| std::str::from_utf8(v).ok());
        let inbox = rule.kind == RuleKind::Inbox;
        let orphan_of = text(crate::adapters::kafka::ORPHAN_OF).and_then(|n| n.parse().ok());
        let scope = match (text(crate::adapters::kafka::TO_SESSION), orphan_of) {
            // A copy handed on for one session that left its first node.
            (Some(session), _) if inbox => Scope::Session(session.into()),
            // A copy handed on by a restarted node, for the sessions that
            // came from its earlier life.
            (None, Some(of)) if inbox => Scope::Orphan {
                of,
                sent_ms: text(crate::adapters::kafka::FIRST_SENT)
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0),
            },
            // The sending node picked this one for the groups it names.
            _ if inbox => Scope::Groups(
                m.headers()
                    .into_iter()
                    .flat_map(|h| h.iter())
                    .filter(|h| h.key == "x-share")
                    .filter_map(|h| GroupKey::parse(std::str::from_utf8(h.value?).ok()?))
                    .collect::<Vec<_>>()
                    .into(),
            ),
            _ => Scope::All,
        };
        // A copy handed on (for one session, or a restarted node's
        // sessions) is never retained here: it comes late, and must not
        // replace a newer retained message.
        let handed_on = matches!(scope, Scope::Session(_) | Scope::Orphan { .. });
        let retain =
            rule.target == SourceTarget::Topic && header("x-retain") == Some(b"1") && !handed_on;
        let hand_on = inbox.then(|| HandOn {
            sent_ms: m
                .timestamp()
                .to_millis()
                .map_or_else(crate::wallclock::now_ms, |t| t.max(0) as u64),
            client: text("x-client").map(Arc::from),
            user: text("x-uid").map(Arc::from),
        });
        // An API push that asked for receipts, or a backend's record that
        // does: every node that delivers it reports.
        let receipts_to = text(crate::adapters::kafka::RECEIPTS_TO).and_then(ReceiptsTo::decode);
        let receipts = rule.receipts || header("x-receipts") == Some(b"1") || receipts_to.is_some();
        let req = PublishRequest {
            topic,
            payload: bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
            qos,
            retain,
            properties: (!props.user_properties.is_empty()).then(|| Box::new(props)),
            receipts,
            // The id the API answered (its push record's `x-id`), which
            // this node's receipts carry instead of its own.
            receipt_id: receipts
                .then(|| text("x-id").and_then(|h| u64::from_str_radix(h, 16).ok()))
                .flatten(),
            receipts_to,
        };
        match (before_start, hand_on) {
            (false, hand_on) => Request::Publish {
                req,
                scope,
                forward: rule.kind == RuleKind::Owner,
                hand_on,
            },
            (true, Some(hand_on)) if qos != QoS::AtMostOnce => match scope {
                // A first copy, which a persistent session may be owed.
                Scope::Groups(_) => Request::Orphan {
                    req,
                    to: HandTo::Orphans {
                        sent_ms: hand_on.sent_ms,
                    },
                    hand_on,
                },
                // A copy handed on for one session that had left its
                // node. Every node was sent one, but the node taking the
                // session over may have been this one's earlier life,
                // killed mid-takeover, while no other held it yet (the
                // fault harness lost such copies): so for that session
                // again, wherever it is now.
                Scope::Session(session) => Request::Orphan {
                    req,
                    hand_on,
                    to: HandTo::Session(session),
                },
                _ => Request::Stale,
            },
            (true, _) => Request::Stale,
        }
    }

    /// A node-unique id for a record's message, kept while the record is
    /// offered again (`bridge::Numbered`).
    pub(super) fn next_id(&self) -> u64 {
        crate::id::Minter::Record.id(self.forward_seq.fetch_add(1, Relaxed))
    }

    /// A record as a message this node produces again: an owner-mode
    /// record for the other nodes (no publisher), or a copy handed on
    /// (its first copy's publisher, which keys it).
    pub(super) fn outgoing(
        &self,
        req: &PublishRequest,
        client_id: Option<Arc<str>>,
        username: Option<Arc<str>>,
    ) -> Outgoing {
        let id = self.next_id();
        let msg = crate::session::Message::new(
            id,
            req.clone().into_publication(),
            std::time::Instant::now(),
        );
        Outgoing {
            msg: Arc::new(msg),
            client_id,
            username,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OWN_HEADERS;

    #[test]
    fn the_headers_of_copies_handed_on_are_not_user_properties() {
        for h in [
            crate::adapters::kafka::TO_SESSION,
            crate::adapters::kafka::ORPHAN_OF,
            crate::adapters::kafka::FIRST_SENT,
        ] {
            assert!(OWN_HEADERS.contains(&h), "{h} would reach subscribers");
        }
    }
}
