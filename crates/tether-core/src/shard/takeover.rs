//! Locating a client's session when it connects: the claim in the
//! directory, the takeover of the previous owner (on this core or
//! another), the handover of the session, and its activation. Also the
//! tombstone a session leaves on the core it moved away from, and the
//! forwards that tombstone sends.
//!
//! Concurrent claims are serialised by the directory: each claim sees the
//! one before it. A takeover that reaches an entry still waiting for its
//! own handover (or for its own claim's answer) marks it `superseded`; when
//! that handover arrives the session is forwarded at once and the waiting
//! connection is closed.

use std::sync::Arc;

use tracing::{debug, info};

use super::delivery::{offer_forwarded, pump, release_window};
use super::{count, ConnectInfo, Core, CoreState, Phase, Timer, Waiting};
use crate::bridge::adoption::Ticket;
use crate::bridge::outbound::ConnEventKind;
use crate::codec::{reason, topic, Packet};
use crate::id::{ConnKey, GroupKey, Location};
use crate::mesh::CoreMsg;
use crate::session::{Delivery, Frame, MoveWindow, Session};
use crate::stats::bump;
use crate::store::{Claim, ClaimResult, StoreError};

/// How long a core keeps forwarding to a session that moved to another core
/// (its *tombstone*), and how long the new core filters duplicates. Messages
/// other cores routed to the old core before they could know of the move are
/// still in the channels for at most the mesh latency; two seconds covers
/// a heavily backlogged mesh with a wide margin.
pub const MOVE_GRACE_MS: u64 = 2000;

/// A claim that did not go through; the caller refuses the CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRefused {
    /// CONNACK reason code (0x88 store unavailable, 0x89 too many pending).
    pub code: u8,
    /// For the log line.
    pub why: String,
}

/// A takeover's answer: the new owner and the session it gets.
type Reply = Option<(Location, Option<Box<Session>>)>;

impl Core {
    /// Claims `client_id` for `key` and locates its previous session. The
    /// entry waits in `AwaitingHandover` (reading nothing) until the
    /// handover arrives; the claim itself may be answered later by the
    /// store. `Err`: refuse the CONNECT with that code.
    pub fn claim(
        &self,
        st: &mut CoreState,
        key: ConnKey,
        client_id: Arc<str>,
        info: ConnectInfo,
    ) -> Result<(), ClaimRefused> {
        self.claim_as(st, key, client_id, info, None)
    }

    /// [`Core::claim`], or an adoption's claim (`adopt`).
    fn claim_as(
        &self,
        st: &mut CoreState,
        key: ConnKey,
        client_id: Arc<str>,
        info: ConnectInfo,
        adopt: Option<Arc<Ticket>>,
    ) -> Result<(), ClaimRefused> {
        let clean_start = info.clean_start;
        let expiry_secs = info.expiry_secs;
        let persistent = expiry_secs > 0;
        let Some(e) = st.entry(key) else {
            return Ok(());
        };
        e.client_id = Some(client_id.clone());
        let conn = e.id;
        let presence = e
            .link
            .as_ref()
            .and_then(|l| self.presence(l, &client_id, conn));
        e.phase = Phase::AwaitingHandover {
            info: Box::new(info),
            superseded: None,
        };
        let claim = Claim {
            client_id,
            loc: Location { core: self.id, key },
            clean_start,
            persistent,
            expiry_secs,
            conn,
            presence,
            adopt,
        };
        if let Some(result) = self.node.store.claim(&claim) {
            return self.claimed(st, key, result);
        }
        let waiting = Waiting::Claim {
            key,
            client_id: claim.client_id.clone(),
        };
        let Some(token) = st.pending.insert(waiting) else {
            bump(&self.stats().pending_refused, 1);
            return Err(self.claim_failed(
                st,
                key,
                reason::SERVER_BUSY,
                "too many claims waiting for the session store (runtime.max_pending_claims)",
            ));
        };
        if persistent && !clean_start {
            // A session may come from another node: keep what reaches the
            // core until it is installed (`arrivals.rs`).
            self.open_arrivals(st, key);
        }
        let reply = self.returns.claims.reply_to(token);
        self.node.store.claim_later(claim, reply);
        Ok(())
    }

    /// Adopts `client_id`'s session, which this node's earlier life owned
    /// (`bridge::adoption`): an entry without a connection claims it, and
    /// if no other node claimed it since, the session comes back parked
    /// offline, as a client that hung up during its claim leaves it. A
    /// client id this node already has (its client connected first) is
    /// left to that claim.
    pub fn adopt(&self, st: &mut CoreState, client_id: Arc<str>, ticket: Ticket) {
        if self.node.store.locate(&client_id).is_some() {
            return;
        }
        let (gen, id) = self.next_entry(st);
        let index = st.conns.insert(super::Entry {
            gen,
            id,
            client_id: None,
            phase: Phase::Connecting,
            session: Session::default(),
            link: None,
        });
        let key = ConnKey {
            index: index as u32,
            gen,
        };
        // Parked with the expiry the store answers (`Claimed::expiry_secs`);
        // this one stands in until then.
        let info = ConnectInfo::bare(false, self.cfg.session.max_expiry_secs.max(1));
        if let Err(refused) =
            self.claim_as(st, key, client_id.clone(), info, Some(Arc::new(ticket)))
        {
            info!(%client_id, "adopting a session of this node's earlier life failed: {}", refused.why);
        }
    }

    /// The store answered the claim of `key` (at once, or later through the
    /// core's reply queue).
    pub fn claimed(
        &self,
        st: &mut CoreState,
        key: ConnKey,
        result: ClaimResult,
    ) -> Result<(), ClaimRefused> {
        let me = Location { core: self.id, key };
        let Some(client_id) = st.entry(key).and_then(|e| e.client_id.clone()) else {
            self.close_arrivals(st, key);
            return Ok(());
        };
        let e = st.entry(key).expect("checked above");
        let claimed = match result {
            Ok(c) if c.over_limit => {
                bump(&self.stats().user_limit_refused, 1);
                return Err(self.claim_failed(
                    st,
                    key,
                    reason::QUOTA_EXCEEDED,
                    "over the user's connection limit (limits.max_connections_per_user)",
                ));
            }
            Ok(c) => c,
            // An adoption's session another node claimed since: not ours.
            Err(StoreError::Stale) if e.link.is_none() => {
                return Err(self.claim_failed(
                    st,
                    key,
                    reason::SESSION_TAKEN_OVER,
                    "claimed since by another node",
                ));
            }
            Err(e) => {
                bump(&self.stats().store_errors, 1);
                let why = e.to_string();
                return Err(self.claim_failed(st, key, reason::SERVER_UNAVAILABLE, &why));
            }
        };
        if let (Some(term), Some(link)) = (claimed.counted_in, e.link.as_mut()) {
            link.rare().counted_in = Some(term);
        }
        // Where the durable store keeps the session from now on, however
        // it comes (restored, handed over, or new).
        let mut restored = claimed.restored;
        if let Some(Phase::AwaitingHandover { info, .. }) = st.entry(key).map(|e| &mut e.phase) {
            info.durable = claimed.durable.map(Box::new);
            if let Some(secs) = claimed.expiry_secs {
                info.expiry_secs = secs.clamp(1, self.cfg.session.max_expiry_secs.max(1));
            }
            if claimed.stale_previous {
                // The old local entry is still taken over (its connection
                // closed, its subscriptions unindexed), but what it held is
                // older than what the store has.
                info.stale_handover = true;
                info.from_store = restored.take();
            }
        }
        match claimed.previous {
            // Nothing on this node: what the store had, if anything.
            None => self.on_handover(st, key, restored, false),
            // On this node the session comes in memory, with the copies
            // it was sent (and a move window): nothing to replay.
            Some(prev) if prev.core == self.id => {
                self.close_arrivals(st, key);
                let reply = self.takeover(st, prev.key, &client_id, me);
                self.dispatch_handover(st, reply, false);
            }
            Some(prev) => {
                self.close_arrivals(st, key);
                self.route(
                    prev.core,
                    CoreMsg::Takeover {
                        target: prev.key,
                        client_id,
                        requester: me,
                    },
                )
            }
        }
        Ok(())
    }

    /// A claim failed: the entry goes back to `Connecting` (the caller
    /// refuses the CONNECT), and a newer connection that superseded it
    /// meanwhile gets its handover (with no session) instead of waiting.
    fn claim_failed(&self, st: &mut CoreState, key: ConnKey, code: u8, why: &str) -> ClaimRefused {
        let refused = ClaimRefused {
            code,
            why: why.to_owned(),
        };
        self.close_arrivals(st, key);
        let Some(e) = st.entry(key) else {
            return refused;
        };
        let phase = std::mem::replace(&mut e.phase, Phase::Connecting);
        e.client_id = None;
        if e.link.is_none() {
            st.conns.remove(key.index as usize);
        }
        if let Phase::AwaitingHandover {
            superseded: Some(next),
            ..
        } = phase
        {
            self.dispatch_handover(st, Some((*next, None)), false);
        }
        refused
    }

    /// Gives up the session of `target` to `requester`. Returns the handover
    /// to deliver, or `None` when it is deferred (target still waiting for
    /// its own handover: it will forward when that arrives).
    pub(super) fn takeover(
        &self,
        st: &mut CoreState,
        target: ConnKey,
        client_id: &str,
        requester: Location,
    ) -> Reply {
        let Some(e) = st
            .entry(target)
            .filter(|e| e.client_id.as_deref() == Some(client_id))
        else {
            return Some((requester, None));
        };
        match &mut e.phase {
            Phase::AwaitingHandover { superseded, .. } => {
                *superseded = Some(Box::new(requester));
                None
            }
            Phase::Connecting
            | Phase::AwaitingVerdict { .. }
            | Phase::TakenOver
            | Phase::Moved { .. } => Some((requester, None)),
            Phase::Active | Phase::Offline { .. } => {
                let online = e.link.is_some();
                let id = e.id;
                bump(&self.stats().takeovers, 1);
                if online {
                    info!(conn = %id, client_id, "session taken over by a newer connection");
                }
                let session = if requester.core == self.id {
                    self.move_within_core(st, target, requester, online)
                } else {
                    self.move_to_core(st, target, requester)
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

    /// Same core: the move is atomic, nothing can be in flight from here.
    /// But if the session arrived from another core recently, that core's
    /// tombstone still forwards to this entry: keep it as a pointer until
    /// that window ends.
    fn move_within_core(
        &self,
        st: &mut CoreState,
        target: ConnKey,
        requester: Location,
        online: bool,
    ) -> Session {
        let session = self.detach_session(st, target);
        let now = self.now_tick();
        let window = session
            .move_window
            .as_ref()
            .map(|r| r.until)
            .filter(|&u| u > now);
        let e = st.entry(target).expect("caller checked the key");
        match window {
            Some(until) => {
                e.phase = Phase::Moved {
                    to: Box::new(requester),
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
    }

    /// Other core: leave a tombstone that keeps the subscriptions indexed
    /// and forwards to the new owner.
    fn move_to_core(&self, st: &mut CoreState, target: ConnKey, requester: Location) -> Session {
        let until = self.now_tick() + self.ticks(MOVE_GRACE_MS);
        let e = st.entry(target).expect("caller checked the key");
        // Shared subscriptions leave their groups now (the owner must stop
        // picking this location); the new owner of the session joins
        // again. Plain ones stay indexed here.
        let (shared, plain): (Vec<_>, Vec<_>) = e
            .session
            .subs
            .iter()
            .cloned()
            .partition(|(f, ..)| GroupKey::parse(f).is_some());
        let session = std::mem::take(&mut e.session);
        e.session.subs = plain.into();
        e.phase = Phase::Moved {
            to: Box::new(requester),
            until,
        };
        self.arm(st, until, target, Timer::Tombstone);
        let loc = Location {
            core: self.id,
            key: target,
        };
        for (f, ..) in shared {
            if let Some(g) = GroupKey::parse(&f) {
                self.share_leave(st, g, loc);
            }
        }
        session
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
    pub(super) fn dispatch_handover(&self, st: &mut CoreState, reply: Reply, remote: bool) {
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
    pub(super) fn on_handover(
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
            let to = *next;
            self.close_arrivals(st, target);
            let Some(e) = st.entry(target) else { return };
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
            self.dispatch_handover(st, Some((to, session)), remote);
            return;
        }
        let mut session = session;
        let mut info = info;
        if info.stale_handover {
            // Forget the stale copy without writing: the store holds the
            // session as its last owner left it.
            if let Some(stale) = session.as_mut() {
                if let Some(d) = stale.durable.take() {
                    info!(client_id = %d.client_id, "dropping this node's stale copy of the session for the store's");
                }
            }
            session = info.from_store.take();
        }
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

    /// Installs the session (restored or new) and sends the CONNACK that
    /// `mqtt::connack` prepared, with Session Present.
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
        // The claim's epoch owns the session from now on (a session handed
        // over in memory kept its sequence numbers).
        e.session.durable = match (info.durable, e.session.durable.take()) {
            (Some(mut new), Some(old)) => {
                new.last_seq = new.last_seq.max(old.last_seq);
                Some(new)
            }
            (new, _) => new,
        };
        if let (Some(_), Some(client_id)) = (&e.session.durable, &e.client_id) {
            // Back here: what reaches this node for it from now on is
            // delivered here, not handed on.
            self.node.departures.forget(client_id);
        }
        let subs = e.session.subs.clone();
        for (filter, opts, id) in &subs {
            self.index_sub(st, filter, key, *opts, *id, None);
        }
        let now = self.now();
        let e = st.entry(key).expect("caller checked the key");
        let Some(link) = e.link.as_mut() else {
            // The client went away while its session was being fetched:
            // what reached the core meanwhile waits offline with the rest.
            self.replay_arrivals(st, key);
            self.park_or_end(st, key, None);
            return;
        };
        self.handshake_over(link);
        // A client refused while its claim's lost answer was asked for
        // (`mqtt::on_claim_unanswered`) and not yet gone: it has its
        // CONNACK, and its close parks the session.
        if !link.closing() {
            let mut connack = info.connack;
            connack.session_present = session_present;
            link.control(Packet::ConnAck(connack));
            // MQTT 4.4: resend unacknowledged PUBLISH (DUP) and PUBREL first.
            for f in e.session.inflight.iter() {
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
        }
        let keep_alive_ticks = link.keep_alive_ticks;
        link.last_seen = now.tick;
        if let Some(link) = e.link.as_ref() {
            self.announce(ConnEventKind::Connect, e, link);
        }
        // After the CONNACK and the resends: what reached the core while
        // the session was being claimed.
        self.replay_arrivals(st, key);
        let e = st.entry(key).expect("caller checked the key");
        let id = e.id;
        pump(e, self.stats(), || now.at);
        bump(&self.stats().connects, 1);
        debug!(conn = %id, session_present, "session active");
        // One wheel timer per connection: the CONNECT deadline armed at
        // accept is still pending (timers are never cancelled), and when it
        // fires on an active connection it checks the keep-alive instead
        // (`timers.rs`). Only a keep-alive shorter than the CONNECT timeout
        // needs a timer of its own, to be checked on time.
        let keep_alive_ticks = u64::from(keep_alive_ticks);
        if keep_alive_ticks > 0 && keep_alive_ticks < self.ticks(self.cfg.mqtt.connect_timeout_ms) {
            self.arm(st, now.tick + keep_alive_ticks, key, Timer::KeepAlive);
        }
    }

    /// Sends a message that matched a tombstone on to the session's new core.
    pub(super) fn forward_out(&self, to: Location, d: Delivery) {
        bump(&self.stats().forwarded_after_move, 1);
        super::hop(&d);
        self.route(to.core, CoreMsg::Forward { target: to.key, d });
    }

    /// A forwarded message for a session that moved here.
    pub(super) fn forward_in(&self, st: &mut CoreState, target: ConnKey, d: Delivery) {
        let stats = self.stats();
        let Some(e) = st.entry(target) else {
            bump(&stats.dropped_session_gone, 1);
            return;
        };
        match e.phase {
            // It moved on again (a chain of takeovers): follow it.
            Phase::Moved { ref to, .. } if to.core == self.id => {
                let to = **to;
                self.forward_in(st, to.key, d)
            }
            Phase::Moved { ref to, .. } => {
                let to = **to;
                super::hop(&d);
                self.route(to.core, CoreMsg::Forward { target: to.key, d })
            }
            // Forwards travel behind the handover, so these cannot hold a
            // session being moved here; count rather than assume.
            Phase::AwaitingHandover { .. }
            | Phase::AwaitingVerdict { .. }
            | Phase::Connecting
            | Phase::TakenOver => {
                bump(&stats.dropped_session_gone, 1);
            }
            Phase::Active | Phase::Offline { .. } => {
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
                    let now = self.clock().instant();
                    let CoreState { conns, journal, .. } = &mut *st;
                    let e = &mut conns[target.index as usize];
                    let deliver =
                        |e: &mut super::Entry, d| offer_forwarded(e, d, &self.cfg, stats, now);
                    count(self.mirror(journal, e, d, deliver), stats);
                } else {
                    bump(&stats.forwards_discarded, 1);
                }
            }
        }
    }

    /// The old core stopped forwarding to the session at `target`.
    pub(super) fn forward_end(&self, st: &mut CoreState, target: ConnKey) {
        let Some(e) = st.entry(target) else { return };
        match e.phase {
            // Moved on within this core: the window travelled with it.
            Phase::Moved { ref to, .. } if to.core == self.id => {
                let to = **to;
                self.forward_end(st, to.key)
            }
            // Moved on to another core: this core's own tombstone sends
            // that core its end marker when it expires.
            Phase::Moved { .. }
            | Phase::AwaitingHandover { .. }
            | Phase::AwaitingVerdict { .. }
            | Phase::Connecting
            | Phase::TakenOver => {}
            Phase::Active | Phase::Offline { .. } => {
                let now = self.clock().instant();
                release_window(e, &self.cfg, self.stats(), now);
            }
        }
    }
}
