//! Delivery receipts (`kafka.receipts_topic`) and dead letters
//! (`kafka.dead_letter_topic`), produced from the receipts the cores report
//! (`session::Receipt`). At most once, as connection events: nobody waits
//! for them, and a failure is only counted.
//!
//! A receipt is keyed by client id, with `x-id`, `x-client`, `x-node`,
//! `x-outcome` (and `x-uid` when known) and a JSON body (`receipt_body`):
//! `{"id", "client_id", "username", "node", "topic", "outcome", "limit",
//! "published_ms", "at_ms"}`. A receipt for another node's Upstream
//! receipts stream is the same record on that node's cluster inbox, with
//! `x-receipt-for` naming the stream. A dead letter is the message itself (its
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
use crate::adapters::kafka::receipt_body;
use crate::adapters::kafka::routes::headers;
use crate::adapters::kafka::RECEIPT_FOR;
use crate::bridge::outbound::Outgoing;
use crate::session::{Receipt, ReceiptRecord, ReceiptsTo};

/// Produces `r`'s receipt, and its dead letter when the message will not
/// reach that client. A receipt for an Upstream receipts stream goes to
/// the node that holds it (this node's Upstream took its own already).
pub(super) fn receipt(ctx: &Ctx, r: Receipt) {
    let id = format!("{:016x}", r.id);
    let limit = r.outcome.limit();
    let me = ctx.node.parse::<u16>().unwrap_or_default();
    match &r.to {
        None if !ctx.receipts_topic.is_empty() => {
            let body = receipt_body::encode(&ReceiptRecord::of(&r, me));
            let record = BaseRecord::with_opaque_to(&ctx.receipts_topic, pending())
                .payload(body.as_bytes())
                .key(&*r.client_id)
                .headers(receipt_headers(ctx, &r, &id));
            send(ctx, record, &ctx.metrics.receipts);
        }
        None => {}
        Some(to) if to.node == me => {}
        Some(to) => hand_over(ctx, &r, to, &id, me),
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

/// A receipt's headers: `x-id`, `x-client`, `x-node`, `x-outcome`, and
/// `x-uid` when known.
fn receipt_headers(ctx: &Ctx, r: &Receipt, id: &str) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(6)
        .insert(Header {
            key: "x-id",
            value: Some(id),
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
    h
}

/// Hands `r` to node `to.node`, whose Upstream stream named `to.stream`
/// takes it: a record on that node's cluster inbox (`x-receipt-for`).
/// Without the cluster bus no other node can be reached: counted, and
/// dropped.
fn hand_over(ctx: &Ctx, r: &Receipt, to: &ReceiptsTo, id: &str, me: u16) {
    let Some(cluster) = &ctx.cluster else {
        ctx.metrics.receipts_unforwardable.fetch_add(1, Relaxed);
        return;
    };
    let topic = cluster.config.topic_of(to.node);
    let body = receipt_body::encode(&ReceiptRecord::of(r, me));
    let h = receipt_headers(ctx, r, id).insert(Header {
        key: RECEIPT_FOR,
        value: Some(&*to.stream),
    });
    let record = BaseRecord::with_opaque_to(&topic, pending())
        .payload(body.as_bytes())
        .key(&*r.client_id)
        .headers(h);
    send(ctx, record, &ctx.metrics.receipts_forwarded);
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
