//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5 4.8.2; accepted
//! from 3.1.1 clients too): each message goes to one member of the group.
//!
//! A group lives on an *owner* core (hash of group and filter), whatever
//! cores its members are on. Members join and leave by message
//! (`CoreMsg::ShareJoin` / `ShareLeave`); the owner indexes the group's
//! filter in its own shared trie (and interest summary, so publishes reach
//! it) and gives each matching message to one member, round-robin
//! (`CoreMsg::ShareDeliver`). Only connected members are in a group: a
//! member leaves when its connection closes and rejoins when it is back. The
//! QoS 1/2 messages it had in flight or queued then go back to the owner
//! (`CoreMsg::ShareReturn`), which gives them to another member.

use std::sync::Arc;

use ahash::AHashMap;
use slab::Slab;

use super::trie::{Sub, SubTree};
use super::{count, hop, Core, CoreState, Phase};
use crate::codec::SubOptions;
use crate::id::{ConnKey, GroupKey, Location};
use crate::mesh::CoreMsg;
use crate::session::{sub_ids, Confirm, Delivery, Message};
use crate::stats::bump;

/// How many times a message may bounce between the owner and members that
/// just left before it is dropped (and counted): the leave is on its way.
pub const MAX_SHARE_ATTEMPTS: u8 = 8;

/// One member's subscription.
#[derive(Debug, Clone, Copy)]
pub struct Member {
    /// The member's session.
    pub loc: Location,
    /// Its subscription options.
    pub opts: SubOptions,
    /// Its subscription identifier (0: none).
    pub id: u32,
}

/// One group and its connected members.
#[derive(Debug)]
pub struct Group {
    /// The group.
    pub key: GroupKey,
    /// Connected members, in join order.
    pub members: Vec<Member>,
    next: usize,
}

impl Group {
    /// The next member, round-robin.
    pub fn pick(&mut self) -> Option<Member> {
        if self.members.is_empty() {
            return None;
        }
        let m = self.members[self.next % self.members.len()];
        self.next = self.next.wrapping_add(1);
        Some(m)
    }
}

/// The groups a core owns.
#[derive(Default)]
pub struct Groups {
    /// The groups.
    pub slab: Slab<Group>,
    /// Group → its slot in `slab`.
    pub by_key: AHashMap<GroupKey, usize>,
    /// Group filters; a `Sub`'s key is the group's slab index (gen 0).
    pub index: SubTree,
}

impl Groups {
    /// Adds (or updates) a member; returns true when the group is new.
    pub fn join(&mut self, key: GroupKey, m: Member) -> bool {
        if let Some(&i) = self.by_key.get(&key) {
            let g = &mut self.slab[i];
            match g.members.iter_mut().find(|x| x.loc == m.loc) {
                Some(x) => *x = m,
                None => g.members.push(m),
            }
            return false;
        }
        let filter = key.filter.clone();
        let i = self.slab.insert(Group {
            key: key.clone(),
            members: vec![m],
            next: 0,
        });
        self.by_key.insert(key, i);
        let sub = Sub {
            key: ConnKey {
                index: i as u32,
                gen: 0,
            },
            opts: m.opts,
            id: 0,
        };
        self.index.insert(&filter, sub);
        true
    }

    /// Removes a member; returns true when that emptied (and removed) the group.
    pub fn leave(&mut self, key: &GroupKey, loc: Location) -> bool {
        let Some(&i) = self.by_key.get(key) else {
            return false;
        };
        let g = &mut self.slab[i];
        g.members.retain(|m| m.loc != loc);
        if !g.members.is_empty() {
            return false;
        }
        self.slab.remove(i);
        self.by_key.remove(key);
        self.index.remove(
            &key.filter,
            ConnKey {
                index: i as u32,
                gen: 0,
            },
        );
        true
    }
}

/// `$share/{group}/{filter}`: how a group is named to the cluster.
pub fn share_name(key: &GroupKey) -> String {
    format!("$share/{}/{}", key.group, key.filter)
}

impl Core {
    pub(super) fn share_join(
        &self,
        st: &mut CoreState,
        key: GroupKey,
        loc: Location,
        opts: SubOptions,
        id: u32,
        confirm: Option<&Arc<Confirm>>,
    ) {
        match key.owner(self.node.cores.len()) {
            owner if owner == self.id => self.group_join(st, key, loc, opts, id, confirm),
            owner => {
                // The owner releases the share once it has announced a new
                // group (or at once).
                let confirm = confirm.map(|c| {
                    c.hold();
                    c.clone()
                });
                let msg = CoreMsg::ShareJoin {
                    key,
                    loc,
                    opts,
                    id,
                    confirm,
                };
                self.route(owner, msg)
            }
        }
    }

    pub(super) fn share_leave(&self, st: &mut CoreState, key: GroupKey, loc: Location) {
        match key.owner(self.node.cores.len()) {
            owner if owner == self.id => self.group_leave(st, key, loc),
            owner => self.route(owner, CoreMsg::ShareLeave { key, loc }),
        }
    }

    /// Owner: a member joins. A new group's filter enters the interest
    /// summary so publishes on other cores reach this core, and the cluster
    /// hears of the group (before `confirm`'s SUBACK goes out).
    pub(super) fn group_join(
        &self,
        st: &mut CoreState,
        key: GroupKey,
        loc: Location,
        opts: SubOptions,
        id: u32,
        confirm: Option<&Arc<Confirm>>,
    ) {
        let filter = key.filter.clone();
        let full = share_name(&key);
        if st.groups.join(key, Member { loc, opts, id }) {
            st.interest.add(&self.visible().interest, &filter);
            if st.cluster.add(&full) {
                self.announce_interest(full.into(), true, confirm);
            }
        }
        self.count_members(st);
    }

    fn count_members(&self, st: &CoreState) {
        let n = st.groups.slab.iter().map(|(_, g)| g.members.len()).sum();
        let gauge = &self.visible().shared_members;
        gauge.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn group_leave(&self, st: &mut CoreState, key: GroupKey, loc: Location) {
        if st.groups.leave(&key, loc) {
            st.interest.remove(&key.filter);
            st.cluster.remove(&share_name(&key));
        }
        self.count_members(st);
    }

    /// Owner: gives `msg` to one member of every group whose filter matches.
    pub(super) fn deliver_shared(&self, st: &mut CoreState, msg: &Arc<Message>) {
        if st.groups.slab.is_empty() {
            return;
        }
        let mut matched = Vec::new();
        st.groups.index.for_each_match(&msg.topic, |subs| {
            matched.extend(subs.iter().map(|s| s.key.index))
        });
        for i in matched {
            let Some(g) = st.groups.slab.get_mut(i as usize) else {
                continue;
            };
            // Another node serves the groups it did not name.
            if !msg.scope.serves_group(&g.key) {
                continue;
            }
            let Some(m) = g.pick() else { continue };
            let d = Delivery {
                msg: msg.clone(),
                qos: msg.qos.min(m.opts.qos),
                retain: msg.retain && m.opts.retain_as_published,
                sub_ids: sub_ids([m.id]),
                share: Some(Box::new(g.key.clone())),
                seq: 0,
                receipts: msg.receipts.is_some(),
            };
            self.share_send(st, m.loc, d, 0);
        }
    }

    fn share_send(&self, st: &mut CoreState, loc: Location, d: Delivery, attempts: u8) {
        if loc.core == self.id {
            self.share_deliver_in(st, loc.key, d, attempts);
        } else {
            hop(&d);
            self.route(
                loc.core,
                CoreMsg::ShareDeliver {
                    target: loc.key,
                    d,
                    attempts,
                },
            );
        }
    }

    /// Member core: offer to the member if it is still connected here,
    /// otherwise give the message back to the group.
    pub(super) fn share_deliver_in(
        &self,
        st: &mut CoreState,
        target: ConnKey,
        d: Delivery,
        attempts: u8,
    ) {
        let stats = self.stats();
        let now = self.now();
        let CoreState { conns, journal, .. } = &mut *st;
        let member = super::entry_in(conns, target)
            .filter(|e| matches!(e.phase, Phase::Active) && e.link.is_some());
        match member {
            Some(e) => count(self.offer_mirrored(journal, e, d, now), stats),
            None => self.share_return(st, d, attempts + 1),
        }
    }

    fn share_return(&self, st: &mut CoreState, d: Delivery, attempts: u8) {
        let Some(key) = d.share.as_deref() else {
            return;
        };
        match key.owner(self.node.cores.len()) {
            owner if owner == self.id => self.share_return_in(st, d, attempts),
            owner => {
                hop(&d);
                self.route(owner, CoreMsg::ShareReturn { d, attempts })
            }
        }
    }

    /// Owner: a member could not take `d`; give it to another.
    pub(super) fn share_return_in(&self, st: &mut CoreState, mut d: Delivery, attempts: u8) {
        let stats = self.stats();
        bump(&stats.share_returned, 1);
        let pick = d
            .share
            .as_deref()
            .and_then(|k| st.groups.by_key.get(k).copied())
            .and_then(|i| st.groups.slab[i].pick());
        match pick {
            Some(m) if attempts <= MAX_SHARE_ATTEMPTS => {
                d.qos = d.msg.qos.min(m.opts.qos);
                d.sub_ids = sub_ids([m.id]);
                self.share_send(st, m.loc, d, attempts);
            }
            _ => bump(&stats.dropped_no_member, 1),
        }
    }

    /// A member's connection closed: it leaves its groups, and the shared
    /// QoS 1/2 messages it had not acknowledged (nor released, for QoS 2)
    /// go back to their groups for another member.
    pub(super) fn share_member_gone(&self, st: &mut CoreState, key: ConnKey) {
        let Some(e) = st.entry(key) else { return };
        let groups: Vec<GroupKey> = e
            .session
            .subs
            .iter()
            .filter_map(|(f, ..)| GroupKey::parse(f))
            .collect();
        let mut back = Vec::new();
        e.session.inflight.retain(|f| {
            let give_back = f.d.share.is_some() && !f.released;
            if give_back {
                back.push(f.d.clone());
            }
            !give_back
        });
        e.session.queued.retain(|d| {
            if d.share.is_some() {
                back.push(d.clone());
            }
            d.share.is_none()
        });
        let loc = Location { core: self.id, key };
        // Leave first: the owner must not pick this member again (the leave
        // and the returns travel on the same FIFO channel to the owner).
        for g in groups {
            self.share_leave(st, g, loc);
        }
        for mut d in back {
            // Another member numbers it in its own session.
            let seq = std::mem::take(&mut d.seq);
            if let Some(mut c) = st.conn(key) {
                c.forget(self, seq);
            }
            self.share_return(st, d, 0);
        }
    }
}
