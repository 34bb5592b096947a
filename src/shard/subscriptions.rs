//! Indexing a session's subscriptions on its core: plain filters go into
//! the core's trie and interest summary; shared ones (`$share/...`) join
//! their group, wherever it is owned.

use super::{Core, CoreState, Sub};
use crate::codec::SubOptions;
use crate::id::{ConnKey, GroupKey, Location};

impl Core {
    /// Adds a session's subscription: to this core's index, or to its group
    /// (wherever that is owned) for a shared subscription.
    pub fn index_sub(
        &self,
        st: &mut CoreState,
        filter: &str,
        key: ConnKey,
        opts: SubOptions,
        id: u32,
    ) {
        match GroupKey::parse(filter) {
            Some(g) => self.share_join(st, g, Location { core: self.id, key }, opts, id),
            None => {
                if !st.subs.insert(filter, Sub { key, opts, id }) {
                    st.interest.add(&self.visible().interest, filter);
                }
                self.count_subscriptions(st);
            }
        }
    }

    /// Removes what [`Core::index_sub`] added.
    pub fn unindex_sub(&self, st: &mut CoreState, filter: &str, key: ConnKey) {
        match GroupKey::parse(filter) {
            Some(g) => self.share_leave(st, g, Location { core: self.id, key }),
            None => {
                if st.subs.remove(filter, key) {
                    st.interest.remove(filter);
                }
                self.count_subscriptions(st);
            }
        }
    }

    fn count_subscriptions(&self, st: &CoreState) {
        let gauge = &self.visible().subscriptions;
        gauge.store(st.subs.len(), std::sync::atomic::Ordering::Relaxed);
    }
}
