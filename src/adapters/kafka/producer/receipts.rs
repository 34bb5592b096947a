//! Delivery receipts (`kafka.receipts_topic`) and dead letters
//! (`kafka.dead_letter_topic`), produced from the receipts the cores report
//! (`session::Receipt`). At most once, as connection events: nobody waits
//! for them, and a failure is only counted.
//!
//! A receipt is keyed by client id, with `x-id`, `x-client`, `x-node`,
//! `x-outcome` (and `x-uid` when known) and a JSON body:
//! `{"id", "client_id", "username", "node", "topic", "outcome", "limit",
//! "published_ms", "at_ms"}`. A dead letter is the message itself (its
//! payload) with the headers a route gives it (`x-id`, this node's id of
//! it; `x-mqtt-topic`, `x-qos`, user properties), the recipient
//! (`x-client`, `x-uid`), `x-reason` (`expired`, or the limit that dropped
//! it) and `x-receipt-id`, the id its receipts carry (the one the API
//! answered).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;

use super::reports::{failed, Answer, Pending};
use super::Ctx;
use crate::adapters::kafka::routes::headers;
use crate::bridge::outbound::Outgoing;
use crate::session::Receipt;

/// Produces `r`'s receipt, and its dead letter when the message will not
/// reach that client.
pub(super) fn receipt(ctx: &Ctx, r: Receipt) {
    let id = format!("{:016x}", r.id);
    let limit = r.outcome.limit();
    // When the message was taken in, by the wall clock: now, less its age.
    let published_ms = r
        .at_ms
        .saturating_sub(r.msg.born.elapsed().as_millis() as u64);
    if !ctx.receipts_topic.is_empty() {
        let body = serde_json::json!({
            "id": id,
            "client_id": &*r.client_id,
            "username": r.username.as_deref(),
            "node": ctx.node.parse::<u16>().unwrap_or_default(),
            "topic": &*r.msg.topic,
            "outcome": r.outcome.name(),
            "limit": limit,
            "published_ms": published_ms,
            "at_ms": r.at_ms,
        })
        .to_string();
        let mut h = OwnedHeaders::new_with_capacity(5)
            .insert(Header {
                key: "x-id",
                value: Some(&id),
            })
            .insert(Header {
                key: "x-client",
                value: Some(&*r.client_id),
            })
            .insert(Header {
                key: "x-node",
                value: Some(&ctx.node),
            })
            .insert(Header {
                key: "x-outcome",
                value: Some(r.outcome.name()),
            });
        if let Some(u) = r.username.as_deref() {
            h = h.insert(Header {
                key: "x-uid",
                value: Some(u),
            });
        }
        let record = BaseRecord::with_opaque_to(&ctx.receipts_topic, pending())
            .payload(body.as_bytes())
            .key(&*r.client_id)
            .headers(h);
        send(ctx, record, &ctx.metrics.receipts);
    }
    if r.outcome.is_final_loss() && !ctx.dead_letter_topic.is_empty() {
        let out = Outgoing {
            msg: r.msg.clone(),
            client_id: None,
            username: None,
        };
        let mut h = headers(&out, "dead-letter", &ctx.node)
            .insert(Header {
                key: "x-client",
                value: Some(&*r.client_id),
            })
            .insert(Header {
                key: "x-reason",
                value: Some(limit.as_deref().unwrap_or("expired")),
            })
            .insert(Header {
                key: "x-receipt-id",
                value: Some(&id),
            });
        if let Some(u) = r.username.as_deref() {
            h = h.insert(Header {
                key: "x-uid",
                value: Some(u),
            });
        }
        let record = BaseRecord::with_opaque_to(&ctx.dead_letter_topic, pending())
            .payload(&r.msg.payload[..])
            .key(&*r.client_id)
            .headers(h);
        send(ctx, record, &ctx.metrics.dead_letters);
    }
}

/// A record nobody waits for.
fn pending() -> Box<Pending> {
    Box::new(Pending {
        ack: Answer::Nobody,
        started: Instant::now(),
    })
}

fn send(
    ctx: &Ctx,
    record: BaseRecord<'_, str, [u8], Box<Pending>>,
    counted: &std::sync::atomic::AtomicU64,
) {
    let m = &ctx.metrics;
    m.inflight.fetch_add(1, Relaxed);
    match ctx.producer.send(record) {
        Ok(()) => {
            counted.fetch_add(1, Relaxed);
        }
        Err((e, _)) => {
            m.inflight.fetch_sub(1, Relaxed);
            failed(m, m.generation.load(Relaxed), e);
        }
    }
}
