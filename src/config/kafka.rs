//! `[kafka]` and its routes: which client messages leave for Kafka, under
//! which key, and when their publishers are acknowledged.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `[kafka]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port,host:port`. Empty: no Kafka (the
    /// default), and routes are not allowed.
    pub brokers: String,
    /// librdkafka properties for the producer, passed through as they are
    /// (`linger.ms`, `compression.type`, `security.protocol`,
    /// `sasl.username`, ...). Tether sets `bootstrap.servers`,
    /// `enable.idempotence = true` and `message.timeout.ms` from
    /// `delivery_timeout_ms`; a key given here wins.
    pub producer: BTreeMap<String, String>,
    /// How long a message may wait for Kafka's acknowledgement. Past it the
    /// publisher is told it failed (MQTT 5: ack 0x80; 3.1.1: disconnected
    /// without the ack, so it resends).
    pub delivery_timeout_ms: u64,
    /// Routes, tried in order; the first whose filter matches a message's
    /// topic takes it.
    pub route: Vec<RouteConfig>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            producer: BTreeMap::new(),
            delivery_timeout_ms: 30_000,
            route: Vec::new(),
        }
    }
}

/// `[[kafka.route]]`: client messages matching `filter` go to the Kafka
/// topic `topic` (seed 000's "route to a Kafka topic"). Local MQTT
/// subscribers still get them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// MQTT topic filter (`+` and `#` allowed).
    pub filter: String,
    /// Kafka topic the messages are produced to.
    pub topic: String,
    /// The record key: a template where `%c` is the publisher's client id,
    /// `%u` its user name and `%t` the MQTT topic (each empty when
    /// unknown). Records with one key keep their order in Kafka.
    #[serde(default = "default_key")]
    pub key: String,
    /// When the publisher's PUBACK/PUBREC goes out: `kafka`, after Kafka's
    /// delivery report (the default), or `at_once`.
    #[serde(default)]
    pub ack: RouteAck,
}

fn default_key() -> String {
    "%c".into()
}

/// When a routed message's publisher is acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAck {
    /// After Kafka's delivery report: an acknowledged message is in Kafka.
    #[default]
    Kafka,
    /// At once: faster, and a message Kafka never takes is lost.
    AtOnce,
}
