//! The edges' sections: `[websocket]`, `[tls]` and `[http]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

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
    /// `[websocket.fallback]`: Server-Sent Events and long-polling on this
    /// listener, for clients whose WebSocket upgrade does not get through.
    pub fallback: FallbackConfig,
}

/// The HTTP fallback transports (`net::fallback`): SSE and long-polling,
/// served by the cores on the WebSocket listeners (ws, and wss as
/// HTTPS), under `path`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FallbackConfig {
    /// Serve `path/sse`, `path/poll` and the POST actions.
    pub enabled: bool,
    /// Prefix of the fallback endpoints (default `/push`).
    pub path: String,
    /// How long a long-poll is held when nothing is waiting, ms (default
    /// 25,000: under the 30 s many proxies allow an idle response).
    pub poll_timeout_ms: u64,
    /// Keep-alive of an HTTP session's MQTT connection, seconds (default
    /// 60): a session no request touched for 1.5 times this is closed, and
    /// kept offline for `session_expiry_secs`. An SSE stream touches it
    /// with every heartbeat; a client polls well inside it.
    pub keep_alive_secs: u16,
    /// How long a closed HTTP session is kept for the client to come back,
    /// seconds (default 300). 0: sessions end with their connection.
    pub session_expiry_secs: u32,
    /// Interval of SSE heartbeat comments, ms (default 15,000): proxies
    /// close responses that stay silent, and each one touches the session.
    pub heartbeat_ms: u64,
    /// Largest POST body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// HTTP sessions per core (503 beyond; default 10,000).
    pub max_sessions_per_core: usize,
    /// Rendered events an HTTP session holds for a client that is between
    /// polls, bytes (default 256 KiB); beyond it the session's MQTT outbox
    /// takes the backlog, with its slow-consumer rules and counted drops.
    pub max_buffered_bytes: usize,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            enabled: true,
            path: "/push".into(),
            poll_timeout_ms: 25_000,
            keep_alive_secs: 60,
            session_expiry_secs: 300,
            heartbeat_ms: 15_000,
            max_body_bytes: 64 * 1024,
            max_sessions_per_core: 10_000,
            max_buffered_bytes: 256 * 1024,
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8083)),
            path: "/mqtt".into(),
            max_frame_bytes: 1 << 20,
            fallback: FallbackConfig::default(),
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
    /// Keys that seal TLS session tickets, shared by every node so a client
    /// resumes on any of them: one per line, 64 hex digits (`openssl rand
    /// -hex 32`); the first seals, all open. Empty: a random key of this
    /// process (resumption back to the same process only). Re-read on
    /// SIGHUP; see `net::tickets` for rotation.
    pub ticket_key_file: PathBuf,
    /// Lifetime hint sent with each ticket, seconds (default 7,200: a client
    /// back within two hours skips the full handshake). Forward secrecy is
    /// bounded by key rotation, not by this.
    pub ticket_lifetime_secs: u32,
    /// ALPN protocols of the mqtts listener, preferred first (default
    /// `["mqtt"]`). A client that offers none is served; one that offers
    /// only other names gets the `no_application_protocol` alert (RFC 7301),
    /// so add the names such clients send (e.g. `x-amzn-mqtt-ca`). Empty:
    /// ALPN off, every client served.
    pub alpn: Vec<String>,
    /// ALPN protocols of the wss listener (default `["http/1.1"]`: browsers
    /// offer `h2` and `http/1.1`, and the upgrade is HTTP/1.1).
    pub wss_alpn: Vec<String>,
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
            ticket_key_file: PathBuf::new(),
            ticket_lifetime_secs: 7200,
            alpn: vec!["mqtt".into()],
            wss_alpn: vec!["http/1.1".into()],
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
    /// How long an `Idempotency-Key` is remembered after the request that
    /// first used it: a retry within this window gets the first answer and
    /// delivers nothing again.
    pub idempotency_window_secs: u64,
    /// Most idempotency keys one node remembers at once (memory store; with
    /// the Redis store they live in Redis and expire there), about 215
    /// bytes each. A new key beyond it is refused with 503 until older ones
    /// expire: the default holds 3,333 keyed requests/s for a 300 s window.
    pub idempotency_max_keys: usize,
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
            idempotency_window_secs: 300,
            idempotency_max_keys: 1_000_000,
        }
    }
}

/// `[grpc]`: the gRPC API, served on the control-plane thread beside the
/// HTTP API, with the same bearer tokens (`http.tokens`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Listen address; unset: no gRPC API.
    pub listen: Option<SocketAddr>,
    /// `[grpc.upstream]`: client messages streamed to backends.
    pub upstream: UpstreamConfig,
}

/// `[grpc.upstream]`: the `Upstream` streams, which carry client messages
/// to backends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Filters whose client messages always go to the streams: with no
    /// backend holding them, `fallback` answers their publishers. Messages
    /// on other filters go to a backend only while one holds them.
    pub topics: Vec<String>,
    /// When a client's QoS 1/2 message on an upstream filter is
    /// acknowledged to it.
    pub ack: UpstreamAck,
    /// What a message no backend holds gets.
    pub fallback: UpstreamFallback,
    /// Most messages sent to one stream and not yet acknowledged (a
    /// stream's `Subscribe.window` may ask for fewer). About what a backend
    /// keeps in hand; with one message per 1 ms of backend work, 1000 is a
    /// second's worth.
    pub window: u32,
    /// A stream that holds a message unacknowledged for this long is ended
    /// (its messages go to the rest of its group): a backend that hangs
    /// does not hold its publishers forever.
    pub ack_timeout_ms: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            topics: Vec::new(),
            ack: UpstreamAck::Backend,
            fallback: UpstreamFallback::Refuse,
            window: 1000,
            ack_timeout_ms: 30_000,
        }
    }
}

/// When an upstream message's publisher is acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamAck {
    /// Once every group that got it acknowledged it on its stream.
    #[default]
    Backend,
    /// At once: faster, and a message whose backend ends before it
    /// processed it is lost.
    AtOnce,
}

/// What a client message on an upstream filter gets when no backend holds
/// it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamFallback {
    /// Refused: MQTT 5 publishers get 0x80 in their ack; 3.1.1 publishers
    /// are disconnected and send again.
    #[default]
    Refuse,
    /// Acknowledged anyway (counted in `tether_upstream_unrouted`): it
    /// reaches no backend.
    Accept,
}
