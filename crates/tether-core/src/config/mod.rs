//! Configuration: a TOML file, overridable from the environment.
//!
//! Every key has a default (see `tether.example.toml`, which documents each
//! one), so `tether` with no file runs the embedded single-node defaults.
//! Environment variables `TETHER_<SECTION>__<KEY>` override file values, e.g.
//! `TETHER_NODE__CORES=1` or `TETHER_LOG__LEVEL=debug`.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

mod auth;
mod edge;
mod engine;
mod kafka;
mod store;

pub use auth::{AclDefault, AuthConfig, FailPolicy, HttpAuthConfig, JwtConfig};
pub use edge::{
    FallbackConfig, GrpcConfig, HttpConfig, TlsConfig, UpstreamAck, UpstreamConfig,
    UpstreamFallback, WebSocketConfig,
};
pub use engine::{
    DrainConfig, ListenerConfig, LogConfig, MqttConfig, NodeConfig, RetainedConfig, RuntimeConfig,
    SessionConfig, SysConfig,
};
pub use kafka::{
    ClusterConfig, KafkaConfig, RouteAck, RouteConfig, SourceConfig, SourceFanout, SourceTarget,
    Template,
};
pub use store::{
    Durability, LimitsConfig, PerUserPolicy, PresenceConfig, RedisConfig, StoreConfig, StoreKind,
};

/// A configuration problem, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path (`mqtt.max_packet_size`), or empty for the whole file.
    pub key: String,
    /// What is wrong, and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

impl crate::error::Classify for ConfigError {
    fn origin(&self) -> crate::error::Origin {
        crate::error::Origin::Config
    }
}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole configuration, one field per TOML section.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[node]`: identity and cores.
    pub node: NodeConfig,
    /// `[listeners]`: MQTT over TCP.
    pub listeners: ListenerConfig,
    /// `[mqtt]`: protocol limits and features.
    pub mqtt: MqttConfig,
    /// `[session]`: expiry and slow-consumer limits.
    pub session: SessionConfig,
    /// `[retained]`: the retained store's caps.
    pub retained: RetainedConfig,
    /// `[sys]`: `$SYS` statistics.
    pub sys: SysConfig,
    /// `[websocket]`: MQTT over WebSocket.
    pub websocket: WebSocketConfig,
    /// `[tls]`: mqtts and wss.
    pub tls: TlsConfig,
    /// `[http]`: the HTTP control plane.
    pub http: HttpConfig,
    /// `[grpc]`: the gRPC API and the Upstream streams.
    pub grpc: GrpcConfig,
    /// `[runtime]`: executors, channels, bounds.
    pub runtime: RuntimeConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
    /// `[store]`: where sessions live.
    pub store: StoreConfig,
    /// `[redis]`: the Redis behind the `redis` store.
    pub redis: RedisConfig,
    /// `[presence]`: who is online, cluster-wide.
    pub presence: PresenceConfig,
    /// `[limits]`: per-user limits.
    pub limits: LimitsConfig,
    /// `[kafka]`: the Kafka bridge and its routes.
    pub kafka: KafkaConfig,
    /// `[auth]`: the users file and the ACL file.
    pub auth: AuthConfig,
    /// `[drain]`: taking the node out of service.
    pub drain: DrainConfig,
}

const ENV_PREFIX: &str = "TETHER_";

impl Config {
    /// The sections (`[mqtt]`, ...) whose values differ in `newer`: what a
    /// reload found changed.
    pub fn changed_sections(&self, newer: &Config) -> Vec<&'static str> {
        let d =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        let pairs: [(&'static str, bool); 19] = [
            ("node", d(&self.node, &newer.node)),
            ("listeners", d(&self.listeners, &newer.listeners)),
            ("mqtt", d(&self.mqtt, &newer.mqtt)),
            ("session", d(&self.session, &newer.session)),
            ("retained", d(&self.retained, &newer.retained)),
            ("sys", d(&self.sys, &newer.sys)),
            ("websocket", d(&self.websocket, &newer.websocket)),
            ("tls", d(&self.tls, &newer.tls)),
            ("http", d(&self.http, &newer.http)),
            ("grpc", d(&self.grpc, &newer.grpc)),
            ("runtime", d(&self.runtime, &newer.runtime)),
            ("log", d(&self.log, &newer.log)),
            ("store", d(&self.store, &newer.store)),
            ("redis", d(&self.redis, &newer.redis)),
            ("presence", d(&self.presence, &newer.presence)),
            ("limits", d(&self.limits, &newer.limits)),
            ("kafka", d(&self.kafka, &newer.kafka)),
            ("auth", d(&self.auth, &newer.auth)),
            ("drain", d(&self.drain, &newer.drain)),
        ];
        pairs
            .into_iter()
            .filter(|(_, c)| *c)
            .map(|(n, _)| n)
            .collect()
    }

    /// Loads `path` (or the defaults when `None`) and applies the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| err("", format!("cannot read {}: {e}", p.display())))?,
            None => String::new(),
        };
        Config::from_toml(&text, std::env::vars())
    }

    /// Parses TOML text plus `TETHER_*` overrides from `env`, then validates.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut value: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let at = e
                .span()
                .map(|s| line_of(text, s.start))
                .map(|l| format!(" (line {l})"));
            err(
                "",
                format!("not valid TOML{}: {}", at.unwrap_or_default(), e.message()),
            )
        })?;
        // Plain strings from the environment, by "section.key": a list key
        // may be given as one (below).
        let mut plain: Vec<(String, String)> = Vec::new();
        for (name, raw) in env {
            let Some(path) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
            if keys.len() != 2 {
                continue;
            }
            let section = value
                .entry(keys[0].clone())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            let toml::Value::Table(section) = section else {
                return Err(err(&keys[0], "must be a table"));
            };
            let parsed = env_value(&raw);
            if parsed.is_str() {
                plain.push((format!("{}.{}", keys[0], keys[1]), raw.clone()));
            }
            section.insert(keys[1].clone(), parsed);
        }
        loop {
            match serde_path_to_error::deserialize::<_, Config>(toml::Value::Table(value.clone())) {
                Ok(config) => {
                    config.validate()?;
                    return Ok(config);
                }
                Err(e) => {
                    let at = e.path().to_string();
                    // `TETHER_REDIS__URLS=redis://a:6379/,redis://b:6379/`:
                    // a list key set to a plain string (systemd's
                    // EnvironmentFile= writes no TOML) is split at commas.
                    let wants_list = e.inner().to_string().contains("expected a sequence");
                    match plain.iter().position(|(key, _)| *key == at) {
                        Some(i) if wants_list => {
                            let (key, raw) = plain.swap_remove(i);
                            let (section, name) = key.split_once('.').expect("section.key");
                            if let Some(toml::Value::Table(t)) = value.get_mut(section) {
                                t.insert(name.to_string(), env_list(&raw));
                            }
                        }
                        _ => return Err(err(&at, e.inner().to_string())),
                    }
                }
            }
        }
    }

    /// `[kafka]`: routes need brokers, valid filters, topics and key
    /// templates.
    fn validate_kafka(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        if !k.enabled() {
            return Ok(());
        }
        if k.brokers.trim().is_empty() {
            return Err(err(
                "kafka.brokers",
                "routes, sources and the push, events, receipts and dead-letter topics need brokers: set kafka.brokers (host:port,...) or remove [[kafka.route]], [[kafka.source]] and the kafka.*_topic keys",
            ));
        }
        for (key, topic) in [
            ("kafka.push_topic", &k.push_topic),
            ("kafka.events_topic", &k.events_topic),
            ("kafka.receipts_topic", &k.receipts_topic),
            ("kafka.dead_letter_topic", &k.dead_letter_topic),
        ] {
            if !topic.is_empty() && !kafka_topic_ok(topic) {
                return Err(err(
                    key,
                    "a Kafka topic name: letters, digits, '.', '_' and '-'",
                ));
            }
        }
        for (i, s) in k.source.iter().enumerate() {
            let at = |field: &str| format!("kafka.source[{i}].{field}");
            if !kafka_topic_ok(&s.topic) {
                return Err(err(
                    &at("topic"),
                    "a Kafka topic name: letters, digits, '.', '_' and '-'",
                ));
            }
            if s.qos > 2 {
                return Err(err(&at("qos"), "0, 1 or 2"));
            }
            if s.receipts && k.receipts_topic.is_empty() && k.dead_letter_topic.is_empty() {
                return Err(err(
                    &at("receipts"),
                    "receipts need somewhere to go: set kafka.receipts_topic (or kafka.dead_letter_topic)",
                ));
            }
            if let Some(from) = &s.from {
                if let Err(why) = Template::parse(from) {
                    return Err(err(&at("from"), why));
                }
            }
            if s.fanout == SourceFanout::Owner && !k.cluster.enabled() {
                return Err(err(
                    &at("fanout"),
                    "\"owner\" forwards records to the nodes with interest: set kafka.cluster.node_topic, or use \"broadcast\"",
                ));
            }
        }
        let c = &k.cluster;
        if c.enabled() {
            // Mode 2 already carries these messages to every node.
            let mode2 = k.route.iter().find(|r| {
                k.source
                    .iter()
                    .any(|s| s.topic == r.topic && s.to == SourceTarget::Topic)
            });
            if let Some(r) = mode2 {
                return Err(err(
                    "kafka.cluster.node_topic",
                    format!(
                        "the route of {} to {} is consumed back (mode 2), which already reaches every node: with the cluster bus too, subscribers would get each message twice. Drop that source (the bus carries the filter), or the bus",
                        r.filter, r.topic
                    ),
                ));
            }
            if !c.node_topic.contains("%n") || !kafka_topic_ok(&c.topic_of(self.node.id)) {
                return Err(err(
                    "kafka.cluster.node_topic",
                    "a Kafka topic name with %n for the node id, such as tether.node.%n",
                ));
            }
            if !kafka_topic_ok(&c.interest_topic) {
                return Err(err(
                    "kafka.cluster.interest_topic",
                    "a Kafka topic name: letters, digits, '.', '_' and '-'",
                ));
            }
        }
        if k.source.iter().any(|s| s.fanout == SourceFanout::Owner) && k.shared_group.is_empty() {
            return Err(err(
                "kafka.shared_group",
                "must not be empty with owner sources",
            ));
        }
        if k.delivery_timeout_ms == 0 {
            return Err(err("kafka.delivery_timeout_ms", "must be at least 1"));
        }
        for (i, r) in k.route.iter().enumerate() {
            let at = |field: &str| format!("kafka.route[{i}].{field}");
            if let Err(why) = crate::codec::topic::validate_filter(&r.filter) {
                return Err(err(&at("filter"), why));
            }
            if !kafka_topic_ok(&r.topic) {
                return Err(err(
                    &at("topic"),
                    "a Kafka topic name: letters, digits, '.', '_' and '-'",
                ));
            }
            let mut chars = r.key.chars();
            while let Some(c) = chars.next() {
                if c == '%' && !matches!(chars.next(), Some('c' | 'u' | 't' | '%')) {
                    return Err(err(
                        &at("key"),
                        "only %c (client id), %u (user name), %t (MQTT topic) and %% are replaced",
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.node.cores > crate::id::MAX_CORES {
            return Err(err(
                "node.cores",
                "must be at most 253 (a message id's top byte names its core)",
            ));
        }
        let w = &self.websocket;
        if !w.path.starts_with('/') {
            return Err(err("websocket.path", "must start with /"));
        }
        if w.max_frame_bytes < 2 {
            return Err(err("websocket.max_frame_bytes", "must be at least 2"));
        }
        let f = &w.fallback;
        if f.enabled {
            if !f.path.starts_with('/') || f.path.len() < 2 || f.path.ends_with('/') {
                return Err(err(
                    "websocket.fallback.path",
                    "must start with / and not end with one (e.g. /push)",
                ));
            }
            if f.path == w.path {
                return Err(err(
                    "websocket.fallback.path",
                    "must differ from websocket.path",
                ));
            }
            if f.keep_alive_secs == 0 {
                return Err(err(
                    "websocket.fallback.keep_alive_secs",
                    "must be at least 1",
                ));
            }
            if f.poll_timeout_ms == 0 || f.poll_timeout_ms >= u64::from(f.keep_alive_secs) * 1000 {
                return Err(err(
                    "websocket.fallback.poll_timeout_ms",
                    "must be above 0 and below keep_alive_secs (a held poll keeps the session alive only while it is shorter)",
                ));
            }
            if f.heartbeat_ms == 0 || f.heartbeat_ms >= u64::from(f.keep_alive_secs) * 1000 {
                return Err(err(
                    "websocket.fallback.heartbeat_ms",
                    "must be above 0 and below keep_alive_secs",
                ));
            }
        }
        let t = &self.tls;
        if t.enabled && (t.cert_file.as_os_str().is_empty() || t.key_file.as_os_str().is_empty()) {
            return Err(err(
                "tls.cert_file",
                "TLS is enabled without a certificate: set tls.cert_file and tls.key_file \
                 (PEM files), or tls.enabled = false",
            ));
        }
        if t.require_client_cert && t.client_ca_file.as_os_str().is_empty() {
            return Err(err(
                "tls.require_client_cert",
                "needs tls.client_ca_file, the CA that client certificates are verified against",
            ));
        }
        for (key, names) in [("tls.alpn", &t.alpn), ("tls.wss_alpn", &t.wss_alpn)] {
            if names.iter().any(|n| n.is_empty() || n.len() > 255) {
                return Err(err(key, "each protocol name needs 1 to 255 bytes"));
            }
        }
        let h = &self.http;
        if h.enabled && h.tokens.is_empty() && !h.listen.ip().is_loopback() {
            return Err(err(
                "http.tokens",
                "the HTTP API listens on a non-loopback address without tokens: \
                 set http.tokens (bearer tokens), or http.listen to 127.0.0.1",
            ));
        }
        if h.tokens.iter().any(|t| t.len() < 16) {
            return Err(err(
                "http.tokens",
                "each token needs at least 16 characters",
            ));
        }
        if !h.user_topic.contains("%u") {
            return Err(err("http.user_topic", "must contain %u (the user)"));
        }
        if !h.client_topic.contains("%c") {
            return Err(err("http.client_topic", "must contain %c (the client id)"));
        }
        for (key, t) in [
            ("http.user_topic", &h.user_topic),
            ("http.client_topic", &h.client_topic),
            ("http.broadcast_topic", &h.broadcast_topic),
        ] {
            if t.is_empty() || crate::codec::topic::validate_name(t).is_err() {
                return Err(err(key, "must be a topic name (no + or #)"));
            }
        }
        if h.max_body_bytes == 0 || h.publish_timeout_ms == 0 {
            return Err(err(
                "http",
                "max_body_bytes and publish_timeout_ms must be at least 1",
            ));
        }
        if h.idempotency_window_secs == 0 || h.idempotency_max_keys == 0 {
            return Err(err(
                "http",
                "idempotency_window_secs and idempotency_max_keys must be at least 1",
            ));
        }
        let g = &self.grpc;
        if let Some(listen) = g.listen {
            if h.tokens.is_empty() && !listen.ip().is_loopback() {
                return Err(err(
                    "http.tokens",
                    "the gRPC API listens on a non-loopback address without tokens: \
                     set http.tokens (bearer tokens, shared by both APIs), or grpc.listen to 127.0.0.1",
                ));
            }
        } else if !g.upstream.topics.is_empty() {
            return Err(err(
                "grpc.upstream.topics",
                "the Upstream streams need the gRPC API: set grpc.listen",
            ));
        }
        for f in &g.upstream.topics {
            if let Err(why) = crate::codec::topic::validate_filter(f) {
                return Err(err(
                    "grpc.upstream.topics",
                    format!("{f:?} is not a valid topic filter: {why}"),
                ));
            }
        }
        if g.upstream.window == 0 || g.upstream.ack_timeout_ms == 0 {
            return Err(err(
                "grpc.upstream",
                "window and ack_timeout_ms must be at least 1",
            ));
        }
        let m = &self.mqtt;
        if m.max_packet_size < 128
            || m.max_packet_size as usize > crate::codec::MAX_REMAINING_LENGTH + 5
        {
            return Err(err(
                "mqtt.max_packet_size",
                "must be between 128 and 268435460 bytes",
            ));
        }
        if m.receive_maximum == 0 {
            return Err(err("mqtt.receive_maximum", "must be at least 1"));
        }
        if m.inflight_window == 0 || m.max_inflight == 0 {
            return Err(err("mqtt.inflight_window", "windows must be at least 1"));
        }
        if m.max_qos > 2 {
            return Err(err("mqtt.max_qos", "must be 0, 1 or 2"));
        }
        for (key, list) in [
            ("mqtt.deny_subscribe", &m.deny_subscribe),
            ("mqtt.deny_publish", &m.deny_publish),
        ] {
            for f in list {
                if let Err(why) = crate::codec::topic::validate_filter(f) {
                    return Err(err(
                        key,
                        format!("{f:?} is not a valid topic filter: {why}"),
                    ));
                }
            }
        }
        if m.connect_timeout_ms == 0 {
            return Err(err("mqtt.connect_timeout_ms", "must be at least 1"));
        }
        let r = &self.runtime;
        if r.tick_ms == 0 || r.tick_ms > 1000 {
            return Err(err("runtime.tick_ms", "must be between 1 and 1000"));
        }
        if r.read_buffer_bytes < 1024 {
            return Err(err("runtime.read_buffer_bytes", "must be at least 1024"));
        }
        if !r.ring_depth.is_power_of_two() || r.ring_depth > 32_768 {
            return Err(err(
                "runtime.ring_depth",
                "must be a power of two between 1 and 32768 (io_uring's limit)",
            ));
        }
        if r.mesh_channel_capacity == 0
            || r.route_batch_max == 0
            || r.router_backlog_limit == 0
            || r.router_backlog_bytes == 0
            || r.bridge_capacity == 0
            || r.max_pending_verdicts == 0
            || r.max_pending_claims == 0
            || r.max_pending_permits == 0
            || r.max_outbound_inflight == 0
        {
            return Err(err(
                "runtime",
                "channel capacities and limits must be at least 1",
            ));
        }
        if self.session.max_queued_messages == 0 {
            return Err(err("session.max_queued_messages", "must be at least 1"));
        }
        let st = &self.store;
        if st.request_timeout_ms == 0 || st.handoff_timeout_ms == 0 {
            return Err(err(
                "store",
                "request_timeout_ms and handoff_timeout_ms must be at least 1",
            ));
        }
        let rd = &self.redis;
        if st.kind == StoreKind::Redis {
            if rd.urls.is_empty() {
                return Err(err("redis.urls", "the redis store needs at least one URL"));
            }
            for u in &rd.urls {
                if !(u.starts_with("redis://")
                    || u.starts_with("rediss://")
                    || u.starts_with("redis+unix://")
                    || u.starts_with("unix://"))
                {
                    return Err(err(
                        "redis.urls",
                        format!(
                            "{u:?} is not a Redis URL (redis://host:port/, rediss:// for TLS, \
                             redis+unix:///path)"
                        ),
                    ));
                }
            }
        }
        if rd.key_prefix.is_empty() || rd.key_prefix.contains(['{', '}']) {
            return Err(err(
                "redis.key_prefix",
                "must be non-empty and without braces (they mark hash tags)",
            ));
        }
        if rd.max_queued_writes == 0 {
            return Err(err("redis.max_queued_writes", "must be at least 1"));
        }
        self.validate_kafka()?;
        let p = &self.presence;
        if p.lease_secs < 3 || p.node_lease_secs < 3 {
            return Err(err(
                "presence",
                "lease_secs and node_lease_secs must be at least 3 (refreshed every third)",
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(err("log.format", "must be \"text\" or \"json\""));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(err(
                "log.level",
                "not a valid filter (e.g. \"info\", \"tether=debug\")",
            ));
        }
        Ok(())
    }

    /// Number of executors to start.
    pub fn cores(&self) -> usize {
        if self.node.cores > 0 {
            self.node.cores
        } else {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(crate::id::MAX_CORES)
        }
    }
}

/// Environment values are typed like TOML literals when they parse as one
/// (`1`, `true`, `"x"`), otherwise taken as strings (`127.0.0.1:1883`).
/// A Kafka topic name: letters, digits, `.`, `_` and `-`.
fn kafka_topic_ok(t: &str) -> bool {
    !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// A list from a comma-separated environment value: each item as
/// [`env_value`] reads it (`1,2` are numbers, `a,b` strings).
fn env_list(raw: &str) -> toml::Value {
    toml::Value::Array(
        raw.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(env_value)
            .collect(),
    )
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_without_file() {
        let c = parse("", &[]).unwrap();
        assert_eq!(c.listeners.tcp.port(), 1883);
        assert_eq!(c.mqtt.max_packet_size, 1024 * 1024);
    }

    #[test]
    fn example_file_parses_and_matches_defaults() {
        let text = include_str!("../../../../tether.example.toml");
        let c = parse(text, &[]).unwrap();
        let d = Config::default();
        assert_eq!(
            format!("{c:?}"),
            format!("{d:?}"),
            "example file documents the defaults"
        );
    }

    #[test]
    fn env_overrides_file() {
        let c = parse(
            "[node]\ncores = 2\n",
            &[
                ("TETHER_NODE__CORES", "1"),
                ("TETHER_LISTENERS__TCP", "127.0.0.1:0"),
            ],
        )
        .unwrap();
        assert_eq!(c.node.cores, 1);
        assert_eq!(c.listeners.tcp.port(), 0);
    }

    #[test]
    fn a_list_key_takes_a_comma_separated_string_from_the_environment() {
        let c = parse(
            "",
            &[("TETHER_REDIS__URLS", "redis://a:6379/, redis://b:6379/")],
        )
        .unwrap();
        assert_eq!(c.redis.urls, ["redis://a:6379/", "redis://b:6379/"]);
        let one = parse("", &[("TETHER_REDIS__URLS", "redis://a:6379/")]).unwrap();
        assert_eq!(one.redis.urls, ["redis://a:6379/"]);
        // The TOML form still works, and a plain string for a key that is
        // not a list is still refused by name.
        let toml = parse("", &[("TETHER_REDIS__URLS", "[\"redis://c:6379/\"]")]).unwrap();
        assert_eq!(toml.redis.urls, ["redis://c:6379/"]);
        let e = parse("", &[("TETHER_NODE__CORES", "many")]).unwrap_err();
        assert_eq!(e.key, "node.cores");
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[mqtt]\nmax_packet_size = \"big\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "mqtt.max_packet_size");
        let e = parse("[mqtt]\nmax_pakcet_size = 1\n", &[]).unwrap_err();
        assert!(e.message.contains("unknown field"), "{e}");
        let e = parse("[mqtt]\nmax_qos = 3\n", &[]).unwrap_err();
        assert_eq!(e.key, "mqtt.max_qos");
        let e = parse("[mqtt\n", &[]).unwrap_err();
        assert!(e.message.contains("line 1"), "{e}");
    }
}
