//! What a client keeps across connections and what travels to it: the
//! [`Session`] (subscriptions, in-flight and queued messages, QoS 2 receive
//! state), the [`Message`] with its one constructor, the per-subscriber
//! [`Delivery`], the outbox [`Frame`], a moved-in session's [`MoveWindow`]
//! and the outbound topic aliases. Plain data: the rules that act on it
//! (window, queue limits, expiry) are the core's delivery policy
//! (`shard::delivery`).

pub mod alias;
mod frame;
mod message;
mod move_window;
mod thin;

use std::collections::VecDeque;
use std::sync::Arc;

use crate::codec::SubOptions;

pub use frame::{AckKind, Frame};
pub use message::{sub_ids, Confirm, ConfirmDone, Delivery, Message, Publication, SubIds};
pub use move_window::{MoveWindow, MAX_RECENT_IDS};
pub use thin::Thin;

/// A message sent to the client and not yet fully acknowledged.
#[derive(Debug)]
pub struct Inflight {
    /// The packet id it was sent with.
    pub pkid: u16,
    /// What was sent.
    pub d: Delivery,
    /// QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP.
    pub released: bool,
}

/// One subscription of a session: filter (possibly `$share/...`), options,
/// and MQTT 5 subscription identifier (0: none).
pub type Subscription = (Box<str>, SubOptions, u32);

/// Everything of a session that survives its connection. Moves between
/// cores on takeover, so it holds only `Send` data.
#[derive(Debug, Default)]
pub struct Session {
    /// Subscriptions by filter, in subscribe order (a [`Thin`]: many
    /// clients subscribe to nothing).
    pub subs: Thin<Vec<Subscription>>,
    /// Sent, unacknowledged; oldest first (so acks usually hit the front).
    /// [`Thin`], like the next two: empty in an idle session, and then
    /// unallocated (see [`Session::settle`]).
    pub inflight: Thin<VecDeque<Inflight>>,
    /// QoS 1/2 messages not yet sent; bounded by `session.max_queued_messages`.
    pub queued: Thin<VecDeque<Delivery>>,
    /// Packet ids of QoS 2 publishes received and awaiting PUBREL: a DUP
    /// retransmission with one of these ids is acknowledged, not re-routed.
    pub incoming_qos2: Thin<Vec<u16>>,
    /// Seconds the session outlives its connection (0: ends with it).
    pub expiry_secs: u32,
    /// Set for a while after the session moved in from another core, while
    /// that core's tombstone still forwards (see [`MoveWindow`]).
    pub move_window: Option<Box<MoveWindow>>,
    /// Set when the session is mirrored in a durable store (persistent
    /// sessions with the Redis store).
    pub durable: Option<Box<Durable>>,
    last_pkid: u16,
}

/// What a session mirrored in the durable store needs to address it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durable {
    /// The client id, as the store keys it.
    pub client_id: Arc<str>,
    /// The fencing epoch of the claim that owns the session: every write
    /// carries it, and the store refuses writes of an older one.
    pub epoch: u64,
    /// Sequence number of the last message stored.
    pub last_seq: u64,
}

impl Durable {
    /// The next message's sequence number.
    pub fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }
}

impl Session {
    /// Continues packet ids after `last`, for a session restored from the
    /// store (so resent ids are not reused at once).
    pub fn set_last_pkid(&mut self, last: u16) {
        self.last_pkid = last;
    }

    /// Frees whichever of the session's queues is empty: called where they
    /// drain (an acknowledgement, a written outbox), so an idle session
    /// holds no queue memory.
    pub fn settle(&mut self) {
        self.inflight.release();
        self.queued.release();
        self.incoming_qos2.release();
    }

    /// Allocates the next free packet id. The window bounds `inflight`, so
    /// the scan is short; ids cycle so a just-freed id is not reused at once.
    pub fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.wrapping_add(1).max(1);
            let id = self.last_pkid;
            if !self.inflight.iter().any(|e| e.pkid == id) {
                return id;
            }
        }
    }

    /// Position of the subscription to exactly `filter`.
    pub fn subscription(&self, filter: &str) -> Option<usize> {
        self.subs.iter().position(|(f, ..)| &**f == filter)
    }

    /// Removes the in-flight entry `pkid` when its state matches `pred`.
    pub fn take_inflight(
        &mut self,
        pkid: u16,
        pred: impl Fn(&Inflight) -> bool,
    ) -> Option<Inflight> {
        let i = self
            .inflight
            .iter()
            .position(|e| e.pkid == pkid && pred(e))?;
        let taken = self.inflight.remove(i);
        self.inflight.release();
        taken
    }
}
