//! Process runtime: listeners, one pinned glommio executor per core, the
//! channel mesh between cores, the per-core service tasks (accept loop,
//! timer wheel, routers, mesh receivers) and shutdown.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures_lite::AsyncReadExt;
use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use glommio::net::{TcpListener, UnixStream};
use glommio::{LocalExecutorBuilder, Placement};
use tracing::{debug, error, warn};

use crate::config::Config;
use crate::core::{Core, CoreMsg, CoreShared, Shared};
use crate::listener::Transport;
use crate::stats::{bump, Snapshot};
use crate::store::{MemoryStore, SessionStore};

/// How long `start` waits for every core to report ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept error such as EMFILE, so a full fd table does not
/// turn the accept loop into a busy loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Why the gateway could not start, with what to do about it.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

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
    pub tls_loaded: Option<crate::tls::Loaded>,
    pub cores: usize,
    /// Bound HTTP API address, when `http.enabled`.
    pub http_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    doorbells: Vec<StdUnixStream>,
    bridge: Arc<crate::bridge::Bridge>,
    /// Readiness: set once every core serves, cleared when shutdown starts.
    serving: Arc<std::sync::atomic::AtomicBool>,
    http: Option<crate::http::HttpServer>,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl Gateway {
    /// Binds the listeners and starts one executor per core. Returns once
    /// every core is accepting.
    pub fn start(cfg: Config) -> Result<Gateway, StartError> {
        Gateway::start_with(cfg, Arc::new(crate::auth::AllowAll))
    }

    /// [`Gateway::start`] with an [`Authenticator`](crate::auth::Authenticator)
    /// deciding every CONNECT.
    pub fn start_with(
        cfg: Config,
        auth: Arc<dyn crate::auth::Authenticator>,
    ) -> Result<Gateway, StartError> {
        let cfg = Arc::new(cfg);
        let ncores = cfg.cores();
        let (tls, tls_loaded) = if cfg.tls.enabled {
            let (acceptor, loaded) = crate::tls::Acceptor::new(&cfg.tls).map_err(StartError)?;
            (Some(Arc::new(acceptor)), Some(loaded))
        } else {
            (None, None)
        };
        let bound = crate::listener::bind_all(&cfg, ncores)?;
        let addr_of = |t: Transport| bound.iter().find(|b| b.transport == t).map(|b| b.addr);
        let tcp_addr = addr_of(Transport::Mqtt).expect("the TCP listener is always bound");
        let (ws_addr, tls_addr, wss_addr) = (
            addr_of(Transport::Ws),
            addr_of(Transport::Mqtts),
            addr_of(Transport::Wss),
        );
        // Per core: its socket of every enabled transport.
        let mut per_core: Vec<Vec<(Transport, RawFd)>> = (0..ncores).map(|_| Vec::new()).collect();
        for b in bound {
            for (core, socket) in b.sockets.into_iter().enumerate() {
                per_core[core].push((b.transport, socket.into_raw_fd()));
            }
        }
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::default());
        let shared = Arc::new(Shared {
            node_id: cfg.node.id,
            cores: (0..ncores).map(|_| CoreShared::default()).collect(),
            store,
            auth,
            started: Instant::now(),
            retained: Default::default(),
            tls,
        });
        let mesh =
            (ncores > 1).then(|| MeshBuilder::full(ncores, cfg.runtime.mesh_channel_capacity));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (ready_tx, ready_rx) = mpsc::channel::<usize>();
        let mut doorbells = Vec::new();
        let (bridge, inboxes) = crate::bridge::Bridge::new(ncores, cfg.runtime.bridge_capacity)
            .map_err(|e| StartError(format!("cannot create the bridge inboxes: {e}")))?;
        let mut inboxes = inboxes.into_iter();
        let mut executors = Vec::new();
        for (id, listener_fds) in per_core.into_iter().enumerate() {
            let (bell_tx, bell_rx) = StdUnixStream::pair()
                .map_err(|e| StartError(format!("cannot create the shutdown socketpair: {e}")))?;
            doorbells.push(bell_tx);
            let bell_fd = bell_rx.into_raw_fd();
            let (cfg, shared, mesh, ready) =
                (cfg.clone(), shared.clone(), mesh.clone(), ready_tx.clone());
            let inbox = inboxes.next().expect("one inbox per core");
            let handle = LocalExecutorBuilder::new(Placement::Fixed(id % cpus))
                .name(&format!("tether-core-{id}"))
                .io_memory(cfg.runtime.io_memory_kib * 1024)
                .ring_depth(cfg.runtime.ring_depth)
                .spawn(move || async move {
                    run_core(CoreStart {
                        id,
                        cfg,
                        shared,
                        listener_fds,
                        bell_fd,
                        inbox,
                        mesh,
                        ready,
                    })
                    .await;
                })
                .map_err(|e| {
                    StartError(format!(
                        "cannot start executor for core {id}: {e}{}",
                        memlock_hint()
                    ))
                })?;
            executors.push(handle);
        }
        drop(ready_tx);
        for _ in 0..ncores {
            ready_rx.recv_timeout(STARTUP_TIMEOUT).map_err(|_| {
                StartError(format!(
                    "a core did not start within {STARTUP_TIMEOUT:?}{}",
                    memlock_hint()
                ))
            })?;
        }
        let serving = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let http = if cfg.http.enabled {
            let api = crate::http::Api {
                cfg: cfg.http.clone(),
                bridge: bridge.clone(),
                shared: shared.clone(),
                serving: serving.clone(),
            };
            Some(crate::http::HttpServer::start(api).map_err(|e| StartError(e.to_string()))?)
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
            http_addr: http.as_ref().map(|h| h.addr),
            serving,
            http,
            shared,
            doorbells,
            bridge,
            executors,
        })
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
    pub fn reload_tls(&self) -> Result<crate::tls::Loaded, String> {
        match &self.shared.tls {
            Some(t) => t.reload(),
            None => Err("TLS is not enabled (tls.enabled = false)".into()),
        }
    }

    /// The TLS acceptor, for a reload handler on another thread.
    pub fn tls_acceptor(&self) -> Option<Arc<crate::tls::Acceptor>> {
        self.shared.tls.clone()
    }

    /// The way in for threads that are not cores (HTTP, Kafka, Redis
    /// bridges): see [`crate::bridge`].
    pub fn bridge(&self) -> Arc<crate::bridge::Bridge> {
        self.bridge.clone()
    }

    /// Asks every core to shut down (returns immediately).
    pub fn shutdown(&self) {
        self.serving
            .store(false, std::sync::atomic::Ordering::Relaxed);
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
        // stops with them.
        if let Some(mut http) = self.http.take() {
            http.stop();
        }
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
        for c in &self.shared.cores {
            s.add(&c.stats);
        }
        s
    }

    /// Retained messages in each core's replica.
    pub fn retained_per_core(&self) -> Vec<usize> {
        self.shared
            .cores
            .iter()
            .map(|c| c.retained.load(std::sync::atomic::Ordering::Relaxed))
            .collect()
    }

    /// Members of all shared-subscription groups on the node.
    pub fn shared_members(&self) -> usize {
        let members = self
            .shared
            .cores
            .iter()
            .map(|c| c.shared_members.load(std::sync::atomic::Ordering::Relaxed));
        members.sum()
    }

    /// Core that currently owns `client_id`'s session, if any.
    pub fn locate(&self, client_id: &str) -> Option<usize> {
        self.shared.store.locate(client_id).map(|l| l.core)
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

fn memlock_hint() -> &'static str {
    " (io_uring needs locked memory: raise the limit with `ulimit -l unlimited` or \
     LimitMEMLOCK=infinity in the systemd unit, or lower runtime.io_memory_kib)"
}

/// What `Gateway::start` hands each core's executor.
struct CoreStart {
    id: usize,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    /// The core's SO_REUSEPORT listener of each enabled transport,
    /// ownership passed as raw fds.
    listener_fds: Vec<(Transport, RawFd)>,
    /// Read end of the shutdown doorbell, likewise.
    bell_fd: RawFd,
    /// The core side of its bridge inbox.
    inbox: crate::bridge::CoreInbox,
    mesh: Option<MeshBuilder<CoreMsg, glommio::channels::channel_mesh::Full>>,
    /// Told the core's id once it serves.
    ready: mpsc::Sender<usize>,
}

async fn run_core(start: CoreStart) {
    let CoreStart {
        id,
        cfg,
        shared,
        listener_fds,
        bell_fd,
        inbox,
        mesh,
        ready,
    } = start;
    let core = Rc::new(Core::new(id, cfg.clone(), shared));
    // SAFETY: the listener fds were created by `Gateway::start` for this
    // core and ownership was handed over with `into_raw_fd`; nothing else
    // closes them.
    let listeners: Vec<_> = listener_fds
        .into_iter()
        .map(|(t, fd)| (t, unsafe { TcpListener::from_raw_fd(fd) }))
        .collect();
    // SAFETY: as above, this core owns the read end of its doorbell.
    let mut bell = unsafe { UnixStream::from_raw_fd(bell_fd) };
    let mut mesh_tasks = Vec::new();
    if let Some(mesh) = mesh {
        match mesh.join().await {
            Ok((senders, receivers)) => {
                let senders = Rc::new(senders);
                let receivers = Rc::new(receivers);
                for peer in (0..core.routes.len()).filter(|&p| p != id) {
                    mesh_tasks.push(glommio::spawn_local(route_to(
                        core.clone(),
                        peer,
                        senders.clone(),
                    )));
                    mesh_tasks.push(glommio::spawn_local(receive_from(
                        core.clone(),
                        peer,
                        receivers.clone(),
                    )));
                }
            }
            Err(e) => {
                error!(core = id, "cannot join the channel mesh: {e:?}");
                return;
            }
        }
    }
    let ticker = glommio::spawn_local(run_wheel(core.clone()));
    let bridge = glommio::spawn_local(run_bridge(core.clone(), inbox));
    let sys =
        (id == 0 && cfg.sys.interval_secs > 0).then(|| glommio::spawn_local(run_sys(core.clone())));
    let _ = ready.send(id);
    debug!(core = id, "core ready");

    let accepts: Vec<_> = listeners
        .into_iter()
        .map(|(t, l)| glommio::spawn_local(accept_loop(core.clone(), l, t)))
        .collect();
    let mut b = [0u8; 1];
    let _ = bell.read(&mut b).await;
    // Stop accepting at once; the grace below is for established clients.
    drop(accepts);

    core.begin_shutdown();
    let grace = Duration::from_millis(cfg.runtime.shutdown_grace_ms);
    let drained = core.drained.wait();
    futures_lite::future::or(drained, glommio::timer::sleep(grace)).await;
    drop(ticker);
    drop(bridge);
    drop(sys);
    drop(mesh_tasks);
    debug!(core = id, "core stopped");
}

/// Drains the core's bridge inbox whenever its doorbell rings.
async fn run_bridge(core: Rc<Core>, inbox: crate::bridge::CoreInbox) {
    use std::os::fd::IntoRawFd;
    // SAFETY: the read end of the bridge doorbell was created for this core
    // and `into_raw_fd` hands its ownership over; nothing else closes it.
    let mut bell = unsafe { UnixStream::from_raw_fd(inbox.bell.into_raw_fd()) };
    // One read takes many rings: each send rings once, and draining the
    // channel serves them all.
    let mut rings = [0u8; 256];
    loop {
        match bell.read(&mut rings).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while let Ok(msg) = inbox.rx.try_recv() {
            core.on_bridge(msg);
        }
    }
}

/// Accepts on one listener.
async fn accept_loop(core: Rc<Core>, listener: TcpListener, transport: Transport) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if let Some(task) = crate::conn::serve(core.clone(), stream, transport) {
                    glommio::spawn_local(task).detach();
                }
            }
            Err(e) => {
                let too_many = matches!(&e, glommio::GlommioError::IoError(io) if io.raw_os_error() == Some(libc::EMFILE) || io.raw_os_error() == Some(libc::ENFILE));
                bump(&core.stats().accept_errors, 1);
                if too_many {
                    warn!(core = core.id, "accept failed: too many open files; raise `ulimit -n` (LimitNOFILE= under systemd)");
                } else {
                    warn!(core = core.id, "accept failed: {e}");
                }
                glommio::timer::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// Publishes `$SYS` statistics at the configured interval (core 0 only).
async fn run_sys(core: Rc<Core>) {
    let every = Duration::from_secs(core.cfg.sys.interval_secs);
    loop {
        core.publish_sys();
        glommio::timer::sleep(every).await;
    }
}

/// Drives the timer wheel. Sleeps without ticking while no timer is armed,
/// so an idle core does not wake up at all.
async fn run_wheel(core: Rc<Core>) {
    let tick = Duration::from_millis(core.cfg.runtime.tick_ms);
    let mut fired = Vec::new();
    loop {
        if core.st.borrow().wheel.is_empty() {
            core.wheel_armed.wait().await;
        }
        let asleep = Instant::now();
        glommio::timer::sleep(tick).await;
        // Lateness of the wake-up: how long other work held the executor.
        let lag = asleep.elapsed().saturating_sub(tick);
        core.visible().loop_lag.observe(lag.as_micros() as u64);
        core.on_tick(&mut fired);
    }
}

/// Drains this core's queue towards `peer` into the bounded channel. A full
/// channel suspends this task (and, via the backlog limit, the publishers),
/// never drops.
async fn route_to(core: Rc<Core>, peer: usize, senders: Rc<Senders<CoreMsg>>) {
    loop {
        core.routes[peer].notify.wait().await;
        while let Some(msg) = core.next_routed(peer) {
            let n = msg.messages();
            if senders.send_to(peer, msg).await.is_err() {
                return;
            }
            core.routed(n);
        }
    }
}

async fn receive_from(core: Rc<Core>, peer: usize, receivers: Rc<Receivers<CoreMsg>>) {
    while let Ok(Some(msg)) = receivers.recv_from(peer).await {
        core.on_core_msg(msg);
    }
}
