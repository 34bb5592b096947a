//! Indexing a session's subscriptions on its core: plain filters go into
//! the core's trie and interest summary; shared ones (`$share/...`) join
//! their group, wherever it is owned.

use std::sync::Arc;

use super::{Core, CoreState, Sub};
use crate::bridge::outbound::InterestChange;
use crate::codec::SubOptions;
use crate::id::{ConnKey, GroupKey, Location};
use crate::session::Confirm;

impl Core {
    /// Adds a session's subscription: to this core's index, or to its group
    /// (wherever that is owned) for a shared subscription. A `confirm`
    /// (a SUBACK's) gets a share to wait for when the filter is new to this
    /// core and the cluster must hear of it first.
    pub fn index_sub(
        &self,
        st: &mut CoreState,
        filter: &str,
        key: ConnKey,
        opts: SubOptions,
        id: u32,
        confirm: Option<&Arc<Confirm>>,
    ) {
        match GroupKey::parse(filter) {
            Some(g) => {
                let loc = Location { core: self.id, key };
                self.share_join(st, g, loc, opts, id, confirm)
            }
            None => {
                if !st.subs.insert(filter, Sub { key, opts, id }) {
                    st.interest.add(&self.visible().interest, filter);
                    if st.cluster.add(filter) {
                        self.announce_interest(filter.into(), true, confirm);
                    }
                }
                self.count_subscriptions(st);
            }
        }
    }

    /// Tells the outbound bridge that `filter` gained its first
    /// subscription on this core (`on`) or lost its last one.
    pub(super) fn announce_interest(
        &self,
        filter: Arc<str>,
        on: bool,
        confirm: Option<&Arc<Confirm>>,
    ) {
        let confirm = confirm.map(|c| {
            c.hold();
            c.clone()
        });
        self.node.outbound.interest(InterestChange {
            core: self.id,
            filter,
            on,
            confirm,
        });
    }

    /// Announces the filters that stayed unused since the last sweep as
    /// gone (on the core's tick).
    pub(super) fn sweep_cluster_interest(&self, st: &mut CoreState) {
        if st.cluster.on {
            // A departed session's filters stay announced while its copies
            // are handed on from here.
            let departures = &self.node.departures;
            let now = crate::wallclock::now_ms();
            for f in st.cluster.sweep(|f| departures.holds(f, now)) {
                self.announce_interest(f, false, None);
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
                    st.cluster.remove(filter);
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
