//! The embedding API: [`Gateway`] starts a node (listeners, one executor
//! per core, the HTTP API) and stops it; [`GatewayBuilder`] injects the
//! seams: the authenticator, the authorizer, the session store and the
//! outbound bridge.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tracing::error;

use crate::adapters::auth::{AuthFiles, AuthSetup, AuthSetupError};
use crate::adapters::kafka::KafkaOutbound;
use crate::adapters::redis::RedisStore;
use crate::adapters::upstream::Upstream;
use crate::auth::{AuthChain, Authenticator, Authorizer};
use crate::bridge::departures::Departures;
use crate::bridge::outbound::{NoOutbound, Outbound};
use crate::bridge::{Bridge, BridgeMsg};
use crate::config::{Config, StoreKind};
use crate::engine::{self, CoreStart, CoreVisible, NodeState};
use crate::error::{Classify, Origin};
use crate::net::listener::ListenError;
use crate::net::tls::{Acceptor, Loaded, TlsError};
use crate::net::Transport;
use crate::stats::Snapshot;
use crate::store::{MemoryStore, SessionStore};

/// How long `start` waits for every core to report ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the gateway could not start, with what to do about it.
#[derive(Debug)]
pub enum StartError {
    /// A listener could not be bound.
    Listen(ListenError),
    /// TLS could not be set up from the configured files.
    Tls(TlsError),
    /// The HTTP API could not start (its address is in the message).
    Http(io::Error),
    /// The gRPC API could not bind, or the Upstream hub could not start.
    Grpc(io::Error),
    /// A core's executor could not start (io_uring needs locked memory).
    Executor {
        /// Which core.
        core: usize,
        /// What glommio said.
        source: glommio::GlommioError<()>,
    },
    /// A core did not report ready within the startup timeout.
    NotReady(Duration),
    /// The session store could not be set up (`[redis]`).
    Store(crate::adapters::redis::RedisSetupError),
    /// The Kafka bridge could not be set up (`[kafka]`).
    Kafka(crate::adapters::kafka::KafkaSetupError),
    /// The users file or the ACL file could not be read (`[auth]`).
    Auth(AuthSetupError),
    /// An OS resource the runtime needs (a socket pair for a doorbell).
    Resource {
        /// What it was for.
        what: &'static str,
        /// What the OS said.
        source: io::Error,
    },
}

/// The advice for io_uring failures.
const MEMLOCK_HINT: &str = " (io_uring needs locked memory: raise the limit with \
     `ulimit -l unlimited` or LimitMEMLOCK=infinity in the systemd unit, or lower \
     runtime.io_memory_kib)";

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Listen(e) => e.fmt(f),
            StartError::Tls(e) => e.fmt(f),
            StartError::Http(e) => e.fmt(f),
            StartError::Grpc(e) => e.fmt(f),
            StartError::Store(e) => e.fmt(f),
            StartError::Kafka(e) => e.fmt(f),
            StartError::Auth(e) => write!(
                f,
                "[auth] {e}; fix the file (tether passwd FILE USER writes a users file) or unset the key"
            ),
            StartError::Executor { core, source } => {
                write!(
                    f,
                    "cannot start executor for core {core}: {source}{MEMLOCK_HINT}"
                )
            }
            StartError::NotReady(t) => write!(f, "a core did not start within {t:?}{MEMLOCK_HINT}"),
            StartError::Resource { what, source } => write!(f, "cannot create {what}: {source}"),
        }
    }
}

impl std::error::Error for StartError {}

impl Classify for StartError {
    fn origin(&self) -> Origin {
        match self {
            StartError::Listen(_)
            | StartError::Tls(_)
            | StartError::Http(_)
            | StartError::Grpc(_)
            | StartError::Store(_)
            | StartError::Auth(_) => Origin::Config,
            // Locked-memory limits, mostly: the host's configuration.
            StartError::Executor { .. } | StartError::NotReady(_) => Origin::Config,
            StartError::Kafka(e) => e.origin(),
            StartError::Resource { .. } => Origin::Internal,
        }
    }
}

impl From<ListenError> for StartError {
    fn from(e: ListenError) -> Self {
        StartError::Listen(e)
    }
}

impl From<TlsError> for StartError {
    fn from(e: TlsError) -> Self {
        StartError::Tls(e)
    }
}

/// A running gateway.
pub struct Gateway {
    /// Bound MQTT/TCP address (the real port when configured with port 0).
    pub tcp_addr: SocketAddr,
    /// Bound MQTT-over-WebSocket address, when `websocket.enabled`.
    pub ws_addr: Option<SocketAddr>,
    /// Bound MQTT-over-TLS address, when `tls.enabled`.
    pub tls_addr: Option<SocketAddr>,
    /// Bound WebSocket-over-TLS address, when `tls.enabled` and `tls.wss`.
    pub wss_addr: Option<SocketAddr>,
    /// What TLS loaded at start (for the banner).
    pub tls_loaded: Option<Loaded>,
    /// Number of cores (executors).
    pub cores: usize,
    /// Bound HTTP API address, when `http.enabled`.
    pub http_addr: Option<SocketAddr>,
    /// Bound gRPC API address, when `grpc.listen` is set.
    pub grpc_addr: Option<SocketAddr>,
    node: Arc<NodeState>,
    tls: Option<Arc<Acceptor>>,
    doorbells: Vec<StdUnixStream>,
    bridge: Arc<Bridge>,
    /// Readiness: set once every core serves, cleared when shutdown starts.
    serving: Arc<AtomicBool>,
    http: Option<crate::http::HttpServer>,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    /// The `[auth]` files, for SIGHUP.
    auth_files: Arc<AuthFiles>,
}

/// Starts a [`Gateway`] with seams other than the defaults.
pub struct GatewayBuilder {
    cfg: Config,
    auth: Option<Arc<dyn Authenticator>>,
    authz: Option<Arc<dyn Authorizer>>,
    store: Option<Arc<dyn SessionStore>>,
    outbound: Option<Arc<dyn Outbound>>,
}

impl GatewayBuilder {
    /// Decides every CONNECT on every listener, instead of the chains
    /// `[auth]` builds (a pass leaves the client to `auth.allow_anonymous`).
    pub fn authenticator(mut self, auth: Arc<dyn Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Decides every SUBSCRIBE filter and PUBLISH (default: the
    /// `auth.acl_file` rules with [`DenyLists`](crate::auth::DenyLists) from `mqtt.deny_subscribe`
    /// and `mqtt.deny_publish`, or the deny lists alone).
    pub fn authorizer(mut self, authz: Arc<dyn Authorizer>) -> Self {
        self.authz = Some(authz);
        self
    }

    /// The session directory (default: [`MemoryStore`]).
    pub fn store(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Where messages leave the gateway (default: [`NoOutbound`]).
    pub fn outbound(mut self, outbound: Arc<dyn Outbound>) -> Self {
        self.outbound = Some(outbound);
        self
    }

    /// Binds the listeners and starts one executor per core. Returns once
    /// every core is accepting.
    pub fn start(self) -> Result<Gateway, StartError> {
        let GatewayBuilder {
            cfg,
            auth,
            authz,
            store,
            outbound,
        } = self;
        let cfg = Arc::new(cfg);
        let ncores = cfg.cores();
        let (tls, tls_loaded) = if cfg.tls.enabled {
            let (acceptor, loaded) = Acceptor::new(&cfg.tls)?;
            (Some(Arc::new(acceptor)), Some(loaded))
        } else {
            (None, None)
        };
        let bound = crate::net::listener::bind_all(&cfg, ncores)?;
        let addr_of = |t: Transport| bound.iter().find(|b| b.transport == t).map(|b| b.addr);
        let tcp_addr = addr_of(Transport::Mqtt).expect("the TCP listener is always bound");
        let (ws_addr, tls_addr, wss_addr) = (
            addr_of(Transport::Ws),
            addr_of(Transport::Mqtts),
            addr_of(Transport::Wss),
        );
        let store: Arc<dyn SessionStore> = match (store, cfg.store.kind) {
            (Some(s), _) => s,
            (None, StoreKind::Memory) => Arc::new(MemoryStore::with_user_limit(
                cfg.limits.max_connections_per_user,
                cfg.limits.per_user_policy,
            )),
            (None, StoreKind::Redis) => {
                // rustls needs a process-wide crypto provider for rediss://
                // (ring, like the listeners); already installed is fine.
                let _ = rustls::crypto::ring::default_provider().install_default();
                Arc::new(RedisStore::new(&cfg).map_err(StartError::Store)?)
            }
        };
        let outbound: Arc<dyn Outbound> = match outbound {
            Some(o) => o,
            None if cfg.kafka.enabled() => {
                Arc::new(KafkaOutbound::new(&cfg).map_err(StartError::Kafka)?)
            }
            None => Arc::new(NoOutbound),
        };
        // With the gRPC API, the Upstream hub stands in front of the
        // outbound bridge: the cores see one `Outbound`.
        let upstream = match cfg.grpc.listen {
            Some(_) => Some(Arc::new(
                Upstream::new(&cfg.grpc.upstream, cfg.node.id, outbound.clone())
                    .map_err(StartError::Grpc)?,
            )),
            None => None,
        };
        let outbound: Arc<dyn Outbound> = match &upstream {
            Some(u) => u.clone(),
            None => outbound,
        };
        // The configured seams, for what the builder was not given.
        let anonymous = cfg.auth.allow_anonymous;
        let (auth, authz, auth_files) = match (auth, authz) {
            (Some(a), Some(z)) => (
                AuthChain::single(a, anonymous),
                z,
                Arc::new(AuthFiles::default()),
            ),
            (a, z) => {
                let setup = AuthSetup::from_config(&cfg).map_err(StartError::Auth)?;
                (
                    a.map_or(setup.chain, |a| AuthChain::single(a, anonymous)),
                    z.unwrap_or(setup.authorizer),
                    setup.files,
                )
            }
        };
        // Only a session that lives on elsewhere (a durable store) can
        // leave the node with copies on their way to it (the cluster bus).
        let departures = Arc::new(Departures::new(
            cfg.kafka.cluster.enabled() && store.durability().is_some(),
        ));
        let node = Arc::new(NodeState {
            node_id: cfg.node.id,
            cores: (0..ncores).map(|_| CoreVisible::default()).collect(),
            store,
            auth: Arc::new(auth),
            authz,
            outbound,
            started: Instant::now(),
            retained: Default::default(),
            bans: crate::auth::bans::Bans::new(
                cfg.auth.ban_after_failures,
                cfg.auth.ban_window_secs,
                cfg.auth.ban_secs,
            ),
            draining: Default::default(),
            admission: engine::Admission::new(&cfg.listeners),
            departures: departures.clone(),
        });
        let (bridge, inboxes) = Bridge::new(ncores, cfg.runtime.bridge_capacity, departures)
            .map_err(|source| StartError::Resource {
                what: "the bridge inboxes",
                source,
            })?;
        node.store.start(bridge.clone());
        node.outbound
            .start(bridge.clone())
            .map_err(|e| StartError::Kafka(crate::adapters::kafka::KafkaSetupError::Config(e)))?;
        let mut doorbells = Vec::with_capacity(ncores);
        let mut starts = Vec::with_capacity(ncores);
        let (ready_tx, ready_rx) = mpsc::channel::<usize>();
        let mesh = engine::mesh(&cfg, ncores);
        for (id, inbox) in inboxes.into_iter().enumerate() {
            let (bell_tx, bell_rx) =
                StdUnixStream::pair().map_err(|source| StartError::Resource {
                    what: "the shutdown socketpair",
                    source,
                })?;
            doorbells.push(bell_tx);
            starts.push(CoreStart {
                id,
                cfg: cfg.clone(),
                node: node.clone(),
                listeners: Vec::new(),
                shutdown: bell_rx,
                inbox,
                mesh: mesh.clone(),
                ready: ready_tx.clone(),
                tls: tls.clone(),
            });
        }
        for b in bound {
            for (core, socket) in b.sockets.into_iter().enumerate() {
                starts[core].listeners.push((b.transport, socket));
            }
        }
        drop(ready_tx);
        let mut executors = Vec::with_capacity(ncores);
        for start in starts {
            let core = start.id;
            let handle =
                engine::spawn(start).map_err(|source| StartError::Executor { core, source })?;
            executors.push(handle);
        }
        for _ in 0..ncores {
            ready_rx
                .recv_timeout(STARTUP_TIMEOUT)
                .map_err(|_| StartError::NotReady(STARTUP_TIMEOUT))?;
        }
        let serving = Arc::new(AtomicBool::new(true));
        let grpc = match (cfg.grpc.listen, upstream) {
            (Some(addr), Some(up)) => {
                let listener = crate::grpc::bind(addr).map_err(StartError::Grpc)?;
                let addr = listener.local_addr().map_err(StartError::Grpc)?;
                Some((addr, crate::grpc::companion(listener, up)))
            }
            _ => None,
        };
        let grpc_addr = grpc.as_ref().map(|(a, _)| *a);
        let http = if cfg.http.enabled || grpc.is_some() {
            let api = crate::http::Api {
                cfg: cfg.http.clone(),
                bridge: bridge.clone(),
                node: node.clone(),
                serving: serving.clone(),
                drain: cfg.drain.clone(),
                keys: crate::http::idempotency::Keys::new(cfg.http.idempotency_max_keys),
            };
            Some(
                crate::http::HttpServer::start(api, grpc.map(|(_, c)| c))
                    .map_err(StartError::Http)?,
            )
        } else {
            None
        };
        Ok(Gateway {
            tcp_addr,
            ws_addr,
            tls_addr,
            wss_addr,
            tls_loaded,
            cores: ncores,
            http_addr: http.as_ref().and_then(|h| h.addr),
            grpc_addr,
            serving,
            http,
            node,
            tls,
            doorbells,
            bridge,
            executors,
            auth_files,
        })
    }
}

impl Gateway {
    /// The `[auth]` files, to reload them (SIGHUP).
    pub fn auth_files(&self) -> Arc<AuthFiles> {
        self.auth_files.clone()
    }

    /// The settings a reload may change while the node runs (SIGHUP).
    pub fn live(&self) -> crate::reload::Live {
        crate::reload::Live::new(self.node.clone(), self.auth_files.clone())
    }

    /// A builder, to inject seams before starting.
    pub fn builder(cfg: Config) -> GatewayBuilder {
        GatewayBuilder {
            cfg,
            auth: None,
            authz: None,
            store: None,
            outbound: None,
        }
    }

    /// Binds the listeners and starts one executor per core, with the
    /// default seams. Returns once every core is accepting.
    pub fn start(cfg: Config) -> Result<Gateway, StartError> {
        Gateway::builder(cfg).start()
    }

    /// [`Gateway::start`] with an [`Authenticator`] deciding every CONNECT.
    pub fn start_with(cfg: Config, auth: Arc<dyn Authenticator>) -> Result<Gateway, StartError> {
        Gateway::builder(cfg).authenticator(auth).start()
    }

    /// Write ends of the per-core shutdown doorbells (one byte each stops
    /// the gateway); for signal handlers.
    pub fn doorbell_fds(&self) -> Vec<RawFd> {
        use std::os::fd::AsRawFd;
        self.doorbells.iter().map(|d| d.as_raw_fd()).collect()
    }

    /// Reads the TLS certificate and key again (what SIGHUP does); new
    /// handshakes use them, established connections are kept. On error the
    /// previous certificate stays in use.
    pub fn reload_tls(&self) -> Result<Loaded, TlsError> {
        match &self.tls {
            Some(t) => t.reload(),
            None => Err(TlsError::Disabled),
        }
    }

    /// The TLS acceptor, for a reload handler on another thread.
    pub fn tls_acceptor(&self) -> Option<Arc<Acceptor>> {
        self.tls.clone()
    }

    /// The way in for threads that are not cores (HTTP, Kafka, Redis
    /// bridges): see [`crate::bridge`].
    pub fn bridge(&self) -> Arc<Bridge> {
        self.bridge.clone()
    }

    /// Asks every core to shut down (returns immediately).
    pub fn shutdown(&self) {
        self.serving.store(false, Relaxed);
        for mut bell in &self.doorbells {
            let _ = io::Write::write_all(&mut bell, &[1]);
        }
    }

    /// Waits for every core to finish.
    pub fn join(mut self) {
        for e in std::mem::take(&mut self.executors) {
            if let Err(e) = e.join() {
                error!("executor ended with an error: {e}");
            }
        }
        // The API outlives the cores (readiness reports the shutdown) and
        // stops with them; the store flushes what the cores journaled.
        if let Some(mut http) = self.http.take() {
            http.stop();
        }
        self.node.store.stop();
        self.node.outbound.stop();
    }

    /// Shuts down and waits.
    pub fn stop(self) {
        self.shutdown();
        self.join();
    }

    /// Waits for every core to finish, up to `timeout`; false if one did not.
    pub fn join_timeout(self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            self.join();
            let _ = tx.send(());
        });
        rx.recv_timeout(timeout).is_ok()
    }

    /// Counters summed over cores.
    pub fn stats(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for c in &self.node.cores {
            s.add(&c.stats);
        }
        s
    }

    /// A handle for watching the node from another thread (the systemd
    /// watchdog), valid while the gateway runs.
    pub fn monitor(&self) -> Monitor {
        Monitor {
            node: self.node.clone(),
            bridge: self.bridge.clone(),
        }
    }

    /// Retained messages in each core's replica.
    pub fn retained_per_core(&self) -> Vec<usize> {
        self.node
            .cores
            .iter()
            .map(|c| c.retained.load(Relaxed))
            .collect()
    }

    /// Members of all shared-subscription groups on the node.
    pub fn shared_members(&self) -> usize {
        self.node
            .cores
            .iter()
            .map(|c| c.shared_members.load(Relaxed))
            .sum()
    }

    /// Core that currently owns `client_id`'s session, if any.
    pub fn locate(&self, client_id: &str) -> Option<usize> {
        self.node.store.locate(client_id).map(|l| l.core)
    }
}

impl Drop for Gateway {
    /// A dropped gateway stops its cores instead of leaking them.
    fn drop(&mut self) {
        if !self.executors.is_empty() {
            self.shutdown();
        }
    }
}

/// Watches a running node from another thread: a cheap clone of what the
/// cores share (see [`Gateway::monitor`]).
#[derive(Clone)]
pub struct Monitor {
    node: Arc<NodeState>,
    bridge: Arc<Bridge>,
}

impl Monitor {
    /// Asks every core for a proof of life (`BridgeMsg::Heartbeat`) and
    /// returns how long ago each last gave one, in ms: a core whose loop is
    /// stuck falls behind by the time since it stopped.
    pub fn heartbeat(&self) -> Vec<u64> {
        let now = self.node.elapsed_ms();
        let ages = self
            .node
            .cores
            .iter()
            .map(|c| now.saturating_sub(c.alive_ms.load(Relaxed)))
            .collect();
        for core in 0..self.node.cores.len() {
            let _ = self.bridge.send(core, BridgeMsg::Heartbeat);
        }
        ages
    }

    /// Whether a drain started.
    pub fn draining(&self) -> bool {
        self.node.draining.load(Relaxed)
    }

    /// Open connections on the node, over every listener.
    pub fn connections(&self) -> i64 {
        self.node.connections()
    }
}
