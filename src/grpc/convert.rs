//! Proto messages to the API's requests and back, and the API's errors to
//! gRPC statuses.

use hyper::StatusCode;
use tonic::{Code, Status};

use super::proto;
use crate::adapters::upstream::{Handed, Item};
use crate::bridge::{ClientInfo, PublishRequest};
use crate::codec::{Properties, QoS};
use crate::http::error::ApiError;
use crate::session::ReceiptsTo;

/// The gRPC status for an API error: the code a client expects for the
/// HTTP status, and a message that starts with the API's error code and
/// names the field at fault.
pub(super) fn status(e: ApiError) -> Status {
    status_of(e.status, e.code, &e.message, e.field.as_deref())
}

/// [`status`] from its parts: an answer kept under an idempotency key
/// carries its error as JSON, not as an [`ApiError`].
pub(super) fn status_of(
    http: StatusCode,
    code: &str,
    message: &str,
    field: Option<&str>,
) -> Status {
    let grpc = match http {
        StatusCode::BAD_REQUEST => Code::InvalidArgument,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::CONFLICT => Code::Aborted,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::INSUFFICIENT_STORAGE => Code::ResourceExhausted,
        StatusCode::UNPROCESSABLE_ENTITY => Code::FailedPrecondition,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => Code::Unavailable,
        StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
        s if s.is_client_error() => Code::InvalidArgument,
        _ => Code::Internal,
    };
    let message = match field {
        Some(f) => format!("{code}: {message} (field {f})"),
        None => format!("{code}: {message}"),
    };
    Status::new(grpc, message)
}

fn bad(at: &str, field: &str, msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", msg).field(format!("{at}{field}"))
}

/// A proto message as a publish, checked as the HTTP API checks its JSON;
/// `at` prefixes field names (`messages[2].`), `receipts_carried` says
/// whether the outbound bridge takes receipts, `node` is this node (whose
/// streams take the receipts `receipts_to` names).
pub(super) fn publish_request(
    m: Option<proto::Message>,
    at: &str,
    receipts_carried: bool,
    node: u16,
) -> Result<PublishRequest, ApiError> {
    let m = m.ok_or_else(|| bad(at, "message", "missing field `message`"))?;
    if m.topic.is_empty() {
        return Err(bad(at, "topic", "missing field `topic`"));
    }
    let qos = u8::try_from(m.qos)
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| bad(at, "qos", "qos must be 0, 1 or 2"))?;
    // A named receipts stream takes them instead of Kafka.
    if m.receipts && m.receipts_to.is_empty() && !receipts_carried {
        return Err(bad(
            at,
            "receipts",
            "receipts need kafka.receipts_topic (or kafka.dead_letter_topic) on this node",
        ));
    }
    let properties = match m.properties {
        None => None,
        Some(p) => {
            let pfi = match p.payload_format_indicator {
                0 => None,
                1 => Some(1),
                _ => {
                    return Err(bad(
                        at,
                        "properties.payload_format_indicator",
                        "must be 0 or 1",
                    ))
                }
            };
            Some(Box::new(Properties {
                content_type: some(p.content_type),
                response_topic: some(p.response_topic),
                correlation_data: (!p.correlation_data.is_empty()).then_some(p.correlation_data),
                message_expiry_interval: (p.message_expiry_interval != 0)
                    .then_some(p.message_expiry_interval),
                payload_format_indicator: pfi,
                user_properties: p
                    .user_properties
                    .into_iter()
                    .map(|u| (u.key, u.value))
                    .collect(),
                ..Properties::default()
            }))
        }
    };
    Ok(PublishRequest {
        topic: m.topic,
        payload: m.payload,
        qos,
        retain: m.retain,
        properties,
        receipts: m.receipts,
        receipt_id: None,
        receipts_to: (!m.receipts_to.is_empty()).then(|| ReceiptsTo {
            node,
            stream: m.receipts_to.into(),
        }),
    })
}

/// An empty string is an absent one.
fn some(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// The message's id as every API writes it: 16 hex digits.
pub(super) fn hex(id: u64) -> String {
    format!("{id:016x}")
}

pub(super) fn client_info(c: ClientInfo) -> proto::ClientInfo {
    proto::ClientInfo {
        client_id: c.client_id,
        username: c.username.unwrap_or_default(),
        online: c.online,
        connection_id: c.connection_id,
        node: u32::from(c.node),
        core: c.core as u32,
        transport: c.transport.unwrap_or_default(),
        connected_since_ms: c.connected_since_ms.unwrap_or_default(),
        peer: c.peer.unwrap_or_default(),
        protocol: c.protocol.unwrap_or_default().to_owned(),
        subscriptions: c
            .subscriptions
            .into_iter()
            .map(|s| proto::Subscription {
                filter: s.filter,
                qos: u32::from(s.qos),
            })
            .collect(),
        queued: c.queued as u64,
        inflight: c.inflight as u64,
        inflight_window: c.inflight_window.unwrap_or_default() as u64,
    }
}

/// A copy for a backend, with what the Kafka headers carry.
pub(super) fn upstream_message(h: Handed, node: u16) -> proto::UpstreamMessage {
    let out = match h.item {
        Item::Message(out) => out,
        Item::Receipt(r) => {
            return proto::UpstreamMessage {
                seq: h.seq,
                redelivered: h.redelivered,
                receipt: Some(proto::Receipt {
                    id: hex(r.id),
                    client_id: r.client_id.to_string(),
                    username: r.username.as_deref().unwrap_or_default().to_owned(),
                    node: u32::from(r.node),
                    topic: r.topic.to_string(),
                    outcome: r.outcome.clone(),
                    limit: r.limit.clone().unwrap_or_default(),
                    published_ms: r.published_ms,
                    at_ms: r.at_ms,
                }),
                ..proto::UpstreamMessage::default()
            };
        }
    };
    let msg = &out.msg;
    proto::UpstreamMessage {
        seq: h.seq,
        id: hex(msg.id),
        client_id: out.client_id.as_deref().unwrap_or_default().to_owned(),
        username: out.username.as_deref().unwrap_or_default().to_owned(),
        node: u32::from(node),
        topic: msg.topic.to_string(),
        qos: msg.qos as u32,
        retain: msg.retain,
        payload: msg.payload.clone(),
        properties: msg.properties.as_deref().map(|p| proto::Properties {
            content_type: p.content_type.clone().unwrap_or_default(),
            response_topic: p.response_topic.clone().unwrap_or_default(),
            correlation_data: p.correlation_data.clone().unwrap_or_default(),
            message_expiry_interval: p.message_expiry_interval.unwrap_or_default(),
            payload_format_indicator: p.payload_format_indicator.map_or(0, u32::from),
            user_properties: p
                .user_properties
                .iter()
                .map(|(k, v)| proto::UserProperty {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
        }),
        redelivered: h.redelivered,
        receipt: None,
    }
}
