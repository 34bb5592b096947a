//! Identities: slab keys with generations, cluster-unique connection ids,
//! message ids and who minted them, where a session lives,
//! shared-subscription groups, and which core owns a string key.

use std::fmt;
use std::sync::Arc;

/// Index of a connection entry in its core's slab plus the generation the
/// entry was created with. A freed slot gets a new generation when reused,
/// so anything still holding the old key (a timer, a takeover request, a
/// subscription) misses instead of reaching the new occupant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    /// Slot in the core's slab.
    pub index: u32,
    /// Generation of the entry in that slot.
    pub gen: u32,
}

/// Cluster-unique connection id `n{node}.c{core}.{seq}`, shown in every log
/// line about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// `node.id` of the process.
    pub node: u16,
    /// The core that accepted the connection.
    pub core: u16,
    /// Per-core sequence of accepted connections.
    pub seq: u64,
}

impl ConnId {
    /// Reads back the `n{node}.c{core}.{seq}` form.
    pub fn parse(s: &str) -> Option<ConnId> {
        let mut parts = s.split('.');
        let node = parts.next()?.strip_prefix('n')?.parse().ok()?;
        let core = parts.next()?.strip_prefix('c')?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(ConnId { node, core, seq })
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}.c{}.{}", self.node, self.core, self.seq)
    }
}

/// Names of the transports, by `net::Transport::index` (also the
/// `transport` of presence entries and the `listener` label of metrics).
/// `http` is the HTTP fallback's sessions (SSE and long-polling, served on
/// the WebSocket listener).
pub const TRANSPORT_NAMES: [&str; 5] = ["mqtt", "ws", "mqtts", "wss", "http"];

/// Where a publish or subscription request comes from (the authorizer
/// sees it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An MQTT client, on one of the listeners.
    Client,
    /// The HTTP API (already past its bearer tokens).
    Api,
    /// A bridge thread (a Kafka source).
    Bridge,
}

/// Where a client's session lives inside this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// The core whose slab holds the session.
    pub core: usize,
    /// Its entry in that slab.
    pub key: ConnKey,
}

/// Identifies a shared-subscription group (`$share/{group}/{filter}`):
/// the messages of a group go to one member each, wherever the members are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey {
    /// `{group}`.
    pub group: Arc<str>,
    /// `{filter}`, the filter the group subscribes to.
    pub filter: Arc<str>,
}

impl GroupKey {
    /// Parses `$share/{group}/{filter}` (already validated); `None` for a
    /// plain filter.
    pub fn parse(full: &str) -> Option<GroupKey> {
        let (group, filter) = crate::codec::topic::parse_shared(full)?.ok()?;
        Some(GroupKey {
            group: group.into(),
            filter: filter.into(),
        })
    }

    /// The core that owns this group.
    pub fn owner(&self, cores: usize) -> usize {
        owner_core(&format!("{}\u{0}{}", self.group, self.filter), cores)
    }
}

/// Bits of a message id below its minter's byte: the minter's own count.
const MINTED_BITS: u32 = 56;
/// The count part of a message id.
const COUNT_MASK: u64 = (1 << MINTED_BITS) - 1;

/// Who minted a message id: its top byte. Ids are node-unique `u64`s, the
/// minter's byte above a count that grows in minting order, so two ids of
/// one minter compare in that order (a moving session's window relies on
/// it: `shard::delivery::offer_forwarded`) and `x-id` never repeats on a
/// node. Cores are 0 up to [`MAX_CORES`] - 1; the other three bytes are
/// the node's other minters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Minter {
    /// A client's publish, a will or `$SYS`, numbered by its core.
    Core(u8),
    /// A message restored from Redis with the session that held it.
    Restored,
    /// A Kafka record as offered to the cores, and an owner-mode forward.
    Record,
    /// A push of the HTTP API carried by Kafka (`kafka.push_topic`).
    Push,
}

/// Cores a node may run: a core's index is its ids' top byte, below the
/// three other minters'.
pub const MAX_CORES: usize = 0xfd;

impl Minter {
    const RESTORED: u8 = 0xfd;
    const RECORD: u8 = 0xfe;
    const PUSH: u8 = 0xff;

    /// The minter of `id`.
    pub fn of(id: u64) -> Minter {
        match (id >> MINTED_BITS) as u8 {
            Self::RESTORED => Minter::Restored,
            Self::RECORD => Minter::Record,
            Self::PUSH => Minter::Push,
            core => Minter::Core(core),
        }
    }

    /// The id this minter gives its `count`th message (the count wraps at
    /// 2^56, which no node reaches).
    pub fn id(self, count: u64) -> u64 {
        let byte = match self {
            Minter::Core(core) => core,
            Minter::Restored => Self::RESTORED,
            Minter::Record => Self::RECORD,
            Minter::Push => Self::PUSH,
        };
        (u64::from(byte) << MINTED_BITS) | (count & COUNT_MASK)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_read_back() {
        let id = ConnId {
            node: 3,
            core: 1,
            seq: 42,
        };
        assert_eq!(ConnId::parse(&id.to_string()), Some(id));
        assert_eq!(ConnId::parse("n3.c1"), None);
        assert_eq!(ConnId::parse("x3.c1.4"), None);
        assert_eq!(ConnId::parse("n3.c1.4.5"), None);
    }

    #[test]
    fn every_minter_reads_back_from_its_ids_and_none_shares_a_byte() {
        let minters = [
            Minter::Core(0),
            Minter::Core((MAX_CORES - 1) as u8),
            Minter::Restored,
            Minter::Record,
            Minter::Push,
        ];
        for m in minters {
            for count in [0, 1, COUNT_MASK, COUNT_MASK + 2] {
                assert_eq!(Minter::of(m.id(count)), m, "{m:?} {count}");
            }
        }
        let bytes: std::collections::HashSet<u64> =
            minters.iter().map(|m| m.id(0) >> MINTED_BITS).collect();
        assert_eq!(bytes.len(), minters.len());
        // One minter's ids keep its order.
        assert!(Minter::Core(3).id(7) < Minter::Core(3).id(8));
    }
}
