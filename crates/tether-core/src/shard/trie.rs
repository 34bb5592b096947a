//! Per-core subscription index: a topic trie with `+`, `#` and the
//! `$`-topic rule. It only holds subscriptions of sessions owned by its core.

use ahash::AHashMap;

use crate::codec::SubOptions;
use crate::id::ConnKey;

/// One subscription of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sub {
    pub key: ConnKey,
    pub opts: SubOptions,
    /// MQTT 5 subscription identifier; 0 when none.
    pub id: u32,
}

#[derive(Default)]
struct Node {
    children: AHashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    /// Subscribers of `<path>/#` (which also match `<path>` itself).
    hash: Vec<Sub>,
    /// Subscribers of exactly `<path>`.
    exact: Vec<Sub>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.exact.is_empty()
    }
}

#[derive(Default)]
pub struct SubTree {
    root: Node,
    len: usize,
}

fn split(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, next)) => (level, Some(next)),
        None => (rest, None),
    }
}

impl SubTree {
    /// Number of (filter, session) subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces the subscription of `sub.key` to a valid `filter`.
    /// Returns true when it replaced an existing one.
    pub fn insert(&mut self, filter: &str, sub: Sub) -> bool {
        let mut node = &mut self.root;
        let mut rest = Some(filter);
        let list = loop {
            let Some(r) = rest else { break &mut node.exact };
            let (level, next) = split(r);
            if level == "#" {
                break &mut node.hash;
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Default::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
            rest = next;
        };
        if let Some(existing) = list.iter_mut().find(|s| s.key == sub.key) {
            *existing = sub;
            true
        } else {
            list.push(sub);
            self.len += 1;
            false
        }
    }

    /// Removes the subscription of `key` to `filter`; true if it existed.
    pub fn remove(&mut self, filter: &str, key: ConnKey) -> bool {
        let removed = remove_in(&mut self.root, Some(filter), key);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Calls `f` with each group of subscriptions matching `topic`. Returns
    /// the number of non-empty groups, so callers know whether one session
    /// can appear twice (overlapping filters) and needs de-duplication.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&[Sub])) -> usize {
        let mut groups = 0;
        let mut emit = |subs: &[Sub]| {
            if !subs.is_empty() {
                groups += 1;
                f(subs);
            }
        };
        let (level, next) = split(topic);
        // MQTT 4.7.2: filters starting with a wildcard do not match `$` topics.
        if !topic.starts_with('$') {
            emit(&self.root.hash);
            if let Some(p) = &self.root.plus {
                walk(p, next, &mut emit);
            }
        }
        if let Some(c) = self.root.children.get(level) {
            walk(c, next, &mut emit);
        }
        groups
    }
}

fn walk(node: &Node, rest: Option<&str>, emit: &mut impl FnMut(&[Sub])) {
    emit(&node.hash);
    let Some(r) = rest else {
        emit(&node.exact);
        return;
    };
    let (level, next) = split(r);
    if let Some(c) = node.children.get(level) {
        walk(c, next, emit);
    }
    if let Some(p) = &node.plus {
        walk(p, next, emit);
    }
}

fn remove_in(node: &mut Node, rest: Option<&str>, key: ConnKey) -> bool {
    fn take(list: &mut Vec<Sub>, key: ConnKey) -> bool {
        match list.iter().position(|s| s.key == key) {
            Some(i) => {
                list.swap_remove(i);
                true
            }
            None => false,
        }
    }
    let Some(r) = rest else {
        return take(&mut node.exact, key);
    };
    let (level, next) = split(r);
    if level == "#" {
        return take(&mut node.hash, key);
    }
    if level == "+" {
        let Some(child) = node.plus.as_deref_mut() else {
            return false;
        };
        let removed = remove_in(child, next, key);
        if child.is_empty() {
            node.plus = None;
        }
        return removed;
    }
    let Some(child) = node.children.get_mut(level) else {
        return false;
    };
    let removed = remove_in(child, next, key);
    if child.is_empty() {
        node.children.remove(level);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{topic, QoS};

    fn key(i: u32) -> ConnKey {
        ConnKey { index: i, gen: 0 }
    }

    fn matched(t: &SubTree, topic: &str) -> Vec<u32> {
        let mut v = Vec::new();
        t.for_each_match(topic, |subs| v.extend(subs.iter().map(|s| s.key.index)));
        v.sort();
        v
    }

    #[test]
    fn trie_agrees_with_reference_matcher() {
        let filters = [
            "#", "+", "a", "a/b", "a/+", "a/#", "+/b", "+/+", "a/b/c", "$SYS/#", "$SYS/+", "/",
            "+/#", "a/+/c",
        ];
        let topics = [
            "a", "a/b", "a/b/c", "b", "/", "/b", "$SYS/x", "$SYS", "a//c", "x/b", "",
        ];
        let mut t = SubTree::default();
        for (i, f) in filters.iter().enumerate() {
            t.insert(
                f,
                Sub {
                    key: key(i as u32),
                    opts: SubOptions::qos(QoS::AtMostOnce),
                    id: 0,
                },
            );
        }
        for topic in topics {
            let expected: Vec<u32> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| topic::matches(f, topic))
                .map(|(i, _)| i as u32)
                .collect();
            assert_eq!(matched(&t, topic), expected, "topic {topic:?}");
        }
        for (i, f) in filters.iter().enumerate() {
            assert!(t.remove(f, key(i as u32)), "{f}");
        }
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn insert_replaces_same_session() {
        let mut t = SubTree::default();
        assert!(!t.insert(
            "a",
            Sub {
                key: key(1),
                opts: SubOptions::qos(QoS::AtMostOnce),
                id: 0,
            }
        ));
        assert!(t.insert(
            "a",
            Sub {
                key: key(1),
                opts: SubOptions::qos(QoS::ExactlyOnce),
                id: 0,
            }
        ));
        assert_eq!(t.len(), 1);
        let mut qos = None;
        t.for_each_match("a", |s| qos = Some(s[0].opts.qos));
        assert_eq!(qos, Some(QoS::ExactlyOnce));
        assert!(!t.remove("a", key(2)));
    }
}
