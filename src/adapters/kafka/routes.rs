//! Routes compiled from `[[kafka.route]]`: which messages leave, for which
//! Kafka topic, under which key, with which headers.

use rdkafka::message::{Header, OwnedHeaders};

use crate::bridge::outbound::{OutboundPolicy, Outgoing};
use crate::codec::topic;
use crate::config::{RouteAck, RouteConfig};

/// One route.
#[derive(Debug, Clone)]
pub struct Route {
    filter: String,
    /// The Kafka topic.
    pub topic: String,
    key: String,
    ack: RouteAck,
}

/// The routes, in their configured order.
#[derive(Debug, Clone, Default)]
pub struct Routes(Vec<Route>);

impl Routes {
    /// Compiles the configured routes (validated with the configuration).
    pub fn new(cfg: &[RouteConfig]) -> Routes {
        Routes(
            cfg.iter()
                .map(|r| Route {
                    filter: r.filter.clone(),
                    topic: r.topic.clone(),
                    key: r.key.clone(),
                    ack: r.ack,
                })
                .collect(),
        )
    }

    /// The first route whose filter matches `mqtt_topic`.
    pub fn find(&self, mqtt_topic: &str) -> Option<&Route> {
        self.0
            .iter()
            .find(|r| topic::matches(&r.filter, mqtt_topic))
    }

    /// The policy for a message on `mqtt_topic`.
    pub fn policy(&self, mqtt_topic: &str) -> OutboundPolicy {
        match self.find(mqtt_topic).map(|r| r.ack) {
            None => OutboundPolicy::Skip,
            Some(RouteAck::Kafka) => OutboundPolicy::Confirm,
            Some(RouteAck::AtOnce) => OutboundPolicy::Forget,
        }
    }

    /// Whether there is any route.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Route {
    /// The record key for `out`: the template with `%c`, `%u`, `%t` and
    /// `%%` replaced.
    pub fn key(&self, out: &Outgoing) -> String {
        let mut key = String::with_capacity(self.key.len() + 16);
        let mut chars = self.key.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                key.push(c);
                continue;
            }
            match chars.next() {
                Some('c') => key.push_str(out.client_id.as_deref().unwrap_or("")),
                Some('u') => key.push_str(out.username.as_deref().unwrap_or("")),
                Some('t') => key.push_str(&out.msg.topic),
                Some(other) => key.push(other),
                None => key.push('%'),
            }
        }
        key
    }
}

/// The record's headers (seed 003: route and trace without decoding the
/// payload): `x-id` (the message id, hex), `x-uid`, `x-client`, `x-event`,
/// `x-node`, `x-mqtt-topic`, `x-qos`, then the MQTT 5 user properties as
/// they came.
pub fn headers(out: &Outgoing, event: &str, node: &str) -> OwnedHeaders {
    // No allocation for the id and the QoS: this runs once per message.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = HEX[((out.msg.id >> (60 - 4 * i)) & 0xf) as usize];
    }
    let qos: &[u8] = match out.msg.qos as u8 {
        0 => b"0",
        1 => b"1",
        _ => b"2",
    };
    let mut h = OwnedHeaders::new_with_capacity(8)
        .insert(Header {
            key: "x-id",
            value: Some(&id[..]),
        })
        .insert(Header {
            key: "x-event",
            value: Some(event.as_bytes()),
        })
        .insert(Header {
            key: "x-node",
            value: Some(node.as_bytes()),
        })
        .insert(Header {
            key: "x-mqtt-topic",
            value: Some(out.msg.topic.as_bytes()),
        })
        .insert(Header {
            key: "x-qos",
            value: Some(qos),
        });
    if out.msg.retain {
        h = h.insert(Header {
            key: "x-retain",
            value: Some(b"1"),
        });
    }
    if let Some(r) = &out.msg.receipts {
        h = h.insert(Header {
            key: "x-receipts",
            value: Some(b"1"),
        });
        if let Some(to) = &r.to {
            h = h.insert(Header {
                key: crate::adapters::kafka::RECEIPTS_TO,
                value: Some(to.encode().as_bytes()),
            });
        }
    }
    if let Some(u) = out.username.as_deref() {
        h = h.insert(Header {
            key: "x-uid",
            value: Some(u.as_bytes()),
        });
    }
    if let Some(c) = out.client_id.as_deref() {
        h = h.insert(Header {
            key: "x-client",
            value: Some(c.as_bytes()),
        });
    }
    if let Some(props) = out.msg.properties.as_deref() {
        for (k, v) in &props.user_properties {
            h = h.insert(Header {
                key: k.as_str(),
                value: Some(v.as_bytes()),
            });
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use crate::session::{Message, Publication};
    use std::sync::Arc;

    fn out(topic: &str) -> Outgoing {
        let msg = Message::new(
            7,
            Publication {
                topic: topic.into(),
                payload: bytes::Bytes::from_static(b"x"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: None,
                origin: None,
            },
            std::time::Instant::now(),
        );
        Outgoing {
            msg: Arc::new(msg),
            client_id: Some("dev-1".into()),
            username: Some("ann".into()),
        }
    }

    fn route(filter: &str, key: &str, ack: RouteAck) -> RouteConfig {
        RouteConfig {
            filter: filter.into(),
            topic: "t".into(),
            key: key.into(),
            ack,
        }
    }

    #[test]
    fn the_first_matching_route_decides() {
        let r = Routes::new(&[
            route("report/+/telemetry", "%c", RouteAck::Kafka),
            route("report/#", "%u", RouteAck::AtOnce),
        ]);
        assert_eq!(r.policy("report/d1/telemetry"), OutboundPolicy::Confirm);
        assert_eq!(r.policy("report/d1/log"), OutboundPolicy::Forget);
        assert_eq!(r.policy("chat/room"), OutboundPolicy::Skip);
    }

    #[test]
    fn keys_fill_the_template() {
        let r = Routes::new(&[route("#", "%u/%c:%t 100%%", RouteAck::Kafka)]);
        let o = out("a/b");
        assert_eq!(r.find("a/b").unwrap().key(&o), "ann/dev-1:a/b 100%");
    }

    #[test]
    fn headers_carry_the_id_in_hex_and_the_publisher() {
        use rdkafka::message::Headers;
        let o = out("a/b");
        let h = headers(&o, "publish", "3");
        let got: std::collections::HashMap<&str, &[u8]> =
            h.iter().map(|h| (h.key, h.value.unwrap())).collect();
        let id = format!("{:016x}", o.msg.id);
        assert_eq!(got["x-id"], id.as_bytes());
        assert_eq!(got["x-event"], b"publish");
        assert_eq!(got["x-node"], b"3");
        assert_eq!(got["x-mqtt-topic"], b"a/b");
        assert_eq!(got["x-qos"], b"1");
        assert_eq!(got["x-uid"], b"ann");
        assert_eq!(got["x-client"], b"dev-1");
    }
}
