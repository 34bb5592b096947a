//! The verdict cache shared by the authenticators whose checks are too
//! slow for a core (the users file's argon2id, the HTTP service).
//!
//! Keys are HMAC-SHA256 digests of the credentials under a key made at
//! start, so the cache never holds a password. The core reads it with
//! [`VerdictCache::peek`], which only `try_lock`s: a cache the auth thread
//! is writing is a miss, never a wait. The auth thread reads it again with
//! [`VerdictCache::get`] before it does the slow work, so requests that
//! queued behind a check of the same credentials are answered by it.
//!
//! The map is split in [`SHARDS`] locks by key, so the cores' lookups (one
//! per PUBLISH with the HTTP authorizer) rarely meet on one lock.
//!
//! Bounded: past [`MAX_VERDICTS`] entries, expired ones are swept, and if
//! none expired the oldest half of the shard goes (a flood of distinct
//! credentials cannot grow it without bound).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::hmac;

/// Verdicts remembered at most.
pub const MAX_VERDICTS: usize = 100_000;

/// Locks the map is split in: a power of two well above the core count,
/// so two cores looking up different keys seldom try the same lock.
pub const SHARDS: usize = 16;

/// A cache key: the digest of one set of credentials.
pub type Key = Vec<u8>;

/// What can be remembered: an answer that is an allow or a deny (which
/// picks its lifetime).
pub trait Outcome: Clone {
    /// Whether it admits.
    fn allowed(&self) -> bool;
}

impl Outcome for bool {
    fn allowed(&self) -> bool {
        *self
    }
}

/// One remembered verdict.
struct Remembered<V> {
    outcome: V,
    until: Instant,
}

/// Allow and deny verdicts with their own lifetimes.
pub struct VerdictCache<V = bool> {
    key: hmac::Key,
    shards: [Mutex<HashMap<Key, Remembered<V>>>; SHARDS],
    allow_ttl: Duration,
    deny_ttl: Duration,
    /// Verdicts found, by the core or the auth thread's second look.
    hits: AtomicU64,
    /// Cores' lookups that found nothing (the request went to the thread).
    misses: AtomicU64,
}

impl<V: Outcome> VerdictCache<V> {
    /// An empty cache with a fresh digest key.
    pub fn new(allow_ttl: Duration, deny_ttl: Duration) -> std::io::Result<VerdictCache<V>> {
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| std::io::Error::other("the system's random source failed"))?;
        Ok(VerdictCache {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            allow_ttl,
            deny_ttl,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// Hits and misses so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    fn counted(&self, found: Option<V>) -> Option<V> {
        if found.is_some() {
            self.hits.fetch_add(1, Relaxed);
        }
        found
    }

    /// The key of credentials given in `parts` (separated, so no two
    /// different sets run together into one).
    pub fn key_of(&self, parts: &[&[u8]]) -> Key {
        let mut ctx = hmac::Context::with_key(&self.key);
        for p in parts {
            ctx.update(&(p.len() as u64).to_le_bytes());
            ctx.update(p);
        }
        ctx.sign().as_ref().to_vec()
    }

    /// The shard of `key` (a digest: its first byte is uniform).
    fn shard(&self, key: &Key) -> &Mutex<HashMap<Key, Remembered<V>>> {
        &self.shards[usize::from(key.first().copied().unwrap_or(0)) % SHARDS]
    }

    fn fresh(map: &HashMap<Key, Remembered<V>>, key: &Key) -> Option<V> {
        map.get(key)
            .filter(|r| Instant::now() < r.until)
            .map(|r| r.outcome.clone())
    }

    /// On a core: the verdict if it is remembered and the lock is free
    /// (a miss is counted: the request goes to the auth thread).
    pub fn peek(&self, key: &Key) -> Option<V> {
        let found = self
            .shard(key)
            .try_lock()
            .ok()
            .and_then(|m| Self::fresh(&m, key));
        if found.is_none() {
            self.misses.fetch_add(1, Relaxed);
        }
        self.counted(found)
    }

    /// On the auth thread: the verdict if it is remembered.
    pub fn get(&self, key: &Key) -> Option<V> {
        let found = self
            .shard(key)
            .lock()
            .ok()
            .and_then(|m| Self::fresh(&m, key));
        self.counted(found)
    }

    /// Remembers a verdict for its lifetime.
    pub fn put(&self, key: Key, outcome: V) {
        let ttl = if outcome.allowed() {
            self.allow_ttl
        } else {
            self.deny_ttl
        };
        let Ok(mut map) = self.shard(&key).lock() else {
            return;
        };
        if map.len() >= MAX_VERDICTS / SHARDS {
            let now = Instant::now();
            map.retain(|_, r| now < r.until);
            if map.len() >= MAX_VERDICTS / SHARDS {
                let mut by_age: Vec<(Instant, Key)> =
                    map.iter().map(|(k, r)| (r.until, k.clone())).collect();
                by_age.sort_unstable();
                for (_, k) in by_age.into_iter().take(MAX_VERDICTS / SHARDS / 2) {
                    map.remove(&k);
                }
            }
        }
        map.insert(
            key,
            Remembered {
                outcome,
                until: Instant::now() + ttl,
            },
        );
    }

    /// Forgets everything (the credentials behind it changed).
    pub fn clear(&self) {
        for shard in &self.shards {
            if let Ok(mut map) = shard.lock() {
                map.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_live_for_their_own_ttl_and_keys_do_not_run_together() {
        let c: VerdictCache = VerdictCache::new(Duration::from_secs(60), Duration::ZERO).unwrap();
        let ann = c.key_of(&[b"ann", b"pw"]);
        assert_ne!(ann, c.key_of(&[b"annp", b"w"]), "parts are separated");
        assert_eq!(c.peek(&ann), None);
        c.put(ann.clone(), true);
        assert_eq!(c.peek(&ann), Some(true));
        let bad = c.key_of(&[b"ann", b"guess"]);
        c.put(bad.clone(), false);
        assert_eq!(c.get(&bad), None, "a deny TTL of 0 remembers nothing");
        c.clear();
        assert_eq!(c.get(&ann), None);
        assert_eq!(
            c.counts(),
            (1, 1),
            "one hit (peek), one miss (the first peek)"
        );
    }
}
