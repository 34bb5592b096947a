//! The in-memory session directory: a sharded hash map, answering every
//! claim at once. The default store, and the node-local directory of a
//! single node.

use std::sync::Mutex;

use ahash::AHashMap;

use super::{Claim, ClaimResult, Claimed, SessionStore};
use crate::id::Location;

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
    fn claim(&self, claim: &Claim) -> Option<ClaimResult> {
        let previous = self
            .shard(&claim.client_id)
            .insert((*claim.client_id).into(), claim.loc);
        Some(Ok(Claimed {
            previous,
            ..Default::default()
        }))
    }

    fn release(&self, client_id: &str, loc: Location) {
        let mut map = self.shard(client_id);
        if map.get(client_id) == Some(&loc) {
            map.remove(client_id);
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

    fn claim(s: &MemoryStore, l: Location) -> Option<Location> {
        let c = Claim {
            client_id: "c".into(),
            loc: l,
            clean_start: false,
            persistent: true,
            conn: crate::id::ConnId {
                node: 1,
                core: 0,
                seq: 1,
            },
            presence: None,
        };
        s.claim(&c).expect("answers at once").unwrap().previous
    }

    #[test]
    fn claim_returns_previous_and_release_is_compare_and_remove() {
        let s = MemoryStore::default();
        assert_eq!(claim(&s, loc(0, 1)), None);
        assert_eq!(claim(&s, loc(1, 2)), Some(loc(0, 1)));
        s.release("c", loc(0, 1));
        assert_eq!(s.locate("c"), Some(loc(1, 2)), "stale owner cannot release");
        s.release("c", loc(1, 2));
        assert_eq!(s.locate("c"), None);
    }
}
