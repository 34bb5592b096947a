//! Mirroring sessions in a durable store (the Redis store), and the store's
//! notices to the core.
//!
//! While it handles an event, a core *journals* what changed in its
//! mirrored sessions ([`StoreOp`]): a message entering a session, a packet
//! id it went out with, an acknowledgement, a subscription, the session
//! going offline or ending. The journal is handed to the store once per
//! executor turn by the core's journal task (`runtime.rs`), so writes
//! batch without waiting. Nothing is journaled for clean sessions, nor at
//! all with the memory store.
//!
//! A message that enters a session is numbered by the session (`seq`),
//! never by packet id. When its publisher waits for durability, the
//! message's `Confirm` is held for the write and released by the store.

use std::sync::Arc;

use tracing::info;

use super::delivery::{offer, Offer};
use super::{ConnMut, Core, CoreState, Entry, Link, Now, Phase};
use crate::bridge::Kick;
use crate::codec::{reason, QoS};
use crate::id::{ConnId, ConnKey, GroupKey, TRANSPORT_NAMES};
use crate::session::{Delivery, Durable};
use crate::stats::bump;
use crate::store::{Presence, SessionRef, StoreOp};

/// The store's address of a mirrored session.
pub(super) fn session_ref(d: &Durable) -> SessionRef {
    SessionRef {
        client_id: d.client_id.clone(),
        epoch: d.epoch,
    }
}

impl Core {
    /// Whether this core mirrors sessions at all (a durable store).
    pub fn mirrors(&self) -> bool {
        self.durability.is_some()
    }

    /// Queues a write for the store.
    pub(crate) fn journal(&self, st: &mut CoreState, op: StoreOp) {
        super::conn::push_op(&mut st.journal, &self.journal_ready, op);
    }

    /// The journal, for the store (the core's journal task).
    pub fn take_journal(&self) -> Vec<StoreOp> {
        std::mem::take(&mut self.st.borrow_mut().journal)
    }

    /// Offers `d` to the session of `e` through the delivery policy,
    /// numbering and journaling it when the session is mirrored.
    pub(super) fn offer_mirrored(
        &self,
        journal: &mut Vec<StoreOp>,
        e: &mut Entry,
        d: Delivery,
        now: Now,
    ) -> Offer {
        self.mirror(journal, e, d, |e, d| {
            offer(e, d, &self.cfg, self.stats(), now)
        })
    }

    /// Hands `d` to `deliver` (a delivery-policy entry point); when the
    /// session is mirrored and the message goes in (sent, queued or held),
    /// numbers it and journals it, holding its publisher's confirm.
    pub(super) fn mirror(
        &self,
        journal: &mut Vec<StoreOp>,
        e: &mut Entry,
        mut d: Delivery,
        deliver: impl FnOnce(&mut Entry, Delivery) -> Offer,
    ) -> Offer {
        if d.msg.again {
            if let Some(seq) = e.session.seq_of(d.msg.id) {
                // Queued here already when it was first offered, but not
                // stored: store that copy (its place in the queue kept),
                // not a second one.
                if let (Some(dur), true) = (e.session.durable.as_deref(), seq > 0) {
                    d.seq = seq;
                    self.journal_put(journal, session_ref(dur), d);
                }
                return Offer::Duplicate;
            }
            // Taken here already on an earlier offer (sent, and perhaps
            // acknowledged): one more copy would be a duplicate.
            if let Some(dur) = e.session.durable.as_deref_mut() {
                if dur.took_again(d.msg.id) {
                    return Offer::Duplicate;
                }
            }
        }
        let mirrored = match e.session.durable.as_deref_mut() {
            Some(dur) if d.qos != QoS::AtMostOnce => {
                d.seq = dur.next_seq();
                Some((session_ref(dur), d.clone()))
            }
            _ => None,
        };
        let outcome = deliver(e, d);
        if let (Some((session, d)), Offer::Sent | Offer::Queued | Offer::Held) =
            (mirrored, &outcome)
        {
            self.journal_put(journal, session, d);
        }
        outcome
    }

    /// Journals message `d` entering `session`, holding its publisher's
    /// confirm until the write lands.
    fn journal_put(&self, journal: &mut Vec<StoreOp>, session: SessionRef, d: Delivery) {
        if let Some(c) = &d.msg.confirm {
            c.hold();
        }
        super::conn::push_op(journal, &self.journal_ready, StoreOp::Put { session, d });
    }

    /// Whether the node's lease still holds the durable session `d` (in
    /// the term it was claimed in).
    pub(super) fn holds(&self, d: &Durable) -> bool {
        self.holds_term(d.lease_term)
    }

    /// Whether the node's lease still holds in `term`.
    pub(super) fn holds_term(&self, term: u64) -> bool {
        self.node
            .store
            .lease()
            .is_none_or(|lease| lease.holds(term))
    }

    /// The presence entry of a connection with a user name, when the
    /// store tracks users (a durable store, or a per-user limit) or the
    /// connection's grants set its user's limit.
    pub(super) fn presence(
        &self,
        link: &Link,
        client_id: &Arc<str>,
        conn: ConnId,
    ) -> Option<Presence> {
        let limit = link.grants().and_then(|g| g.max_connections);
        if !self.node.store.tracks_users() && limit.is_none() {
            return None;
        }
        let user = link.username.clone()?;
        let since_ms = link.since_ms;
        Some(Presence {
            user,
            client_id: client_id.clone(),
            conn,
            transport: TRANSPORT_NAMES[usize::from(link.transport) % TRANSPORT_NAMES.len()],
            since_ms,
            limit,
        })
    }

    /// Refreshes the presence leases of this core's connections in slot
    /// `part` of `parts` (slab index modulo `parts`): called once a second
    /// with the next part, every entry is refreshed once per lease, spread
    /// evenly instead of in one burst.
    pub fn refresh_presence(&self, part: usize, parts: usize) {
        if !self.mirrors() {
            return;
        }
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let mut ops = Vec::new();
        for (index, e) in st.conns.iter() {
            if index % parts.max(1) != part || !matches!(e.phase, Phase::Active) {
                continue;
            }
            let (Some(link), Some(cid)) = (e.link.as_ref(), e.client_id.as_ref()) else {
                continue;
            };
            if let Some(presence) = self.presence(link, cid, e.id) {
                ops.push(StoreOp::Refresh { presence });
            }
        }
        for op in ops {
            self.journal(st, op);
        }
    }

    /// The durable session of `e` leaves this node for another (taken over
    /// there, or fenced), node `to` if known: copies of the cluster bus on
    /// their way here for it are handed on ([`crate::bridge::departures`]).
    /// Its plain QoS 1 and 2 subscriptions are what it was sent copies
    /// for; a shared group is served by any member, and QoS 0 promises
    /// nothing.
    fn depart(&self, e: &Entry, to: Option<u16>) {
        let departures = &self.node.departures;
        let (true, Some(client_id), Some(_)) = (
            departures.is_on(),
            e.client_id.as_ref(),
            e.session.durable.as_ref(),
        ) else {
            return;
        };
        let filters = e
            .session
            .subs
            .iter()
            .filter(|(f, opts, _)| opts.qos != QoS::AtMostOnce && GroupKey::parse(f).is_none())
            .map(|(f, ..)| Arc::from(&**f))
            .collect();
        departures.record(client_id, filters, crate::wallclock::now_ms(), to);
    }

    /// The store refused a write of `client_id` at `epoch`: a newer claim
    /// owns the session. If it is here, its connection closes with 0x8E
    /// and the session is forgotten here without writing.
    pub fn on_fenced(&self, client_id: &str, epoch: u64) {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let Some(key) = self.local_session(client_id) else {
            return;
        };
        let Some(e) = st.entry(key) else { return };
        if e.session.durable.as_ref().is_none_or(|d| d.epoch != epoch) {
            return;
        }
        info!(conn = %e.id, client_id, "session owned by a newer connection elsewhere; closing (0x8E)");
        bump(&self.stats().takeovers, 1);
        self.depart(e, None);
        e.session.durable = None;
        match e.link.as_mut() {
            Some(link) => {
                let code = link.version.is_v5().then_some(reason::SESSION_TAKEN_OVER);
                // What is queued goes nowhere: the session belongs to the
                // newer connection, which loaded what the store holds.
                link.request_close_why(code, true, Some("session taken over on another node"));
                // Ends with the connection, not kept offline: it lives on
                // elsewhere.
                e.session.expiry_secs = 0;
            }
            None => self.end_session(st, key),
        }
    }

    /// The slab key of `client_id`'s session if this core holds it.
    fn local_session(&self, client_id: &str) -> Option<ConnKey> {
        self.node
            .store
            .locate(client_id)
            .filter(|l| l.core == self.id)
            .map(|l| l.key)
    }

    /// Closes the connection `conn` of `client_id` (taken over on another
    /// node, evicted by its user's limit, kicked by an administrator).
    /// With `handoff_to`, a claim on that node waits for the session: it is
    /// told ([`StoreOp::Handed`]) once the close's writes are journaled, or
    /// at once if there is nothing here to close.
    pub fn kick_client(&self, client_id: &str, kick: &Kick) -> bool {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let closing = self.close_kicked(st, client_id, kick);
        if let (false, Some(to), Some(conn)) = (closing, kick.handoff_to, kick.conn) {
            self.journal(
                st,
                StoreOp::Handed {
                    client_id: client_id.into(),
                    conn,
                    to,
                },
            );
        }
        closing
    }

    /// [`Core::kick_client`]'s work: whether a connection is now closing.
    fn close_kicked(&self, st: &mut CoreState, client_id: &str, kick: &Kick) -> bool {
        let &Kick {
            conn,
            code,
            why,
            handoff_to,
            taken_by,
        } = kick;
        let Some(key) = self.local_session(client_id) else {
            return false;
        };
        let Some(e) = st.entry(key) else {
            return false;
        };
        if conn.is_some_and(|c| c != e.id) {
            return false;
        }
        let before_connack = match e.phase {
            // Asked to let go of a session that is offline already: its
            // release is journaled; the claim that follows forgets it.
            Phase::Offline { .. } if handoff_to.is_some() => return false,
            Phase::Offline { .. } if code == reason::SESSION_TAKEN_OVER => {
                // Resumed on another node: this offline copy is stale.
                // Forget it without writing (the store holds the live one).
                info!(conn = %e.id, client_id, "session resumed on another node; forgetting the offline copy");
                self.depart(e, taken_by);
                e.session.durable = None;
                self.end_session(st, key);
                return false;
            }
            Phase::Active => false,
            // Kicked while its own claim is still on its way back (the
            // newer claim's kick overtook it): no CONNACK went out, so the
            // socket just closes; the claim's answer finds no link.
            Phase::AwaitingVerdict { .. } | Phase::AwaitingHandover { .. } => true,
            _ => return false,
        };
        if e.link.is_none() {
            return false;
        }
        info!(conn = %e.id, client_id, reason = format_args!("{code:#04x}"), "closing: {why}");
        // A handover flushes first (the claim waits for it). A session
        // taken over already belongs to the newer connection: nothing
        // queued here is written any more.
        let taken = handoff_to.is_none() && code == reason::SESSION_TAKEN_OVER;
        if taken {
            self.depart(e, taken_by);
        }
        let Some(link) = e.link.as_mut() else {
            return false;
        };
        let code = link
            .version
            .is_v5()
            .then_some(code)
            .filter(|_| !before_connack);
        if handoff_to.is_some() {
            link.rare().handoff_to = handoff_to;
        }
        link.request_close_why(code, taken, Some(why));
        true
    }
}

impl ConnMut<'_> {
    /// The store forgets message `seq` of this session (it was
    /// acknowledged, or given back).
    pub(crate) fn forget(&mut self, core: &Core, seq: u64) {
        if seq == 0 {
            return;
        }
        self.journal_for(core, |session| StoreOp::Forget {
            session,
            seqs: vec![seq],
        });
    }

    /// The client's QoS 2 publish `pkid` now awaits its PUBREL: recorded in
    /// the session and journaled.
    pub(crate) fn await_pubrel(&mut self, core: &Core, pkid: u16) {
        self.entry.session.incoming_qos2.push(pkid);
        self.journal_for(core, |session| StoreOp::Incoming {
            session,
            pkid,
            add: true,
        });
    }

    /// Journals `op` built from this session, if it is mirrored.
    pub(crate) fn journal_for(&mut self, core: &Core, op: impl FnOnce(SessionRef) -> StoreOp) {
        let session = self.entry.session.durable.as_deref().map(session_ref);
        if let Some(session) = session {
            self.journal(&core.journal_ready, op(session));
        }
    }
}
