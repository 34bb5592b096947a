//! The session directory: which core (and slab entry) owns each client id.
//!
//! It is consulted only when a client connects or a session ends, never per
//! message. Session contents (subscriptions, queued and in-flight messages)
//! live on the owning core and move between cores by message passing on
//! takeover.
//!
//! A claim is a request and a later answer, so a store behind a bridge
//! thread (Redis) never makes a core wait: [`SessionStore::claim`] answers
//! at once when it can (the [`MemoryStore`] always does) or returns `None`,
//! and the core then calls [`SessionStore::claim_later`] with a
//! [`ReplyTo`]. Meanwhile the connection waits in its handover phase,
//! reading nothing, and the core serves everyone else. Release is
//! fire-and-forget.

mod directory;
mod lease;
mod memory;
mod op;

use std::sync::Arc;

use crate::bridge::{oneshot, Bridge, ReplyTo, Unanswered};
use crate::config::{Durability, PerUserPolicy};
use crate::error::{Classify, Origin};
use crate::id::{ConnId, Location};
use crate::session::{Durable, Session};
use crate::stats::Histogram;

pub use lease::Lease;
pub use memory::MemoryStore;

/// A place in the directory, for the directory's and the memory store's
/// tests.
#[cfg(test)]
pub(crate) fn test_location(core: usize, index: u32) -> Location {
    Location {
        core,
        key: crate::id::ConnKey { index, gen: 1 },
    }
}
pub use op::{Presence, SessionRef, StoreOp};

/// A connection asks to own `client_id`'s session.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The client id being claimed.
    pub client_id: Arc<str>,
    /// Where the claiming connection lives.
    pub loc: Location,
    /// The CONNECT's Clean Start: the previous state is not wanted.
    pub clean_start: bool,
    /// The session outlives its connection (expiry > 0): a durable store
    /// mirrors it, and a claim loads what it had.
    pub persistent: bool,
    /// The session's expiry as its CONNECT granted it (s): a durable
    /// store records it for the session's adoption after a crash.
    pub expiry_secs: u32,
    /// The claiming connection's id.
    pub conn: ConnId,
    /// Its presence entry, when it gave a user name.
    pub presence: Option<Presence>,
    /// Not a client's: this node adopts a session its earlier life owned
    /// (`bridge::adoption`), which the claim takes only if no other node
    /// claimed it since. The ticket is dropped with the claim.
    pub adopt: Option<Arc<crate::bridge::adoption::Ticket>>,
}

/// A granted claim.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The previous owner on this node, if any: its core hands the session
    /// over in memory (and closes the old connection).
    pub previous: Option<Location>,
    /// The fencing epoch of this claim (0 for a store that does not fence).
    pub epoch: u64,
    /// The session as the durable store had it, for a persistent session
    /// with no previous owner on this node (`None`: nothing stored; the
    /// client is told Session Present 0).
    pub restored: Option<Box<Session>>,
    /// Where the durable store keeps the session from now on (a persistent
    /// session with a durable store).
    pub durable: Option<Durable>,
    /// Refused by the per-user connection limit (policy `refuse`).
    pub over_limit: bool,
    /// The session `previous` holds on this node is stale: another node
    /// claimed it since (this node's lease lapsed meanwhile, and the kick
    /// that said so was lost). Its old connection is taken over as usual,
    /// but its session is dropped and `restored` used instead.
    pub stale_previous: bool,
    /// The connection was admitted under its user's connection limit in
    /// this lease term of the node (`store::Lease`): it is served only
    /// while the lease holds in it.
    pub counted_in: Option<u64>,
    /// An adopted session's expiry, as the store has it (an adoption has
    /// no CONNECT to say it).
    pub expiry_secs: Option<u32>,
}

/// Why a store could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The store's service is unreachable or failing: CONNACK 0x88.
    Unavailable(String),
    /// The store dropped the request without answering.
    Abandoned,
    /// A newer claim owns the session: this one's writes are refused (or,
    /// for an adoption, another node claimed it since).
    Stale,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable(why) => write!(f, "session store unavailable: {why}"),
            StoreError::Abandoned => f.write_str("the session store dropped the request"),
            StoreError::Stale => f.write_str("a newer connection owns the session"),
        }
    }
}

impl std::error::Error for StoreError {}

impl Classify for StoreError {
    fn origin(&self) -> Origin {
        Origin::Bridge
    }
}

/// The answer to a [`Claim`].
pub type ClaimResult = Result<Claimed, StoreError>;

impl Unanswered for ClaimResult {
    fn unanswered() -> Self {
        Err(StoreError::Abandoned)
    }
}

/// `limits.max_connections_per_user` and `limits.per_user_policy`, read on
/// every claim (not kept from the start-time `Config`) so SIGHUP can change
/// them for a running node.
#[derive(Debug, Default)]
pub struct UserLimit {
    max: std::sync::atomic::AtomicU32,
    refuse: std::sync::atomic::AtomicBool,
}

impl UserLimit {
    /// The configured values.
    pub fn new(max: u32, policy: PerUserPolicy) -> UserLimit {
        let l = UserLimit::default();
        l.set(max, policy);
        l
    }

    /// Puts new values in force for the next claim.
    pub fn set(&self, max: u32, policy: PerUserPolicy) {
        use std::sync::atomic::Ordering::Relaxed;
        self.max.store(max, Relaxed);
        self.refuse.store(policy == PerUserPolicy::Refuse, Relaxed);
    }

    /// Connections a user may hold (0: no limit).
    pub fn max(&self) -> u32 {
        self.max.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What happens to the connection over the limit.
    pub fn policy(&self) -> PerUserPolicy {
        if self.refuse.load(std::sync::atomic::Ordering::Relaxed) {
            PerUserPolicy::Refuse
        } else {
            PerUserPolicy::EvictOldest
        }
    }
}

/// Directory of client sessions.
pub trait SessionStore: Send + Sync + 'static {
    /// Records that `claim.client_id` is now owned by `claim.loc`, and
    /// answers with the previous owner; or `None` to answer later through
    /// [`SessionStore::claim_later`]. Claims are serialised per client id:
    /// of two concurrent claims, one sees the other.
    fn claim(&self, claim: &Claim) -> Option<ClaimResult>;

    /// The slow path after `claim` returned `None`, called while the core
    /// has room for one more pending claim (otherwise the client gets
    /// CONNACK 0x89). Must not block. The default answers
    /// [`StoreError::Unavailable`].
    fn claim_later(&self, claim: Claim, reply: ReplyTo<ClaimResult>) {
        let _ = claim;
        reply.send(Err(StoreError::Unavailable(
            "this store answers every claim at once".into(),
        )));
    }

    /// Forgets `client_id` only if `loc` still owns it (compare-and-remove),
    /// so a session ending late cannot erase its successor's claim. Must not
    /// block.
    fn release(&self, client_id: &str, loc: Location);

    /// The owner of `client_id` on this node, if any (the HTTP API's
    /// client queries; never called on a core's message path).
    fn locate(&self, client_id: &str) -> Option<Location>;

    /// Whether persistent sessions are mirrored in the store, and when a
    /// publisher's acknowledgement may go out; `None` (the default): the
    /// store keeps nothing beyond the node, and no [`StoreOp`] is written.
    fn durability(&self) -> Option<Durability> {
        None
    }

    /// Whether the store keeps track of each user's connections (presence,
    /// the per-user limit) even if it mirrors no session: then every claim
    /// carries its [`Presence`] and every close writes [`StoreOp::Left`].
    fn tracks_users(&self) -> bool {
        self.durability().is_some()
    }

    /// Puts new `[limits]` per-user values in force for the claims that
    /// follow (SIGHUP). `Err` says why this store cannot change them while
    /// running.
    fn set_user_limit(&self, max: u32, policy: PerUserPolicy) -> Result<(), &'static str> {
        let _ = (max, policy);
        Err("this session store keeps no per-user limit")
    }

    /// Writes for mirrored sessions, applied in order per session. Must not
    /// block: queue them for the store's own thread.
    fn write(&self, ops: Vec<StoreOp>) {
        drop(ops);
    }

    /// Starts the store's own thread, if it has one; `bridge` reaches the
    /// cores (to close a connection whose session a newer claim took).
    fn start(&self, bridge: Arc<Bridge>) {
        drop(bridge);
    }

    /// Flushes what is queued and stops the store's thread.
    fn stop(&self) {}

    /// The store's own figures for `/metrics`.
    fn figures(&self) -> Vec<Figure> {
        Vec::new()
    }

    /// Latency of the store's requests, when it makes any.
    fn latency(&self) -> Option<&Histogram> {
        None
    }

    /// The node's lease on the durable sessions it owns (see [`Lease`]);
    /// `None` (the default): a store that keeps nothing beyond the node
    /// needs none.
    fn lease(&self) -> Option<&Lease> {
        None
    }

    /// Whether the store knows the whole cluster (presence, sessions on
    /// other nodes); only then is [`SessionStore::lookup`] asked.
    fn cluster(&self) -> bool {
        false
    }

    /// Answers a question about the cluster through its reply. The default
    /// drops it (the asker then answers from this node alone).
    fn lookup(&self, q: Lookup) {
        drop(q);
    }
}

pub use crate::stats::Figure;

/// A connection in the cluster's presence directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The client id.
    pub client_id: String,
    /// The connection (its id names node and core).
    pub conn: ConnId,
    /// `mqtt`, `ws`, `mqtts` or `wss`.
    pub transport: String,
    /// When it connected, Unix ms.
    pub since_ms: u64,
}

/// A session as the cluster's store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// The owning connection (node, core).
    pub conn: Option<ConnId>,
    /// A connection is attached (and its node is alive).
    pub online: bool,
    /// Its user name.
    pub user: Option<String>,
    /// Subscriptions: filter and granted QoS.
    pub subscriptions: Vec<(String, u8)>,
    /// Messages stored for it, queued or in flight.
    pub messages: usize,
    /// Of those, sent and not yet acknowledged.
    pub inflight: usize,
}

/// A question about the whole cluster, from the HTTP API.
#[derive(Debug)]
pub enum Lookup {
    /// A user's live connections on every live node.
    User {
        /// The user name.
        user: String,
        /// The answer.
        reply: oneshot::Sender<Result<Vec<Connection>, StoreError>>,
    },
    /// A client's session, wherever it is.
    Client {
        /// The client id.
        client_id: String,
        /// The answer (`None`: no such session).
        reply: oneshot::Sender<Result<Option<StoredSession>, StoreError>>,
    },
    /// Disconnect a client wherever it is connected (reason 0x98).
    Kick {
        /// The client id.
        client_id: String,
        /// Whether a live connection was told to close.
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// Reserves an idempotency key for the request that first uses it, or
    /// says what the key already holds.
    IdempotencyBegin {
        /// The key, as the backend sent it (`Idempotency-Key`).
        key: String,
        /// What the request was (a digest of its path and body): a key
        /// sent again with another request is refused.
        fingerprint: String,
        /// How long the reservation holds if the request never ends (its
        /// node died): then a retry may run it again.
        reserve_ms: u64,
        /// The answer.
        reply: oneshot::Sender<Result<Idempotency, StoreError>>,
    },
    /// Ends the request that reserved an idempotency key: its answer is
    /// kept for the rest of the window, or, with no answer (nothing was
    /// delivered), the key is freed for a retry to try again.
    IdempotencyEnd {
        /// The key.
        key: String,
        /// The reserving request's fingerprint (a key another request
        /// reserved since is left alone).
        fingerprint: String,
        /// The answer to replay to retries, or `None` to free the key.
        answer: Option<String>,
        /// How long the answer is kept, from now.
        window_ms: u64,
        /// Done (or why not).
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// What an idempotency key holds when a request begins with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idempotency {
    /// It was free; this request has it now and must end it.
    Reserved,
    /// Another request has it, still running (`answer: None`) or answered.
    Held {
        /// That request's fingerprint.
        fingerprint: String,
        /// Its answer, once it has one.
        answer: Option<String>,
    },
}
