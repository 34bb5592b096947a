//! Outbound topic aliases (MQTT 5 3.3.2.3.4): the gateway replaces topics it
//! has sent before with a 2-byte alias, on connections whose client allows
//! aliases. One table per connection, assigned in the order PUBLISH packets
//! are written (the only order the client can follow); when full, the least
//! recently used alias is rebound.

use std::sync::Arc;

use ahash::AHashMap;

/// How a PUBLISH refers to its topic on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasUse {
    /// No alias: full topic, no property.
    None,
    /// Full topic plus `Topic Alias` (binding or rebinding the alias).
    Bind(u16),
    /// Empty topic plus `Topic Alias`.
    Reuse(u16),
}

/// One connection's outbound alias table.
#[derive(Debug)]
pub struct OutAliases {
    max: u16,
    /// topic → (alias, last use).
    map: AHashMap<Arc<str>, (u16, u64)>,
    clock: u64,
}

impl OutAliases {
    /// A table for at most `max` aliases (`max` > 0).
    pub fn new(max: u16) -> OutAliases {
        OutAliases {
            max,
            map: AHashMap::new(),
            clock: 0,
        }
    }

    /// The alias to use for `topic`, binding one if needed.
    pub fn alias(&mut self, topic: &Arc<str>) -> AliasUse {
        self.clock += 1;
        if let Some((alias, used)) = self.map.get_mut(topic) {
            *used = self.clock;
            return AliasUse::Reuse(*alias);
        }
        let alias = if self.map.len() < self.max as usize {
            self.map.len() as u16 + 1
        } else {
            // Full: rebind the least recently used alias (O(max), and max is
            // capped by `mqtt.topic_alias_outbound`).
            let victim = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(t, (a, _))| (t.clone(), *a));
            let Some((topic, alias)) = victim else {
                return AliasUse::None;
            };
            self.map.remove(&topic);
            alias
        };
        self.map.insert(topic.clone(), (alias, self.clock));
        AliasUse::Bind(alias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_reuses_and_rebinds_least_recently_used() {
        let t = |s: &str| -> Arc<str> { s.into() };
        let mut a = OutAliases::new(2);
        assert_eq!(a.alias(&t("a")), AliasUse::Bind(1));
        assert_eq!(a.alias(&t("a")), AliasUse::Reuse(1));
        assert_eq!(a.alias(&t("b")), AliasUse::Bind(2));
        assert_eq!(
            a.alias(&t("c")),
            AliasUse::Bind(1),
            "a was least recently used"
        );
        assert_eq!(a.alias(&t("b")), AliasUse::Reuse(2));
        assert_eq!(
            a.alias(&t("a")),
            AliasUse::Bind(1),
            "c (alias 1) is now the oldest"
        );
    }
}
