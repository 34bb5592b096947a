//! Configuration: a TOML file, overridable from the environment.
//!
//! Every key has a default (see `tether.example.toml`, which documents each
//! one), so `tether` with no file runs the embedded single-node defaults.
//! Environment variables `TETHER_<SECTION>__<KEY>` override file values, e.g.
//! `TETHER_NODE__CORES=1` or `TETHER_LOG__LEVEL=debug`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
/// `[node]`.
pub struct NodeConfig {
    /// Node number in connection ids; unique per cluster.
    pub id: u16,
    /// Executors (one per core); 0 means one per online CPU.
    pub cores: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { id: 1, cores: 0 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
/// `[listeners]`.
pub struct ListenerConfig {
    /// Plain MQTT over TCP; port 0 asks the OS for a free port.
    pub tcp: SocketAddr,
    /// listen(2) backlog of each core's SO_REUSEPORT socket.
    pub backlog: u32,
    /// SO_SNDBUF of each connection; 0 keeps the kernel's autotuning.
    pub send_buffer_bytes: usize,
    /// SO_RCVBUF of each connection; 0 keeps the kernel's autotuning.
    pub recv_buffer_bytes: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            tcp: SocketAddr::from(([127, 0, 0, 1], 1883)),
            backlog: 1024,
            send_buffer_bytes: 0,
            recv_buffer_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
/// `[mqtt]`.
pub struct MqttConfig {
    /// Largest packet accepted from (and advertised to) clients, in bytes.
    pub max_packet_size: u32,
    /// A socket that has not completed CONNECT by then is closed.
    pub connect_timeout_ms: u64,
    /// Largest keep-alive granted; a v5 client asking for more (or for 0) is
    /// told this value as Server Keep Alive.
    pub max_keep_alive: u16,
    /// QoS 2 publishes a client may have awaiting PUBREL (MQTT 5 Receive
    /// Maximum the gateway advertises; exceeding it is DISCONNECT 0x93).
    pub receive_maximum: u16,
    /// Outbound in-flight window for 3.1.1 clients (v5 clients state theirs).
    pub inflight_window: u16,
    /// Upper bound on any client's outbound window.
    pub max_inflight: u16,
    /// Highest QoS granted to subscriptions and accepted from publishers.
    pub max_qos: u8,
    /// Topic aliases a v5 client may use towards the gateway.
    pub topic_alias_maximum: u16,
    /// Most topic aliases the gateway assigns on one connection (and no more
    /// than the client's Topic Alias Maximum); 0 disables outbound aliases.
    pub topic_alias_outbound: u16,
    /// Whether retained messages are available. Off: MQTT 5 PUBLISH with
    /// RETAIN is DISCONNECT 0x9A and a retained will is refused (CONNACK
    /// 0x9A); 3.1.1 messages are delivered without being stored.
    pub retain_available: bool,
    /// Whether wildcard subscriptions are allowed. Off: SUBACK 0xA2 (5.0) /
    /// 0x80 (3.1.1) for filters with `+` or `#`.
    pub wildcard_subscription_available: bool,
    /// Whether shared subscriptions are allowed. Off: SUBACK 0x9E (5.0) /
    /// 0x80 (3.1.1) for `$share/...` filters.
    pub shared_subscription_available: bool,
    /// MQTT 5 Response Information returned to clients that ask for it
    /// (Request Response Information 1): a prefix for their response topics,
    /// `%c` replaced by the client id. Empty: none is returned.
    pub response_information: String,
    /// Topic filters no client may subscribe to: a requested filter that one
    /// of these matches (wildcards in the request compared as literal
    /// levels) is refused with SUBACK 0x80 (3.1.1) / 0x87 (5.0). A static
    /// list until the ACL engine lands.
    pub deny_subscribe: Vec<String>,
    /// Topic filters no client may publish to: such a PUBLISH is dropped
    /// (counted); MQTT 5 QoS 1/2 publishers get 0x87 in the ack.
    pub deny_publish: Vec<String>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_packet_size: 1024 * 1024,
            connect_timeout_ms: 10_000,
            max_keep_alive: 65_535,
            receive_maximum: 128,
            inflight_window: 32,
            max_inflight: 1024,
            max_qos: 2,
            topic_alias_maximum: 16,
            topic_alias_outbound: 16,
            retain_available: true,
            wildcard_subscription_available: true,
            shared_subscription_available: true,
            response_information: String::new(),
            deny_subscribe: Vec::new(),
            deny_publish: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
/// `[session]`.
pub struct SessionConfig {
    /// Cap on session expiry; 3.1.1 persistent sessions (clean session 0)
    /// expire after this long offline.
    pub max_expiry_secs: u32,
    /// Hard limit of QoS 1/2 messages queued per session (waiting for the
    /// window or for the client to come back). Exceeding it while connected
    /// disconnects the client (0x97); while offline the newest is dropped.
    pub max_queued_messages: usize,
    /// Soft limit of bytes written-but-unsent per connection; above it QoS 0
    /// messages to that client are dropped (and counted) and the gateway
    /// stops reading from that client until its outbox drains.
    pub max_outbox_bytes: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_expiry_secs: 7 * 24 * 3600,
            max_queued_messages: 1000,
            max_outbox_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
/// `[retained]`.
pub struct RetainedConfig {
    /// Most retained topics on the node; a retained PUBLISH to a new topic
    /// beyond it is refused (MQTT 5: PUBACK/PUBREC 0x97, not delivered;
    /// 3.1.1: delivered but not stored).
    pub max_messages: usize,
    /// Most retained bytes (topics + payloads) on the node.
    pub max_bytes: usize,
}

impl Default for RetainedConfig {
    fn default() -> Self {
        RetainedConfig {
            max_messages: 100_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
/// `[sys]`.
pub struct SysConfig {
    /// Seconds between `$SYS/broker/...` statistics updates (retained, QoS 0,
    /// published by core 0); 0 disables them.
    pub interval_secs: u64,
}

impl Default for SysConfig {
    fn default() -> Self {
        SysConfig { interval_secs: 10 }
    }
}

/// MQTT over WebSocket (RFC 6455, subprotocol `mqtt`), served by the same
/// cores and connection tasks as TCP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Serve MQTT over WebSocket.
    pub enabled: bool,
    /// Listen address; port 0 asks the OS for a free port.
    pub listen: SocketAddr,
    /// Request path of the upgrade.
    pub path: String,
    /// Largest WebSocket frame accepted (close 1009 beyond). MQTT packets
    /// may span frames, so this bounds buffering, not packet size.
    pub max_frame_bytes: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8083)),
            path: "/mqtt".into(),
            max_frame_bytes: 1 << 20,
        }
    }
}

/// MQTT over TLS (mqtts) and WebSocket over TLS (wss). Certificate and key
/// are read at start and again on SIGHUP; established connections keep the
/// session they negotiated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Serve mqtts (and wss, see `wss`); needs `cert_file` and `key_file`.
    pub enabled: bool,
    /// mqtts listen address; port 0 asks the OS for a free port.
    pub listen: SocketAddr,
    /// Also serve MQTT over WebSocket over TLS (path and frame limit from
    /// `[websocket]`).
    pub wss: bool,
    /// wss listen address.
    pub wss_listen: SocketAddr,
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key_file: PathBuf,
    /// PEM CA certificates that client certificates are verified against;
    /// empty: client certificates are not asked for.
    pub client_ca_file: PathBuf,
    /// With `client_ca_file`: refuse clients that present no certificate
    /// (otherwise a certificate is optional, but verified when presented).
    pub require_client_cert: bool,
    /// With a verified client certificate, its subject CN replaces the
    /// CONNECT username: the auth layer, ACL templates (`%u`) and presence
    /// see the certificate's identity, not a claimed one.
    pub cn_as_username: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 8883)),
            wss: true,
            wss_listen: SocketAddr::from(([127, 0, 0, 1], 8084)),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: PathBuf::new(),
            require_client_cert: false,
            cn_as_username: true,
        }
    }
}

/// The HTTP control plane (push API, health, metrics), served on its own
/// thread.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve the HTTP API at all.
    pub enabled: bool,
    /// Listen address.
    pub listen: SocketAddr,
    /// Bearer tokens accepted in `Authorization`. Empty: no authentication,
    /// which is only allowed on a loopback address.
    pub tokens: Vec<String>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Longest wait for a core's receipt of a publish (504 beyond).
    pub publish_timeout_ms: u64,
    /// Topic of `POST /v1/push/users/{user}`; `%u` is the user. Every
    /// device of the user subscribes to it.
    pub user_topic: String,
    /// Topic of `POST /v1/push/clients/{client_id}`; `%c` is the client id.
    pub client_topic: String,
    /// Topic of `POST /v1/broadcast`.
    pub broadcast_topic: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tokens: Vec::new(),
            max_body_bytes: 1 << 20,
            publish_timeout_ms: 5000,
            user_topic: "user/%u/inbox".into(),
            client_topic: "client/%c/inbox".into(),
            broadcast_topic: "broadcast".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
/// `[runtime]`.
pub struct RuntimeConfig {
    /// Capacity, in batches, of each core-to-core channel.
    pub mesh_channel_capacity: usize,
    /// Most messages in one cross-core batch.
    pub route_batch_max: usize,
    /// Messages a core may have waiting for other cores before it stops
    /// reading from its publishers (backpressure instead of loss).
    pub router_backlog_limit: usize,
    /// Timer wheel tick; keep-alive precision.
    pub tick_ms: u64,
    /// Per-core socket read buffer, shared by all of the core's connections.
    pub read_buffer_bytes: usize,
    /// io_uring buffer memory glommio reserves per core, in KiB.
    pub io_memory_kib: usize,
    /// Submission queue depth of each of a core's io_uring rings. Besides
    /// batching, it sizes the kernel's cancel hash (buckets = completion
    /// entries / 32, at most 256): every cancel glommio issues (its
    /// preemption timer, dropped sources) walks one bucket of the pending
    /// polls, one per idle connection. At glommio's default of 128 that is 8
    /// buckets, and a cancel walked ~2,400 polls at 19,000 connections
    /// (37 % of the core's CPU in a connect storm, `io_poll_find` in perf).
    pub ring_depth: usize,
    /// Messages each core's bridge inbox holds (publishes from the HTTP API
    /// and the bridge threads); a full inbox refuses at once ("busy").
    pub bridge_capacity: usize,
    /// CONNECTs a core may have waiting for the authenticator's slow path;
    /// beyond it a CONNECT is refused with 0x89 (server busy).
    pub max_pending_verdicts: usize,
    /// Client-id claims a core may have waiting for the session store;
    /// beyond it a CONNECT is refused with 0x89.
    pub max_pending_claims: usize,
    /// PUBLISH/SUBSCRIBE packets a core may have waiting for the
    /// authorizer's slow path; at the bound its clients stop being read.
    pub max_pending_permits: usize,
    /// Messages a core may have handed to the outbound bridge and not yet
    /// had acknowledged; at the bound its clients stop being read.
    pub max_outbound_inflight: usize,
    /// How long shutdown waits for clients to receive DISCONNECT.
    pub shutdown_grace_ms: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            mesh_channel_capacity: 1024,
            route_batch_max: 256,
            router_backlog_limit: 16_384,
            tick_ms: 100,
            read_buffer_bytes: 64 * 1024,
            io_memory_kib: 512,
            ring_depth: 4096,
            bridge_capacity: 4096,
            max_pending_verdicts: 1024,
            max_pending_claims: 4096,
            max_pending_permits: 1024,
            max_outbound_inflight: 16_384,
            shutdown_grace_ms: 2000,
        }
    }
}

/// Where sessions live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In this process only: a node's sessions end with it.
    Memory,
    /// In Redis: persistent sessions survive their node and resume on any
    /// node; presence and per-user limits are cluster-wide.
    Redis,
}

/// When a publisher's acknowledgement may go out, for messages that reach
/// persistent sessions (Redis store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// PUBACK/PUBREC only once the message is in Redis for every persistent
    /// session it reached: nothing acknowledged is lost with a node.
    Sync,
    /// PUBACK at once; the writes follow within milliseconds. A node that
    /// dies loses the acknowledged messages not yet written.
    Async,
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `memory` (the default: no other service needed) or `redis`.
    pub kind: StoreKind,
    /// `sync` or `async` (Redis store only; see [`Durability`]).
    pub durability: Durability,
    /// A request to the store that takes longer fails: a CONNECT gets
    /// CONNACK 0x88, a publisher waiting for durability gets 0x80 (MQTT 5)
    /// or is disconnected (3.1.1).
    pub request_timeout_ms: u64,
    /// While the store cannot be reached, clean sessions (which need
    /// nothing stored) still connect; `false` refuses them with 0x88 too.
    pub clean_sessions_without_store: bool,
    /// How long the old node may take to close a connection taken over by
    /// another node and write its last state, before fencing protects the
    /// session instead.
    pub handoff_timeout_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Memory,
            durability: Durability::Sync,
            request_timeout_ms: 2000,
            clean_sessions_without_store: true,
            handoff_timeout_ms: 500,
        }
    }
}

/// `[redis]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// One URL for a single Redis (`redis://host:6379/0`, `rediss://` for
    /// TLS, `redis+unix:///path/redis.sock`), or the seed nodes of a Redis
    /// Cluster (with `cluster = true`). A password may be in the URL
    /// (`redis://:secret@host/`) or in `password`.
    pub urls: Vec<String>,
    /// Talk Redis Cluster to `urls`. Keys of one session (and of one user)
    /// share a hash tag, so each script touches one slot.
    pub cluster: bool,
    /// Prefix of every key and channel (several deployments can share a
    /// Redis).
    pub key_prefix: String,
    /// Redis ACL user name; empty: from the URL, or none.
    pub username: String,
    /// Password; empty: from the URL, or none.
    pub password: String,
    /// PEM CA certificates for `rediss://`; empty: the system's roots.
    pub ca_file: PathBuf,
    /// Write-behind batches (acknowledgement deletions, lease refreshes,
    /// releases) are sent at least this often, in milliseconds.
    pub batch_ms: u64,
    /// Fire-and-forget writes a node may have queued for Redis; beyond it
    /// they are dropped and counted (`store_writes_dropped`): they only
    /// cost duplicates or an early lease expiry, never a promised message.
    pub max_queued_writes: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            urls: vec!["redis://127.0.0.1:6379/".into()],
            cluster: false,
            key_prefix: "tt".into(),
            username: String::new(),
            password: String::new(),
            ca_file: PathBuf::new(),
            batch_ms: 5,
            max_queued_writes: 100_000,
        }
    }
}

/// `[presence]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Each connection's presence entry lives this long unless refreshed;
    /// each core refreshes its connections in one batch every third of it.
    /// A node that dies takes its entries with it within one lease.
    pub lease_secs: u64,
    /// The node's own lease (its liveness for the cluster), refreshed every
    /// third of it.
    pub node_lease_secs: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            lease_secs: 30,
            node_lease_secs: 6,
        }
    }
}

/// What happens to a connection over a user's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PerUserPolicy {
    /// The oldest connection of the user is closed (MQTT 5: DISCONNECT
    /// 0x98, Administrative action, with a Reason String saying why).
    EvictOldest,
    /// The new connection is refused (CONNACK 0x97 on MQTT 5, 0x03 on
    /// 3.1.1).
    Refuse,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections one user name may hold at once (across the cluster with
    /// the Redis store, on this node with the memory store); 0: no limit.
    pub max_connections_per_user: u32,
    /// `evict_oldest` or `refuse`.
    pub per_user_policy: PerUserPolicy,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections_per_user: 0,
            per_user_policy: PerUserPolicy::EvictOldest,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
/// `[log]`.
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `tether=debug,warn`, ...
    /// (`RUST_LOG` wins when set).
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

const ENV_PREFIX: &str = "TETHER_";

impl Config {
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
            section.insert(keys[1].clone(), env_value(&raw));
        }
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(value))
            .map_err(|e| err(&e.path().to_string(), e.inner().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let w = &self.websocket;
        if !w.path.starts_with('/') {
            return Err(err("websocket.path", "must start with /"));
        }
        if w.max_frame_bytes < 2 {
            return Err(err("websocket.max_frame_bytes", "must be at least 2"));
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
        if rd.batch_ms == 0 || rd.max_queued_writes == 0 {
            return Err(err(
                "redis",
                "batch_ms and max_queued_writes must be at least 1",
            ));
        }
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
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// Environment values are typed like TOML literals when they parse as one
/// (`1`, `true`, `"x"`), otherwise taken as strings (`127.0.0.1:1883`).
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
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
        let text = include_str!("../tether.example.toml");
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
