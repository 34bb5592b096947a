//! A delivery receipt as a Kafka record's JSON body: written to
//! `kafka.receipts_topic`, and to another node's cluster inbox when that
//! node holds the Upstream receipts stream the publisher named (read back
//! there by the inbox consumer).
//!
//! `{"id", "client_id", "username", "node", "topic", "outcome", "limit",
//! "published_ms", "at_ms"}`; `id` is 16 hex digits, as every API writes
//! a message id.

use serde::Deserialize;

use crate::session::ReceiptRecord;

/// `r` as JSON.
pub(crate) fn encode(r: &ReceiptRecord) -> String {
    serde_json::json!({
        "id": format!("{:016x}", r.id),
        "client_id": &*r.client_id,
        "username": r.username.as_deref(),
        "node": r.node,
        "topic": &*r.topic,
        "outcome": r.outcome,
        "limit": r.limit,
        "published_ms": r.published_ms,
        "at_ms": r.at_ms,
    })
    .to_string()
}

#[derive(Deserialize)]
struct Body {
    id: String,
    client_id: String,
    username: Option<String>,
    node: u16,
    topic: String,
    outcome: String,
    limit: Option<String>,
    published_ms: u64,
    at_ms: u64,
}

/// [`encode`]'s JSON as a record; `None` when it is not that.
pub(crate) fn decode(json: &[u8]) -> Option<ReceiptRecord> {
    let b: Body = serde_json::from_slice(json).ok()?;
    Some(ReceiptRecord {
        id: u64::from_str_radix(&b.id, 16).ok()?,
        client_id: b.client_id.into(),
        username: b.username.map(Into::into),
        node: b.node,
        topic: b.topic.into(),
        outcome: b.outcome,
        limit: b.limit,
        published_ms: b.published_ms,
        at_ms: b.at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_reads_back_as_it_was_written() {
        let r = ReceiptRecord {
            id: 0xff00_0000_0000_002a,
            client_id: "phone".into(),
            username: Some("alice".into()),
            node: 3,
            topic: "users/alice".into(),
            outcome: "dropped".into(),
            limit: Some("session.max_queued_messages".into()),
            published_ms: 10,
            at_ms: 12,
        };
        assert_eq!(decode(encode(&r).as_bytes()), Some(r));
        assert_eq!(decode(b"{\"id\": 1}"), None);
    }
}
