//! One Redis connection for the worker: a single Redis through a
//! reconnecting multiplexed connection, or a Redis Cluster (which keeps a
//! multiplexed connection per node and follows slot moves). Both pipeline
//! concurrent requests on their sockets.
//!
//! Every socket gives up when the worker does: `TCP_USER_TIMEOUT` is the
//! request timeout. Through a partition, TCP would otherwise keep the
//! connection and retransmit what it holds with a doubling backoff, so
//! the node reached Redis again only seconds after the link healed (3-5 s
//! after an 8 s partition in the fault harness), and then delivered
//! requests long given up on (which `scripts`' deadlines turn away).
//! Aborted, the connection's unsent bytes are dropped and a new one is
//! made at once.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};

use crate::config::RedisConfig;

/// How long one connection attempt waits for Redis to accept: one SYN.
/// The kernel sends its first SYN again only after 1 s, so a longer
/// attempt would wait out the kernel's backoff instead of starting afresh
/// once a partition heals.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(1);
/// Longest pause between connection attempts of one reconnection.
const RECONNECT_PAUSE_MAX: Duration = Duration::from_millis(500);
/// Attempts in one reconnection (the next request starts another).
const RECONNECT_ATTEMPTS: usize = 6;

/// A cheap-to-clone handle on the Redis (or Redis Cluster) connection.
/// Every request gives up after `give_up`, waiting for a reconnection
/// included: the connection manager makes requests wait for one, and its
/// attempts outlast a request timeout.
#[derive(Clone)]
pub struct Conn {
    link: Link,
    give_up: Duration,
}

#[derive(Clone)]
enum Link {
    /// One Redis.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl Conn {
    /// Whether this is a Redis Cluster (a pipeline must stay in one slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self.link, Link::Cluster(_))
    }
}

/// `request`, or a timeout error once `give_up` passed.
async fn within<T>(give_up: Duration, request: RedisFuture<'_, T>) -> RedisResult<T> {
    match tokio::time::timeout(give_up, request).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer from Redis within store.request_timeout_ms",
        )
        .into()),
    }
}

/// The client side, from the configuration (no I/O yet).
pub struct Client {
    /// The first URL: the Redis itself, or (with a cluster) the node the
    /// control channel subscribes on (Redis Cluster forwards published
    /// messages to every node).
    single: redis::Client,
    cluster: Option<redis::cluster::ClusterClient>,
}

impl Client {
    /// Parses the URLs and credentials; TLS roots from `ca_file`. A
    /// socket whose data stays unacknowledged for `give_up` is aborted.
    pub fn new(cfg: &RedisConfig, give_up: Duration) -> RedisResult<Client> {
        let tcp = TcpSettings::default()
            .set_nodelay(true)
            .set_user_timeout(give_up);
        let certs = if cfg.ca_file.as_os_str().is_empty() {
            None
        } else {
            let root = std::fs::read(&cfg.ca_file).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "redis.ca_file cannot be read",
                    e.to_string(),
                ))
            })?;
            Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root),
            })
        };
        let with_auth = |url: &String| -> RedisResult<redis::ConnectionInfo> {
            let info = url.as_str().into_connection_info()?;
            let mut redis = info.redis_settings().clone();
            if !cfg.username.is_empty() {
                redis = redis.set_username(&cfg.username);
            }
            if !cfg.password.is_empty() {
                redis = redis.set_password(&cfg.password);
            }
            Ok(info.set_redis_settings(redis).set_tcp_settings(tcp.clone()))
        };
        let first = with_auth(&cfg.urls[0])?;
        let single = match certs.clone() {
            Some(certs) => redis::Client::build_with_tls(first, certs)?,
            None => redis::Client::open(first)?,
        };
        let cluster = if cfg.cluster {
            let nodes = cfg
                .urls
                .iter()
                .map(with_auth)
                .collect::<RedisResult<Vec<_>>>()?;
            let mut b = ClusterClientBuilder::new(nodes).tcp_settings(tcp.clone());
            if let Some(certs) = certs {
                b = b.certs(certs);
            }
            Some(b.build()?)
        } else {
            None
        };
        Ok(Client { single, cluster })
    }

    /// Connects; `timeout` bounds each request, a reconnection included.
    pub async fn connect(&self, timeout: Duration) -> RedisResult<Conn> {
        let link = match &self.cluster {
            None => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeout))
                    .set_connection_timeout(Some(timeout.min(CONNECT_ATTEMPT)))
                    .set_number_of_retries(RECONNECT_ATTEMPTS)
                    .set_max_delay(RECONNECT_PAUSE_MAX);
                Link::Single(ConnectionManager::new_with_config(self.single.clone(), config).await?)
            }
            Some(c) => Link::Cluster(c.get_async_connection().await?),
        };
        Ok(Conn {
            link,
            give_up: timeout,
        })
    }

    /// A separate connection for the control channel's subscription.
    pub async fn pubsub(&self) -> RedisResult<redis::aio::PubSub> {
        self.single.get_async_pubsub().await
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let request = match &mut self.link {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        };
        Box::pin(within(self.give_up, request))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let request = match &mut self.link {
            Link::Single(c) => c.req_packed_commands(cmd, offset, count),
            Link::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        };
        Box::pin(within(self.give_up, request))
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}
