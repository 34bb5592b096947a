//! The Redis session store: sessions that survive their node.
//!
//! - **A fenced directory.** Every claim of a client id takes a new epoch
//!   (never lower than any before it, even after the key expired or Redis
//!   restarted: it is seeded from Redis's clock), and every later write to
//!   the session is conditional on it, in one script. A stale node's writes
//!   are refused, counted, and its connection closed with 0x8E.
//! - **Durable state for persistent sessions**: subscriptions, the QoS 1/2
//!   messages queued or in flight (by sequence number, never packet id),
//!   the inbound QoS 2 state, and session expiry as key TTLs. A claim loads
//!   it in the same round trip. Clean sessions never touch Redis on the
//!   message path, and their CONNECT waits for no round trip.
//! - **Presence and per-user limits**: each connection with a user name has
//!   an entry in its user's sorted set, admitted atomically under the limit.
//! - **Off the hot path**: every Redis call runs on the `tether-redis`
//!   thread (`worker`); cores queue jobs and never wait.
//!
//! The node keeps its own in-memory directory too ([`MemoryStore`]): a
//! takeover within the node still hands the session over in memory.

mod blob;
mod conn;
mod keys;
mod scripts;
mod worker;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tracing::error;

use super::thread::Worker;
use crate::bridge::{Bridge, ReplyTo};
use crate::config::{Config, Durability, PerUserPolicy};
use crate::error::{Classify, Origin};
use crate::id::Location;
use crate::stats::Histogram;
use crate::store::UserLimit;
use crate::store::{Claim, ClaimResult, Claimed, MemoryStore, SessionStore, StoreOp};

pub use worker::Entry as PresenceEntry;

/// What the store needs from the configuration, read once.
pub(crate) struct Settings {
    /// This node's id (`node.id`).
    pub node: u16,
    /// This process's start, Unix ms: tells a restarted node's entries from
    /// the old ones.
    pub incarnation: u64,
    /// `redis.key_prefix`.
    pub prefix: String,
    /// `store.durability`.
    pub durability: Durability,
    /// `store.request_timeout_ms`.
    pub request_timeout: Duration,
    /// `store.handoff_timeout_ms`: how long a claim waits for the node
    /// holding the session to let go before fencing takes over.
    pub handoff_timeout: Duration,
    /// `limits.max_connections_per_user` (0: none) and
    /// `limits.per_user_policy`, shared with the store so SIGHUP reaches
    /// the worker.
    pub user_limit: Arc<UserLimit>,
    /// `presence.lease_secs`, in ms.
    pub presence_lease_ms: u64,
    /// `presence.node_lease_secs`, in ms.
    pub node_lease_ms: u64,
    /// `redis.max_queued_writes`.
    pub max_queued_writes: usize,
    /// The node's lease, renewed by the worker, read by the cores.
    pub lease: crate::store::Lease,
}

/// The store's own figures (written by the worker thread, read by
/// `/metrics`).
#[derive(Default)]
pub(crate) struct Metrics {
    /// Writes queued and not yet settled (gauge).
    pub queued: AtomicUsize,
    /// Failed Redis requests (connection, timeout, error reply).
    pub errors: AtomicU64,
    /// Writes refused because a newer claim owns the session.
    pub stale: AtomicU64,
    /// Connections evicted by the per-user limit.
    pub evicted: AtomicU64,
    /// Presence leases refreshed.
    pub refreshed: AtomicUsize,
    /// Script loads after NOSCRIPT.
    pub script_reloads: AtomicU64,
    /// Sessions another node handed over before this one claimed them.
    pub handoffs: AtomicU64,
    /// Handovers not answered within `store.handoff_timeout_ms` (the claim
    /// went ahead; fencing keeps the old node's writes out).
    pub handoff_timeouts: AtomicU64,
    /// Takeovers that waited for the old owner's lease to run out.
    pub lease_waits: AtomicU64,
    /// Claims that found this node's copy of the session stale (another
    /// node owned it since) and loaded it from Redis instead.
    pub stale_copies: AtomicU64,
    /// Claims whose answer was lost but that had landed, asked again and
    /// served (`worker::claims::settle`).
    pub claims_settled: AtomicU64,
    /// Claims whose answer was lost that had not landed (refused, 0x88).
    pub claims_absent: AtomicU64,
    /// Claims whose answer was lost and whose outcome Redis did not tell
    /// before this node's lease lapsed.
    pub claims_unsettled: AtomicU64,
    /// Sessions of this node's earlier life adopted at start
    /// (`worker::adopt`).
    pub adopted: AtomicU64,
    /// Sessions in this node's index that another node claimed since (or
    /// that ended): not adopted, and taken out of the index.
    pub adoptions_declined: AtomicU64,
    /// Fire-and-forget writes dropped over `redis.max_queued_writes`.
    pub dropped: AtomicU64,
    /// Round trips of claims and write batches.
    pub latency: Histogram,
    /// Ids for restored messages (see [`Metrics::next_message_id`]).
    next_id: AtomicU64,
}

impl Metrics {
    fn observe(&self, started: Instant) {
        self.latency.observe(started.elapsed().as_micros() as u64);
    }

    /// An id for a message restored from Redis
    /// ([`crate::id::Minter::Restored`]: never compared in a move window
    /// with a core's).
    fn next_message_id(&self) -> u64 {
        crate::id::Minter::Restored.id(self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// A job for the worker thread.
pub(crate) enum Job {
    /// A claim the CONNECT waits for.
    Claim {
        claim: Claim,
        /// The previous owner on this node, handing the session over in
        /// memory.
        previous: Option<Location>,
        reply: ReplyTo<ClaimResult>,
    },
    /// A clean session's claim, which its CONNECT does not wait for.
    Background { claim: Claim },
    /// Writes, in journal order.
    Write(Vec<StoreOp>),
    /// A question from the HTTP API.
    Lookup(crate::store::Lookup),
    /// Flush and stop.
    Stop,
}

/// Why the Redis store could not be set up.
#[derive(Debug)]
pub struct RedisSetupError(redis::RedisError);

impl std::fmt::Display for RedisSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis.urls: {} (e.g. redis://127.0.0.1:6379/)", self.0)
    }
}

impl std::error::Error for RedisSetupError {}

impl Classify for RedisSetupError {
    fn origin(&self) -> Origin {
        Origin::Config
    }
}

/// See the module documentation.
pub struct RedisStore {
    /// The node's directory (shared with the worker, which puts back what
    /// a refused claim placed).
    local: Arc<MemoryStore>,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    jobs: UnboundedSender<Job>,
    /// Taken by [`SessionStore::start`].
    idle: Mutex<Option<(UnboundedReceiver<Job>, conn::Client)>>,
    thread: OnceLock<Worker>,
}

impl RedisStore {
    /// Reads `[store]`, `[redis]`, `[presence]` and `[limits]`; connects
    /// nothing yet (the worker does, and keeps trying).
    pub fn new(cfg: &Config) -> Result<RedisStore, RedisSetupError> {
        let client = conn::Client::new(
            &cfg.redis,
            Duration::from_millis(cfg.store.request_timeout_ms),
        )
        .map_err(RedisSetupError)?;
        let settings = Settings {
            node: cfg.node.id,
            incarnation: crate::wallclock::now_ms(),
            prefix: cfg.redis.key_prefix.clone(),
            durability: cfg.store.durability,
            request_timeout: Duration::from_millis(cfg.store.request_timeout_ms),
            handoff_timeout: Duration::from_millis(cfg.store.handoff_timeout_ms),
            user_limit: Arc::new(UserLimit::new(
                cfg.limits.max_connections_per_user,
                cfg.limits.per_user_policy,
            )),
            presence_lease_ms: 2 * cfg.presence.lease_secs * 1000,
            node_lease_ms: cfg.presence.node_lease_secs * 1000,
            max_queued_writes: cfg.redis.max_queued_writes,
            lease: Default::default(),
        };
        let (jobs, rx) = unbounded_channel();
        Ok(RedisStore {
            local: Arc::default(),
            settings: Arc::new(settings),
            metrics: Arc::default(),
            jobs,
            idle: Mutex::new(Some((rx, client))),
            thread: OnceLock::new(),
        })
    }

    fn send(&self, job: Job) {
        // The worker only goes away at shutdown; a job then has nobody to
        // run it, and its ReplyTo (dropped) answers "unanswered".
        let _ = self.jobs.send(job);
    }
}

impl SessionStore for RedisStore {
    fn lease(&self) -> Option<&crate::store::Lease> {
        Some(&self.settings.lease)
    }

    fn start(&self, bridge: Arc<Bridge>) {
        let Some((rx, client)) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        // Before the outbound bridge starts: its hello and its inbox wait
        // for the sessions of this node's earlier life (`bridge::adoption`).
        bridge.adoption.begin(worker::ADOPT_WAIT_MS);
        let ctx = worker::Ctx {
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            bridge,
            local: self.local.clone(),
            scripts: scripts::Scripts::default(),
            client,
            live: Default::default(),
            redis_ahead_ms: Default::default(),
            renewal_failed: Default::default(),
            resubscribe: Default::default(),
            claiming: Default::default(),
            handoffs: Default::default(),
            went: Default::default(),
            claim_lines: Default::default(),
            next_claim: Default::default(),
        };
        let spawned = Worker::drive_local("tether-redis", move || {
            worker::run(std::rc::Rc::new(ctx), rx)
        });
        match spawned {
            Ok(w) => {
                let _ = self.thread.set(w);
            }
            Err(e) => error!("cannot start the tether-redis thread: {e}"),
        }
    }

    fn stop(&self) {
        self.send(Job::Stop);
        if let Some(w) = self.thread.get() {
            w.join();
        }
    }

    fn claim(&self, c: &Claim) -> Option<ClaimResult> {
        let s = &self.settings;
        let limited = c
            .presence
            .as_ref()
            .is_some_and(|p| p.limit.unwrap_or(s.user_limit.max()) > 0);
        if c.persistent || limited {
            return None;
        }
        let previous = self.local.place(&c.client_id, c.loc);
        self.send(Job::Background { claim: c.clone() });
        Some(Ok(Claimed {
            previous,
            ..Default::default()
        }))
    }

    fn claim_later(&self, claim: Claim, reply: ReplyTo<ClaimResult>) {
        let previous = self.local.place(&claim.client_id, claim.loc);
        self.send(Job::Claim {
            claim,
            previous,
            reply,
        });
    }

    fn release(&self, client_id: &str, loc: Location) {
        self.local.release(client_id, loc);
    }

    fn locate(&self, client_id: &str) -> Option<Location> {
        self.local.locate(client_id)
    }

    fn durability(&self) -> Option<Durability> {
        Some(self.settings.durability)
    }

    /// Any change: every claim carries its presence to Redis whatever the
    /// limit, and the ADMIT script takes the limit as an argument.
    fn set_user_limit(&self, max: u32, policy: PerUserPolicy) -> Result<(), &'static str> {
        self.settings.user_limit.set(max, policy);
        Ok(())
    }

    fn write(&self, ops: Vec<StoreOp>) {
        let m = &self.metrics;
        let before = m.queued.fetch_add(ops.len(), Ordering::AcqRel);
        let ops = if before + ops.len() > self.settings.max_queued_writes {
            // Over the bound: keep what someone waits for (it fails
            // visibly if Redis never takes it), drop the rest.
            let (keep, drop): (Vec<_>, Vec<_>) = ops
                .into_iter()
                .partition(|op| matches!(op, StoreOp::Put { .. } | StoreOp::Subscribe { .. }));
            m.queued.fetch_sub(drop.len(), Ordering::AcqRel);
            m.dropped.fetch_add(drop.len() as u64, Ordering::Relaxed);
            keep
        } else {
            ops
        };
        if !ops.is_empty() {
            self.send(Job::Write(ops));
        }
    }

    fn figures(&self) -> Vec<crate::store::Figure> {
        let m = &self.metrics;
        let r = Ordering::Relaxed;
        vec![
            ("store_queued_writes", "Writes queued for Redis and not yet settled.", m.queued.load(r) as u64, false),
            ("store_errors", "Failed Redis requests (connection, timeout, error reply).", m.errors.load(r), true),
            ("store_stale_writes", "Writes refused because a newer claim owns the session (the stale connection is closed with 0x8E).", m.stale.load(r), true),
            ("store_evicted", "Connections evicted by the per-user connection limit.", m.evicted.load(r), true),
            ("store_presence_refreshes", "Presence leases refreshed.", m.refreshed.load(r) as u64, true),
            ("store_script_reloads", "Script loads after NOSCRIPT (a restarted Redis).", m.script_reloads.load(r), true),
            ("store_handoffs", "Sessions handed over by the node that held them before this node claimed them.", m.handoffs.load(r), true),
            ("store_handoff_timeouts", "Handovers not answered within store.handoff_timeout_ms (the claim then waited for the old owner's lease, or went ahead fenced).", m.handoff_timeouts.load(r), true),
            ("store_stale_copies", "Claims that found this node's copy of a session stale (another node owned it while this one was cut off) and loaded the session from Redis instead.", m.stale_copies.load(r), true),
            ("store_lease_waits", "Takeovers that waited for the old owner's node lease to run out (it answered no handover: partitioned or paused).", m.lease_waits.load(r), true),
            ("store_claims_settled", "Claims whose answer was lost (a timeout, a dropped connection) but that had landed in Redis: asked again and served.", m.claims_settled.load(r), true),
            ("store_claims_absent", "Claims whose answer was lost and that, asked again, had not landed (the CONNECT was refused, 0x88).", m.claims_absent.load(r), true),
            ("store_claims_unsettled", "Claims whose answer was lost and whose outcome Redis did not tell before this node's lease lapsed (refused, 0x88; the session may name a connection that is gone until its next claim).", m.claims_unsettled.load(r), true),
            ("store_sessions_adopted", "Persistent sessions this node owned before it restarted (killed, not drained) that no other node claimed since: claimed again at start and parked offline, so the copies sent to the node meanwhile reach them.", m.adopted.load(r), true),
            ("store_adoptions_declined", "Sessions in this node's index that another node claimed since, or that ended: not adopted at start.", m.adoptions_declined.load(r), true),
            ("store_writes_dropped", "Fire-and-forget writes dropped over redis.max_queued_writes.", m.dropped.load(r), true),
        ]
    }

    fn latency(&self) -> Option<&Histogram> {
        Some(&self.metrics.latency)
    }

    fn cluster(&self) -> bool {
        true
    }

    fn lookup(&self, q: crate::store::Lookup) {
        self.send(Job::Lookup(q));
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.stop();
    }
}
