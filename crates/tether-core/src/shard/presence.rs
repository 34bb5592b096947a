//! Distinct users, counted exactly without a set shared between cores:
//! each username has an owner core ([`owner_core`]), and the connection's
//! core sends it +1 when a CONNECT with that username is accepted and -1
//! when the link closes. Both travel the same route in order, so each
//! owner's count is exact; the node's figure is the sum over owners. This
//! is also where per-user connection limits will be enforced.

use std::collections::hash_map::Entry;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::{Core, CoreState};
use crate::id::owner_core;
use crate::mesh::CoreMsg;

impl Core {
    /// A connection of `user` opened (`delta` 1) or closed (-1) here: the
    /// user's owner core keeps the count.
    pub fn count_user(&self, st: &mut CoreState, user: &Arc<str>, delta: i32) {
        match owner_core(user, self.node.cores.len()) {
            owner if owner == self.id => self.apply_user_count(st, user.clone(), delta),
            owner => self.route(
                owner,
                CoreMsg::UserCount {
                    user: user.clone(),
                    delta,
                },
            ),
        }
    }

    pub(super) fn apply_user_count(&self, st: &mut CoreState, user: Arc<str>, delta: i32) {
        // A connection's close follows its open on the same route (both
        // come from the connection's core, in order), so a count never
        // goes below zero.
        match st.users.entry(user) {
            Entry::Occupied(mut e) => {
                let n = e.get().saturating_add_signed(delta);
                if n == 0 {
                    e.remove();
                } else {
                    *e.get_mut() = n;
                }
            }
            Entry::Vacant(e) => {
                debug_assert!(delta > 0, "a user's close arrived before its open");
                if delta > 0 {
                    e.insert(delta as u32);
                }
            }
        }
        self.visible().users.store(st.users.len() as i64, Relaxed);
    }
}
