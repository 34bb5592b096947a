//! Identities: slab keys with generations, and cluster-unique connection ids.

use std::fmt;

/// Index of a connection entry in its core's slab plus the generation the
/// entry was created with. A freed slot gets a new generation when reused,
/// so anything still holding the old key (a timer, a takeover request, a
/// subscription) misses instead of reaching the new occupant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub index: u32,
    pub gen: u32,
}

/// Cluster-unique connection id `n{node}.c{core}.{seq}`, shown in every log
/// line about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub node: u16,
    pub core: u16,
    pub seq: u64,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}.c{}.{}", self.node, self.core, self.seq)
    }
}

/// Where a client's session lives inside this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub core: usize,
    pub key: ConnKey,
}

/// The core that owns a string key: sequences writes to a retained topic,
/// runs a shared-subscription group, counts a user's connections. A fixed
/// hash (FNV-1a), so every core computes the same owner without asking.
pub fn owner_core(key: &str, cores: usize) -> usize {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01B3);
    }
    (h % cores as u64) as usize
}
