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
    /// librdkafka properties for the consumer, passed through as they are.
    /// Tether sets `bootstrap.servers`, `group.id` (`group`),
    /// `enable.auto.offset.store = false`, `auto.offset.reset = latest`
    /// and `fetch.wait.max.ms = 100`; a key given here wins.
    pub consumer: BTreeMap<String, String>,
    /// The consumer group of this node's sources. Empty (the default):
    /// `tether-<node id>`, a group per node, so every node consumes every
    /// record (seed 002's broadcast to every gateway).
    pub group: String,
    /// Sources, Kafka topics whose records are pushed to MQTT.
    pub source: Vec<SourceConfig>,
    /// A Kafka topic that carries the HTTP API's publishes and pushes
    /// (`/v1/publish`, `/v1/push/*`, `/v1/broadcast`) to every node, so
    /// they reach a user's or client's connections on any node and a
    /// retained message is stored on every node. The API answers once Kafka
    /// has the record; every node, this one too, delivers it from the
    /// topic. Empty (the default): the API publishes on this node only.
    pub push_topic: String,
    /// A Kafka topic that gets a record when a client's session becomes
    /// active (`x-event: connect`) and when its connection ends
    /// (`x-event: disconnect`), keyed by client id, with `x-client`,
    /// `x-uid` and `x-node` and a JSON body. At most once: nobody waits for
    /// them. Empty (the default): no connection events.
    pub events_topic: String,
    /// A Kafka topic that gets one record per QoS 1/2 delivery of a message
    /// that asked for receipts (`"receipts": true` on an API publish or
    /// push, or `x-receipts: 1` on a source's record) and per outcome:
    /// `acked`, `expired`, `dropped` or `offline-queued`, keyed by client
    /// id, with a JSON body. At most once. Empty (the default): the API
    /// refuses `"receipts": true`.
    pub receipts_topic: String,
    /// A Kafka topic that gets each message that asked for receipts and
    /// will not reach a client (expired, dropped), once per such client:
    /// its payload, the headers a route would give it, and `x-reason`.
    /// Empty (the default): none.
    pub dead_letter_topic: String,
    /// `[kafka.cluster]`: MQTT publish/subscribe across nodes, sent only to
    /// the nodes whose clients subscribed.
    pub cluster: ClusterConfig,
    /// The consumer group shared by every node for sources with
    /// `fanout = "owner"`: each of their records is read by one node, which
    /// delivers it to its own clients and forwards it to the nodes with
    /// interest (needs `[kafka.cluster]`).
    pub shared_group: String,
}

/// `[kafka.cluster]`: how nodes share MQTT traffic through Kafka without
/// every node reading everything.
///
/// Each node announces the filters its clients subscribed to (and the
/// shared-subscription groups it has members of) on `interest_topic`, and
/// reads everyone's announcements from the start of that topic. A client
/// message is then produced once per other node with a matching
/// subscription, to that node's own topic (`node_topic`, `%n` = node id),
/// which only that node consumes. A retained message goes to every node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Each node's inbox topic, `%n` replaced by the node id. Empty (the
    /// default): no cluster bus. Create one topic per node beforehand
    /// (`bench/cluster.sh` does).
    pub node_topic: String,
    /// The topic of interest announcements: one partition, compacted in
    /// production (records are keyed so that compaction keeps each node's
    /// current state).
    pub interest_topic: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_topic: String::new(),
            interest_topic: "tether.interest".into(),
        }
    }
}

impl ClusterConfig {
    /// Whether the cluster bus is on.
    pub fn enabled(&self) -> bool {
        !self.node_topic.is_empty()
    }

    /// Node `node`'s inbox topic.
    pub fn topic_of(&self, node: u16) -> String {
        self.node_topic.replace("%n", &node.to_string())
    }
}

impl KafkaConfig {
    /// Whether anything uses Kafka: routes, sources, the push or the
    /// events topic.
    pub fn enabled(&self) -> bool {
        !self.route.is_empty()
            || !self.source.is_empty()
            || !self.push_topic.is_empty()
            || !self.events_topic.is_empty()
            || !self.receipts_topic.is_empty()
            || !self.dead_letter_topic.is_empty()
            || self.cluster.enabled()
    }

    /// The consumer group of node `node`'s sources: `group`, or
    /// `tether-<node>` when it is empty.
    pub fn group_of(&self, node: u16) -> String {
        if self.group.is_empty() {
            format!("tether-{node}")
        } else {
            self.group.clone()
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            producer: BTreeMap::new(),
            delivery_timeout_ms: 30_000,
            route: Vec::new(),
            consumer: BTreeMap::new(),
            group: String::new(),
            source: Vec::new(),
            push_topic: String::new(),
            events_topic: String::new(),
            receipts_topic: String::new(),
            dead_letter_topic: String::new(),
            cluster: ClusterConfig::default(),
            shared_group: "tether-shared".into(),
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

/// `[[kafka.source]]`: records of a Kafka topic become MQTT messages
/// (seed 000's "consume and push": modes 2 to 4). An offset is committed
/// only once its record was accepted by the cores (and, with sync
/// durability, stored for every persistent session it reached).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The Kafka topic consumed.
    pub topic: String,
    /// Where a record goes: `topic` (the MQTT topic rendered from `from`),
    /// `user` (every device of the user: `http.user_topic`), `client`
    /// (`http.client_topic`) or `broadcast` (`http.broadcast_topic`).
    #[serde(default)]
    pub to: SourceTarget,
    /// For `to = "topic"`: the MQTT topic; for `user` and `client`: the
    /// user name or client id. A template: `${header.NAME}` is a record
    /// header, `${key}` the record key. Default: `${header.x-mqtt-topic}`
    /// for a topic (what a route wrote), `${key}` otherwise.
    #[serde(default)]
    pub from: Option<String>,
    /// QoS of the MQTT messages (0, 1 or 2).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Skip records this node produced itself (header `x-node`): its own
    /// subscribers had them when they were published. Leave it on when a
    /// route and a source share a topic (mode 2, messaging across nodes).
    #[serde(default = "default_true")]
    pub skip_own: bool,
    /// Which nodes read the records: `broadcast` (the default), every node
    /// (its own group), each delivering to its own clients; or `owner`, one
    /// node per record (the group `kafka.shared_group`), which delivers to
    /// its clients and forwards the record to the nodes with matching
    /// subscriptions (needs `[kafka.cluster]`).
    #[serde(default)]
    pub fanout: SourceFanout,
    /// Every record asks for delivery receipts, as `x-receipts: 1` on one
    /// record does (needs `kafka.receipts_topic` or
    /// `kafka.dead_letter_topic`).
    #[serde(default)]
    pub receipts: bool,
}

/// Which nodes read a source's records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceFanout {
    /// Every node reads every record.
    #[default]
    Broadcast,
    /// One node reads each record and forwards it where it is wanted.
    Owner,
}

fn default_qos() -> u8 {
    1
}

fn default_true() -> bool {
    true
}

/// Where a source's records go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceTarget {
    /// An MQTT topic.
    #[default]
    Topic,
    /// Every device of a user.
    User,
    /// One client.
    Client,
    /// Everyone.
    Broadcast,
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

/// A source's `from` template: text with `${header.NAME}` and `${key}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Header(String),
    Key,
}

impl Template {
    /// Parses a template; the error says what is wrong.
    pub fn parse(s: &str) -> Result<Template, &'static str> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(i) = rest.find("${") {
            if i > 0 {
                parts.push(Part::Text(rest[..i].to_string()));
            }
            let after = &rest[i + 2..];
            let end = after
                .find('}')
                .ok_or("an unclosed ${: write ${header.NAME} or ${key}")?;
            let name = &after[..end];
            parts.push(match name.strip_prefix("header.") {
                Some(h) if !h.is_empty() => Part::Header(h.to_string()),
                _ if name == "key" => Part::Key,
                _ => return Err("only ${header.NAME} and ${key} are replaced"),
            });
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if parts.is_empty() {
            return Err("empty");
        }
        Ok(Template(parts))
    }

    /// The text for one record; `None` when a header or the key it names
    /// is missing or not UTF-8.
    pub fn render<'a>(
        &self,
        key: Option<&'a [u8]>,
        header: impl Fn(&str) -> Option<&'a [u8]>,
    ) -> Option<String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Header(h) => out.push_str(std::str::from_utf8(header(h)?).ok()?),
                Part::Key => out.push_str(std::str::from_utf8(key?).ok()?),
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_take_headers_and_the_key() {
        let t = Template::parse("push/${header.x-uid}/${key}").unwrap();
        let h = |name: &str| (name == "x-uid").then_some(&b"ann"[..]);
        assert_eq!(t.render(Some(b"k1"), h).as_deref(), Some("push/ann/k1"));
        assert_eq!(t.render(None, h), None, "no key");
        assert!(Template::parse("${nope}").is_err());
        assert!(Template::parse("a/${key").is_err());
        assert!(Template::parse("").is_err());
    }
}
