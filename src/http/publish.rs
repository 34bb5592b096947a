//! The API's publishes: `POST /v1/publish`, `/v1/publish/batch` and the
//! push endpoints (`/v1/push/users/{user}`, `/v1/push/clients/{id}`,
//! `/v1/broadcast`). A message goes to a core of this node, or, with
//! `kafka.push_topic`, to the outbound bridge that carries it to every node.

use base64::Engine;
use bytes::Bytes as PayloadBytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;

use super::error::{refusal, ApiError};
use super::idempotency;
use super::request::{authorize, body, parse, percent_decode, reply};
use super::wire::Resp;
use super::Api;
use crate::bridge::outbound::{Produced, PushRefused};
use crate::bridge::{oneshot, PublishRequest, Refusal};
use crate::codec::{Properties, QoS};

/// Most messages in one `POST /v1/publish/batch`.
pub const MAX_BATCH: usize = 1000;

/// One message of `POST /v1/publish` (and of a batch).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    /// Required by `/v1/publish`; the push endpoints set it themselves.
    #[serde(default)]
    topic: Option<String>,
    /// UTF-8 text payload.
    #[serde(default)]
    payload: Option<String>,
    /// Binary payload, standard base64.
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    properties: Option<PropertiesBody>,
    /// Report what becomes of each QoS 1/2 delivery to
    /// `kafka.receipts_topic` (and what will not arrive to
    /// `kafka.dead_letter_topic`).
    #[serde(default)]
    receipts: bool,
}

/// MQTT 5 properties passed to subscribers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PropertiesBody {
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data_base64: Option<String>,
    message_expiry_interval: Option<u32>,
    payload_format_indicator: Option<u8>,
    /// `[["key", "value"], ...]` (keys may repeat, as in MQTT).
    #[serde(default)]
    user_properties: Vec<(String, String)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    messages: Vec<PublishBody>,
}

impl PublishBody {
    /// Checks the fields serde cannot; `at` prefixes field names in a batch.
    /// `receipts_carried`: whether the outbound bridge takes receipts.
    fn into_request(self, at: &str, receipts_carried: bool) -> Result<PublishRequest, ApiError> {
        let bad = |field: &str, msg: &str| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", msg.to_string())
                .field(format!("{at}{field}"))
        };
        let topic = self
            .topic
            .ok_or_else(|| bad("topic", "missing field `topic`"))?;
        let qos = QoS::from_u8(self.qos).ok_or_else(|| bad("qos", "qos must be 0, 1 or 2"))?;
        if self.receipts && !receipts_carried {
            return Err(bad(
                "receipts",
                "receipts need kafka.receipts_topic (or kafka.dead_letter_topic) on this node",
            ));
        }
        let payload = match (self.payload, self.payload_base64) {
            (Some(_), Some(_)) => {
                return Err(bad("payload", "give payload or payload_base64, not both"))
            }
            (Some(text), None) => PayloadBytes::from(text),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map(PayloadBytes::from)
                .map_err(|e| bad("payload_base64", &format!("not base64: {e}")))?,
            (None, None) => PayloadBytes::new(),
        };
        let properties = match self.properties {
            None => None,
            Some(p) => {
                let correlation_data = match p.correlation_data_base64 {
                    None => None,
                    Some(b64) => Some(
                        base64::engine::general_purpose::STANDARD
                            .decode(b64.as_bytes())
                            .map(PayloadBytes::from)
                            .map_err(|e| {
                                bad(
                                    "properties.correlation_data_base64",
                                    &format!("not base64: {e}"),
                                )
                            })?,
                    ),
                };
                if p.payload_format_indicator.is_some_and(|v| v > 1) {
                    return Err(bad("properties.payload_format_indicator", "must be 0 or 1"));
                }
                Some(Box::new(Properties {
                    content_type: p.content_type,
                    response_topic: p.response_topic,
                    correlation_data,
                    message_expiry_interval: p.message_expiry_interval,
                    payload_format_indicator: p.payload_format_indicator,
                    user_properties: p.user_properties,
                    ..Properties::default()
                }))
            }
        };
        Ok(PublishRequest {
            topic,
            payload,
            qos,
            retain: self.retain,
            properties,
            receipts: self.receipts,
            receipt_id: None,
            receipts_to: None,
        })
    }
}

/// What every publish handler reads of its request: the token checked,
/// then its `Idempotency-Key`, path and bounded body.
struct Keyed {
    key: Option<String>,
    path: String,
    bytes: hyper::body::Bytes,
}

async fn keyed(api: &Api, req: Request<Incoming>) -> Result<Keyed, ApiError> {
    authorize(api, &req)?;
    let key = idempotency::key(&req)?;
    let path = req.uri().path().to_owned();
    let bytes = body(api, req).await?;
    Ok(Keyed { key, path, bytes })
}

pub(super) async fn publish_one(api: &Api, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let Keyed { key, path, bytes } = keyed(api, req).await?;
    idempotency::once(api, key, &path, &bytes, || async {
        let msg = parse::<PublishBody>(&bytes)?.into_request("", api.node.outbound.receipts())?;
        let id = publish(api, msg, "").await?;
        Ok(serde_json::json!({"id": format!("{id:016x}")}))
    })
    .await
}

pub(super) async fn publish_batch(api: &Api, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let Keyed { key, path, bytes } = keyed(api, req).await?;
    idempotency::once(api, key, &path, &bytes, || batch(api, &bytes)).await
}

async fn batch(api: &Api, bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    let batch = parse::<BatchBody>(bytes)?;
    if batch.messages.len() > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            format!("at most {MAX_BATCH} messages per batch"),
        )
        .field("messages"));
    }
    // Every message is queued before any receipt is awaited: a batch costs
    // one round of core wake-ups, not one per message.
    let mut pending = Vec::with_capacity(batch.messages.len());
    for (i, m) in batch.messages.into_iter().enumerate() {
        let at = format!("messages[{i}].");
        pending.push(match m.into_request(&at, api.node.outbound.receipts()) {
            Ok(r) => start(api, r, &at),
            Err(e) => Err(e),
        });
    }
    let mut results = Vec::with_capacity(pending.len());
    for (i, p) in pending.into_iter().enumerate() {
        let outcome = match p {
            Ok(started) => finish(api, started, &format!("messages[{i}].")).await,
            Err(e) => Err(e),
        };
        results.push(match outcome {
            Ok(id) => serde_json::json!({"id": format!("{id:016x}")}),
            Err(e) => serde_json::json!({"error": {"code": e.code, "message": e.message, "field": e.field}}),
        });
    }
    Ok(serde_json::json!({"results": results}))
}

/// `POST` to a push endpoint: the body is a publish without `topic`.
pub(super) async fn push(
    api: &Api,
    req: Request<Incoming>,
    topic: String,
) -> Result<Resp, ApiError> {
    let Keyed { key, path, bytes } = keyed(api, req).await?;
    idempotency::once(api, key, &path, &bytes, || async {
        let mut m = parse::<PublishBody>(&bytes)?;
        if m.topic.is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "push endpoints choose the topic (http.user_topic, client_topic, broadcast_topic)",
            )
            .field("topic"));
        }
        m.topic = Some(topic.clone());
        let id = publish(api, m.into_request("", api.node.outbound.receipts())?, "").await?;
        Ok(serde_json::json!({"id": format!("{id:016x}"), "topic": topic}))
    })
    .await
}

/// The push topic for one user or client: the path segment, percent-decoded,
/// in place of `marker`. It must stay one topic level.
pub(super) fn push_topic(
    template: &str,
    marker: &str,
    segment: &str,
    field: &str,
) -> Result<String, ApiError> {
    let bad = |msg: &str| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", msg.to_string()).field(field)
    };
    let value = percent_decode(segment).ok_or_else(|| bad("not valid percent-encoded UTF-8"))?;
    push_topic_for(template, marker, &value, field)
}

/// The push topic for one user or client as given (not percent-encoded):
/// `value` in place of `marker`, and it must stay one topic level.
pub(crate) fn push_topic_for(
    template: &str,
    marker: &str,
    value: &str,
    field: &str,
) -> Result<String, ApiError> {
    let bad = |msg: &str| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", msg.to_string()).field(field)
    };
    if value.is_empty() || value.contains(['/', '+', '#']) {
        return Err(bad("must be one non-empty topic level (no /, + or #)"));
    }
    Ok(template.replace(marker, value))
}

/// Hands one message to the bridge and waits for the core's receipt.
pub(crate) async fn publish(api: &Api, msg: PublishRequest, at: &str) -> Result<u64, ApiError> {
    let started = start(api, msg, at)?;
    finish(api, started, at).await
}

/// A publish handed on: to a core of this node, or to the outbound bridge
/// that carries it to every node (`kafka.push_topic`).
pub(crate) enum Started {
    Local(oneshot::Receiver<Result<u64, Refusal>>),
    Pushed(u64, oneshot::Receiver<Produced>),
}

pub(crate) fn start(api: &Api, msg: PublishRequest, at: &str) -> Result<Started, ApiError> {
    let msg = match api.node.outbound.push(msg) {
        Ok((id, rx)) => return Ok(Started::Pushed(id, rx)),
        Err(PushRefused::NotCarried(msg)) => msg,
        Err(PushRefused::TopicInvalid(why)) => return Err(refusal(Refusal::TopicInvalid(why), at)),
    };
    let rx = api.bridge.publish(msg).map_err(|e| refusal(e, at))?;
    Ok(Started::Local(rx))
}

pub(crate) async fn finish(api: &Api, started: Started, at: &str) -> Result<u64, ApiError> {
    match started {
        Started::Local(rx) => receipt(api, rx, at).await,
        Started::Pushed(id, rx) => match reply(api, rx, at).await? {
            Produced::Done => Ok(id),
            Produced::Failed(e) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "undelivered",
                format!("not taken by Kafka ({e}); nothing was delivered, send it again"),
            )),
        },
    }
}

async fn receipt(
    api: &Api,
    rx: oneshot::Receiver<Result<u64, Refusal>>,
    at: &str,
) -> Result<u64, ApiError> {
    reply(api, rx, at).await?.map_err(|e| refusal(e, at))
}
