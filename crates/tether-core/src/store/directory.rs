//! One shard of the in-memory directory (client id → where its session
//! lives), laid out for idle memory: a hash table of 4-byte indices into a
//! slab of entries.
//!
//! A plain `HashMap<Arc<str>, Location>` keeps 32-byte buckets, and a
//! table reserved for the node's connection limit (so it never rehashes
//! under its lock during a connect storm) holds up to twice as many
//! buckets as entries, every page touched once entries land at random
//! places. Here the reserved, randomly touched part is 4 bytes a bucket;
//! the 32-byte entries sit densely in a slab that is touched only as it
//! fills (bench/RESULTS.md, "Where an idle connection's bytes go").

use std::sync::Arc;

use hashbrown::HashTable;
use slab::Slab;

use crate::id::Location;

/// See the module documentation. Every method takes the client id's hash
/// (the caller computed it to pick the shard) and a hasher for the rare
/// rehash past the reserved capacity.
pub struct Directory {
    /// Slab index of each entry, by the hash of its client id.
    index: HashTable<u32>,
    /// The entries: client id (the session entry's own `Arc`) and place.
    entries: Slab<(Arc<str>, Location)>,
}

impl Directory {
    /// Room for `n` entries without growing.
    pub fn with_capacity(n: usize) -> Directory {
        Directory {
            index: HashTable::with_capacity(n),
            entries: Slab::with_capacity(n),
        }
    }

    /// Where `client_id` lives.
    pub fn get(&self, hash: u64, client_id: &str) -> Option<Location> {
        let i = self.index.find(hash, |&i| self.is(i, client_id))?;
        Some(self.entries[*i as usize].1)
    }

    /// Records `client_id` at `loc`; returns where it was.
    pub fn insert(
        &mut self,
        hash: u64,
        client_id: &Arc<str>,
        loc: Location,
        rehash: impl Fn(&str) -> u64,
    ) -> Option<Location> {
        if let Some(&i) = self.index.find(hash, |&i| self.is(i, client_id)) {
            // The new claimant's `Arc` replaces the old one's, so the old
            // entry's string is freed with it.
            let entry = (client_id.clone(), loc);
            let (_, was) = std::mem::replace(&mut self.entries[i as usize], entry);
            return Some(was);
        }
        let entries = &mut self.entries;
        let i = entries.insert((client_id.clone(), loc)) as u32;
        self.index
            .insert_unique(hash, i, |&j| rehash(&entries[j as usize].0));
        None
    }

    /// Removes `client_id` if it is still at `loc` (a newer claim may have
    /// placed it elsewhere since).
    pub fn remove_if_at(&mut self, hash: u64, client_id: &str, loc: Location) {
        let entries = &self.entries;
        if let Ok(found) = self.index.find_entry(hash, |&i| {
            let (id, at) = &entries[i as usize];
            &**id == client_id && *at == loc
        }) {
            let (i, _) = found.remove();
            self.entries.remove(i as usize);
        }
    }

    fn is(&self, i: u32, client_id: &str) -> bool {
        &*self.entries[i as usize].0 == client_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_location as loc;

    #[test]
    fn insert_replaces_and_remove_is_compare_and_remove() {
        let h = ahash::RandomState::new();
        let hash = |s: &str| h.hash_one(s);
        let mut d = Directory::with_capacity(4);
        let ids: Vec<Arc<str>> = (0..100).map(|i| format!("c{i}").into()).collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(d.insert(hash(id), id, loc(0, i as u32), hash), None);
        }
        assert_eq!(
            d.insert(hash("c7"), &ids[7], loc(1, 7), hash),
            Some(loc(0, 7))
        );
        assert_eq!(d.get(hash("c7"), "c7"), Some(loc(1, 7)));
        d.remove_if_at(hash("c7"), "c7", loc(0, 7));
        assert_eq!(
            d.get(hash("c7"), "c7"),
            Some(loc(1, 7)),
            "a stale place removes nothing"
        );
        d.remove_if_at(hash("c7"), "c7", loc(1, 7));
        assert_eq!(d.get(hash("c7"), "c7"), None);
        for (i, id) in ids.iter().enumerate().filter(|(i, _)| *i != 7) {
            assert_eq!(
                d.get(hash(id), id),
                Some(loc(0, i as u32)),
                "{id} survives growth"
            );
        }
        assert_eq!(d.get(hash("nobody"), "nobody"), None);
    }
}
