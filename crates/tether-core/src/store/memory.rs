//! The in-memory session directory: a sharded hash table (each shard a
//! [`Directory`]), answering every claim at once. The default store, and the node-local directory of a
//! single node.
//!
//! With `limits.max_connections_per_user` (or a limit an authenticator
//! granted the user) it also admits connections per user, on this node:
//! one lock over the users' connection lists, taken only by CONNECTs under
//! a limit and by their closes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use ahash::AHashMap;

use super::directory::Directory;

use super::{Claim, ClaimResult, Claimed, Presence, SessionStore, StoreOp, UserLimit};
use crate::bridge::{Bridge, BridgeMsg, Kick};
use crate::codec::reason;
use crate::config::PerUserPolicy;
use crate::id::{ConnId, Location};

/// Number of lock shards; connect storms on many cores rarely contend.
const SHARDS: usize = 64;

/// In-memory directory: a sharded hash map.
pub struct MemoryStore {
    /// Keyed by the client id the session's entry holds (an `Arc` clone,
    /// not a copy of the string).
    shards: Vec<Mutex<Directory>>,
    hasher: ahash::RandomState,
    /// The per-user connection limits.
    users: Users,
}

/// A user's admitted connections, oldest first: (connection, client id).
type Admitted = VecDeque<(ConnId, Arc<str>)>;

/// `limits.max_connections_per_user` on one node.
struct Users {
    /// The configured limit (0: none; a granted limit may still apply) and
    /// policy.
    limit: UserLimit,
    /// Each user's admitted connections. An entry leaves when its
    /// connection closes ([`StoreOp::Left`]).
    admitted: Mutex<AHashMap<Arc<str>, Admitted>>,
    /// Where evictions are sent (set when the gateway starts).
    bridge: OnceLock<Arc<Bridge>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            // Sized once (see limits::MAX_RESERVED_SLOTS); with_capacity
            // touches one control byte per bucket, not the buckets.
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Directory::with_capacity(
                        crate::limits::connection_slots() / SHARDS,
                    ))
                })
                .collect(),
            hasher: ahash::RandomState::new(),
            users: Users {
                limit: UserLimit::default(),
                admitted: Mutex::default(),
                bridge: OnceLock::new(),
            },
        }
    }
}

impl MemoryStore {
    /// A directory that also holds each user to `max` connections on this
    /// node (0: no limit), by `policy`.
    pub fn with_user_limit(max: u32, policy: PerUserPolicy) -> MemoryStore {
        MemoryStore {
            users: Users {
                limit: UserLimit::new(max, policy),
                admitted: Mutex::default(),
                bridge: OnceLock::new(),
            },
            ..MemoryStore::default()
        }
    }

    /// Admits `p` under `max` connections: `false` when refused. Evicted
    /// connections are told to close (DISCONNECT 0x98 on MQTT 5).
    fn admit(&self, max: usize, p: &Presence) -> bool {
        let limit = &self.users;
        let mut evicted = Vec::new();
        {
            let mut admitted = limit.admitted.lock().unwrap_or_else(|e| e.into_inner());
            let list = admitted.entry(p.user.clone()).or_default();
            // The client's own earlier connection is being taken over: it
            // does not count.
            let counted = list.iter().filter(|(_, c)| *c != p.client_id).count();
            if counted >= max {
                if limit.limit.policy() == PerUserPolicy::Refuse {
                    return false;
                }
                let mut over = counted + 1 - max;
                list.retain(|(conn, c)| {
                    if over > 0 && *c != p.client_id {
                        over -= 1;
                        evicted.push((*conn, c.clone()));
                        return false;
                    }
                    true
                });
            }
            list.push_back((p.conn, p.client_id.clone()));
        }
        if let Some(bridge) = limit.bridge.get() {
            for (conn, client_id) in evicted {
                let msg = BridgeMsg::KickClient {
                    client_id,
                    kick: Kick {
                        conn: Some(conn),
                        code: reason::ADMINISTRATIVE_ACTION,
                        why: "over the user's connection limit",
                        handoff_to: None,
                        taken_by: None,
                    },
                };
                let _ = bridge.send(usize::from(conn.core), msg);
            }
        }
        true
    }
    /// Records that `client_id` lives at `loc` now: where it lived before.
    /// No limit applies (a cluster store decides limits cluster-wide and
    /// keeps its node-local directory here).
    pub fn place(&self, client_id: &Arc<str>, loc: Location) -> Option<Location> {
        let (hash, mut shard) = self.shard(client_id);
        shard.insert(hash, client_id, loc, |id| self.hasher.hash_one(id))
    }

    /// Undoes [`MemoryStore::place`] of a claim that was refused: if the
    /// directory still places `client_id` at `refused`, it goes back to
    /// `previous` (the session there stays where it was), or out.
    pub fn put_back(&self, client_id: &Arc<str>, refused: Location, previous: Option<Location>) {
        let (hash, mut shard) = self.shard(client_id);
        if shard.get(hash, client_id) != Some(refused) {
            return;
        }
        match previous {
            Some(loc) => {
                shard.insert(hash, client_id, loc, |id| self.hasher.hash_one(id));
            }
            None => shard.remove_if_at(hash, client_id, refused),
        }
    }

    /// The client id's hash and its shard, locked. The shard is picked by
    /// bits 32 and up, because the shard's table indexes by the low bits:
    /// picking by those would leave every shard's entries in 1 of 64
    /// buckets.
    fn shard(&self, client_id: &str) -> (u64, std::sync::MutexGuard<'_, Directory>) {
        let hash = self.hasher.hash_one(client_id);
        let shard = &self.shards[(hash >> 32) as usize % SHARDS];
        // A panic while holding the lock cannot leave the map half-updated
        // (each operation is a single insert/remove), so poison is ignored.
        (hash, shard.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl SessionStore for MemoryStore {
    fn claim(&self, claim: &Claim) -> Option<ClaimResult> {
        if let Some(p) = &claim.presence {
            let max = p.limit.unwrap_or(self.users.limit.max()) as usize;
            if max > 0 && !self.admit(max, p) {
                return Some(Ok(Claimed {
                    over_limit: true,
                    ..Default::default()
                }));
            }
        }
        Some(Ok(Claimed {
            previous: self.place(&claim.client_id, claim.loc),
            ..Default::default()
        }))
    }

    fn release(&self, client_id: &str, loc: Location) {
        let (hash, mut shard) = self.shard(client_id);
        shard.remove_if_at(hash, client_id, loc);
    }

    fn locate(&self, client_id: &str) -> Option<Location> {
        let (hash, shard) = self.shard(client_id);
        shard.get(hash, client_id)
    }

    fn tracks_users(&self) -> bool {
        self.users.limit.max() > 0
    }

    /// Between limits only: connections are tracked only while a limit is
    /// set (that is what keeps an unlimited node from paying for it), so
    /// turning the limit on would not count the users' connections already
    /// up, and turning it off would leave their entries behind.
    fn set_user_limit(&self, max: u32, policy: PerUserPolicy) -> Result<(), &'static str> {
        if (max == 0) != (self.users.limit.max() == 0) {
            return Err("with the memory store, turning the limit on or off needs a restart");
        }
        self.users.limit.set(max, policy);
        Ok(())
    }

    fn write(&self, ops: Vec<StoreOp>) {
        if !ops.iter().any(|op| matches!(op, StoreOp::Left { .. })) {
            return;
        }
        let mut admitted = self
            .users
            .admitted
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for op in ops {
            if let StoreOp::Left { presence: p } = op {
                if let Some(list) = admitted.get_mut(&p.user) {
                    list.retain(|(conn, _)| *conn != p.conn);
                    if list.is_empty() {
                        admitted.remove(&p.user);
                    }
                }
            }
        }
    }

    fn start(&self, bridge: Arc<Bridge>) {
        let _ = self.users.bridge.set(bridge);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_location as loc;

    fn claim(s: &MemoryStore, l: Location) -> Option<Location> {
        let c = Claim {
            client_id: "c".into(),
            loc: l,
            clean_start: false,
            persistent: true,
            expiry_secs: 60,
            conn: crate::id::ConnId {
                node: 1,
                core: 0,
                seq: 1,
            },
            presence: None,
            adopt: None,
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
