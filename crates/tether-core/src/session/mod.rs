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
mod receipt;
mod thin;

use std::collections::VecDeque;
use std::sync::Arc;

use crate::codec::SubOptions;

pub use frame::{AckKind, Frame};
pub use message::{sub_ids, Confirm, ConfirmDone, Delivery, Message, Publication, Scope, SubIds};
pub use move_window::{MoveWindow, MAX_RECENT_IDS};
pub use receipt::{report, Outcome, Receipt, ReceiptRecord, ReceiptSink, Receipts, ReceiptsTo};
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

/// How far packet id `id` comes after `from` in hand-out order (ids cycle
/// through 1..=65535; 0 is never used).
fn pkid_offset(from: u16, id: u16) -> u32 {
    (u32::from(id) + 65_535 - u32::from(from)) % 65_535
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
    /// The window's packet ids may not be in the order they were handed
    /// out, oldest first (a restored window, or ids that wrapped past the
    /// oldest one): [`Session::next_pkid`] then scans the window. Cleared
    /// when the window empties.
    pkids_shuffled: bool,
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
    /// The node's lease term the claim was made in: the session is served
    /// only while the lease holds in it (`store::Lease`).
    pub lease_term: u64,
    /// The nodes that owned the session before this claim (its last few
    /// moves, oldest first), and when it left each: copies sent to one of
    /// them before then are this session's too ([`Scope::Orphan`]). Empty
    /// for most sessions (no allocation).
    pub came_from: Vec<Arrival>,
    /// Messages offered again (`Message::again`) that this session took
    /// as new copies, newest last, at most [`RETAKEN_MAX`]: a later offer
    /// of one of them is a duplicate. Empty (no allocation) unless the
    /// store refused messages the session was offered.
    pub retaken: Vec<u64>,
}

/// Most ids a durable session remembers of messages offered again. A
/// record that was not stored is offered again every few hundred ms to 2 s
/// until it is; without this memory each offer delivered it once more to
/// a session that had already taken it, and under a lasting store failure
/// those duplicates filled the session's queue to its limit and had the
/// subscriber disconnected with what was queued (issue 28, sixth session).
/// 1,024 ids cover the records of more than one retry round (8 KiB).
pub const RETAKEN_MAX: usize = 1024;

/// Where a persistent session was before a claim brought it here, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// The previous owner's node id (this node's own, for a session its
    /// earlier life owned).
    pub node: u16,
    /// When the claim took it, ms since the Unix epoch.
    pub at_ms: u64,
}

impl Arrival {
    /// Whether a copy sent to `node` at `sent_ms` was meant for this
    /// session: it came from that node, and the copy was sent before it
    /// left (or so soon after that the sender still routed it there).
    pub fn missed(&self, node: u16, sent_ms: u64) -> bool {
        self.node == node && sent_ms <= self.at_ms + HAND_ON_MARGIN_MS
    }
}

/// How long after a session left a node a copy sent there is still its
/// own: the time other nodes may go on routing its copies there, until
/// they read the announcement of its new node (a fetch of the interest
/// topic: milliseconds, seconds while Kafka is slow), with room for clock
/// skew between the nodes (record timestamps are the sender's clock).
pub const HAND_ON_MARGIN_MS: u64 = 10_000;

impl Durable {
    /// The next message's sequence number.
    pub fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// Whether message `id`, offered again, was taken here before as a new
    /// copy; remembers it otherwise (see [`Durable::retaken`]).
    pub fn took_again(&mut self, id: u64) -> bool {
        if self.retaken.contains(&id) {
            return true;
        }
        if self.retaken.len() >= RETAKEN_MAX {
            self.retaken.remove(0);
        }
        self.retaken.push(id);
        false
    }
}

impl Session {
    /// The sequence number of the copy of message `id` this session holds
    /// (queued or in flight), if it holds one. A scan: asked only for a
    /// message offered again (`Message::again`).
    pub fn seq_of(&self, id: u64) -> Option<u64> {
        self.queued
            .iter()
            .chain(self.inflight.iter().map(|f| &f.d))
            .find(|d| d.msg.id == id)
            .map(|d| d.seq)
    }

    /// Continues packet ids after `last`, for a session restored from the
    /// store (so resent ids are not reused at once).
    pub fn set_last_pkid(&mut self, last: u16) {
        self.last_pkid = last;
        // Restored from the store: in whatever order it kept them.
        self.pkids_shuffled = true;
    }

    /// Frees whichever of the session's queues is empty: called where they
    /// drain (an acknowledgement, a written outbox), so an idle session
    /// holds no queue memory.
    pub fn settle(&mut self) {
        self.inflight.release();
        self.queued.release();
        self.incoming_qos2.release();
    }

    /// Allocates the next free packet id; ids cycle through 1..=65535 so a
    /// just-freed id is not reused at once.
    ///
    /// Ids are handed out in order and the window keeps its entries oldest
    /// first, so while the window's ids are in that order, an id outside
    /// the span from the oldest to the newest is free without looking
    /// further: one comparison per message instead of a scan of the whole
    /// window (the scan was 6 % of a core in the flat-out fan-out profile,
    /// bench/RESULTS.md). The scan remains for a window whose ids wrapped
    /// past its oldest or came back from the store.
    pub fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.wrapping_add(1).max(1);
            let id = self.last_pkid;
            if !self.may_hold(id) || !self.inflight.iter().any(|e| e.pkid == id) {
                return id;
            }
        }
    }

    /// Whether an in-flight entry may carry `id` (see [`Session::next_pkid`]).
    fn may_hold(&self, id: u16) -> bool {
        let (Some(oldest), Some(newest)) = (self.inflight.front(), self.inflight.back()) else {
            return false;
        };
        self.pkids_shuffled || pkid_offset(oldest.pkid, id) <= pkid_offset(oldest.pkid, newest.pkid)
    }

    /// Adds a message just sent with a packet id from
    /// [`Session::next_pkid`] to the window, noting when its id does not
    /// follow the newest one in hand-out order.
    pub fn push_inflight(&mut self, f: Inflight) {
        if let (Some(oldest), Some(newest)) = (self.inflight.front(), self.inflight.back()) {
            if pkid_offset(oldest.pkid, f.pkid) <= pkid_offset(oldest.pkid, newest.pkid) {
                self.pkids_shuffled = true;
            }
        }
        self.inflight.push_back(f);
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
        if self.inflight.is_empty() {
            self.pkids_shuffled = false;
        }
        self.inflight.release();
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;

    fn entry(pkid: u16) -> Inflight {
        let p = Publication {
            topic: "t".into(),
            payload: bytes::Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            origin: None,
        };
        let msg = Arc::new(Message::new(1, p, std::time::Instant::now()));
        Inflight {
            pkid,
            d: Delivery::new(msg, QoS::AtLeastOnce, false, None),
            released: false,
        }
    }

    fn send(s: &mut Session) -> u16 {
        let id = s.next_pkid();
        s.push_inflight(entry(id));
        id
    }

    #[test]
    fn a_message_offered_again_is_taken_once_more_at_most() {
        let mut d = Durable {
            client_id: "dev".into(),
            epoch: 1,
            last_seq: 0,
            lease_term: 0,
            came_from: Vec::new(),
            retaken: Vec::new(),
        };
        assert!(!d.took_again(7), "the first offer again is a new copy");
        assert!(d.took_again(7), "the next ones are duplicates");
        for id in 100..100 + RETAKEN_MAX as u64 {
            d.took_again(id);
        }
        assert_eq!(d.retaken.len(), RETAKEN_MAX, "bounded");
        assert!(!d.took_again(7), "the oldest id was forgotten first");
    }

    #[test]
    fn packet_ids_skip_every_id_in_flight_even_after_a_full_cycle() {
        let mut s = Session::default();
        let stuck = send(&mut s);
        assert_eq!(stuck, 1);
        // 65,534 more messages come and go while the first stays in flight:
        // the ids wrap and must step over it.
        let mut seen = Vec::new();
        for _ in 0..65_534 + 10 {
            let id = send(&mut s);
            assert_ne!(id, stuck, "an id still in flight was handed out again");
            seen.push(id);
            s.take_inflight(id, |_| true).expect("it was just sent");
        }
        assert_eq!(seen[65_533], 65_535);
        assert_eq!(seen[65_534], 2, "after 65,535 comes 2: 1 is in flight");
        // The window holds ids in hand-out order again once it drains.
        s.take_inflight(stuck, |_| true).unwrap();
        assert!(!s.pkids_shuffled);
    }

    #[test]
    fn a_restored_window_is_scanned_for_every_id() {
        let mut s = Session::default();
        // Restored out of hand-out order: 7 after 9.
        for id in [5, 9, 7] {
            s.inflight.push_back(entry(id));
        }
        s.set_last_pkid(4);
        let ids: Vec<u16> = (0..4).map(|_| send(&mut s)).collect();
        assert_eq!(ids, vec![6, 8, 10, 11]);
    }

    #[test]
    fn ids_in_order_with_gaps_are_handed_out_without_reuse() {
        let mut s = Session::default();
        let ids: Vec<u16> = (0..5).map(|_| send(&mut s)).collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        // Acks from the middle and the end leave the oldest in flight.
        for id in [3, 5] {
            s.take_inflight(id, |_| true).unwrap();
        }
        assert_eq!(send(&mut s), 6);
        assert!(!s.pkids_shuffled);
    }
}
