//! [`ConnMut`]: one connection of this core, looked up once.
//!
//! A packet names its connection by [`ConnKey`]; finding the entry is a
//! slab index and a generation compare. The handlers used to find it again
//! at every step, because every step took the whole [`CoreState`]: a plain
//! PUBACK was looked up four times (the phase check, the settle, the
//! store's forget, the decision to read on). `ConnMut` borrows the entry
//! *beside* the parts of the core's state that a connection's own work
//! touches (the journal for the store, the table of pending requests, the
//! retained replica it reads before taking a retained message), so
//! those steps share one lookup and the connection-scoped operations are
//! its methods: `ack_publish`, `hold_ack`, `confirm_for`, `publish_out`
//! (`acks.rs`), `journal_for`, `forget` (`durable.rs`).
//!
//! What has to see *every* connection (a fan-out, which may deliver to the
//! publisher itself; a takeover; a close) takes `CoreState` whole. A
//! handler ends its `ConnMut` before such a step and takes another after
//! it: a QoS 1 PUBLISH that is routed costs two lookups, one before the
//! fan-out and one for its ack.

use super::retained::Replica;
use super::{CoreState, Entry, Link, Pending, Phase};
use crate::id::ConnKey;
use crate::notify::Notify;
use crate::store::StoreOp;

#[cfg(test)]
thread_local! {
    /// Entry lookups made on this thread: the tests hold the handlers to
    /// their lookup budget with it (`mqtt/tests.rs`). Test builds only.
    static LOOKUPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Entry lookups made on this thread so far (test builds).
#[cfg(test)]
pub(crate) fn lookups() -> u64 {
    LOOKUPS.with(std::cell::Cell::get)
}

/// The entry `key` points to in `conns`, unless its slot was reused: for
/// callers that borrow other parts of [`CoreState`] beside it.
#[inline]
pub(crate) fn entry_in(conns: &mut slab::Slab<Entry>, key: ConnKey) -> Option<&mut Entry> {
    #[cfg(test)]
    LOOKUPS.with(|n| n.set(n.get() + 1));
    conns
        .get_mut(key.index as usize)
        .filter(|e| e.gen == key.gen)
}

/// One connection of a core with the parts of the core's state its own
/// work writes, borrowed side by side ([`CoreState::conn`]).
pub struct ConnMut<'a> {
    /// The connection's key.
    pub key: ConnKey,
    /// Its entry: session, phase, live link.
    pub entry: &'a mut Entry,
    /// The core's writes for the durable store.
    pub(super) journal: &'a mut Vec<StoreOp>,
    /// The core's requests waiting on bridge threads.
    pub(super) pending: &'a mut Pending,
    /// The core's replica of the retained messages, read to refuse a
    /// retained PUBLISH the full store would not take.
    pub retained: &'a Replica,
}

impl CoreState {
    /// The connection `key` points to, unless its slot was reused: one
    /// lookup for everything the caller does with it until the handle is
    /// dropped.
    #[inline]
    pub fn conn(&mut self, key: ConnKey) -> Option<ConnMut<'_>> {
        let CoreState {
            conns,
            journal,
            pending,
            retained,
            ..
        } = self;
        Some(ConnMut {
            key,
            entry: entry_in(conns, key)?,
            journal,
            pending,
            retained,
        })
    }
}

impl ConnMut<'_> {
    /// The live connection, if there is one.
    #[inline]
    pub fn link(&mut self) -> Option<&mut Link> {
        self.entry.link.as_mut()
    }

    /// Whether the connection has not been accepted yet (no CONNACK).
    #[inline]
    pub fn connecting(&self) -> bool {
        matches!(self.entry.phase, Phase::Connecting)
    }

    /// Whether the requests waiting on bridge threads have room for one
    /// more of `kind`.
    pub fn has_room(&self, kind: super::PendingKind) -> bool {
        self.pending.has_room(kind)
    }

    /// Files `w` among the core's requests waiting on bridge threads;
    /// `None` when its kind has no room.
    pub fn insert_pending(&mut self, w: super::Waiting) -> Option<u32> {
        self.pending.insert(w)
    }

    /// Queues `op` for the store; the core's journal task is woken when the
    /// journal was empty.
    pub(super) fn journal(&mut self, ready: &Notify, op: StoreOp) {
        push_op(self.journal, ready, op);
    }
}

/// Queues `op` in a core's `journal`, waking its journal task (`ready`)
/// when the journal was empty. Consecutive acknowledgements of one session
/// become one write.
pub(super) fn push_op(journal: &mut Vec<StoreOp>, ready: &Notify, op: StoreOp) {
    if journal.is_empty() {
        ready.notify();
    }
    if let (
        Some(StoreOp::Forget { session, seqs }),
        StoreOp::Forget {
            session: s2,
            seqs: more,
        },
    ) = (journal.last_mut(), &op)
    {
        if *session == *s2 {
            seqs.extend_from_slice(more);
            return;
        }
    }
    journal.push(op);
}
