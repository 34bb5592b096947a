//! What every core of the node reads: [`NodeState`] (the node's identity,
//! its seams and its cores' visible parts), and one core's [`CoreVisible`]
//! part (atomics written by that core only).

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use super::interest::Interest;
use super::retained::Totals;
use crate::auth::{AuthChain, Authorizer};
use crate::bridge::departures::Departures;
use crate::bridge::outbound::Outbound;
use crate::config::ListenerConfig;
use crate::stats::{Histogram, Stats};
use crate::store::SessionStore;

/// State every core (and the HTTP thread) can read.
pub struct NodeState {
    /// `node.id`: the `n{id}` of connection ids.
    pub node_id: u16,
    /// Each core's visible part, indexed by core id.
    pub cores: Vec<CoreVisible>,
    /// The session directory.
    pub store: Arc<dyn SessionStore>,
    /// Decides every CONNECT: each listener's chain of authenticators.
    pub auth: Arc<AuthChain>,
    /// Decides every SUBSCRIBE filter and PUBLISH.
    pub authz: Arc<dyn Authorizer>,
    /// Where messages leave the gateway (the Kafka producer).
    pub outbound: Arc<dyn Outbound>,
    /// When the node started (`$SYS/broker/uptime`).
    pub started: Instant,
    /// Node-wide retained totals (updated by owner cores only).
    pub retained: Totals,
    /// Failed logins per source address, and bans (`auth.ban_*`).
    pub bans: crate::auth::bans::Bans,
    /// Set once a drain started (`POST /v1/admin/drain`): `/readyz` fails,
    /// the cores stop accepting and close their clients at `drain.rate_per_sec`.
    pub draining: std::sync::atomic::AtomicBool,
    /// How fast the cores take new clients; SIGHUP changes it.
    pub admission: Admission,
    /// Persistent sessions that left for another node (the cluster bus
    /// hands on copies that were on their way to them here).
    pub departures: Arc<Departures>,
}

/// `listeners.max_accepts_per_sec` and `listeners.overload_lag_ms`, read on
/// each accept and CONNECT (not from the start-time `Config`) so a reload
/// applies them to a running node: the knobs an operator turns during a
/// reconnect storm.
#[derive(Debug, Default)]
pub struct Admission {
    /// `listeners.max_accepts_per_sec` (0: no limit).
    pub max_accepts_per_sec: AtomicU32,
    /// `listeners.overload_lag_ms` (0: never refuse).
    pub overload_lag_ms: AtomicU64,
    /// `listeners.max_handshakes_per_core` (0: no cap).
    pub max_handshakes_per_core: AtomicU32,
}

impl Admission {
    /// The values of `[listeners]`.
    pub fn new(l: &ListenerConfig) -> Admission {
        let a = Admission::default();
        a.set(l);
        a
    }

    /// Puts the values of `[listeners]` in force.
    pub fn set(&self, l: &ListenerConfig) {
        self.max_accepts_per_sec
            .store(l.max_accepts_per_sec, Relaxed);
        self.overload_lag_ms.store(l.overload_lag_ms, Relaxed);
        self.max_handshakes_per_core
            .store(l.max_handshakes_per_core, Relaxed);
    }
}

impl NodeState {
    /// Open connections on the node, over every listener.
    pub fn connections(&self) -> i64 {
        self.cores
            .iter()
            .flat_map(|c| c.open_by_transport.iter())
            .map(|n| n.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    /// Milliseconds since the node started (the bans' clock).
    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// The cross-core visible part of one core: written by that core only,
/// read by every core and the HTTP thread.
#[derive(Default)]
pub struct CoreVisible {
    /// "Might this core have a subscriber for this topic?"
    pub interest: Interest,
    /// Counters.
    pub stats: Stats,
    /// Size of this core's retained replica (gauge).
    pub retained: AtomicUsize,
    /// Subscriptions indexed on this core (gauge).
    pub subscriptions: AtomicUsize,
    /// Members of the shared-subscription groups this core owns (gauge).
    pub shared_members: AtomicUsize,
    /// Open connections by the listener they came in on (gauges, indexed by
    /// `net::Transport::index`).
    pub open_by_transport: [AtomicI64; crate::id::TRANSPORT_NAMES.len()],
    /// Users with at least one connection, among those this core owns.
    pub users: AtomicI64,
    /// From a message's arrival to its PUBLISH being written for a
    /// subscriber on this core (live deliveries; not retained replays or
    /// resends).
    pub fanout_latency: Histogram,
    /// How late the core's timer-wheel tick fired: time the executor was
    /// busy with other work when it should have run (a loop stall).
    pub loop_lag: Histogram,
    /// When the core last answered a `BridgeMsg::Heartbeat` (node clock,
    /// ms): the systemd watchdog pings only while every core keeps up.
    pub alive_ms: AtomicU64,
    /// Bytes of messages this core handed to the channels towards other
    /// cores that the receiving cores have not taken yet: added by this
    /// core's routers, subtracted by the receivers (`runtime::receive_from`).
    pub mesh_bytes: AtomicUsize,
    /// How many of this core's mesh receivers are waiting for the core to
    /// serve the copies a routed message queued behind its connections
    /// (`runtime::receive_from`). While it is not zero, other cores'
    /// publishers whose messages come here stop reading until this core
    /// tells them it caught up ([`crate::mesh::CoreMsg::CaughtUp`]).
    pub lagging: AtomicU32,
    /// Claims in flight on this core that may restore a session here:
    /// while not zero, other cores route every message here, matching
    /// subscription or not (`shard::arrivals`).
    pub claims_open: AtomicU32,
}
