//! Where sessions live and what the store enforces: `[store]`, `[redis]`,
//! `[presence]` and `[limits]`.

use std::path::PathBuf;

use serde::Deserialize;

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
