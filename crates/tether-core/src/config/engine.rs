//! The engine's sections: `[node]`, `[listeners]`, `[mqtt]`, `[session]`,
//! `[retained]`, `[sys]`, `[runtime]` and `[log]`.

use std::net::SocketAddr;

use serde::Deserialize;

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

/// `[drain]`: taking the node out of service (`POST /v1/admin/drain`,
/// `tether drain`) without a reconnect storm on the rest of the fleet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// Clients disconnected per second, node-wide (spread over the cores):
    /// the rate the rest of the fleet sees them reconnect at.
    pub rate_per_sec: u32,
    /// Past this, the clients still connected are closed at once and the
    /// node stops.
    pub deadline_secs: u64,
    /// The MQTT 5 Server Reference sent with DISCONNECT 0x9C (Use another
    /// server), e.g. a load balancer's name. Empty: DISCONNECT 0x8B (Server
    /// shutting down).
    pub server_reference: String,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            rate_per_sec: 1000,
            deadline_secs: 300,
            server_reference: String::new(),
        }
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
    /// New connections each core accepts per second on each listener, at
    /// most (a burst of one second's worth first); beyond, they wait in the
    /// kernel's backlog, and a full backlog makes clients retry their SYN.
    /// Keeps a reconnect storm from starving the connections already up.
    /// 0 (the default): no limit.
    pub max_accepts_per_sec: u32,
    /// A core whose last timer tick ran this many ms late is overloaded: it
    /// refuses new CONNECTs with CONNACK 0x89 (server busy; 3.1.1: 3) until
    /// it catches up, so a reconnect storm cannot push the clients already
    /// connected further behind. 1000 by default (a healthy core is a few
    /// ms late, bench/RESULTS.md); 0: never refuse.
    pub overload_lag_ms: u64,
    /// Connections each core lets be between accept and an active session
    /// (TLS handshake, WebSocket upgrade, CONNECT, authentication, session
    /// claim) at once. At the cap the core stops accepting until one
    /// finishes; new clients wait in the kernel's backlog. Bounds the work
    /// a storm of (TLS) handshakes can put in front of the clients already
    /// connected, and the memory of half-open clients. 2,048 by default
    /// (a core finishes about 2,000 TLS handshakes a second, bench/RESULTS.md:
    /// a second's worth); 0: no cap.
    pub max_handshakes_per_core: u32,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            tcp: SocketAddr::from(([127, 0, 0, 1], 1883)),
            backlog: 1024,
            send_buffer_bytes: 0,
            recv_buffer_bytes: 0,
            max_accepts_per_sec: 0,
            overload_lag_ms: 1000,
            max_handshakes_per_core: 2048,
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
    ///
    /// It bounds a subscriber's rate at window / round-trip time, and how
    /// many deliveries one write carries: a subscriber writes about half its
    /// window per socket write in a flat-out fan-out, one batch in flight
    /// while the next fills. 32 was the default until issue 27: 13
    /// deliveries per `send`, against 63 at 128 and 3.1.1's 1.6x the
    /// deliveries per second (bench/RESULTS.md). Memory stays bounded by
    /// `session.max_queued_messages`; a v5 client that states no Receive
    /// Maximum gets `max_inflight`.
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
            inflight_window: 128,
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
    /// Payload bytes a core may have on their way to other cores (queued,
    /// or in the channels and not yet taken by the receiving core) before
    /// it stops reading from its publishers. The message count above does
    /// not bound memory when messages are large: a flood of 16 KiB QoS 0
    /// messages to a slow core filled the channels with 40–80 MiB.
    pub router_backlog_bytes: usize,
    /// Timer wheel tick; keep-alive precision.
    pub tick_ms: u64,
    /// Per-core socket read buffer, shared by all of the core's connections.
    pub read_buffer_bytes: usize,
    /// Let the heap use transparent huge pages (default false: the
    /// process opts out with `PR_SET_THP_DISABLE`). mimalloc asks for them
    /// on its arenas (`MADV_HUGEPAGE`), so on a host in THP's `madvise`
    /// mode (Debian's default) each 2 MiB of heap the process touches
    /// becomes resident whole: a one-core node held 22–35 MiB at start
    /// instead of 2 MiB of heap (bench/RESULTS.md). Turn it on for fewer
    /// TLB misses on a host whose cores run hot and whose memory is
    /// plentiful.
    pub huge_pages: bool,
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
            router_backlog_bytes: 8 << 20,
            tick_ms: 100,
            read_buffer_bytes: 64 * 1024,
            huge_pages: false,
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
