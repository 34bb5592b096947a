//! Process runtime: one pinned glommio executor per core (named
//! `tether-core-N`), the channel mesh between them, and each core's service
//! tasks:
//!
//! - one accept loop per listener, spawning a connection task per socket;
//! - the timer wheel (sleeps while no timer is armed);
//! - one router task per peer (drains the core's queue into the channel)
//!   and one receiver per peer;
//! - the inbox task: requests from bridge threads and the answers to the
//!   core's own requests, behind one doorbell;
//! - `$SYS` statistics on core 0;
//! - shutdown: stop accepting, DISCONNECT 0x8B, drain, end.

use std::net::TcpListener as StdTcpListener;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures_lite::AsyncReadExt;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::net::{TcpListener, UnixStream};
use glommio::{LocalExecutorBuilder, Placement};
use tracing::{debug, error, warn};

use crate::bridge::CoreInbox;
use crate::config::Config;
use crate::input::{self, Answer, Input};
use crate::mesh::CoreMsg;
use crate::net::driver::Driver;
use crate::net::tls::Acceptor;
use crate::net::Transport;
use crate::shard::{Clock, Core, NodeState, ReplyReceivers, Returns};
use crate::stats::bump;

/// Pause after an accept error such as EMFILE, so a full fd table does not
/// turn the accept loop into a busy loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Doorbell bytes read at once: one drain serves every message queued
/// before it, however many rang (a ring writes only when none is
/// outstanding, so there is usually one byte).
const RINGS_PER_READ: usize = 256;

/// How often a core refreshes the next part of its presence leases (the
/// slab is cut into `presence.lease_secs` parts).
const PRESENCE_SWEEP: Duration = Duration::from_secs(1);

/// What `Gateway::start` hands each core's executor.
pub struct CoreStart {
    /// The core's index (`0..node.cores`); it is pinned to this CPU (modulo
    /// the CPUs there are).
    pub id: usize,
    /// The node's configuration.
    pub cfg: Arc<Config>,
    /// What every core of the node shares.
    pub node: Arc<NodeState>,
    /// The core's SO_REUSEPORT listener of each enabled transport.
    pub listeners: Vec<(Transport, socket2::Socket)>,
    /// Read end of the shutdown doorbell.
    pub shutdown: StdUnixStream,
    /// The core side of its bridge inbox.
    pub inbox: CoreInbox,
    /// The channels to the other cores (one [`Mesh`], cloned for each).
    pub mesh: Mesh,
    /// Told the core's id once it serves.
    pub ready: mpsc::Sender<usize>,
    /// The TLS server configuration, when mqtts/wss are enabled.
    pub tls: Option<Arc<Acceptor>>,
}

/// The full mesh of bounded channels between the cores, built once and
/// handed to each core in its [`CoreStart`] (each joins it when it starts).
#[derive(Clone)]
pub struct Mesh(Option<MeshBuilder<CoreMsg, Full>>);

/// The mesh between `cores` cores (none for one).
pub fn mesh(cfg: &Config, cores: usize) -> Mesh {
    Mesh((cores > 1).then(|| MeshBuilder::full(cores, cfg.runtime.mesh_channel_capacity)))
}

/// Starts the executor of one core, pinned to a CPU.
pub fn spawn(
    start: CoreStart,
) -> Result<glommio::ExecutorJoinHandle<()>, glommio::GlommioError<()>> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let r = &start.cfg.runtime;
    LocalExecutorBuilder::new(Placement::Fixed(start.id % cpus))
        .name(&format!("tether-core-{}", start.id))
        .io_memory(r.io_memory_kib * 1024)
        .ring_depth(r.ring_depth)
        .spawn(move || async move { run_core(start).await })
}

async fn run_core(start: CoreStart) {
    let CoreStart {
        id,
        cfg,
        node,
        listeners,
        shutdown,
        inbox,
        mesh,
        ready,
        tls,
    } = start;
    let (returns, replies) = Returns::new(inbox.bell.clone());
    let core = Rc::new(Core::new(id, cfg.clone(), node, returns, Clock::real()));
    let listeners: Vec<_> = listeners
        .into_iter()
        .map(|(t, socket)| {
            let std: StdTcpListener = socket.into();
            // SAFETY: `into_raw_fd` hands over the listening socket bound
            // for this core by `Gateway::start`; nothing else owns it.
            (t, unsafe { TcpListener::from_raw_fd(std.into_raw_fd()) })
        })
        .collect();
    // SAFETY: as above, this core owns the read end of its shutdown bell.
    let mut shutdown = unsafe { UnixStream::from_raw_fd(shutdown.into_raw_fd()) };
    let mut mesh_tasks = Vec::new();
    if let Mesh(Some(mesh)) = mesh {
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
    // As many slots as the core's share of the open-file limit, like its
    // slab of entries (an HTTP session's connection holds a slot and no
    // descriptor, so a node full of them may grow past it).
    let slots = crate::limits::connection_slots() / core.node.cores.len().max(1);
    let driver = match Driver::new(slots, Some(core.clone())) {
        Ok(d) => d,
        Err(e) => {
            error!(
                core = id,
                "cannot set up the connection driver's readiness set (epoll_create1): {e}"
            );
            return;
        }
    };
    core.set_queued_probe(crate::net::driver::is_queued);
    let driver_task = glommio::spawn_local(driver.clone().run());
    let adopt = glommio::spawn_local(run_adopt(core.clone(), driver.clone()));
    let ticker = glommio::spawn_local(run_wheel(core.clone()));
    let journal = glommio::spawn_local(run_journal(core.clone()));
    let presence = core
        .mirrors()
        .then(|| glommio::spawn_local(run_presence(core.clone())));
    let inbox = glommio::spawn_local(run_inbox(core.clone(), inbox, replies));
    let sys =
        (id == 0 && cfg.sys.interval_secs > 0).then(|| glommio::spawn_local(run_sys(core.clone())));
    let _ = ready.send(id);
    debug!(core = id, "core ready");

    let accepts: Vec<_> = listeners
        .into_iter()
        .map(|(t, l)| {
            glommio::spawn_local(accept_loop(core.clone(), driver.clone(), l, t, tls.clone()))
        })
        .collect();
    let mut b = [0u8; 1];
    let drain = futures_lite::future::or(
        async {
            let _ = shutdown.read(&mut b).await;
            false
        },
        async {
            core.drain_requested.wait().await;
            true
        },
    )
    .await;
    // Stop accepting at once; the grace below is for established clients.
    drop(accepts);
    if drain {
        // SIGTERM keeps its quick path: it cuts a drain short.
        futures_lite::future::or(drain_clients(&core), async {
            let _ = shutdown.read(&mut b).await;
        })
        .await;
    }

    core.begin_shutdown();
    let grace = Duration::from_millis(cfg.runtime.shutdown_grace_ms);
    let drained = core.drained.wait();
    futures_lite::future::or(drained, glommio::timer::sleep(grace)).await;
    drop(ticker);
    drop(adopt);
    drop(driver_task);
    // What the closing connections journaled goes out before the core ends.
    flush_journal(&core);
    drop(journal);
    drop(presence);
    drop(inbox);
    drop(sys);
    drop(mesh_tasks);
    debug!(core = id, "core stopped");
}

/// How often a draining core closes its next batch of clients: ten
/// batches a second keep the rate smooth without a timer per client.
const DRAIN_STEP: Duration = Duration::from_millis(100);
/// Longest a mesh receiver or the inbox waits for the driver to serve the
/// connections its last message's copies queued behind: a safety net, as
/// the driver runs whenever a connection is queued; one tick's worth.
const PACE_WAIT_LIMIT: Duration = Duration::from_millis(100);

/// A drain on this core: closes its clients at its share of
/// `drain.rate_per_sec` (MQTT 5: DISCONNECT 0x9C with
/// `drain.server_reference`, or 0x8B without one), until none is left or
/// `drain.deadline_secs` passed. Persistent sessions stay in the store for
/// the node the client reconnects to.
async fn drain_clients(core: &Rc<Core>) {
    let d = &core.cfg.drain;
    let cores = core.routes.len().max(1) as f64;
    let per_step = (f64::from(d.rate_per_sec.max(1)) / cores * DRAIN_STEP.as_secs_f64()).max(1.0);
    core.shutting_down.set(true);
    let deadline = Instant::now() + Duration::from_secs(d.deadline_secs);
    // Fractions carry over, so a rate below ten a second per core holds.
    let mut budget = 0.0;
    tracing::info!(
        core = core.id,
        per_sec = per_step / DRAIN_STEP.as_secs_f64(),
        "draining"
    );
    loop {
        budget += per_step;
        match core.drain_step(budget as usize) {
            None => return,
            Some(closed) => budget -= closed as f64,
        }
        if Instant::now() >= deadline {
            warn!(
                core = core.id,
                "drain.deadline_secs passed: closing the rest at once"
            );
            return;
        }
        futures_lite::future::or(core.drained.wait(), glommio::timer::sleep(DRAIN_STEP)).await;
    }
}

/// Drains the core's inbox and its reply queues whenever its doorbell
/// rings.
async fn run_inbox(core: Rc<Core>, inbox: CoreInbox, replies: ReplyReceivers) {
    // SAFETY: the read end of the doorbell was created for this core and
    // `into_raw_fd` hands its ownership over; nothing else closes it.
    let mut bell = unsafe { UnixStream::from_raw_fd(inbox.bell_rx.into_raw_fd()) };
    let mut rings = [0u8; RINGS_PER_READ];
    loop {
        match bell.read(&mut rings).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // Before draining: what is queued from here on rings again.
        inbox.bell.answer();
        while let Ok(msg) = inbox.rx.try_recv() {
            let _ = input::handle(&core, Input::Bridge(msg));
            if core.take_lagging() {
                // As for the mesh: the connections go first.
                until_served(&core).await;
            }
        }
        // Each queue drained in turn, as the seams answered.
        while let Ok((token, v)) = replies.verdicts.try_recv() {
            let _ = input::handle(&core, Input::Answer(Answer::Verdict(token, v)));
        }
        while let Ok((token, c)) = replies.claims.try_recv() {
            let _ = input::handle(&core, Input::Answer(Answer::Claim(token, c)));
        }
        while let Ok((token, p)) = replies.permits.try_recv() {
            let _ = input::handle(&core, Input::Answer(Answer::Permit(token, p)));
        }
        while let Ok((token, p)) = replies.produced.try_recv() {
            let _ = input::handle(&core, Input::Answer(Answer::Produced(token, p)));
        }
    }
}

/// `listeners.max_accepts_per_sec` for one listener on one core: a token
/// bucket holding one second's worth. The rate is read on every accept, so
/// a reload changes it for a running listener.
struct Pacer {
    rate: u32,
    tokens: f64,
    at: std::time::Instant,
}

impl Pacer {
    fn new() -> Pacer {
        Pacer {
            rate: 0,
            tokens: 0.0,
            at: std::time::Instant::now(),
        }
    }

    /// Takes a token for one accept at `per_sec` (0: unlimited); how long
    /// to wait first, if any. A new rate starts with a full bucket.
    fn take(&mut self, per_sec: u32, now: std::time::Instant) -> Option<Duration> {
        if per_sec == 0 {
            self.rate = 0;
            return None;
        }
        let rate = f64::from(per_sec);
        if per_sec != self.rate {
            self.rate = per_sec;
            self.tokens = rate;
        } else {
            let earned = now.saturating_duration_since(self.at).as_secs_f64() * rate;
            self.tokens = (self.tokens + earned).min(rate);
        }
        self.at = now;
        self.tokens -= 1.0;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / rate))
    }
}

/// Serves the HTTP fallback sockets other cores hand to this one (their
/// request belongs to a session here): each joins this core's driver.
async fn run_adopt(core: Rc<Core>, driver: Rc<Driver>) {
    loop {
        core.adopt_ready.wait().await;
        let adopted = std::mem::take(&mut *core.adopted.borrow_mut());
        for handoff in adopted {
            driver.add(crate::net::conn::ConnTask::adopt(core.clone(), handoff));
        }
    }
}

/// Accepts on one listener.
async fn accept_loop(
    core: Rc<Core>,
    driver: Rc<Driver>,
    listener: TcpListener,
    transport: Transport,
    tls: Option<Arc<Acceptor>>,
) {
    let mut pacer = Pacer::new();
    loop {
        let rate = core
            .node
            .admission
            .max_accepts_per_sec
            .load(std::sync::atomic::Ordering::Relaxed);
        if let Some(wait) = pacer.take(rate, std::time::Instant::now()) {
            bump(&core.stats().accepts_paced, 1);
            glommio::timer::sleep(wait).await;
        }
        if core.handshakes_full() {
            bump(&core.stats().accepts_held, 1);
            while core.handshakes_full() {
                core.handshake_room[transport.index()].wait().await;
            }
        }
        match listener.shared_accept().await {
            Ok(accepted) => {
                // SAFETY: the accepted socket is handed over whole; the
                // connection task owns it from here.
                let stream = unsafe { std::net::TcpStream::from_raw_fd(accepted.into_raw_fd()) };
                let task = crate::net::conn::serve(core.clone(), stream, transport, tls.as_deref());
                if let Some(task) = task {
                    driver.add(task);
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

/// Hands the core's journal of durable writes to the store once per
/// executor turn: everything journaled while the task waited goes in one
/// batch.
async fn run_journal(core: Rc<Core>) {
    loop {
        core.journal_ready.wait().await;
        // Let the rest of this turn's work journal too.
        futures_lite::future::yield_now().await;
        flush_journal(&core);
    }
}

fn flush_journal(core: &Core) {
    let ops = core.take_journal();
    if !ops.is_empty() {
        core.node.store.write(ops);
    }
}

/// Refreshes presence leases: once a second, the next of `lease_secs`
/// parts of the slab, so every entry is refreshed once per lease, evenly.
async fn run_presence(core: Rc<Core>) {
    let parts = core.cfg.presence.lease_secs.max(1) as usize;
    let mut part = core.id % parts;
    loop {
        glommio::timer::sleep(PRESENCE_SWEEP).await;
        core.refresh_presence(part, parts);
        part = (part + 1) % parts;
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
        core.lag_ms.set(lag.as_millis() as u64);
        let _ = input::handle(&core, Input::Tick { fired: &mut fired });
    }
}

/// Drains this core's queue towards `peer` into the bounded channel. A full
/// channel suspends this task (and, via the backlog limit, the publishers),
/// never drops.
async fn route_to(core: Rc<Core>, peer: usize, senders: Rc<Senders<CoreMsg>>) {
    loop {
        core.routes.queued(peer).await;
        while let Some(msg) = core.routes.next(peer) {
            let (n, bytes) = (msg.messages(), msg.bytes());
            if senders.send_to(peer, msg).await.is_err() {
                return;
            }
            core.routed(n, bytes);
        }
    }
}

async fn receive_from(core: Rc<Core>, peer: usize, receivers: Rc<Receivers<CoreMsg>>) {
    while let Ok(Some(msg)) = receivers.recv_from(peer).await {
        let bytes = msg.bytes();
        match msg {
            CoreMsg::Publish(batch) => {
                for m in &batch {
                    let _ = input::handle(&core, Input::Routed(m));
                    if core.take_lagging() {
                        // Its copies wait behind this core's connections:
                        // take nothing more from `peer` until they were
                        // served, and tell it so its publishers wait too.
                        let lagging = &core.visible().lagging;
                        lagging.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        until_served(&core).await;
                        lagging.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        core.route(peer, CoreMsg::CaughtUp);
                    }
                }
            }
            other => {
                let _ = input::handle(&core, Input::Peer(other));
            }
        }
        if bytes > 0 {
            core.node.cores[peer]
                .mesh_bytes
                .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Waits until the core's driver served its connections once, or at most
/// [`PACE_WAIT_LIMIT`]: the mesh receivers and the inbox pace what they
/// bring to the core by it.
async fn until_served(core: &Core) {
    futures_lite::future::or(core.until_served(), glommio::timer::sleep(PACE_WAIT_LIMIT)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_allows_a_seconds_burst_then_the_rate() {
        let t0 = std::time::Instant::now();
        let mut p = Pacer::new();
        for _ in 0..10 {
            assert_eq!(p.take(10, t0), None, "the burst");
        }
        let wait = p.take(10, t0).expect("the 11th waits");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // Half a second later five more tokens were earned (less the one
        // owed).
        let later = t0 + Duration::from_millis(600);
        for _ in 0..5 {
            assert_eq!(p.take(10, later), None);
        }
        assert!(p.take(10, later).is_some());
        assert_eq!(p.take(0, later), None, "0: unlimited (a reload lifted it)");
        for _ in 0..100 {
            assert_eq!(
                p.take(100, later),
                None,
                "a new rate starts with its full burst"
            );
        }
        assert!(p.take(100, later).is_some());
    }
}
