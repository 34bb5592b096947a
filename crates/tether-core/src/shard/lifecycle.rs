//! A connection's life on its core: registered when accepted, unregistered
//! when its socket is gone; a session parked offline or ended; shutdown.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;

use tracing::debug;

use super::durable::session_ref;
use super::{Core, CoreState, Entry, Link, PendingWill, Phase, Timer};
use crate::bridge::outbound::ConnEventKind;
use crate::codec::reason;
use crate::id::{ConnId, ConnKey, Location};
use crate::session::{report, Outcome, Session};
use crate::stats::bump;
use crate::store::StoreOp;

impl Core {
    /// Adds an accepted socket; arms the CONNECT deadline.
    pub fn register(&self, peer: SocketAddr, transport: u8) -> (ConnKey, ConnId) {
        let mut st = self.st.borrow_mut();
        let (gen, id) = self.next_entry(&mut st);
        let window = self.cfg.mqtt.inflight_window;
        let index = st.conns.insert(Entry {
            gen,
            id,
            client_id: None,
            phase: Phase::Connecting,
            session: Session::default(),
            link: Some(Link::new(peer, self.now_tick(), window, transport)),
        });
        st.links += 1;
        self.handshaking.set(self.handshaking.get() + 1);
        let key = ConnKey {
            index: index as u32,
            gen,
        };
        let deadline = self.now_tick() + self.ticks(self.cfg.mqtt.connect_timeout_ms);
        self.arm(&mut st, deadline, key, Timer::ConnectDeadline);
        self.stats().connections.fetch_add(1, Relaxed);
        bump(&self.stats().accepted, 1);
        (key, id)
    }

    /// The generation and the connection id of the next slab entry.
    pub(super) fn next_entry(&self, st: &mut CoreState) -> (u32, ConnId) {
        st.next_gen = st.next_gen.wrapping_add(1);
        st.next_seq += 1;
        let id = ConnId {
            node: self.node.node_id,
            core: self.id as u16,
            seq: st.next_seq,
        };
        (st.next_gen, id)
    }

    /// The connection task of `key` ended (socket closed).
    pub fn unregister(&self, key: ConnKey) {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let Some(e) = st.entry(key) else { return };
        let Some(mut link) = e.link.take() else {
            return;
        };
        self.handshake_over(&mut link);
        // A connection whose session became active had a connect event.
        if matches!(
            e.phase,
            Phase::Active | Phase::TakenOver | Phase::Moved { .. }
        ) {
            self.announce(ConnEventKind::Disconnect, e, &link);
        }
        let (claimed, conn) = (e.client_id.clone(), e.id);
        // Every claimed connection (the claim admitted its presence
        // entry), whatever became of its session.
        let left = e
            .client_id
            .as_ref()
            .and_then(|cid| self.presence(&link, cid, e.id));
        st.links -= 1;
        if let Some(user) = &link.username {
            self.count_user(st, user, -1);
        }
        if let Some(presence) = left {
            self.journal(st, StoreOp::Left { presence });
        }
        self.stats().connections.fetch_sub(1, Relaxed);
        let e = st.entry(key).expect("entry checked above");
        match e.phase {
            // A verdict still on its way finds no entry and is ignored.
            Phase::Connecting | Phase::AwaitingVerdict { .. } | Phase::TakenOver => {
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
                        Some(Box::new(PendingWill { will, at, origin }))
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
        // After the close's own writes (release, end): the claim waiting
        // on another node may now load the session.
        if let (Some(to), Some(client_id)) =
            (link.rare.as_ref().and_then(|r| r.handoff_to), claimed)
        {
            self.journal(
                st,
                StoreOp::Handed {
                    client_id,
                    conn,
                    to,
                },
            );
        }
        if st.links == 0 && self.shutting_down.get() {
            self.drained.notify();
        }
    }

    /// A session lost its connection: keep it offline or end it.
    pub(super) fn park_or_end(
        &self,
        st: &mut CoreState,
        key: ConnKey,
        will: Option<Box<PendingWill>>,
    ) {
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
        // The store keeps it as long as it waits here.
        let release = e.session.durable.as_deref().map(|d| StoreOp::Release {
            session: session_ref(d),
            expiry_secs: secs,
        });
        if let Some(op) = release {
            self.journal(st, op);
        }
        self.arm(st, expires_at, key, Timer::SessionExpiry);
        if let Some(at) = will_at.filter(|&at| at < expires_at) {
            self.arm(st, at, key, Timer::WillDelay);
        }
    }

    /// Removes a session entirely: subscriptions, directory entry, slab slot.
    pub(super) fn end_session(&self, st: &mut CoreState, key: ConnKey) {
        let Some(e) = st.entry(key) else { return };
        if let Phase::Offline { will, .. } = &mut e.phase {
            if let Some(w) = will.take() {
                // The session ends before the will delay ran out.
                self.publish_will(st, *w.will, Some(w.origin));
            }
        }
        let Some(e) = st.entry(key) else { return };
        // What it still held will reach nobody: counted, and reported to
        // the receipts of the messages that asked.
        let (queued, inflight) = (&e.session.queued, &e.session.inflight);
        let lost = queued.len() + inflight.len();
        if lost > 0 {
            bump(&self.stats().dropped_session_ended, lost as u64);
            let held = queued.iter().chain(inflight.iter().map(|f| &f.d));
            for d in held.filter(|d| d.receipts) {
                let outcome = Outcome::Dropped("session ended");
                report(&d.msg, e.client_id.as_ref(), None, outcome);
            }
        }
        let subs = std::mem::take(&mut e.session.subs);
        let client_id = e.client_id.clone();
        // The store forgets it too: fenced by epoch for a mirrored session,
        // by connection for a clean one (whose epoch nobody waited for).
        let end = match (e.session.durable.take(), &client_id) {
            (Some(d), _) => Some(StoreOp::End {
                session: session_ref(&d),
            }),
            (None, Some(cid)) if self.mirrors() => Some(StoreOp::EndClean {
                client_id: cid.clone(),
                conn: e.id,
            }),
            _ => None,
        };
        if let Some(op) = end {
            self.journal(st, op);
        }
        for (filter, ..) in &subs {
            self.unindex_sub(st, filter, key);
        }
        if let Some(cid) = client_id {
            self.node
                .store
                .release(&cid, Location { core: self.id, key });
        }
        st.conns.remove(key.index as usize);
        debug!(core = self.id, "session ended");
    }

    /// `link` is past its handshake (its session is active, or it closed):
    /// one fewer in progress; accept loops stopped at the cap resume.
    pub(super) fn handshake_over(&self, link: &mut Link) {
        if !std::mem::take(&mut link.handshaking) {
            return;
        }
        let n = self.handshaking.get() - 1;
        self.handshaking.set(n);
        // Below the cap (which a reload may have raised or lowered while a
        // loop waited): ring every listener's loop. A loop that is not
        // waiting only finds its flag set, re-checks and goes on.
        if n < self.handshake_cap() {
            for room in &self.handshake_room {
                room.notify();
            }
        }
    }

    /// `listeners.max_handshakes_per_core`, or `u32::MAX` when it is 0.
    fn handshake_cap(&self) -> u32 {
        match self.node.admission.max_handshakes_per_core.load(Relaxed) {
            0 => u32::MAX,
            n => n,
        }
    }

    /// Whether the core has as many handshakes in progress as
    /// `listeners.max_handshakes_per_core` allows: its accept loops wait
    /// (on [`Core::handshake_room`]) and new clients queue in the kernel's
    /// backlog, so a storm of TLS handshakes cannot starve the clients
    /// already connected.
    pub fn handshakes_full(&self) -> bool {
        self.handshaking.get() >= self.handshake_cap()
    }

    /// Whether the last timer tick ran later than
    /// `listeners.overload_lag_ms` (0: never overloaded): new CONNECTs are
    /// then refused with 0x89.
    pub fn overloaded(&self) -> bool {
        let limit = self
            .node
            .admission
            .overload_lag_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        limit > 0 && self.lag_ms.get() > limit
    }

    /// One step of a drain: asks up to `n` connections not yet closing to
    /// close (MQTT 5: DISCONNECT 0x9C with `drain.server_reference`, or 0x8B
    /// without one) and returns how many; `None` once no link is left.
    pub fn drain_step(&self, n: usize) -> Option<usize> {
        let mut st = self.st.borrow_mut();
        if st.links == 0 {
            return None;
        }
        let code = if self.cfg.drain.server_reference.is_empty() {
            reason::SERVER_SHUTTING_DOWN
        } else {
            reason::USE_ANOTHER_SERVER
        };
        let mut closed = 0;
        for (_, e) in st.conns.iter_mut() {
            if closed == n {
                break;
            }
            let Some(link) = e.link.as_mut().filter(|l| l.close.is_none()) else {
                continue;
            };
            link.request_settled_close(link.version.is_v5().then_some(code));
            closed += 1;
        }
        bump(&self.stats().drained, closed as u64);
        Some(closed)
    }

    /// Starts shutdown: every connection gets DISCONNECT 0x8B (v5).
    pub fn begin_shutdown(&self) {
        self.shutting_down.set(true);
        let mut st = self.st.borrow_mut();
        for (_, e) in st.conns.iter_mut() {
            if let Some(link) = e.link.as_mut() {
                let reason = link.version.is_v5().then_some(reason::SERVER_SHUTTING_DOWN);
                link.request_settled_close(reason);
            }
        }
        if st.links == 0 {
            self.drained.notify();
        }
    }
}
