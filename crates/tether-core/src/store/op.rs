//! The writes a core sends a durable store for the sessions it mirrors,
//! and a connection's presence entry.
//!
//! A core journals these while it handles an event (a message offered, a
//! packet written, an acknowledgement, a subscription) and hands the
//! journal to [`SessionStore::write`](super::SessionStore::write) once per
//! executor turn, so writes are batched without waiting. Every write names
//! its session and the epoch of the claim that owns it; the store refuses
//! (and reports) the writes of a stale owner.

use std::sync::Arc;

use crate::codec::SubOptions;
use crate::id::ConnId;
use crate::session::{Confirm, Delivery};

/// Which stored session a write is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRef {
    /// The client id.
    pub client_id: Arc<str>,
    /// The fencing epoch of the owning claim.
    pub epoch: u64,
}

/// A connection's entry in the presence directory (user → connections).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The user name.
    pub user: Arc<str>,
    /// The client id of the connection.
    pub client_id: Arc<str>,
    /// The connection (its id names node and core).
    pub conn: ConnId,
    /// `mqtt`, `ws`, `mqtts` or `wss`.
    pub transport: &'static str,
    /// When it connected, Unix milliseconds.
    pub since_ms: u64,
    /// The user's connection limit its authenticator granted, instead of
    /// `limits.max_connections_per_user`.
    pub limit: Option<u32>,
}

/// One write for a mirrored session.
#[derive(Debug)]
pub enum StoreOp {
    /// A QoS 1/2 message entered the session (queued, held, or in flight
    /// with `pkid`). Its message's [`Confirm`], if any, was held for it.
    Put {
        /// The session.
        session: SessionRef,
        /// The message as this session gets it (`d.seq` set).
        d: Delivery,
    },
    /// The message `seq` was written to the client with `pkid`, or (QoS 2)
    /// released: its PUBREL was sent.
    Sent {
        /// The session.
        session: SessionRef,
        /// The message.
        seq: u64,
        /// Its packet id (a resend after reconnection keeps it).
        pkid: u16,
        /// PUBREC received, PUBREL sent.
        released: bool,
    },
    /// Acknowledged, expired or dropped: the store forgets these messages.
    Forget {
        /// The session.
        session: SessionRef,
        /// Their sequence numbers.
        seqs: Vec<u64>,
    },
    /// A subscription was added or replaced; with `confirm`, the SUBACK
    /// waits for it.
    Subscribe {
        /// The session.
        session: SessionRef,
        /// The filter, as subscribed (`$share/...` included).
        filter: Box<str>,
        /// Its options.
        opts: SubOptions,
        /// Its subscription identifier (0: none).
        id: u32,
        /// Released once stored.
        confirm: Option<Arc<Confirm>>,
    },
    /// A subscription was removed.
    Unsubscribe {
        /// The session.
        session: SessionRef,
        /// The filter.
        filter: Box<str>,
    },
    /// An inbound QoS 2 packet id awaits PUBREL (`add`), or was released.
    Incoming {
        /// The session.
        session: SessionRef,
        /// The packet id.
        pkid: u16,
        /// Added (PUBLISH) or removed (PUBREL).
        add: bool,
    },
    /// The connection went away; the session waits `expiry_secs` for its
    /// client, then the store forgets it.
    Release {
        /// The session.
        session: SessionRef,
        /// Its remaining life.
        expiry_secs: u32,
    },
    /// The session ended (expired, or taken over by a clean start): the
    /// store forgets it now.
    End {
        /// The session.
        session: SessionRef,
    },
    /// A clean session's connection closed. Its claim's epoch was never
    /// waited for, so this one is fenced by the connection instead: the
    /// store forgets the session only if `conn` still owns it.
    EndClean {
        /// The client.
        client_id: Arc<str>,
        /// The connection that owned it.
        conn: ConnId,
    },
    /// A connection with a user name closed: its presence entry goes.
    Left {
        /// The entry.
        presence: Presence,
    },
    /// A live connection's presence lease is extended (never re-created:
    /// an evicted entry stays gone). Each core refreshes its connections
    /// spread over one lease.
    Refresh {
        /// The entry.
        presence: Presence,
    },
    /// The connection `conn` of `client_id` was asked to hand its session
    /// to a claim on node `to`, and everything it wrote is journaled ahead
    /// of this: once this is applied, `to` is told it may claim.
    Handed {
        /// The client.
        client_id: Arc<str>,
        /// The connection that let go.
        conn: ConnId,
        /// The node waiting to claim.
        to: u16,
    },
}
