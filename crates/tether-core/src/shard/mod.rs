//! Everything one core owns: its connections and sessions (a slab of
//! [`Entry`]), its share of the subscriptions, its timer wheel, its replica
//! of the retained messages, the shared-subscription groups it owns, and
//! the requests it has waiting on bridge threads.
//!
//! All of it runs on the core's own executor thread, behind one `RefCell`
//! ([`CoreState`]); nothing here is touched by another thread except the
//! [`CoreVisible`] part (atomics) and the node's directory. The files, by
//! concern:
//!
//! | file | concern |
//! | --- | --- |
//! | `node.rs` | [`NodeState`] (what every core reads) and [`CoreVisible`] |
//! | `entry.rs` | [`Entry`], its [`Phase`]s and the live [`Link`] |
//! | `conn.rs` | [`ConnMut`]: one connection looked up once, with the state its own work writes |
//! | `clock.rs` | the tick clock, real or driven by tests |
//! | `lifecycle.rs` | register, unregister, park or end a session, shutdown |
//! | `link.rs` | what the connection task asks of its entry (poll, write, pause) |
//! | `takeover.rs` | claim, takeover, handover, activation, tombstone forwards |
//! | `arrivals.rs` | what reaches the core while a session is being claimed on it |
//! | `fanout.rs` | publishing: local delivery, cross-core routing, wills |
//! | `delivery.rs` | the delivery policy: window, queue, slow consumers, expiry, move window |
//! | `subscriptions.rs` | indexing a session's subscriptions (plain or shared) |
//! | `groups.rs` | shared-subscription groups this core owns |
//! | `retained.rs` | the retained replica and its write owner |
//! | `presence.rs` | per-user connection counts (owner core per user) |
//! | `pending.rs` | requests waiting on bridge threads, and their reply queues |
//! | `acks.rs` | publish acknowledgements held for the outbound bridge or durability |
//! | `durable.rs` | mirroring sessions in a durable store; the store's notices |
//! | `events.rs` | connection events for the outbound bridge |
//! | `inspect.rs` | answers to the HTTP API's queries |
//! | `sys.rs` | `$SYS` statistics |
//! | `timers.rs` | what the wheel fires |
//! | `trie.rs`, `wheel.rs`, `interest.rs` | subscription trie, timer wheel, cross-core interest bits |

mod acks;
mod arrivals;
mod clock;
mod conn;
mod delivery;
mod durable;
mod entry;
mod events;
mod fanout;
mod groups;
mod inspect;
mod interest;
mod lifecycle;
mod link;
mod node;
mod peer;
mod pending;
mod presence;
mod retained;
mod subscriptions;
mod sys;
mod takeover;
mod timers;
mod trie;
mod wheel;

#[cfg(test)]
pub(crate) mod sim;
#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::task::Waker;

use slab::Slab;

use crate::config::Config;
use crate::id::ConnKey;
use crate::mesh::{CoreMsg, Routes};
use crate::notify::Notify;
use crate::stats::Stats;

pub use clock::{Clock, Now};
pub(crate) use conn::entry_in;
#[cfg(test)]
pub(crate) use conn::lookups;
pub use conn::ConnMut;
pub use delivery::{count, pump};
pub use entry::{
    AuthInProgress, CloseRequest, ConnectInfo, Entry, Link, Parked, PendingWill, Phase, Timer,
};
pub use node::{Admission, CoreVisible, NodeState};
pub use peer::Peer;
pub use pending::{ApiPublish, Pending, PendingKind, ReplyReceivers, Returns, Waiting};
pub use trie::Sub;

/// How a connection whose PUBLISH lagged stops reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Its copies wait behind this core's connections: it reads on after
    /// them (the driver polls it again at the back of its queue).
    Yield,
    /// Its copies went to a core that is behind: it reads on once that core
    /// caught up ([`crate::mesh::CoreMsg::CaughtUp`]) or at the next tick.
    UntilResumed,
}

/// The driver's answer to "is the connection this waker wakes queued,
/// waiting on the core?" (`net::driver::is_queued`).
pub type QueuedProbe = fn(&Waker) -> bool;

/// The mutable state of a core, behind one `RefCell` (single-threaded).
pub struct CoreState {
    /// Connections and sessions of this core.
    pub conns: Slab<Entry>,
    /// Subscriptions of this core's sessions.
    pub subs: trie::SubTree,
    /// This core's copy of every retained message.
    pub retained: retained::Replica,
    /// Shared subscription groups this core owns.
    pub groups: groups::Groups,
    /// Keep-alive, CONNECT deadlines, expiry, tombstones, will delays.
    pub wheel: wheel::Wheel<(ConnKey, Timer)>,
    /// Requests waiting on bridge threads.
    pub pending: Pending,
    /// Writes for the durable store, handed over once per executor turn.
    pub journal: Vec<crate::store::StoreOp>,
    /// Claims in flight that may restore a session here, and what the
    /// core fanned out meanwhile (`arrivals.rs`).
    arrivals: arrivals::Arrivals,
    interest: interest::LocalInterest,
    /// The filters this core announces to the cluster (`[kafka.cluster]`).
    cluster: interest::NodeInterest,
    next_gen: u32,
    next_seq: u64,
    /// Reused per fan-out to collect matches without allocating.
    matches: Vec<Sub>,
    /// Set by a fan-out that queued a copy behind a connection waiting on
    /// the core (see `Core::lags`): whoever asked for the fan-out (a
    /// publishing connection, the mesh, the inbox) lets the core's other
    /// connections go first before it brings more. Taken by the asker.
    pub lagging: bool,
    /// Set by a publish routed to a core that is lagging (its mesh
    /// receiver waits for it to serve what it was sent): the publishing
    /// connection stops reading until that core catches up.
    pub peer_lagging: bool,
    links: usize,
    /// Open connections per user, for the users this core owns
    /// ([`crate::id::owner_core`]): the node's distinct users are the sum
    /// of every core's key count, with no set shared between cores.
    users: ahash::AHashMap<Arc<str>, u32>,
}

impl CoreState {
    /// How the connection whose packet was just handled reads on, from
    /// what its fan-out found (the flag that decided is taken).
    pub fn take_pace(&mut self) -> Option<Pace> {
        if std::mem::take(&mut self.peer_lagging) {
            Some(Pace::UntilResumed)
        } else {
            std::mem::take(&mut self.lagging).then_some(Pace::Yield)
        }
    }

    /// The entry `key` points to, unless its slot was reused.
    #[inline]
    pub fn entry(&mut self, key: ConnKey) -> Option<&mut Entry> {
        entry_in(&mut self.conns, key)
    }

    /// The live connection of `key`, if it has one.
    pub fn link(&mut self, key: ConnKey) -> Option<&mut Link> {
        self.entry(key).and_then(|e| e.link.as_mut())
    }
}

/// One core: its state and what it shares with its tasks.
pub struct Core {
    /// Position among the node's cores.
    pub id: usize,
    /// The node's configuration.
    pub cfg: Arc<Config>,
    /// What every core of the node reads.
    pub node: Arc<NodeState>,
    /// The core's mutable state.
    pub st: RefCell<CoreState>,
    /// Socket read buffer shared by all connections of this core: reads only
    /// happen when a socket is readable, so idle connections hold no buffer.
    pub scratch: RefCell<Vec<u8>>,
    /// The TLS connections' plaintext, between the TLS layer and the
    /// WebSocket/MQTT layers (decrypted reads, and writes before
    /// encryption); shared for the same reason as `scratch`.
    pub plaintext: RefCell<Vec<u8>>,
    /// The write buffer a connection borrows while it writes: one that
    /// wrote everything hands it back, so idle connections hold none. A
    /// connection whose socket is full keeps it (and the next writer
    /// starts an empty one, handed back in turn).
    pub write_scratch: RefCell<crate::session::Thin<Vec<u8>>>,
    clock: Clock,
    /// Outgoing queues towards the other cores.
    pub routes: Routes,
    /// Connections that stopped reading (mesh backlog, pending budgets,
    /// outbound bridge), woken when the cause clears.
    paused: RefCell<Vec<Waker>>,
    /// Whether a connection (by its waker) is queued in the core's driver,
    /// waiting on the core; set by the runtime (`net::driver::is_queued`).
    /// `None` (unit tests without a driver): publishers are never paced.
    queued_probe: Cell<Option<QueuedProbe>>,
    /// Set while a connection handles a PUBLISH whose fan-out lagged: it
    /// stops reading for this pass, or until paused readers resume
    /// (`Core::take_pace`).
    pace: Cell<Option<Pace>>,
    /// Runs of the driver's passes so far (`Core::served`).
    served_runs: Cell<u64>,
    /// Tasks waiting for the driver's next run ([`Core::until_served`]).
    served_waiters: RefCell<Vec<Waker>>,
    /// Set while a closing connection reads what its client already sent
    /// ([`crate::shard::CloseRequest::settle`]): only acknowledgements are
    /// applied.
    pub settling: Cell<bool>,
    /// HTTP fallback sockets other cores handed to this one
    /// (`CoreMsg::Adopt`), for the runtime's adopt task to serve.
    pub adopted: RefCell<Vec<crate::mesh::Handoff>>,
    /// Rung when `adopted` gets one.
    pub adopt_ready: Notify,
    /// Set once shutdown began.
    pub shutting_down: Cell<bool>,
    /// Signalled when the last link of a shutting-down core is gone.
    pub drained: Notify,
    /// Rung by `BridgeMsg::Drain`: the core's main task stops accepting and
    /// drains (see `runtime::drain`).
    pub drain_requested: Notify,
    /// Signalled when the wheel gets its first timer.
    pub wheel_armed: Notify,
    /// How late the last timer tick ran, ms (`listeners.overload_lag_ms`
    /// refuses CONNECTs past it).
    pub lag_ms: Cell<u64>,
    /// Sequence for message ids published on this core.
    next_msg: Cell<u64>,
    /// Where bridge threads answer this core's requests.
    pub returns: Returns,
    /// The store's durability; `None`: nothing is mirrored (memory store).
    durability: Option<crate::config::Durability>,
    /// Signalled when the journal gets its first write.
    pub journal_ready: Notify,
    /// Connections accepted whose session is not yet active (TLS,
    /// WebSocket upgrade, CONNECT, authentication, claim): what
    /// `listeners.max_handshakes_per_core` caps.
    handshaking: Cell<u32>,
    /// One per listener ([`crate::id::TRANSPORT_NAMES`] index): rung when
    /// the core drops below the handshake cap, for an accept loop that
    /// stopped at it.
    pub handshake_room: [Notify; crate::id::TRANSPORT_NAMES.len()],
}

impl Core {
    /// A core with an empty slab; `returns` are its reply queues.
    pub fn new(
        id: usize,
        cfg: Arc<Config>,
        node: Arc<NodeState>,
        returns: Returns,
        clock: Clock,
    ) -> Core {
        let ncores = node.cores.len();
        let r = &cfg.runtime;
        Core {
            id,
            scratch: RefCell::new(vec![0; r.read_buffer_bytes]),
            plaintext: RefCell::new(Vec::new()),
            write_scratch: RefCell::default(),
            routes: Routes::new(ncores, r.route_batch_max, r.router_backlog_limit),
            st: RefCell::new(CoreState {
                conns: Slab::with_capacity(crate::limits::connection_slots() / ncores.max(1)),
                subs: Default::default(),
                retained: Default::default(),
                groups: Default::default(),
                wheel: wheel::Wheel::new(clock.elapsed_ms() / r.tick_ms),
                pending: Pending::new(&cfg.runtime),
                journal: Vec::new(),
                arrivals: Default::default(),
                interest: Default::default(),
                cluster: interest::NodeInterest::new(node.outbound.wants_interest()),
                next_gen: 0,
                next_seq: 0,
                matches: Vec::new(),
                lagging: false,
                peer_lagging: false,
                links: 0,
                users: Default::default(),
            }),
            cfg,
            clock,
            paused: RefCell::new(Vec::new()),
            queued_probe: Cell::new(None),
            pace: Cell::new(None),
            served_runs: Cell::new(0),
            served_waiters: RefCell::new(Vec::new()),
            settling: Cell::new(false),
            adopted: RefCell::new(Vec::new()),
            adopt_ready: Notify::default(),
            shutting_down: Cell::new(false),
            drained: Notify::default(),
            drain_requested: Notify::default(),
            lag_ms: Cell::new(0),
            wheel_armed: Notify::default(),
            next_msg: Cell::new(0),
            returns,
            durability: node.store.durability(),
            journal_ready: Notify::default(),
            handshaking: Cell::new(0),
            handshake_room: Default::default(),
            node,
        }
    }

    /// A node-unique id for a message published on this core
    /// ([`crate::id::Minter::Core`]), growing in publish order.
    #[inline]
    pub fn message_id(&self) -> u64 {
        let seq = self.next_msg.get() + 1;
        self.next_msg.set(seq);
        crate::id::Minter::Core(self.id as u8).id(seq)
    }

    /// This core's counters.
    #[inline]
    pub fn stats(&self) -> &Stats {
        &self.visible().stats
    }

    /// The part of this core other threads read: counters, gauges,
    /// histograms, interest bits.
    #[inline]
    pub fn visible(&self) -> &CoreVisible {
        &self.node.cores[self.id]
    }

    /// Current tick of the wheel clock (monotonic, `runtime.tick_ms` units).
    #[inline]
    pub fn now_tick(&self) -> u64 {
        self.clock.elapsed_ms() / self.cfg.runtime.tick_ms
    }

    /// The tick and the instant, read once for a batch of decisions.
    pub fn now(&self) -> Now {
        Now {
            tick: self.now_tick(),
            at: self.clock.instant(),
        }
    }

    /// Ticks in `ms` milliseconds, rounded up.
    pub fn ticks(&self, ms: u64) -> u64 {
        ms.div_ceil(self.cfg.runtime.tick_ms)
    }

    /// The clock (tests drive a manual one).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    fn arm(&self, st: &mut CoreState, at: u64, key: ConnKey, t: Timer) {
        let was_empty = st.wheel.is_empty();
        st.wheel.insert(at, (key, t));
        if was_empty {
            self.wheel_armed.notify();
        }
    }

    /// Queues `msg` for `core` (never this one).
    pub(crate) fn route(&self, core: usize, msg: CoreMsg) {
        self.routes.send(core, msg);
    }

    /// A router task's channel accepted `messages`: paused readers may go
    /// on when the backlog is below its limit.
    pub fn routed(&self, messages: usize, bytes: usize) {
        self.visible()
            .mesh_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        if self.routes.accepted(messages, bytes) && !self.mesh_over_bytes() {
            self.resume_paused();
        }
    }

    /// Whether the bytes on their way to other cores (queued here, or in the
    /// channels and not yet taken) reached `runtime.router_backlog_bytes`.
    fn mesh_over_bytes(&self) -> bool {
        self.routes.queued_bytes()
            + self
                .visible()
                .mesh_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
            >= self.cfg.runtime.router_backlog_bytes
    }

    /// Called every tick: paused readers go on once the receiving cores took
    /// enough (they cannot tell this core; the tick looks).
    pub fn resume_if_drained(&self) {
        if !self.paused.borrow().is_empty()
            && !self.routes.over_limit()
            && !self.mesh_over_bytes()
            && !self.st.borrow().pending.saturated()
        {
            self.resume_paused();
        }
    }

    /// True (and `waker` parked) when connections on this core must stop
    /// reading: the routers' backlog is over its limit, the outbound bridge
    /// has as many messages as it may, or the pending permits are at their
    /// bound. Backpressure instead of unbounded queues.
    #[inline]
    pub fn must_pause(&self, waker: &Waker) -> bool {
        let busy = self.routes.over_limit()
            || self.mesh_over_bytes()
            || self.st.borrow().pending.saturated();
        if busy {
            self.paused.borrow_mut().push(waker.clone());
        }
        busy
    }

    /// After a pending request was answered: if that took the core below
    /// its bounds, paused connections go on.
    pub fn after_answer(&self, st: &CoreState, was_saturated: bool) {
        if was_saturated && !st.pending.saturated() {
            self.resume_paused();
        }
    }

    /// Installs the driver's answer to "is this connection queued, waiting
    /// on the core?", which paces publishers (see `Core::lags`).
    pub fn set_queued_probe(&self, probe: QueuedProbe) {
        self.queued_probe.set(Some(probe));
    }

    /// Whether (and how) the connection handling a packet must stop
    /// reading: its PUBLISH's copies wait behind other connections. Cleared
    /// by the call.
    pub fn take_pace(&self) -> Option<Pace> {
        self.pace.take()
    }

    /// Asks the connection handling a packet to stop reading (see [`Pace`]).
    pub(crate) fn pace_reading(&self, pace: Pace) {
        self.pace.set(Some(pace));
    }

    /// Parks a connection that stopped reading ([`Pace::UntilResumed`])
    /// with the paused readers: woken when a peer core caught up, or at
    /// the next tick.
    pub fn park_reading(&self, waker: &Waker) {
        self.paused.borrow_mut().push(waker.clone());
    }

    /// Whether the last fan-out lagged here or was routed to a lagging core
    /// (see [`CoreState::lagging`]); cleared by the call. The mesh and the
    /// inbox wait for the core to serve its connections before their next
    /// message when it did.
    pub fn take_lagging(&self) -> bool {
        let mut st = self.st.borrow_mut();
        std::mem::take(&mut st.lagging) | std::mem::take(&mut st.peer_lagging)
    }

    /// Called by the driver after each run of passes: every connection
    /// that was queued, waiting on the core, was served once.
    pub fn served(&self) {
        self.served_runs.set(self.served_runs.get() + 1);
        if !self.served_waiters.borrow().is_empty() {
            for w in self.served_waiters.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }

    /// Resolves once the driver has run its passes again after this call:
    /// what was queued behind the core got its turn.
    pub async fn until_served(&self) {
        let seen = self.served_runs.get();
        std::future::poll_fn(|cx| {
            if self.served_runs.get() != seen {
                std::task::Poll::Ready(())
            } else {
                self.served_waiters.borrow_mut().push(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// Wakes every paused connection (each checks again).
    fn resume_paused(&self) {
        for w in self.paused.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Offers one message routed here by another core to this core's
    /// sessions (what [`Core::on_core_msg`] does for each message of a
    /// batch; the mesh receiver goes one message at a time, to pace).
    pub fn deliver_routed(&self, m: &Arc<crate::session::Message>) {
        self.deliver_local(&mut self.st.borrow_mut(), m);
        landed(m.confirm.clone());
    }

    /// Handles a message from another core.
    pub fn on_core_msg(&self, msg: CoreMsg) {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        match msg {
            CoreMsg::Publish(batch) => {
                for m in &batch {
                    self.deliver_local(st, m);
                    landed(m.confirm.clone());
                }
            }
            CoreMsg::Takeover {
                target,
                client_id,
                requester,
            } => {
                let reply = self.takeover(st, target, &client_id, requester);
                self.dispatch_handover(st, reply, false);
            }
            CoreMsg::Handover { target, session } => self.on_handover(st, target, session, true),
            CoreMsg::RetainSet(msg) => self.retain_sequence(st, msg),
            CoreMsg::RetainApply(msg) => {
                self.apply_retained(st, msg);
            }
            CoreMsg::ShareJoin {
                key,
                loc,
                opts,
                id,
                confirm,
            } => {
                self.group_join(st, key, loc, opts, id, confirm.as_ref());
                // The joining core's share: announcing held its own.
                if let Some(c) = confirm {
                    c.release(true);
                }
            }
            CoreMsg::ShareLeave { key, loc } => self.group_leave(st, key, loc),
            CoreMsg::ShareDeliver {
                target,
                d,
                attempts,
            } => {
                let confirm = d.msg.confirm.clone();
                self.share_deliver_in(st, target, d, attempts);
                landed(confirm);
            }
            CoreMsg::ShareReturn { d, attempts } => {
                let confirm = d.msg.confirm.clone();
                self.share_return_in(st, d, attempts);
                landed(confirm);
            }
            CoreMsg::Forward { target, d } => {
                let confirm = d.msg.confirm.clone();
                self.forward_in(st, target, d);
                landed(confirm);
            }
            CoreMsg::ForwardEnd { target } => self.forward_end(st, target),
            CoreMsg::UserCount { user, delta } => self.apply_user_count(st, user, delta),
            CoreMsg::CaughtUp => self.resume_paused(),
            CoreMsg::Adopt(handoff) => {
                self.adopted.borrow_mut().push(*handoff);
                self.adopt_ready.notify();
            }
        }
    }
}

/// A message with a waiting publisher goes on to another core: one more
/// share of its confirm, released by [`landed`] there.
pub(crate) fn hop(d: &crate::session::Delivery) {
    if let Some(c) = &d.msg.confirm {
        c.hold();
    }
}

/// A message that [`hop`]ped here has been processed.
fn landed(confirm: Option<Arc<crate::session::Confirm>>) {
    if let Some(c) = confirm {
        c.release(true);
    }
}
