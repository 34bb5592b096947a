//! One Redis connection for the worker: a single Redis through a
//! reconnecting multiplexed connection, or a Redis Cluster (which keeps a
//! multiplexed connection per node and follows slot moves). Both pipeline
//! concurrent requests on their sockets.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};

use crate::config::RedisConfig;

/// A cheap-to-clone handle on the Redis (or Redis Cluster) connection.
#[derive(Clone)]
pub enum Conn {
    /// One Redis.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
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
    /// Parses the URLs and credentials; TLS roots from `ca_file`.
    pub fn new(cfg: &RedisConfig) -> RedisResult<Client> {
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
            Ok(info.set_redis_settings(redis))
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
            let mut b = ClusterClientBuilder::new(nodes);
            if let Some(certs) = certs {
                b = b.certs(certs);
            }
            Some(b.build()?)
        } else {
            None
        };
        Ok(Client { single, cluster })
    }

    /// Connects; `timeout` bounds each request and each (re)connection.
    pub async fn connect(&self, timeout: Duration) -> RedisResult<Conn> {
        match &self.cluster {
            None => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeout))
                    .set_connection_timeout(Some(timeout))
                    .set_number_of_retries(2);
                Ok(Conn::Single(
                    ConnectionManager::new_with_config(self.single.clone(), config).await?,
                ))
            }
            Some(c) => Ok(Conn::Cluster(c.get_async_connection().await?)),
        }
    }

    /// A separate connection for the control channel's subscription.
    pub async fn pubsub(&self) -> RedisResult<redis::aio::PubSub> {
        self.single.get_async_pubsub().await
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
