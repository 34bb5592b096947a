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

mod memory;

use std::sync::Arc;

use crate::bridge::{ReplyTo, Unanswered};
use crate::error::{Classify, Origin};
use crate::id::Location;

pub use memory::MemoryStore;

/// A connection asks to own `client_id`'s session.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The client id being claimed.
    pub client_id: Arc<str>,
    /// Where the claiming connection lives.
    pub loc: Location,
    /// The CONNECT's Clean Start: the previous state is not wanted.
    pub clean_start: bool,
}

/// A granted claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The previous owner on this node, if any: its core hands the session
    /// over in memory (and closes the old connection).
    pub previous: Option<Location>,
}

/// Why a store could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The store's service is unreachable or failing: CONNACK 0x88.
    Unavailable(String),
    /// The store dropped the request without answering.
    Abandoned,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable(why) => write!(f, "session store unavailable: {why}"),
            StoreError::Abandoned => f.write_str("the session store dropped the request"),
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
}
