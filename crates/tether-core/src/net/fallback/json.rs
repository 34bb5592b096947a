//! The fallback's JSON: events written to clients, and the bodies of their
//! POST actions. The spec is README.md, "HTTP fallback".

use base64::Engine;
use serde::Deserialize;
use serde_json::json;

use crate::codec::Publish;

/// A delivery: `{"type":"message","id":..,"topic":..,"qos":..,"retain":..,
/// "dup":..,"payload":..}`. The payload is a string when it is UTF-8, else
/// `payload_base64`; an MQTT 5 content type comes along.
pub fn message(id: &str, p: &Publish) -> String {
    // Written by hand rather than through a map: the fields keep this
    // order (type first, payload last), which is what a person reading a
    // stream with curl expects, and no map is built per delivery.
    let mut ev = format!(
        "{{\"type\":\"message\",\"id\":{},\"topic\":{},\"qos\":{},\"retain\":{},\"dup\":{}",
        string(id),
        string(&p.topic),
        p.qos as u8,
        p.retain,
        p.dup
    );
    if let Some(ct) = &p.properties.content_type {
        ev.push_str(",\"content_type\":");
        ev.push_str(&string(ct));
    }
    match std::str::from_utf8(&p.payload) {
        Ok(text) => {
            ev.push_str(",\"payload\":");
            ev.push_str(&string(text));
        }
        Err(_) => {
            ev.push_str(",\"payload_base64\":\"");
            ev.push_str(&base64::engine::general_purpose::STANDARD.encode(&p.payload));
            ev.push('"');
        }
    }
    ev.push('}');
    ev
}

/// A JSON string literal.
pub fn string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The first event of a session: `{"type":"session","id":..,"sid":..,
/// "present":..}`.
pub fn session(id: &str, sid: &str, present: bool) -> String {
    format!(
        "{{\"type\":\"session\",\"id\":{},\"sid\":{},\"present\":{present}}}",
        string(id),
        string(sid)
    )
}

/// The last event of a stream whose session ended, or that a newer stream
/// of the session replaced: `{"type":"closed","reason":..}`.
pub fn closed(reason: u8, why: &str) -> String {
    format!(
        "{{\"type\":\"closed\",\"reason\":{reason},\"why\":{}}}",
        string(why)
    )
}

/// An error body: `{"error":..}`.
pub fn error(why: &str) -> String {
    json!({ "error": why }).to_string()
}

/// One subscription in a subscribe body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Topic filter (wildcards allowed).
    pub topic: String,
    /// 0 or 1 (2 is served as 1: the fallback has no QoS 2 flow).
    #[serde(default)]
    pub qos: u8,
}

/// `POST …/subscribe`: one filter, or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SubscribeBody {
    /// `{"topic":"a/#","qos":1}`.
    One(Filter),
    /// `{"filters":[{"topic":"a/#","qos":1}, …]}`.
    Many {
        /// The filters.
        filters: Vec<Filter>,
    },
}

impl SubscribeBody {
    /// The filters, in order.
    pub fn into_filters(self) -> Vec<Filter> {
        match self {
            SubscribeBody::One(f) => vec![f],
            SubscribeBody::Many { filters } => filters,
        }
    }
}

/// `POST …/unsubscribe`: `{"topic":..}` or `{"filters":[..]}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum UnsubscribeBody {
    /// One filter.
    One {
        /// The filter.
        topic: String,
    },
    /// Several.
    Many {
        /// The filters.
        filters: Vec<String>,
    },
}

impl UnsubscribeBody {
    /// The filters, in order.
    pub fn into_filters(self) -> Vec<String> {
        match self {
            UnsubscribeBody::One { topic } => vec![topic],
            UnsubscribeBody::Many { filters } => filters,
        }
    }
}

/// `POST …/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// Topic name (no wildcards).
    pub topic: String,
    /// UTF-8 payload.
    #[serde(default)]
    pub payload: Option<String>,
    /// Binary payload, base64 (instead of `payload`).
    #[serde(default)]
    pub payload_base64: Option<String>,
    /// 0 or 1.
    #[serde(default)]
    pub qos: u8,
    /// Retain flag.
    #[serde(default)]
    pub retain: bool,
}

impl PublishBody {
    /// The payload bytes, or why the body is wrong.
    pub fn payload(&self) -> Result<Vec<u8>, String> {
        match (&self.payload, &self.payload_base64) {
            (Some(_), Some(_)) => Err("give payload or payload_base64, not both".into()),
            (Some(p), None) => Ok(p.as_bytes().to_vec()),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| format!("payload_base64: {e}")),
            (None, None) => Ok(Vec::new()),
        }
    }
}

/// `POST …/ack`: `{"id":"<event id>"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// The last event id processed: it and everything before it are
    /// acknowledged.
    pub id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Properties, QoS};

    #[test]
    fn binary_payloads_go_as_base64_and_text_as_text() {
        let mut p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a/b".into(),
            pkid: 3,
            properties: Properties::default(),
            payload: bytes::Bytes::from_static(b"hi \"there\""),
        };
        let v: serde_json::Value = serde_json::from_str(&message("7.1", &p)).unwrap();
        assert_eq!(v["payload"], "hi \"there\"");
        assert_eq!(v["id"], "7.1");
        assert_eq!(v["qos"], 1);
        p.payload = bytes::Bytes::from_static(&[0xff, 0x00]);
        let v: serde_json::Value = serde_json::from_str(&message("7.2", &p)).unwrap();
        assert_eq!(v["payload_base64"], "/wA=");
        assert!(v.get("payload").is_none());
    }

    #[test]
    fn bodies_take_one_or_many() {
        let one: SubscribeBody = serde_json::from_str(r#"{"topic":"a/#","qos":1}"#).unwrap();
        assert_eq!(one.into_filters()[0].qos, 1);
        let many: SubscribeBody =
            serde_json::from_str(r#"{"filters":[{"topic":"a"},{"topic":"b","qos":1}]}"#).unwrap();
        assert_eq!(many.into_filters().len(), 2);
        let p: PublishBody =
            serde_json::from_str(r#"{"topic":"t","payload_base64":"/wA="}"#).unwrap();
        assert_eq!(p.payload().unwrap(), vec![0xff, 0]);
        assert!(serde_json::from_str::<PublishBody>(r#"{"topic":"t","bogus":1}"#).is_err());
    }
}
