//! One core's shared-nothing state and the operations on it: the connection
//! slab, the subscription shard, the timer wheel, cross-core routing, session
//! activation and takeover.
//!
//! Everything here runs on the core's own executor thread. The only things
//! other threads see are the interest summary and the counters (atomics) and
//! the session directory (touched on CONNECT and session end only).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use slab::Slab;
use tracing::{debug, info};

use crate::codec::{reason, topic, ConnAck, Packet, Properties, QoS, Version, Will};
use crate::config::Config;
use crate::id::{ConnId, ConnKey, Location};
use crate::interest::{Interest, LocalInterest};
use crate::session::{Delivery, Frame, Inflight, Message, MoveWindow, Offer, Session, SubIds};
use crate::stats::{bump, Stats};
use crate::store::SessionStore;
use crate::subs::{Sub, SubTree};
use crate::wheel::Wheel;

/// How long a core keeps forwarding to a session that moved to another core
/// (its *tombstone*), and how long the new core filters duplicates. Messages
/// other cores routed to the old core before they could know of the move are
/// still in the channels for at most the mesh latency; two seconds covers
/// a heavily backlogged mesh with a wide margin.
pub const MOVE_GRACE_MS: u64 = 2000;

/// State every core can read: per-core summaries and the node's directory.
pub struct Shared {
    pub node_id: u16,
    pub cores: Vec<CoreShared>,
    pub store: Arc<dyn SessionStore>,
    pub auth: Arc<dyn crate::auth::Authenticator>,
    pub started: Instant,
    /// Node-wide retained totals (updated by owner cores only).
    pub retained: crate::retained::Totals,
    /// The TLS server configuration, when mqtts/wss are enabled.
    pub tls: Option<Arc<crate::tls::Acceptor>>,
}

/// The cross-core visible part of one core.
#[derive(Default)]
pub struct CoreShared {
    pub interest: Interest,
    pub stats: Stats,
    /// Size of this core's retained replica (gauge).
    pub retained: std::sync::atomic::AtomicUsize,
    /// Subscriptions indexed on this core (gauge).
    pub subscriptions: std::sync::atomic::AtomicUsize,
    /// Members of the shared-subscription groups this core owns (gauge).
    pub shared_members: std::sync::atomic::AtomicUsize,
    /// Open connections by the listener they came in on (gauges, indexed by
    /// [`Transport::index`](crate::listener::Transport::index)).
    pub open_by_transport: [std::sync::atomic::AtomicI64; 4],
    /// Users with at least one connection, among those this core owns.
    pub users: std::sync::atomic::AtomicI64,
    /// From a message's arrival to its PUBLISH being written for a
    /// subscriber on this core (live deliveries; not retained replays or
    /// resends).
    pub fanout_latency: crate::stats::Histogram,
    /// How late the core's timer-wheel tick fired: time the executor was
    /// busy with other work when it should have run (a loop stall).
    pub loop_lag: crate::stats::Histogram,
}

/// Messages between cores (over the bounded glommio channel mesh).
#[derive(Debug)]
pub enum CoreMsg {
    /// Messages published on the sending core that may match here.
    Publish(Vec<Arc<Message>>),
    /// A newer connection claimed `client_id`; hand its session over.
    Takeover {
        target: ConnKey,
        client_id: Arc<str>,
        requester: Location,
    },
    /// The session (if any) of the client `target` is taking over.
    Handover {
        target: ConnKey,
        session: Option<Box<Session>>,
    },
    /// A retained message for the topic's owner core to sequence.
    RetainSet(Arc<Message>),
    /// A sequenced retained update for this core's replica.
    RetainApply(Arc<Message>),
    /// A member joins a shared subscription group owned by this core.
    ShareJoin {
        key: crate::shared::GroupKey,
        member: crate::shared::Member,
    },
    /// A member leaves a group owned by this core.
    ShareLeave {
        key: crate::shared::GroupKey,
        loc: Location,
    },
    /// A shared-subscription message for the member `target` on this core.
    ShareDeliver {
        target: ConnKey,
        d: Delivery,
        attempts: u8,
    },
    /// A shared-subscription message a member could not take; pick another.
    ShareReturn { d: Delivery, attempts: u8 },
    /// A message that matched a session's tombstone on the sending core;
    /// the session now lives at `target` on this core.
    Forward { target: ConnKey, d: Delivery },
    /// The sending core's tombstone for the session now at `target` has
    /// ended; it travels behind the last `Forward`, so every forward has
    /// arrived and the messages held meanwhile can go out.
    ForwardEnd { target: ConnKey },
    /// A connection of `user` opened (+1) or closed (-1) on the sending
    /// core; this core owns the user's count.
    UserCount { user: Arc<str>, delta: i32 },
}

impl CoreMsg {
    /// Messages it carries, for the router backlog.
    pub fn messages(&self) -> usize {
        match self {
            CoreMsg::Publish(v) => v.len(),
            _ => 0,
        }
    }
}

/// A single-waiter wake-up flag for tasks of one core.
#[derive(Default)]
pub struct Notify {
    flag: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.flag.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.flag.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// Why the core asks a connection to close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    /// DISCONNECT reason code to send first (v5 only); `None` closes silently.
    pub reason: Option<u8>,
    /// Drop unsent frames (a slow consumer) instead of flushing them first.
    pub discard_outbox: bool,
    /// Human-readable cause, sent as the DISCONNECT's Reason String.
    pub why: Option<Box<str>>,
}

/// The live half of a session: present while a socket is attached.
pub struct Link {
    pub version: Version,
    pub peer: SocketAddr,
    pub fd: RawFd,
    pub since: std::time::SystemTime,
    /// 1.5 x keep-alive in ticks; 0 disables the check.
    pub keep_alive_ticks: u64,
    /// Tick of the last packet received.
    pub last_seen: u64,
    pub outbox: VecDeque<Frame>,
    pub outbox_bytes: usize,
    /// The connection task, woken when the outbox or phase changes.
    pub waker: Option<Waker>,
    pub close: Option<CloseRequest>,
    /// Outbound in-flight window (client's Receive Maximum, capped).
    pub window: usize,
    /// Client's Maximum Packet Size.
    pub max_packet: usize,
    /// Inbound topic aliases (index = alias - 1).
    pub aliases: Vec<Option<Arc<str>>>,
    /// Outbound topic aliases, when the client accepts them (MQTT 5).
    pub out_aliases: Option<Box<crate::alias::OutAliases>>,
    /// Boxed: most clients set no will, and this struct is per connection.
    pub will: Option<Box<Will>>,
    /// CONNECT's User Name (presence queries group connections by user).
    pub username: Option<Arc<str>>,
    /// An enhanced-authentication exchange in progress.
    pub auth: Option<Box<AuthInProgress>>,
    /// The Authentication Method this connection used (for re-authentication).
    pub auth_method: Option<Box<str>>,
    /// The client sent DISCONNECT (without 0x04): no will.
    pub graceful: bool,
}

impl Link {
    pub fn push(&mut self, frame: Frame) {
        self.outbox_bytes += frame.weight();
        self.outbox.push_back(frame);
        self.wake();
    }

    pub fn control(&mut self, packet: Packet) {
        self.push(Frame::control(packet));
    }

    pub fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    pub fn request_close(&mut self, reason: Option<u8>, discard_outbox: bool) {
        self.request_close_why(reason, discard_outbox, None);
    }

    /// [`Link::request_close`] with a Reason String for MQTT 5 clients.
    pub fn request_close_why(
        &mut self,
        reason: Option<u8>,
        discard_outbox: bool,
        why: Option<&str>,
    ) {
        if self.close.is_none() {
            self.close = Some(CloseRequest {
                reason,
                discard_outbox,
                why: why.map(Into::into),
            });
        }
        self.wake();
    }
}

/// An enhanced-authentication exchange waiting for the client's next AUTH.
pub struct AuthInProgress {
    pub method: String,
    pub exchange: Box<dyn crate::auth::AuthExchange>,
    /// The CONNECT it belongs to (client id, what it asked for); `None` for
    /// a re-authentication of a live connection.
    pub connect: Option<(Arc<str>, ConnectInfo)>,
}

/// What a CONNECT asked for, kept while the session is being located.
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    pub clean_start: bool,
    pub expiry_secs: u32,
    /// Session expiry the client asked for (reported back when capped).
    pub requested_expiry_secs: u32,
    pub assigned_id: Option<String>,
    pub server_keep_alive: Option<u16>,
    /// Enhanced authentication: method and final data for the CONNACK.
    pub auth: Option<(String, Option<bytes::Bytes>)>,
    /// MQTT 5 Response Information, when the client asked for it.
    pub response_information: Option<String>,
}

/// Lifecycle of a slab entry.
pub enum Phase {
    /// Socket accepted, no CONNECT yet (CONNECT deadline armed).
    Connecting,
    /// CONNECT accepted; waiting for the previous owner's session.
    /// `superseded` is set if an even newer connection claimed the id meanwhile.
    AwaitingHandover {
        info: Box<ConnectInfo>,
        superseded: Option<Location>,
    },
    /// CONNACK sent; the session is live.
    Active,
    /// No connection; the session waits for its client until `expires_at`,
    /// holding the will of the lost connection while its delay runs.
    Offline {
        expires_at: u64,
        will: Option<PendingWill>,
    },
    /// The session moved to a newer connection on this core; this socket is
    /// closing.
    TakenOver,
    /// The session moved to another core. Until `until` the entry keeps its
    /// subscriptions indexed and forwards what matches to `to`, so messages
    /// already on their way here are not lost; its socket (if any) is closing.
    Moved { to: Location, until: u64 },
}

/// A will waiting out its MQTT 5 Will Delay Interval after an abnormal close.
pub struct PendingWill {
    pub will: Box<Will>,
    /// Tick at which it is published (unless the client is back first).
    pub at: u64,
    pub origin: ConnId,
}

/// One slab entry: a connection and/or a session.
pub struct Entry {
    pub gen: u32,
    pub id: ConnId,
    pub client_id: Option<Arc<str>>,
    pub phase: Phase,
    pub session: Session,
    pub link: Option<Link>,
}

#[derive(Debug, Clone, Copy)]
pub enum Timer {
    ConnectDeadline,
    KeepAlive,
    SessionExpiry,
    Tombstone,
    WillDelay,
    /// Fallback end of a moved-in session's [`MoveWindow`].
    MoveWindow,
}

/// The mutable state of a core, behind one `RefCell` (single-threaded).
pub struct CoreState {
    pub conns: Slab<Entry>,
    pub subs: SubTree,
    pub retained: crate::retained::Replica,
    /// Shared subscription groups this core owns.
    pub groups: crate::shared::Groups,
    pub wheel: Wheel<(ConnKey, Timer)>,
    pub(crate) interest: LocalInterest,
    next_gen: u32,
    next_seq: u64,
    /// Reused per fan-out to collect matches without allocating.
    matches: Vec<Sub>,
    links: usize,
    /// Open connections per user, for the users this core owns
    /// ([`crate::id::owner_core`]): the node's distinct users are the sum
    /// of every core's key count, with no set shared between cores.
    users: ahash::AHashMap<Arc<str>, u32>,
}

impl CoreState {
    pub fn entry(&mut self, key: ConnKey) -> Option<&mut Entry> {
        self.conns
            .get_mut(key.index as usize)
            .filter(|e| e.gen == key.gen)
    }

    /// The live connection of `key`, if it has one.
    pub fn link(&mut self, key: ConnKey) -> Option<&mut Link> {
        self.entry(key).and_then(|e| e.link.as_mut())
    }
}

/// Outgoing queue towards one peer core, drained by its router task.
#[derive(Default)]
pub struct Route {
    queue: RefCell<VecDeque<CoreMsg>>,
    pub notify: Notify,
}

pub struct Core {
    pub id: usize,
    pub cfg: Arc<Config>,
    pub shared: Arc<Shared>,
    pub st: RefCell<CoreState>,
    /// Socket read buffer shared by all connections of this core: reads only
    /// happen when a socket is readable, so idle connections hold no buffer.
    pub scratch: RefCell<Vec<u8>>,
    /// The TLS connections' plaintext, between the TLS layer and the
    /// WebSocket/MQTT layers (decrypted reads, and writes before
    /// encryption); shared for the same reason as `scratch`.
    pub plaintext: RefCell<Vec<u8>>,
    /// Origin of this core's tick clock.
    epoch: Instant,
    pub routes: Vec<Route>,
    /// Messages queued in `routes` and not yet accepted by a channel.
    backlog: Cell<usize>,
    /// Connections that stopped reading because `backlog` is over the limit.
    paused: RefCell<Vec<Waker>>,
    pub shutting_down: Cell<bool>,
    /// Signalled when the last link of a shutting-down core is gone.
    pub drained: Notify,
    /// Signalled when the wheel gets its first timer.
    pub wheel_armed: Notify,
    /// Sequence for message ids published on this core.
    next_msg: Cell<u64>,
}

impl Core {
    pub fn new(id: usize, cfg: Arc<Config>, shared: Arc<Shared>) -> Core {
        let ncores = shared.cores.len();
        Core {
            id,
            scratch: RefCell::new(vec![0; cfg.runtime.read_buffer_bytes]),
            plaintext: RefCell::new(Vec::new()),
            cfg,
            shared,
            st: RefCell::new(CoreState {
                conns: Slab::with_capacity(crate::limits::connection_slots() / ncores.max(1)),
                subs: SubTree::default(),
                retained: Default::default(),
                groups: Default::default(),
                wheel: Wheel::new(0),
                interest: LocalInterest::default(),
                next_gen: 0,
                next_seq: 0,
                matches: Vec::new(),
                links: 0,
                users: Default::default(),
            }),
            epoch: Instant::now(),
            routes: (0..ncores).map(|_| Route::default()).collect(),
            backlog: Cell::new(0),
            paused: RefCell::new(Vec::new()),
            shutting_down: Cell::new(false),
            drained: Notify::default(),
            wheel_armed: Notify::default(),
            next_msg: Cell::new(0),
        }
    }

    /// A node-unique id for a message published on this core: the core in
    /// the top 8 bits ([`origin_core`]), then a sequence that grows in
    /// publish order (the move window relies on it).
    pub fn message_id(&self) -> u64 {
        let seq = self.next_msg.get() + 1;
        self.next_msg.set(seq);
        ((self.id as u64) << 56) | (seq & ((1 << 56) - 1))
    }

    pub fn stats(&self) -> &Stats {
        &self.visible().stats
    }

    /// The part of this core other threads read: counters, gauges,
    /// histograms, interest bits.
    pub fn visible(&self) -> &CoreShared {
        &self.shared.cores[self.id]
    }

    /// Current tick of the wheel clock (monotonic, `runtime.tick_ms` units).
    pub fn now_tick(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 / self.cfg.runtime.tick_ms
    }

    pub fn ticks(&self, ms: u64) -> u64 {
        ms.div_ceil(self.cfg.runtime.tick_ms)
    }

    fn arm(&self, st: &mut CoreState, at: u64, key: ConnKey, t: Timer) {
        let was_empty = st.wheel.is_empty();
        st.wheel.insert(at, (key, t));
        if was_empty {
            self.wheel_armed.notify();
        }
    }

    // ----- connection lifecycle -------------------------------------------

    /// Adds an accepted socket; arms the CONNECT deadline.
    pub fn register(&self, peer: SocketAddr, fd: RawFd) -> (ConnKey, ConnId) {
        let mut st = self.st.borrow_mut();
        st.next_gen = st.next_gen.wrapping_add(1);
        st.next_seq += 1;
        let gen = st.next_gen;
        let id = ConnId {
            node: self.shared.node_id,
            core: self.id as u16,
            seq: st.next_seq,
        };
        let index = st.conns.insert(Entry {
            gen,
            id,
            client_id: None,
            phase: Phase::Connecting,
            session: Session::default(),
            link: Some(Link {
                version: Version::V311,
                peer,
                fd,
                since: std::time::SystemTime::now(),
                keep_alive_ticks: 0,
                last_seen: self.now_tick(),
                outbox: VecDeque::new(),
                outbox_bytes: 0,
                waker: None,
                close: None,
                window: self.cfg.mqtt.inflight_window as usize,
                max_packet: usize::MAX,
                aliases: Vec::new(),
                out_aliases: None,
                username: None,
                auth: None,
                auth_method: None,
                will: None,
                graceful: false,
            }),
        });
        st.links += 1;
        let key = ConnKey {
            index: index as u32,
            gen,
        };
        let deadline = self.now_tick() + self.ticks(self.cfg.mqtt.connect_timeout_ms);
        self.arm(&mut st, deadline, key, Timer::ConnectDeadline);
        self.stats()
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bump(&self.stats().accepted, 1);
        (key, id)
    }

    /// The connection task of `key` ended (socket closed).
    pub fn unregister(&self, key: ConnKey) {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let Some(e) = st.entry(key) else { return };
        let Some(link) = e.link.take() else { return };
        st.links -= 1;
        if let Some(user) = &link.username {
            self.count_user(st, user, -1);
        }
        self.stats()
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let e = st.entry(key).expect("entry checked above");
        match e.phase {
            Phase::Connecting | Phase::TakenOver => {
                st.conns.remove(key.index as usize);
            }
            // The handover will find no link and park or end the session;
            // a tombstone lives until its timer.
            Phase::AwaitingHandover { .. } | Phase::Moved { .. } => {}
            Phase::Offline { .. } => unreachable!("offline sessions have no link"),
            Phase::Active => {
                // MQTT 5 3.1.2.5: the will is published once the delay has
                // passed or the session ends, whichever is first; never
                // after a normal DISCONNECT.
                let origin = e.id;
                let will = link.will.filter(|_| !link.graceful);
                let delay = will
                    .as_ref()
                    .and_then(|w| w.properties.will_delay_interval)
                    .unwrap_or(0);
                let pending = match will {
                    Some(will) if delay > 0 => {
                        let at = self.now_tick() + self.ticks(u64::from(delay) * 1000);
                        Some(PendingWill { will, at, origin })
                    }
                    Some(will) => {
                        self.publish_will(st, *will, Some(origin));
                        None
                    }
                    None => None,
                };
                self.share_member_gone(st, key);
                self.park_or_end(st, key, pending);
            }
        }
        if st.links == 0 && self.shutting_down.get() {
            self.drained.notify();
        }
    }

    /// A session lost its connection: keep it offline or end it.
    fn park_or_end(&self, st: &mut CoreState, key: ConnKey, will: Option<PendingWill>) {
        let Some(e) = st.entry(key) else { return };
        let secs = e.session.expiry_secs;
        let expires_at = self.now_tick() + self.ticks(u64::from(secs) * 1000);
        let will_at = will.as_ref().map(|w| w.at);
        // Offline first, so that a session ending now publishes the will.
        e.phase = Phase::Offline { expires_at, will };
        if secs == 0 {
            self.end_session(st, key);
            return;
        }
        self.arm(st, expires_at, key, Timer::SessionExpiry);
        if let Some(at) = will_at.filter(|&at| at < expires_at) {
            self.arm(st, at, key, Timer::WillDelay);
        }
    }

    /// Removes a session entirely: subscriptions, directory entry, slab slot.
    fn end_session(&self, st: &mut CoreState, key: ConnKey) {
        let Some(e) = st.entry(key) else { return };
        if let Phase::Offline { will, .. } = &mut e.phase {
            if let Some(w) = will.take() {
                // The session ends before the will delay ran out.
                self.publish_will(st, *w.will, Some(w.origin));
            }
        }
        let Some(e) = st.entry(key) else { return };
        let subs = std::mem::take(&mut e.session.subs);
        let client_id = e.client_id.clone();
        for (filter, ..) in &subs {
            self.unindex_sub(st, filter, key);
        }
        if let Some(cid) = client_id {
            self.shared
                .store
                .release(&cid, Location { core: self.id, key });
        }
        st.conns.remove(key.index as usize);
    }

    // ----- subscriptions ----------------------------------------------------

    /// Adds (or replaces) one subscription in this core's index.
    pub fn subscribe_index(&self, st: &mut CoreState, filter: &str, sub: Sub) {
        if !st.subs.insert(filter, sub) {
            st.interest.add(&self.visible().interest, filter);
        }
        self.count_subscriptions(st);
    }

    fn count_subscriptions(&self, st: &CoreState) {
        let gauge = &self.visible().subscriptions;
        gauge.store(st.subs.len(), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn unsubscribe_index(&self, st: &mut CoreState, filter: &str, key: ConnKey) -> bool {
        let removed = st.subs.remove(filter, key);
        if removed {
            st.interest.remove(filter);
        }
        self.count_subscriptions(st);
        removed
    }

    // ----- CONNECT, takeover, handover ---------------------------------------

    /// Claims `client_id` for `key` and locates its previous session.
    pub fn claim(&self, st: &mut CoreState, key: ConnKey, client_id: Arc<str>, info: ConnectInfo) {
        let me = Location { core: self.id, key };
        if let Some(e) = st.entry(key) {
            e.client_id = Some(client_id.clone());
            e.phase = Phase::AwaitingHandover {
                info: Box::new(info),
                superseded: None,
            };
        }
        match self.shared.store.claim(&client_id, me) {
            None => self.on_handover(st, key, None, false),
            Some(prev) if prev.core == self.id => {
                let reply = self.takeover(st, prev.key, &client_id, me);
                self.dispatch_handover(st, reply, false);
            }
            Some(prev) => self.route(
                prev.core,
                CoreMsg::Takeover {
                    target: prev.key,
                    client_id,
                    requester: me,
                },
            ),
        }
    }

    /// Gives up the session of `target` to `requester`. Returns the handover
    /// to deliver, or `None` when it is deferred (target still waiting for
    /// its own handover: it will forward when that arrives).
    fn takeover(
        &self,
        st: &mut CoreState,
        target: ConnKey,
        client_id: &str,
        requester: Location,
    ) -> Option<(Location, Option<Box<Session>>)> {
        let Some(e) = st
            .entry(target)
            .filter(|e| e.client_id.as_deref() == Some(client_id))
        else {
            return Some((requester, None));
        };
        match &mut e.phase {
            Phase::AwaitingHandover { superseded, .. } => {
                *superseded = Some(requester);
                None
            }
            Phase::Connecting | Phase::TakenOver | Phase::Moved { .. } => Some((requester, None)),
            Phase::Active | Phase::Offline { .. } => {
                let online = e.link.is_some();
                let id = e.id;
                bump(&self.stats().takeovers, 1);
                if online {
                    info!(conn = %id, client_id, "session taken over by a newer connection");
                }
                let session = if requester.core == self.id {
                    // Same core: the move is atomic, nothing can be in flight
                    // from here. But if the session arrived from another core
                    // recently, that core's tombstone still forwards to this
                    // entry: keep it as a pointer until that window ends.
                    let session = self.detach_session(st, target);
                    let now = self.now_tick();
                    let window = session
                        .move_window
                        .as_ref()
                        .map(|r| r.until)
                        .filter(|&u| u > now);
                    let e = st.entry(target).expect("entry checked above");
                    match window {
                        Some(until) => {
                            e.phase = Phase::Moved {
                                to: requester,
                                until,
                            };
                            self.arm(st, until, target, Timer::Tombstone);
                        }
                        None => {
                            e.phase = Phase::TakenOver;
                            if !online {
                                st.conns.remove(target.index as usize);
                            }
                        }
                    }
                    session
                } else {
                    // Other core: leave a tombstone that keeps the
                    // subscriptions indexed and forwards to the new owner.
                    let until = self.now_tick() + self.ticks(MOVE_GRACE_MS);
                    let e = st.entry(target).expect("entry checked above");
                    // Shared subscriptions leave their groups now (the owner
                    // must stop picking this location); the new owner of the
                    // session joins again. Plain ones stay indexed here.
                    let (shared, plain): (Vec<_>, Vec<_>) = e
                        .session
                        .subs
                        .iter()
                        .cloned()
                        .partition(|(f, ..)| crate::shared::GroupKey::parse(f).is_some());
                    let session = std::mem::take(&mut e.session);
                    e.session.subs = plain;
                    e.phase = Phase::Moved {
                        to: requester,
                        until,
                    };
                    self.arm(st, until, target, Timer::Tombstone);
                    let loc = Location {
                        core: self.id,
                        key: target,
                    };
                    for (f, ..) in shared {
                        if let Some(g) = crate::shared::GroupKey::parse(&f) {
                            self.share_leave(st, g, loc);
                        }
                    }
                    session
                };
                let mut will = None;
                if let Some(link) = st.link(target) {
                    // MQTT 5 3.1.4-3: the old connection is closed, with 0x8E.
                    let reason = link.version.is_v5().then_some(reason::SESSION_TAKEN_OVER);
                    // Its will goes out now if it has no delay (every 3.1.1
                    // will); a delayed one is cancelled by the new connection.
                    will = link
                        .will
                        .take()
                        .filter(|w| w.properties.will_delay_interval.unwrap_or(0) == 0);
                    link.request_close(reason, false);
                }
                if let Some(w) = will {
                    self.publish_will(st, *w, Some(id));
                }
                Some((requester, Some(Box::new(session))))
            }
        }
    }

    /// Takes a session's state out of this core (subscriptions unindexed).
    fn detach_session(&self, st: &mut CoreState, key: ConnKey) -> Session {
        let e = st.entry(key).expect("caller checked the key");
        let session = std::mem::take(&mut e.session);
        for (filter, ..) in &session.subs {
            self.unindex_sub(st, filter, key);
        }
        session
    }

    /// Delivers a takeover reply; `remote` says whether the session came from
    /// another core (see [`Core::on_handover`]).
    fn dispatch_handover(
        &self,
        st: &mut CoreState,
        reply: Option<(Location, Option<Box<Session>>)>,
        remote: bool,
    ) {
        if let Some((to, session)) = reply {
            if to.core == self.id {
                self.on_handover(st, to.key, session, remote);
            } else {
                self.route(
                    to.core,
                    CoreMsg::Handover {
                        target: to.key,
                        session,
                    },
                );
            }
        }
    }

    /// The previous session (if any) of `target`'s client has arrived.
    /// `remote` is true when it comes from another core (whose tombstone may
    /// forward second copies of messages for a while).
    pub fn on_handover(
        &self,
        st: &mut CoreState,
        target: ConnKey,
        session: Option<Box<Session>>,
        remote: bool,
    ) {
        let until = self.now_tick() + self.ticks(MOVE_GRACE_MS);
        let Some(e) = st.entry(target) else { return };
        let phase = std::mem::replace(&mut e.phase, Phase::Active);
        let Phase::AwaitingHandover { info, superseded } = phase else {
            e.phase = phase;
            return;
        };
        if let Some(next) = superseded {
            // An even newer connection claimed the id while we waited. Stay
            // a tombstone for a while if forwards may still arrive here.
            if remote {
                e.phase = Phase::Moved { to: next, until };
                self.arm(st, until, target, Timer::Tombstone);
            } else {
                e.phase = Phase::TakenOver;
            }
            let e = st.entry(target).expect("entry checked above");
            match e.link.as_mut() {
                Some(link) => link.request_close(None, false),
                None if matches!(e.phase, Phase::TakenOver) => {
                    st.conns.remove(target.index as usize);
                }
                None => {}
            }
            self.dispatch_handover(st, Some((next, session)), remote);
            return;
        }
        let mut session = session;
        if remote {
            if let Some(s) = session.as_mut() {
                // The old core's end marker normally closes the window after
                // MOVE_GRACE_MS; twice that is the fallback. A session still
                // inside an earlier window (a chain of moves) keeps what it
                // holds.
                let window_end = self.now_tick() + 2 * self.ticks(MOVE_GRACE_MS);
                match s.move_window.as_mut() {
                    Some(w) => w.until = w.until.max(window_end),
                    None => s.move_window = Some(Box::new(MoveWindow::new(window_end))),
                }
                self.arm(st, window_end, target, Timer::MoveWindow);
            }
        }
        self.activate(st, target, *info, session);
    }

    /// Installs the session (restored or new) and sends CONNACK.
    fn activate(
        &self,
        st: &mut CoreState,
        key: ConnKey,
        info: ConnectInfo,
        restored: Option<Box<Session>>,
    ) {
        let restored = if info.clean_start { None } else { restored };
        let session_present = restored.is_some();
        let e = st.entry(key).expect("caller checked the key");
        e.session = restored.map(|s| *s).unwrap_or_default();
        e.session.expiry_secs = info.expiry_secs;
        let subs = e.session.subs.clone();
        for (filter, opts, id) in &subs {
            self.index_sub(st, filter, key, *opts, *id);
        }
        let e = st.entry(key).expect("caller checked the key");
        let Some(link) = e.link.as_mut() else {
            // The client went away while its session was being fetched.
            self.park_or_end(st, key, None);
            return;
        };
        let v5 = link.version.is_v5();
        let mut props = Properties::default();
        if v5 {
            let m = &self.cfg.mqtt;
            props.assigned_client_identifier = info.assigned_id.clone();
            props.server_keep_alive = info.server_keep_alive;
            props.response_information = info.response_information.clone();
            if let Some((method, data)) = &info.auth {
                props.authentication_method = Some(method.clone());
                props.authentication_data = data.clone();
            }
            props.receive_maximum = Some(m.receive_maximum);
            props.maximum_packet_size = Some(m.max_packet_size);
            props.topic_alias_maximum = Some(m.topic_alias_maximum);
            if m.max_qos < 2 {
                props.maximum_qos = Some(m.max_qos);
            }
            if !m.retain_available {
                props.retain_available = Some(0);
            }
            if !m.wildcard_subscription_available {
                props.wildcard_subscription_available = Some(0);
            }
            if !m.shared_subscription_available {
                props.shared_subscription_available = Some(0);
            }
            if info.expiry_secs != info.requested_expiry_secs {
                props.session_expiry_interval = Some(info.expiry_secs);
            }
        }
        link.control(Packet::ConnAck(ConnAck {
            session_present,
            code: reason::SUCCESS,
            properties: props,
        }));
        // MQTT 4.4: resend unacknowledged PUBLISH (DUP) and PUBREL first.
        for f in &e.session.inflight {
            if f.released {
                link.control(Packet::PubRel(crate::codec::Ack::new(f.pkid)));
            } else {
                link.push(Frame::Publish {
                    d: f.d.clone(),
                    pkid: f.pkid,
                    dup: true,
                });
            }
        }
        let keep_alive_ticks = link.keep_alive_ticks;
        link.last_seen = self.now_tick();
        let id = e.id;
        pump(e, self.stats());
        bump(&self.stats().connects, 1);
        debug!(conn = %id, session_present, "session active");
        if keep_alive_ticks > 0 {
            self.arm(
                st,
                self.now_tick() + keep_alive_ticks,
                key,
                Timer::KeepAlive,
            );
        }
    }

    // ----- publishing -----------------------------------------------------

    /// Routes a message published on this core to every matching session of
    /// the node.
    pub fn publish(&self, st: &mut CoreState, msg: Arc<Message>) {
        for (core, shared) in self.shared.cores.iter().enumerate() {
            if core != self.id && shared.interest.might_match(&msg.topic) {
                self.route_publish(core, msg.clone());
            }
        }
        self.deliver_local(st, &msg);
    }

    fn publish_will(&self, st: &mut CoreState, will: Will, origin: Option<ConnId>) {
        let properties = (!will.properties.is_empty()).then(|| {
            let mut p = will.properties.clone();
            p.will_delay_interval = None;
            Box::new(p)
        });
        let msg = Message {
            id: self.message_id(),
            topic: will.topic.into(),
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties,
            origin,
            expires_at: None,
            born: std::time::Instant::now(),
        };
        let msg = Arc::new(msg);
        if msg.retain {
            self.retain(st, &msg);
        }
        self.publish(st, msg);
    }

    /// Offers `msg` to every matching session of this core. One copy per
    /// session: overlapping subscriptions are merged at the highest QoS.
    pub fn deliver_local(&self, st: &mut CoreState, msg: &Arc<Message>) {
        let CoreState {
            subs,
            conns,
            matches,
            ..
        } = st;
        matches.clear();
        let groups = subs.for_each_match(&msg.topic, |s| matches.extend_from_slice(s));
        if groups > 1 {
            // Overlapping filters: bring each session's matches together.
            matches.sort_unstable_by_key(|s| s.key);
        }
        let stats = self.stats();
        let now = self.now_tick();
        let mut rest = &matches[..];
        while let Some(first) = rest.first() {
            let n = rest.iter().take_while(|s| s.key == first.key).count();
            let (same, tail) = rest.split_at(n);
            rest = tail;
            let Some(e) = conns
                .get_mut(first.key.index as usize)
                .filter(|e| e.gen == first.key.gen)
            else {
                continue;
            };
            if same.iter().all(|s| s.opts.no_local) && msg.origin == Some(e.id) {
                continue;
            }
            // One copy per session, at the best QoS and retain option of
            // its matching subscriptions, carrying all their identifiers.
            let qos = same
                .iter()
                .map(|s| msg.qos.min(s.opts.qos))
                .max()
                .unwrap_or(QoS::AtMostOnce);
            let retain = msg.retain && same.iter().any(|s| s.opts.retain_as_published);
            let d = Delivery {
                msg: msg.clone(),
                qos,
                retain,
                sub_ids: sub_ids(same.iter().map(|s| s.id)),
                share: None,
            };
            if let Phase::Moved { to, .. } = e.phase {
                self.forward_out(to, d);
                continue;
            }
            count(offer(e, d, &self.cfg, stats, now), stats);
        }
        self.deliver_shared(st, msg);
    }

    /// Publishes the node's statistics as retained QoS 0 messages under
    /// `$SYS/broker/` (core 0, every `sys.interval_secs`). `$` topics are
    /// only seen by subscriptions that name `$SYS` explicitly.
    pub fn publish_sys(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut s = crate::stats::Snapshot::default();
        let mut subscriptions = 0;
        for c in &self.shared.cores {
            s.add(&c.stats);
            subscriptions += c.subscriptions.load(Relaxed);
        }
        let dropped = s.dropped_slow_qos0
            + s.dropped_offline_qos0
            + s.dropped_queue_full
            + s.dropped_too_large
            + s.dropped_expired
            + s.dropped_session_gone;
        let figures: [(&str, String); 11] = [
            ("version", format!("tether {}", env!("CARGO_PKG_VERSION"))),
            (
                "uptime",
                self.shared.started.elapsed().as_secs().to_string(),
            ),
            ("clients/connected", s.connections.to_string()),
            ("clients/total", s.connects.to_string()),
            ("subscriptions/count", subscriptions.to_string()),
            (
                "retained messages/count",
                self.shared.retained.count.load(Relaxed).to_string(),
            ),
            ("messages/received", s.publishes_in.to_string()),
            ("messages/sent", s.publishes_out.to_string()),
            ("messages/dropped", dropped.to_string()),
            ("bytes/received", s.bytes_in.to_string()),
            ("bytes/sent", s.bytes_out.to_string()),
        ];
        let mut st = self.st.borrow_mut();
        for (name, value) in figures {
            let msg = Arc::new(Message {
                id: self.message_id(),
                topic: format!("$SYS/broker/{name}").into(),
                payload: value.into(),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: None,
                origin: None,
                expires_at: None,
                born: std::time::Instant::now(),
            });
            self.retain(&mut st, &msg);
            self.publish(&mut st, msg);
        }
    }

    // ----- retained messages ------------------------------------------------

    /// Stores a retained message (or deletes one, for an empty payload).
    /// Returns false when a new topic is refused because the store is full.
    pub fn retain(&self, st: &mut CoreState, msg: &Arc<Message>) -> bool {
        let cap = &self.cfg.retained;
        let totals = &self.shared.retained;
        let is_new = !msg.payload.is_empty() && !st.retained.contains(&msg.topic);
        let full = totals.count.load(std::sync::atomic::Ordering::Relaxed) >= cap.max_messages
            || totals.bytes.load(std::sync::atomic::Ordering::Relaxed) + msg.weight()
                > cap.max_bytes;
        if is_new && full {
            bump(&self.stats().retained_refused, 1);
            return false;
        }
        let owner = crate::id::owner_core(&msg.topic, self.shared.cores.len());
        if owner == self.id {
            self.retain_sequence(st, msg.clone());
        } else {
            self.route(owner, CoreMsg::RetainSet(msg.clone()));
        }
        true
    }

    /// Owner core: apply, account, and broadcast in order to every replica.
    fn retain_sequence(&self, st: &mut CoreState, msg: Arc<Message>) {
        for core in (0..self.shared.cores.len()).filter(|&c| c != self.id) {
            self.route(core, CoreMsg::RetainApply(msg.clone()));
        }
        let delta = self.apply_retained(st, msg);
        crate::retained::account(&self.shared.retained, delta);
    }

    fn apply_retained(&self, st: &mut CoreState, msg: Arc<Message>) -> (isize, isize) {
        let delta = st.retained.apply(msg);
        self.visible()
            .retained
            .store(st.retained.len(), std::sync::atomic::Ordering::Relaxed);
        delta
    }

    /// Sends the retained messages matching `filter` to a new subscription
    /// (retain flag set, QoS capped by the subscription).
    pub fn deliver_retained(&self, st: &mut CoreState, key: ConnKey, filter: &str, max_qos: QoS) {
        let msgs = st.retained.matching(filter);
        let stats = self.stats();
        let Some(e) = st.entry(key) else { return };
        let id = e
            .session
            .subscription(filter)
            .map_or(0, |i| e.session.subs[i].2);
        for msg in msgs {
            let qos = msg.qos.min(max_qos);
            let d = Delivery {
                msg,
                qos,
                retain: true,
                sub_ids: sub_ids([id]),
                share: None,
            };
            count(deliver(e, d, &self.cfg, stats), stats);
        }
    }

    /// Sends a message that matched a tombstone on to the session's new core.
    fn forward_out(&self, to: Location, d: Delivery) {
        bump(&self.stats().forwarded_after_move, 1);
        self.route(to.core, CoreMsg::Forward { target: to.key, d });
    }

    /// A forwarded message for a session that moved here.
    fn forward_in(&self, st: &mut CoreState, target: ConnKey, d: Delivery) {
        let stats = self.stats();
        let Some(e) = st.entry(target) else {
            bump(&stats.dropped_session_gone, 1);
            return;
        };
        match e.phase {
            // It moved on again (a chain of takeovers): follow it.
            Phase::Moved { to, .. } if to.core == self.id => self.forward_in(st, to.key, d),
            Phase::Moved { to, .. } => self.route(to.core, CoreMsg::Forward { target: to.key, d }),
            // Forwards travel behind the handover, so these cannot hold a
            // session being moved here; count rather than assume.
            Phase::AwaitingHandover { .. } | Phase::Connecting | Phase::TakenOver => {
                bump(&stats.dropped_session_gone, 1);
            }
            _ => {
                // Only a session still inside its move window, and still
                // subscribed to the topic, takes forwards: a client that came
                // back with Clean Start (or unsubscribed) does not get
                // messages for its old subscriptions.
                let in_window = e.session.move_window.is_some();
                let subscribed = e
                    .session
                    .subs
                    .iter()
                    .any(|(f, ..)| topic::matches(f, &d.msg.topic));
                if in_window && subscribed {
                    count(offer_forwarded(e, d, &self.cfg, stats), stats);
                } else {
                    bump(&stats.forwards_discarded, 1);
                }
            }
        }
    }

    /// The old core stopped forwarding to the session at `target`.
    fn forward_end(&self, st: &mut CoreState, target: ConnKey) {
        let Some(e) = st.entry(target) else { return };
        match e.phase {
            // Moved on within this core: the window travelled with it.
            Phase::Moved { to, .. } if to.core == self.id => self.forward_end(st, to.key),
            // Moved on to another core: this core's own tombstone sends
            // that core its end marker when it expires.
            Phase::Moved { .. }
            | Phase::AwaitingHandover { .. }
            | Phase::Connecting
            | Phase::TakenOver => {}
            Phase::Active | Phase::Offline { .. } => {
                release_window(e, &self.cfg, self.stats());
            }
        }
    }

    // ----- cross-core routing ---------------------------------------------

    fn route_publish(&self, core: usize, msg: Arc<Message>) {
        let route = &self.routes[core];
        {
            let mut q = route.queue.borrow_mut();
            match q.back_mut() {
                Some(CoreMsg::Publish(batch)) if batch.len() < self.cfg.runtime.route_batch_max => {
                    batch.push(msg)
                }
                _ => q.push_back(CoreMsg::Publish(vec![msg])),
            }
        }
        self.backlog.set(self.backlog.get() + 1);
        route.notify.notify();
    }

    pub(crate) fn route(&self, core: usize, msg: CoreMsg) {
        self.routes[core].queue.borrow_mut().push_back(msg);
        self.routes[core].notify.notify();
    }

    /// Next message for `core`'s channel (router task).
    pub fn next_routed(&self, core: usize) -> Option<CoreMsg> {
        self.routes[core].queue.borrow_mut().pop_front()
    }

    /// A routed message was accepted by the channel (router task).
    pub fn routed(&self, msg_count: usize) {
        let left = self.backlog.get() - msg_count;
        self.backlog.set(left);
        if left < self.cfg.runtime.router_backlog_limit {
            for w in self.paused.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }

    /// True (and `waker` parked) when publishers on this core must wait for
    /// the routers to drain: backpressure instead of unbounded queues.
    pub fn must_pause(&self, waker: &Waker) -> bool {
        if self.backlog.get() < self.cfg.runtime.router_backlog_limit {
            return false;
        }
        self.paused.borrow_mut().push(waker.clone());
        true
    }

    /// Handles a message from another core.
    pub fn on_core_msg(&self, msg: CoreMsg) {
        let mut st = self.st.borrow_mut();
        match msg {
            CoreMsg::Publish(batch) => {
                for m in &batch {
                    self.deliver_local(&mut st, m);
                }
            }
            CoreMsg::Takeover {
                target,
                client_id,
                requester,
            } => {
                let reply = self.takeover(&mut st, target, &client_id, requester);
                self.dispatch_handover(&mut st, reply, false);
            }
            CoreMsg::RetainSet(msg) => self.retain_sequence(&mut st, msg),
            CoreMsg::ShareJoin { key, member } => self.group_join(&mut st, key, member),
            CoreMsg::ShareLeave { key, loc } => self.group_leave(&mut st, key, loc),
            CoreMsg::ShareDeliver {
                target,
                d,
                attempts,
            } => self.share_deliver_in(&mut st, target, d, attempts),
            CoreMsg::ShareReturn { d, attempts } => self.share_return_in(&mut st, d, attempts),
            CoreMsg::RetainApply(msg) => {
                self.apply_retained(&mut st, msg);
            }
            CoreMsg::Handover { target, session } => {
                self.on_handover(&mut st, target, session, true)
            }
            CoreMsg::Forward { target, d } => self.forward_in(&mut st, target, d),
            CoreMsg::ForwardEnd { target } => self.forward_end(&mut st, target),
            CoreMsg::UserCount { user, delta } => self.apply_user_count(&mut st, user, delta),
        }
    }

    // ----- presence counts -------------------------------------------------

    /// A connection of `user` opened (`delta` 1) or closed (-1) here: the
    /// user's owner core keeps the count.
    pub(crate) fn count_user(&self, st: &mut CoreState, user: &Arc<str>, delta: i32) {
        match crate::id::owner_core(user, self.shared.cores.len()) {
            owner if owner == self.id => self.apply_user_count(st, user.clone(), delta),
            owner => self.route(
                owner,
                CoreMsg::UserCount {
                    user: user.clone(),
                    delta,
                },
            ),
        }
    }

    fn apply_user_count(&self, st: &mut CoreState, user: Arc<str>, delta: i32) {
        // A connection's close follows its open on the same route (both
        // come from the connection's core, in order), so a count never
        // goes below zero.
        match st.users.entry(user) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                let n = e.get().saturating_add_signed(delta);
                if n == 0 {
                    e.remove();
                } else {
                    *e.get_mut() = n;
                }
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                debug_assert!(delta > 0, "a user's close arrived before its open");
                if delta > 0 {
                    e.insert(delta as u32);
                }
            }
        }
        self.visible()
            .users
            .store(st.users.len() as i64, std::sync::atomic::Ordering::Relaxed);
    }

    // ----- timers -----------------------------------------------------------

    /// Advances the wheel to the current tick and handles what fired.
    pub fn on_tick(&self, fired: &mut Vec<(ConnKey, Timer)>) {
        let now = self.now_tick();
        let mut st = self.st.borrow_mut();
        st.wheel.advance(now, fired);
        for (key, timer) in fired.drain(..) {
            self.on_timer(&mut st, key, timer, now);
        }
        let st = &mut *st;
        st.interest.sweep(&self.visible().interest);
    }

    fn on_timer(&self, st: &mut CoreState, key: ConnKey, timer: Timer, now: u64) {
        let Some(e) = st.entry(key) else { return };
        match (timer, &mut e.phase) {
            (Timer::ConnectDeadline, Phase::Connecting | Phase::AwaitingHandover { .. }) => {
                if let Some(link) = e.link.as_mut() {
                    info!(conn = %e.id, peer = %link.peer, "no CONNECT within the deadline; closing");
                    link.request_close(None, true);
                    bump(&self.stats().timeouts, 1);
                }
            }
            (Timer::KeepAlive, Phase::Active) => {
                let Some(link) = e.link.as_mut() else { return };
                let deadline = link.last_seen + link.keep_alive_ticks;
                if now >= deadline {
                    info!(conn = %e.id, peer = %link.peer, "keep-alive expired; closing");
                    let reason = link.version.is_v5().then_some(reason::KEEP_ALIVE_TIMEOUT);
                    link.request_close(reason, true);
                    bump(&self.stats().timeouts, 1);
                } else {
                    self.arm(st, deadline, key, Timer::KeepAlive);
                }
            }
            (Timer::Tombstone, Phase::Moved { to, until }) if now >= *until => {
                let to = *to;
                let subs = std::mem::take(&mut e.session.subs);
                let online = e.link.is_some();
                if online {
                    // The socket is still closing; `unregister` removes it.
                    e.phase = Phase::TakenOver;
                }
                for (filter, ..) in &subs {
                    self.unindex_sub(st, filter, key);
                }
                if !online {
                    st.conns.remove(key.index as usize);
                }
                // Behind every forward this tombstone sent.
                if to.core == self.id {
                    self.forward_end(st, to.key);
                } else {
                    self.route(to.core, CoreMsg::ForwardEnd { target: to.key });
                }
            }
            (Timer::MoveWindow, Phase::Active | Phase::Offline { .. })
                if e.session
                    .move_window
                    .as_ref()
                    .is_some_and(|w| now >= w.until) =>
            {
                release_window(e, &self.cfg, self.stats());
            }
            (Timer::WillDelay, Phase::Offline { will, .. }) => {
                if let Some(w) = will.take_if(|w| now >= w.at) {
                    self.publish_will(st, *w.will, Some(w.origin));
                }
            }
            (Timer::SessionExpiry, Phase::Offline { expires_at, .. }) => {
                if now >= *expires_at {
                    debug!(conn = %e.id, "offline session expired");
                    bump(&self.stats().sessions_expired, 1);
                    self.end_session(st, key);
                } else {
                    let at = *expires_at;
                    self.arm(st, at, key, Timer::SessionExpiry);
                }
            }
            _ => {}
        }
    }

    /// Starts shutdown: every connection gets DISCONNECT 0x8B (v5).
    pub fn begin_shutdown(&self) {
        self.shutting_down.set(true);
        let mut st = self.st.borrow_mut();
        for (_, e) in st.conns.iter_mut() {
            if let Some(link) = e.link.as_mut() {
                let reason = link.version.is_v5().then_some(reason::SERVER_SHUTTING_DOWN);
                link.request_close(reason, false);
            }
        }
        if st.links == 0 {
            self.drained.notify();
        }
    }
}

pub(crate) fn count(offer: Offer, stats: &Stats) {
    match offer {
        Offer::Sent | Offer::Queued | Offer::Held => {}
        Offer::DroppedSlow => bump(&stats.dropped_slow_qos0, 1),
        Offer::DroppedOffline => bump(&stats.dropped_offline_qos0, 1),
        Offer::DroppedQueueFull => bump(&stats.dropped_queue_full, 1),
        Offer::Duplicate => bump(&stats.duplicates_suppressed, 1),
        Offer::Expired => bump(&stats.dropped_expired, 1),
        Offer::TooLarge => bump(&stats.dropped_too_large, 1),
    }
}

/// Subscription identifiers worth sending (0 means none).
pub(crate) fn sub_ids(ids: impl IntoIterator<Item = u32>) -> SubIds {
    let ids: Vec<u32> = ids.into_iter().filter(|&id| id != 0).collect();
    (!ids.is_empty()).then(|| ids.into_boxed_slice())
}

/// The core a message was published on (see [`Core::message_id`]).
fn origin_core(id: u64) -> u64 {
    id >> 56
}

/// Offers one message that was routed to this core directly. During a
/// session's move window it is held (see [`MoveWindow`]) unless its copy
/// already came through the old core.
pub fn offer(e: &mut Entry, d: Delivery, cfg: &Config, stats: &Stats, now: u64) -> Offer {
    if let Some(w) = e.session.move_window.as_mut() {
        let open = now < w.until && w.held.len() < cfg.session.max_queued_messages;
        if open {
            if w.ids.contains(&d.msg.id) {
                return Offer::Duplicate;
            }
            w.held.push_back(d);
            return Offer::Held;
        }
        // Past the fallback deadline, or holding as much as a session may
        // queue: bounded memory before waiting longer for the old core.
        release_window(e, cfg, stats);
    }
    deliver(e, d, cfg, stats)
}

/// Offers one message forwarded by the old core's tombstone (the caller
/// checked that the window is open).
///
/// Its direct copy, if held, is dropped: this one goes out in the old
/// core's order. Held messages from the same origin core with a smaller id
/// go out first: ids grow in publish order per origin core, so those are
/// older, and they may be waiting for a forward that takes a longer path
/// (a session that moved twice carries what it held along).
fn offer_forwarded(e: &mut Entry, d: Delivery, cfg: &Config, stats: &Stats) -> Offer {
    let mut earlier = Vec::new();
    if let Some(w) = e.session.move_window.as_mut() {
        if !w.record(d.msg.id) {
            return Offer::Duplicate;
        }
        let origin = origin_core(d.msg.id);
        let mut rest = std::collections::VecDeque::with_capacity(w.held.len());
        for h in w.held.drain(..) {
            if h.msg.id == d.msg.id {
                bump(&stats.duplicates_suppressed, 1);
            } else if origin_core(h.msg.id) == origin && h.msg.id < d.msg.id {
                earlier.push(h);
            } else {
                rest.push_back(h);
            }
        }
        w.held = rest;
        for h in &earlier {
            w.record(h.msg.id);
        }
    }
    for h in earlier {
        count(deliver(e, h, cfg, stats), stats);
    }
    deliver(e, d, cfg, stats)
}

/// Ends a session's move window: what was held goes out in arrival order,
/// except what already came through the old core.
fn release_window(e: &mut Entry, cfg: &Config, stats: &Stats) {
    let Some(w) = e.session.move_window.take() else {
        return;
    };
    for d in w.held {
        if w.ids.contains(&d.msg.id) {
            bump(&stats.duplicates_suppressed, 1);
        } else {
            count(deliver(e, d, cfg, stats), stats);
        }
    }
}

/// Expiry, the in-flight window and the slow-consumer policy (see
/// `SessionConfig`). Retained messages sent on subscribe come here directly:
/// they are a deliberate second copy.
fn deliver(e: &mut Entry, d: Delivery, cfg: &Config, stats: &Stats) -> Offer {
    if d.msg.expired(Instant::now()) {
        return Offer::Expired;
    }
    let active = matches!(e.phase, Phase::Active);
    let link = e.link.as_mut().filter(|_| active);
    if d.qos == QoS::AtMostOnce {
        let Some(link) = link else {
            return Offer::DroppedOffline;
        };
        if link.outbox_bytes >= cfg.session.max_outbox_bytes {
            return Offer::DroppedSlow;
        }
        if !fits(link, &d) {
            return Offer::TooLarge;
        }
        link.push(Frame::Publish {
            d,
            pkid: 0,
            dup: false,
        });
        return Offer::Sent;
    }
    let s = &mut e.session;
    if let Some(link) = link {
        if s.queued.is_empty() && s.inflight.len() < link.window {
            send_new(s, link, d, stats);
            return Offer::Sent;
        }
        if s.queued.len() >= cfg.session.max_queued_messages {
            if link.close.is_none() {
                info!(conn = %e.id, queued = s.queued.len(), "slow consumer over the queue limit; disconnecting (0x97)");
                bump(&stats.disconnected_slow, 1);
            }
            let reason = link.version.is_v5().then_some(reason::QUOTA_EXCEEDED);
            link.request_close(reason, true);
            return Offer::DroppedQueueFull;
        }
    } else if s.queued.len() >= cfg.session.max_queued_messages {
        return Offer::DroppedQueueFull;
    }
    s.queued.push_back(d);
    Offer::Queued
}

/// Whether `d` fits the client's Maximum Packet Size. MQTT 5 3.1.2-24: a
/// message that does not is not sent to this client, as if delivered.
fn fits(link: &Link, d: &Delivery) -> bool {
    // A topic alias property (bound at write time) can add 3 bytes, and grow
    // the property length prefix by one.
    let alias_room = if link.out_aliases.is_some() { 4 } else { 0 };
    d.encoded_len(link.version) + alias_room <= link.max_packet
}

fn send_new(s: &mut Session, link: &mut Link, d: Delivery, stats: &Stats) {
    if !fits(link, &d) {
        bump(&stats.dropped_too_large, 1);
        return;
    }
    let pkid = s.next_pkid();
    s.inflight.push_back(Inflight {
        pkid,
        d: d.clone(),
        released: false,
    });
    link.push(Frame::Publish {
        d,
        pkid,
        dup: false,
    });
}

/// Moves queued messages into the window while it has room, skipping those
/// that expired while they waited.
pub fn pump(e: &mut Entry, stats: &Stats) {
    let Some(link) = e.link.as_mut() else { return };
    let s = &mut e.session;
    let now = Instant::now();
    while s.inflight.len() < link.window {
        let Some(d) = s.queued.pop_front() else { break };
        if d.msg.expired(now) {
            bump(&stats.dropped_expired, 1);
            continue;
        }
        send_new(s, link, d, stats);
    }
}
