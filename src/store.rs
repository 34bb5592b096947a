//! The session store interface and its in-memory implementation.
//!
//! The store is the node's *directory* of client ids: which core (and slab
//! entry) currently owns each client's session. It is consulted only when a
//! client connects or a session ends, never per message. Session contents
//! (subscriptions, queued and in-flight messages) live on the owning core and
//! move between cores by message passing on takeover.
//!
//! [`SessionStore`] is the seam for the Redis-backed store: it will keep the
//! same directory (plus durable QoS 1 queues) in Redis, driven from a bridge
//! thread, so a client reconnecting to another node finds its session.

use std::sync::Mutex;

use ahash::AHashMap;

use crate::id::Location;

/// Directory of client sessions.
pub trait SessionStore: Send + Sync + 'static {
    /// Records that `client_id` is now owned by `loc` and returns the previous
    /// owner, if any. Atomic: of two concurrent claims, one sees the other.
    fn claim(&self, client_id: &str, loc: Location) -> Option<Location>;
    /// Forgets `client_id` only if `loc` still owns it (compare-and-remove),
    /// so a session ending late cannot erase its successor's claim.
    fn release(&self, client_id: &str, loc: Location) -> bool;
    /// The current owner of `client_id`.
    fn locate(&self, client_id: &str) -> Option<Location>;
}

/// Number of lock shards; connect storms on many cores rarely contend.
const SHARDS: usize = 64;

/// In-memory directory: a sharded hash map.
pub struct MemoryStore {
    shards: Vec<Mutex<AHashMap<Box<str>, Location>>>,
    hasher: ahash::RandomState,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            // Sized once (see limits::MAX_RESERVED_SLOTS); with_capacity
            // touches one control byte per bucket, not the buckets.
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(AHashMap::with_capacity(
                        crate::limits::connection_slots() / SHARDS,
                    ))
                })
                .collect(),
            hasher: ahash::RandomState::new(),
        }
    }
}

impl MemoryStore {
    fn shard(&self, client_id: &str) -> std::sync::MutexGuard<'_, AHashMap<Box<str>, Location>> {
        let shard = &self.shards[self.hasher.hash_one(client_id) as usize % SHARDS];
        // A panic while holding the lock cannot leave the map half-updated
        // (each operation is a single insert/remove), so poison is ignored.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SessionStore for MemoryStore {
    fn claim(&self, client_id: &str, loc: Location) -> Option<Location> {
        self.shard(client_id).insert(client_id.into(), loc)
    }

    fn release(&self, client_id: &str, loc: Location) -> bool {
        let mut map = self.shard(client_id);
        if map.get(client_id) == Some(&loc) {
            map.remove(client_id);
            true
        } else {
            false
        }
    }

    fn locate(&self, client_id: &str) -> Option<Location> {
        self.shard(client_id).get(client_id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ConnKey;

    fn loc(core: usize, index: u32) -> Location {
        Location {
            core,
            key: ConnKey { index, gen: 1 },
        }
    }

    #[test]
    fn claim_returns_previous_and_release_is_compare_and_remove() {
        let s = MemoryStore::default();
        assert_eq!(s.claim("c", loc(0, 1)), None);
        assert_eq!(s.claim("c", loc(1, 2)), Some(loc(0, 1)));
        assert!(!s.release("c", loc(0, 1)), "stale owner cannot release");
        assert_eq!(s.locate("c"), Some(loc(1, 2)));
        assert!(s.release("c", loc(1, 2)));
        assert_eq!(s.locate("c"), None);
    }
}
