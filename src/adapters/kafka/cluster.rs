//! The cluster view (`[kafka.cluster]`): which node has subscribers for
//! which filters, built from everyone's announcements on the interest
//! topic, and the choice of nodes a message goes to.
//!
//! Announcements are records on one partition of `interest_topic`, keyed
//! so that log compaction keeps each node's current state:
//!
//! | key | value | meaning |
//! | --- | --- | --- |
//! | `n/{node}` | `hello {incarnation}` | the node started: forget what it announced before |
//! | `n/{node}` | none (tombstone) | the node stopped: forget it |
//! | `i/{node}/{core}/{filter}` | `1` | a filter gained its first subscription on that core |
//! | `i/{node}/{core}/{filter}` | none | it lost its last one |
//!
//! A shared subscription's group is announced as `$share/{group}/{filter}`
//! by the core that owns it, while it has connected members.
//!
//! The view lives on the `tether-kafka` thread only: the registry reader
//! sends it [`Update`]s over the producer's job channel, so no lock is
//! shared with anyone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ahash::AHashMap;

use crate::id::GroupKey;

/// One announcement, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Update {
    /// A node started (incarnation: its start time in ms).
    Hello { node: u16, incarnation: u64 },
    /// A node stopped.
    Bye { node: u16 },
    /// A core of `node` has (`on`) or no longer has subscribers for `filter`.
    Interest {
        node: u16,
        core: u16,
        filter: Arc<str>,
        on: bool,
    },
}

/// The key of a node's hello and bye.
pub(crate) fn node_key(node: u16) -> String {
    format!("n/{node}")
}

/// The key of an interest announcement.
pub(crate) fn interest_key(node: u16, core: usize, filter: &str) -> String {
    format!("i/{node}/{core}/{filter}")
}

/// The value of a hello.
pub(crate) fn hello_value(incarnation: u64) -> String {
    format!("hello {incarnation}")
}

/// Parses one record of the interest topic; `None` for what this version
/// does not know (skipped, so a newer node's records do not stop older
/// readers).
pub(crate) fn parse(key: &[u8], value: Option<&[u8]>) -> Option<Update> {
    let key = std::str::from_utf8(key).ok()?;
    if let Some(node) = key.strip_prefix("n/") {
        let node = node.parse().ok()?;
        return Some(match value {
            None => Update::Bye { node },
            Some(v) => {
                let v = std::str::from_utf8(v).ok()?;
                let incarnation = v.strip_prefix("hello ")?.parse().ok()?;
                Update::Hello { node, incarnation }
            }
        });
    }
    let rest = key.strip_prefix("i/")?;
    let (node, rest) = rest.split_once('/')?;
    let (core, filter) = rest.split_once('/')?;
    Some(Update::Interest {
        node: node.parse().ok()?,
        core: core.parse().ok()?,
        filter: filter.into(),
        on: value.is_some(),
    })
}

/// Nodes a message goes to, each with the shared-subscription groups it
/// serves the message to (as `$share/{group}/{filter}`).
pub(crate) type Targets = BTreeMap<u16, Vec<Arc<str>>>;

/// What one filter position of the index holds.
#[derive(Default)]
struct Slot {
    /// Nodes with plain subscribers, by number of announcing cores.
    nodes: AHashMap<u16, u32>,
    /// Groups (by their full `$share/{group}/{filter}`) and their nodes
    /// with members.
    groups: AHashMap<Arc<str>, AHashMap<u16, u32>>,
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.groups.is_empty()
    }
}

/// A trie of filters, level by level.
#[derive(Default)]
struct Level {
    children: AHashMap<Box<str>, Level>,
    plus: Option<Box<Level>>,
    /// Filters ending here.
    exact: Slot,
    /// Filters ending with `#` here.
    hash: Slot,
}

impl Level {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_empty()
            && self.hash.is_empty()
    }

    /// Applies `f` to the slot of `filter`, then prunes what became empty.
    /// Returns whether this level is empty afterwards.
    fn change(&mut self, filter: Option<&str>, f: &mut dyn FnMut(&mut Slot)) -> bool {
        match filter {
            None => f(&mut self.exact),
            Some(r) => {
                let (head, next) = match r.split_once('/') {
                    Some((h, n)) => (h, Some(n)),
                    None => (r, None),
                };
                if head == "#" {
                    f(&mut self.hash);
                } else if head == "+" {
                    let plus = self.plus.get_or_insert_with(Default::default);
                    if plus.change(next, f) {
                        self.plus = None;
                    }
                } else {
                    let child = self.children.entry(head.into()).or_default();
                    if child.change(next, f) {
                        self.children.remove(head);
                    }
                }
            }
        }
        self.is_empty()
    }

    /// Calls `f` with every slot whose filter matches the topic `levels`.
    fn matches<'a>(&'a self, levels: &[&str], root: bool, f: &mut dyn FnMut(&'a Slot)) {
        // Wildcards at the first level never match `$` topics.
        let wild = !(root && levels.first().is_some_and(|l| l.starts_with('$')));
        if wild {
            f(&self.hash);
        }
        let Some((head, rest)) = levels.split_first() else {
            f(&self.exact);
            return;
        };
        if let Some(child) = self.children.get(*head) {
            child.matches(rest, false, f);
        }
        if wild {
            if let Some(plus) = &self.plus {
                plus.matches(rest, false, f);
            }
        }
    }
}

/// Who subscribed to what, cluster-wide.
pub(crate) struct ClusterView {
    /// This node: it serves its own clients itself.
    me: u16,
    /// Nodes that said hello and not bye, with their incarnation.
    nodes: BTreeMap<u16, u64>,
    /// What each node announced: `(node, core, filter)`.
    announced: BTreeSet<(u16, u16, Arc<str>)>,
    index: Level,
    /// Round-robin position per group served by other nodes.
    turns: AHashMap<Arc<str>, usize>,
}

impl ClusterView {
    /// An empty view for node `me`.
    pub fn new(me: u16) -> ClusterView {
        ClusterView {
            me,
            // Up, as far as this node is concerned, before its own hello
            // comes back from the topic.
            nodes: BTreeMap::from([(me, 0)]),
            announced: BTreeSet::new(),
            index: Level::default(),
            turns: AHashMap::new(),
        }
    }

    /// Nodes known to be up (they said hello), this one included.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The nodes known to be up, this one included.
    pub fn all_nodes(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes.keys().copied()
    }

    /// Announcements held.
    pub fn entries(&self) -> usize {
        self.announced.len()
    }

    /// Applies one announcement.
    pub fn apply(&mut self, u: Update) {
        match u {
            Update::Hello { node, incarnation } => {
                if self.nodes.insert(node, incarnation) != Some(incarnation) {
                    // A new incarnation: what the node said before is void.
                    self.forget(node);
                }
            }
            Update::Bye { node } => {
                self.nodes.remove(&node);
                self.forget(node);
            }
            Update::Interest {
                node,
                core,
                filter,
                on,
            } => {
                let key = (node, core, filter);
                let changed = if on {
                    self.announced.insert(key.clone())
                } else {
                    self.announced.remove(&key)
                };
                if changed {
                    self.count(node, &key.2, on);
                }
            }
        }
    }

    fn forget(&mut self, node: u16) {
        let theirs: Vec<_> = self
            .announced
            .range((node, 0, Arc::from(""))..)
            .take_while(|(n, _, _)| *n == node)
            .cloned()
            .collect();
        for key in theirs {
            self.announced.remove(&key);
            self.count(node, &key.2, false);
        }
    }

    /// Counts one core of `node` in (or out of) `filter`'s slot.
    fn count(&mut self, node: u16, filter: &str, on: bool) {
        let bump = |m: &mut AHashMap<u16, u32>| {
            let n = m.entry(node).or_default();
            if on {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&node);
                }
            }
        };
        match GroupKey::parse(filter) {
            Some(g) => {
                let name: Arc<str> = filter.into();
                self.index.change(Some(&g.filter), &mut |slot| {
                    let members = slot.groups.entry(name.clone()).or_default();
                    bump(members);
                    if members.is_empty() {
                        slot.groups.remove(&name);
                    }
                });
            }
            None => {
                self.index
                    .change(Some(filter), &mut |slot| bump(&mut slot.nodes));
            }
        }
    }

    /// Whether `node` announced `filter` itself (on any core).
    pub fn announces(&self, node: u16, filter: &str) -> bool {
        self.announced
            .range((node, 0, Arc::from(""))..)
            .take_while(|(n, ..)| *n == node)
            .any(|(_, _, f)| &**f == filter)
    }

    /// Whether `node` has a plain subscriber to `topic`, as far as this
    /// view knows: a message published on it is routed there.
    pub fn interested(&self, node: u16, topic: &str) -> bool {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut found = false;
        self.index.matches(&levels, true, &mut |slot| {
            found |= slot.nodes.contains_key(&node);
        });
        found
    }

    /// The other nodes a message on `topic` goes to: those with plain
    /// subscribers; for each matching group with no member here, one node
    /// with members, in turn; and for a retained message every node that is
    /// up (each keeps its own copy of the retained store).
    pub fn targets(&mut self, topic: &str, retain: bool) -> Targets {
        let mut out = Targets::new();
        if retain {
            for &n in self.nodes.keys().filter(|&&n| n != self.me) {
                out.entry(n).or_default();
            }
        }
        let levels: Vec<&str> = topic.split('/').collect();
        let me = self.me;
        let turns = &mut self.turns;
        self.index.matches(&levels, true, &mut |slot| {
            for &n in slot.nodes.keys().filter(|&&n| n != me) {
                out.entry(n).or_default();
            }
            for (name, members) in &slot.groups {
                if members.contains_key(&me) {
                    // Served here: the local owner core picks a member.
                    continue;
                }
                let mut nodes: Vec<u16> = members.keys().copied().collect();
                nodes.sort_unstable();
                let turn = turns.entry(name.clone()).or_default();
                let pick = nodes[*turn % nodes.len()];
                *turn = turn.wrapping_add(1);
                out.entry(pick).or_default().push(name.clone());
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(node: u16, core: u16, filter: &str) -> Update {
        Update::Interest {
            node,
            core,
            filter: filter.into(),
            on: true,
        }
    }

    fn off(node: u16, core: u16, filter: &str) -> Update {
        Update::Interest {
            node,
            core,
            filter: filter.into(),
            on: false,
        }
    }

    fn nodes(t: &Targets) -> Vec<u16> {
        t.keys().copied().collect()
    }

    #[test]
    fn records_round_trip() {
        assert_eq!(
            parse(node_key(3).as_bytes(), Some(hello_value(42).as_bytes())),
            Some(Update::Hello {
                node: 3,
                incarnation: 42
            })
        );
        assert_eq!(parse(b"n/3", None), Some(Update::Bye { node: 3 }));
        assert_eq!(
            parse(interest_key(2, 1, "a/+/#").as_bytes(), Some(b"1")),
            Some(on(2, 1, "a/+/#"))
        );
        assert_eq!(
            parse(b"i/2/1/$share/g/a", None),
            Some(off(2, 1, "$share/g/a"))
        );
        assert_eq!(parse(b"x/whatever", Some(b"1")), None, "unknown: skipped");
    }

    #[test]
    fn messages_go_only_to_nodes_with_matching_filters() {
        let mut v = ClusterView::new(1);
        for n in 1..=3 {
            v.apply(Update::Hello {
                node: n,
                incarnation: 7,
            });
        }
        v.apply(on(2, 0, "room/+"));
        v.apply(on(2, 1, "room/+"));
        v.apply(on(3, 0, "#"));
        v.apply(on(1, 0, "room/1"));
        assert_eq!(
            nodes(&v.targets("room/1", false)),
            vec![2, 3],
            "never itself"
        );
        assert_eq!(nodes(&v.targets("other", false)), vec![3]);
        assert!(
            v.targets("$SYS/x", false).is_empty(),
            "# does not match $ topics"
        );
        v.apply(off(3, 0, "#"));
        assert!(v.targets("other", false).is_empty());
        assert_eq!(
            nodes(&v.targets("other", true)),
            vec![2, 3],
            "retained: every node"
        );
        v.apply(off(2, 0, "room/+"));
        assert_eq!(
            nodes(&v.targets("room/1", false)),
            vec![2],
            "core 1 still has it"
        );
        v.apply(Update::Hello {
            node: 2,
            incarnation: 8,
        });
        assert!(
            v.targets("room/1", false).is_empty(),
            "a restart voids old news"
        );
        assert_eq!(v.entries(), 1, "only node 1's own filter is left");
        v.apply(Update::Bye { node: 2 });
        assert_eq!(v.nodes(), 2);
        assert_eq!(ClusterView::new(5).nodes(), 1, "itself, before any hello");
    }

    #[test]
    fn a_node_is_interested_in_what_its_plain_filters_match() {
        let mut v = ClusterView::new(1);
        v.apply(on(3, 1, "fleet/#"));
        v.apply(on(2, 0, "$share/g/fleet/#"));
        assert!(v.interested(3, "fleet/x"));
        assert!(!v.interested(3, "other"));
        assert!(
            !v.interested(2, "fleet/x"),
            "a group member is not a plain subscriber"
        );
        v.apply(off(3, 1, "fleet/#"));
        assert!(!v.interested(3, "fleet/x"));
    }

    #[test]
    fn a_node_announces_the_filters_it_named_on_any_core() {
        let mut v = ClusterView::new(1);
        v.apply(on(3, 1, "fleet/#"));
        v.apply(on(2, 0, "news/+"));
        assert!(v.announces(3, "fleet/#"));
        assert!(
            !v.announces(3, "fleet/a"),
            "the filter itself, not a topic it matches"
        );
        assert!(!v.announces(2, "fleet/#"));
        assert!(v.announces(2, "news/+"));
        v.apply(off(3, 1, "fleet/#"));
        assert!(!v.announces(3, "fleet/#"));
    }

    #[test]
    fn a_group_is_served_here_or_by_one_other_node_in_turn() {
        let mut v = ClusterView::new(1);
        v.apply(on(2, 0, "$share/g/t/#"));
        v.apply(on(3, 1, "$share/g/t/#"));
        let mut picks = Vec::new();
        for _ in 0..4 {
            let t = v.targets("t/x", false);
            assert_eq!(t.len(), 1, "one node per message: {t:?}");
            let (&n, groups) = t.iter().next().unwrap();
            assert_eq!(&groups[..], &[Arc::<str>::from("$share/g/t/#")]);
            picks.push(n);
        }
        assert_eq!(picks, vec![2, 3, 2, 3]);
        v.apply(on(1, 0, "$share/g/t/#"));
        assert!(
            v.targets("t/x", false).is_empty(),
            "a local member serves it"
        );
        v.apply(off(2, 0, "$share/g/t/#"));
        v.apply(off(3, 1, "$share/g/t/#"));
        v.apply(off(1, 0, "$share/g/t/#"));
        assert!(v.index.is_empty(), "pruned");
    }
}
