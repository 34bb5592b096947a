//! Failed logins per source address (`auth.ban_after_failures`): after that
//! many refusals of bad credentials from one address within
//! `auth.ban_window_secs`, its CONNECTs get CONNACK 0x8A (Banned; 3.1.1:
//! not authorized) for `auth.ban_secs`, before any authenticator is asked.
//!
//! Each core keeps its own table (no state shared between cores on the
//! CONNECT path). The kernel spreads one address's connections over the
//! cores by port, so an address may fail up to `ban_after_failures` times
//! per core before it is banned everywhere it goes: the bound is per core,
//! which the defaults allow for.

use std::net::IpAddr;

use ahash::AHashMap;

/// Addresses a core tracks at most. Past it, expired entries are swept,
/// and while still full a new address is not tracked (so a flood of
/// addresses cannot grow the table without bound).
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// One address's record.
#[derive(Debug, Clone, Copy)]
struct Strikes {
    /// Failures in the current window.
    failures: u32,
    /// When the window began (core clock, ms).
    since_ms: u64,
    /// Banned until then (0: not banned).
    until_ms: u64,
}

/// A core's table of failed logins.
#[derive(Debug)]
pub struct Bans {
    table: AHashMap<IpAddr, Strikes>,
    /// Failures that start a ban; 0: off.
    after: u32,
    window_ms: u64,
    ban_ms: u64,
}

impl Bans {
    /// A table with the `[auth]` limits.
    pub fn new(after: u32, window_secs: u64, ban_secs: u64) -> Bans {
        Bans {
            table: AHashMap::new(),
            after,
            window_ms: window_secs * 1000,
            ban_ms: ban_secs * 1000,
        }
    }

    /// Whether `ip` is banned at `now_ms`.
    pub fn banned(&self, ip: IpAddr, now_ms: u64) -> bool {
        self.after > 0 && self.table.get(&ip).is_some_and(|s| now_ms < s.until_ms)
    }

    /// One more refusal of bad credentials from `ip`; true when it starts
    /// a ban.
    pub fn failed(&mut self, ip: IpAddr, now_ms: u64) -> bool {
        if self.after == 0 {
            return false;
        }
        if self.table.len() >= MAX_TRACKED_ADDRESSES && !self.table.contains_key(&ip) {
            let window = self.window_ms;
            self.table
                .retain(|_, s| now_ms < s.until_ms || now_ms < s.since_ms + window);
            if self.table.len() >= MAX_TRACKED_ADDRESSES {
                return false;
            }
        }
        let s = self.table.entry(ip).or_insert(Strikes {
            failures: 0,
            since_ms: now_ms,
            until_ms: 0,
        });
        if now_ms >= s.since_ms + self.window_ms {
            s.failures = 0;
            s.since_ms = now_ms;
        }
        s.failures += 1;
        if s.failures >= self.after && now_ms >= s.until_ms {
            s.until_ms = now_ms + self.ban_ms;
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
        let mut b = Bans::new(3, 60, 300);
        assert!(!b.failed(ip, 0));
        assert!(!b.failed(ip, 1_000));
        assert!(!b.banned(ip, 1_000));
        assert!(b.failed(ip, 2_000), "the third failure bans");
        assert!(b.banned(ip, 2_001));
        assert!(!b.banned(other, 2_001), "only that address");
        assert!(b.banned(ip, 301_999));
        assert!(!b.banned(ip, 302_000), "the ban ends");
        // Failures spread wider than the window never add up.
        let mut b = Bans::new(3, 60, 300);
        for t in [0, 61_000, 122_000, 183_000] {
            assert!(!b.failed(ip, t));
        }
        assert!(!Bans::new(0, 60, 300).failed(ip, 0), "0: off");
    }
}
