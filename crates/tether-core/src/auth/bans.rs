//! Failed logins per source address (`auth.ban_after_failures`): after that
//! many refusals of bad credentials from one address within
//! `auth.ban_window_secs`, its CONNECTs get CONNACK 0x8A (Banned; 3.1.1:
//! not authorized) for `auth.ban_secs`, before any authenticator is asked.
//!
//! One table for the node: the kernel spreads one address's connections
//! over the cores by port, so a table per core would let an address fail
//! `ban_after_failures` times on every core. It is split in [`SHARDS`]
//! locks by address, taken once per CONNECT (never on the message path),
//! so cores rarely meet on one. Times are the node's clock
//! (`NodeState::started`), in ms.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use ahash::AHashMap;

/// Addresses the node tracks at most. Past it, expired entries are swept,
/// and while still full a new address is not tracked (so a flood of
/// addresses cannot grow the table without bound).
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Locks the table is split in, by address.
pub const SHARDS: usize = 16;

/// One address's record.
#[derive(Debug, Clone, Copy)]
struct Strikes {
    /// Failures in the current window.
    failures: u32,
    /// When the window began (node clock, ms).
    since_ms: u64,
    /// Banned until then (0: not banned).
    until_ms: u64,
}

/// The node's table of failed logins.
#[derive(Debug)]
pub struct Bans {
    shards: [Mutex<AHashMap<IpAddr, Strikes>>; SHARDS],
    hasher: ahash::RandomState,
    /// Failures that start a ban; 0: off. The three limits change on
    /// SIGHUP ([`Bans::set`]), hence atomics.
    after: AtomicU32,
    window_ms: AtomicU64,
    ban_ms: AtomicU64,
}

impl Bans {
    /// A table with the `[auth]` limits.
    pub fn new(after: u32, window_secs: u64, ban_secs: u64) -> Bans {
        Bans {
            shards: Default::default(),
            hasher: ahash::RandomState::new(),
            after: AtomicU32::new(after),
            window_ms: AtomicU64::new(window_secs * 1000),
            ban_ms: AtomicU64::new(ban_secs * 1000),
        }
    }

    /// New limits (SIGHUP): they apply to the next failure; bans already
    /// running keep their end.
    pub fn set(&self, after: u32, window_secs: u64, ban_secs: u64) {
        self.after.store(after, Relaxed);
        self.window_ms.store(window_secs * 1000, Relaxed);
        self.ban_ms.store(ban_secs * 1000, Relaxed);
    }

    /// `ip`'s shard (a panic while holding it cannot leave a record half
    /// written, so poison is ignored).
    fn shard(&self, ip: &IpAddr) -> std::sync::MutexGuard<'_, AHashMap<IpAddr, Strikes>> {
        let i = self.hasher.hash_one(ip) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `ip` is banned at `now_ms`.
    pub fn banned(&self, ip: IpAddr, now_ms: u64) -> bool {
        self.after.load(Relaxed) > 0
            && self
                .shard(&ip)
                .get(&ip)
                .is_some_and(|s| now_ms < s.until_ms)
    }

    /// One more refusal of bad credentials from `ip`; true when it starts
    /// a ban.
    pub fn failed(&self, ip: IpAddr, now_ms: u64) -> bool {
        let (after, window_ms) = (self.after.load(Relaxed), self.window_ms.load(Relaxed));
        if after == 0 {
            return false;
        }
        let mut table = self.shard(&ip);
        let full = MAX_TRACKED_ADDRESSES / SHARDS;
        if table.len() >= full && !table.contains_key(&ip) {
            table.retain(|_, s| now_ms < s.until_ms || now_ms < s.since_ms + window_ms);
            if table.len() >= full {
                return false;
            }
        }
        let s = table.entry(ip).or_insert(Strikes {
            failures: 0,
            since_ms: now_ms,
            until_ms: 0,
        });
        if now_ms >= s.since_ms + window_ms {
            s.failures = 0;
            s.since_ms = now_ms;
        }
        s.failures += 1;
        if s.failures >= after && now_ms >= s.until_ms {
            s.until_ms = now_ms + self.ban_ms.load(Relaxed);
            s.failures = 0;
            s.since_ms = now_ms;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_banned_after_its_failures_and_freed_after_the_ban() {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let other: IpAddr = "10.0.0.8".parse().unwrap();
        let b = Bans::new(3, 60, 300);
        assert!(!b.failed(ip, 0));
        assert!(!b.failed(ip, 1_000));
        assert!(!b.banned(ip, 1_000));
        assert!(b.failed(ip, 2_000), "the third failure bans");
        assert!(b.banned(ip, 2_001));
        assert!(!b.banned(other, 2_001), "only that address");
        assert!(b.banned(ip, 301_999));
        assert!(!b.banned(ip, 302_000), "the ban ends");
        // Failures spread wider than the window never add up.
        let b = Bans::new(3, 60, 300);
        for t in [0, 61_000, 122_000, 183_000] {
            assert!(!b.failed(ip, t));
        }
        assert!(!Bans::new(0, 60, 300).failed(ip, 0), "0: off");
    }
}
