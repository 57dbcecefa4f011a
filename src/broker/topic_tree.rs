//! Subscription index ("topic tree"): maps MQTT topic filters to subscribers.
//!
//! The tree is a trie over topic levels. Every node has
//! * literal children keyed by level (a small `Vec` while there are few, a `HashMap` above that),
//! * a dedicated `plus` child for the `+` wildcard,
//! * a `hash` slot holding the subscribers of `<node path>/#`,
//! * a `subs` slot holding the subscribers of exactly `<node path>`.
//!
//! A slot stores the full filter string once (shared by all keys subscribed to that filter) plus the
//! `(key, value)` entries (a small `Vec` while there are few, a `HashMap` above that).
//!
//! Matching walks only the literal child for the current level, the `+` child and the `#` slots met
//! on the way, so its cost depends on the topic depth and on the number of matching nodes, not on the
//! total number of subscriptions.
//!
//! Nothing here recurses over the depth of a filter or topic (walking, pruning, iterating and dropping
//! use explicit stacks), so pathological filters such as 32k empty levels cannot overflow the stack.

use std::collections::HashMap;
use std::collections::hash_map;
use std::fmt;
use std::hash::Hash;
use std::mem;

/// Number of literal children kept in a plain `Vec` before switching to a `HashMap`.
const SMALL_CHILDREN: usize = 8;
/// Number of subscribers of one filter kept in a plain `Vec` before switching to a `HashMap`.
const SMALL_ENTRIES: usize = 8;

/// Maps MQTT topic filters to subscribers. `K` identifies a subscriber (e.g. a client id, or a shared
/// group entry), `V` is the per-subscription data (options). One entry per (filter, key).
pub struct TopicTree<K, V> {
    root: Node<K, V>,
    len: usize,
}

struct Node<K, V> {
    children: Children<K, V>,
    plus: Option<Box<Node<K, V>>>,
    /// Subscribers of the filter `<path>/#` (or `#` at the root).
    hash: Option<Box<Subs<K, V>>>,
    /// Subscribers of the filter `<path>` itself.
    subs: Option<Box<Subs<K, V>>>,
}

// The maps are boxed on purpose: it keeps the enums (and so every node / slot) at Vec size.
#[allow(clippy::box_collection)]
enum Children<K, V> {
    Small(Vec<(Box<str>, Node<K, V>)>),
    Map(Box<HashMap<Box<str>, Node<K, V>>>),
}

/// All subscriptions of one filter.
struct Subs<K, V> {
    filter: Box<str>,
    entries: Entries<K, V>,
}

#[allow(clippy::box_collection)]
enum Entries<K, V> {
    Small(Vec<(K, V)>),
    Map(Box<HashMap<K, V>>),
}

// ---------------------------------------------------------------------------------------------------
// Filter parsing

/// Splits a filter into its literal/`+` path and whether it ends with `#`.
/// `None` as path means "no levels" (the filter `#`).
fn parse_filter(filter: &str) -> (Option<&str>, bool) {
    if filter == "#" {
        (None, true)
    } else if let Some(path) = filter.strip_suffix("/#") {
        (Some(path), true)
    } else {
        (Some(filter), false)
    }
}

fn path_levels(path: Option<&str>) -> impl Iterator<Item = &str> {
    path.into_iter().flat_map(|p| p.split('/'))
}

// ---------------------------------------------------------------------------------------------------
// Entries

impl<K: Eq + Hash, V> Entries<K, V> {
    fn new() -> Self {
        Entries::Small(Vec::new())
    }

    fn len(&self) -> usize {
        match self {
            Entries::Small(v) => v.len(),
            Entries::Map(m) => m.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, key: &K) -> Option<&V> {
        match self {
            Entries::Small(v) => v.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            Entries::Map(m) => m.get(key),
        }
    }

    fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            Entries::Small(v) => {
                if let Some((_, old)) = v.iter_mut().find(|(k, _)| *k == key) {
                    return Some(mem::replace(old, value));
                }
                if v.len() < SMALL_ENTRIES {
                    // Most filters have a single subscriber: don't over-allocate.
                    v.reserve_exact(1);
                    v.push((key, value));
                } else {
                    let mut m: HashMap<K, V> = HashMap::with_capacity(v.len() * 2);
                    m.extend(v.drain(..));
                    m.insert(key, value);
                    *self = Entries::Map(Box::new(m));
                }
                None
            }
            Entries::Map(m) => m.insert(key, value),
        }
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        match self {
            Entries::Small(v) => {
                let pos = v.iter().position(|(k, _)| k == key)?;
                let (_, old) = v.swap_remove(pos);
                if v.capacity() > 2 * v.len() + 1 {
                    v.shrink_to_fit();
                }
                Some(old)
            }
            Entries::Map(m) => {
                let old = m.remove(key)?;
                if m.len() <= SMALL_ENTRIES / 2 {
                    let v: Vec<(K, V)> = m.drain().collect();
                    *self = Entries::Small(v);
                } else if m.capacity() > 4 * m.len() {
                    m.shrink_to(2 * m.len());
                }
                Some(old)
            }
        }
    }
}

impl<K, V> Entries<K, V> {
    fn iter(&self) -> EntriesIter<'_, K, V> {
        match self {
            Entries::Small(v) => EntriesIter::Small(v.iter()),
            Entries::Map(m) => EntriesIter::Map(m.iter()),
        }
    }
}

enum EntriesIter<'a, K, V> {
    Small(std::slice::Iter<'a, (K, V)>),
    Map(hash_map::Iter<'a, K, V>),
}

impl<'a, K, V> Iterator for EntriesIter<'a, K, V> {
    type Item = (&'a K, &'a V);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            EntriesIter::Small(it) => it.next().map(|(k, v)| (k, v)),
            EntriesIter::Map(it) => it.next(),
        }
    }
}

impl<K, V> Subs<K, V> {
    #[inline]
    fn emit(&self, f: &mut impl FnMut(&str, &K, &V)) {
        for (k, v) in self.entries.iter() {
            f(&self.filter, k, v);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Children

impl<K, V> Children<K, V> {
    fn len(&self) -> usize {
        match self {
            Children::Small(v) => v.len(),
            Children::Map(m) => m.len(),
        }
    }

    #[inline]
    fn get(&self, level: &str) -> Option<&Node<K, V>> {
        match self {
            Children::Small(v) => v.iter().find(|(l, _)| &**l == level).map(|(_, n)| n),
            Children::Map(m) => m.get(level),
        }
    }

    fn get_mut(&mut self, level: &str) -> Option<&mut Node<K, V>> {
        match self {
            Children::Small(v) => v.iter_mut().find(|(l, _)| &**l == level).map(|(_, n)| n),
            Children::Map(m) => m.get_mut(level),
        }
    }

    fn get_or_insert(&mut self, level: &str) -> &mut Node<K, V> {
        if let Children::Small(v) = self
            && v.len() >= SMALL_CHILDREN
            && !v.iter().any(|(l, _)| &**l == level)
        {
            let mut m: HashMap<Box<str>, Node<K, V>> = HashMap::with_capacity(v.len() * 2);
            m.extend(v.drain(..));
            *self = Children::Map(Box::new(m));
        }
        match self {
            Children::Small(v) => {
                let pos = match v.iter().position(|(l, _)| &**l == level) {
                    Some(pos) => pos,
                    None => {
                        v.reserve_exact(1);
                        v.push((level.into(), Node::new()));
                        v.len() - 1
                    }
                };
                &mut v[pos].1
            }
            Children::Map(m) => m.entry(level.into()).or_insert_with(Node::new),
        }
    }

    fn remove(&mut self, level: &str) -> Option<Node<K, V>> {
        match self {
            Children::Small(v) => {
                let pos = v.iter().position(|(l, _)| &**l == level)?;
                let (_, node) = v.swap_remove(pos);
                if v.capacity() > 2 * v.len() + 1 {
                    v.shrink_to_fit();
                }
                Some(node)
            }
            Children::Map(m) => {
                let node = m.remove(level)?;
                if m.len() <= SMALL_CHILDREN / 2 {
                    let v: Vec<(Box<str>, Node<K, V>)> = m.drain().collect();
                    *self = Children::Small(v);
                } else if m.capacity() > 4 * m.len() {
                    m.shrink_to(2 * m.len());
                }
                Some(node)
            }
        }
    }

    /// Moves every child node into `out` (used for non-recursive drop/iteration).
    fn drain_into(&mut self, out: &mut Vec<Node<K, V>>) {
        match mem::replace(self, Children::Small(Vec::new())) {
            Children::Small(v) => out.extend(v.into_iter().map(|(_, n)| n)),
            Children::Map(mut m) => out.extend(m.drain().map(|(_, n)| n)),
        }
    }

    fn for_each_node<'a>(&'a self, mut f: impl FnMut(&'a Node<K, V>)) {
        match self {
            Children::Small(v) => v.iter().for_each(|(_, n)| f(n)),
            Children::Map(m) => m.values().for_each(f),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Node

impl<K, V> Node<K, V> {
    fn new() -> Self {
        Node {
            children: Children::Small(Vec::new()),
            plus: None,
            hash: None,
            subs: None,
        }
    }

    /// Child for a filter level (`+` selects the wildcard child).
    fn child(&self, level: &str) -> Option<&Node<K, V>> {
        if level == "+" {
            self.plus.as_deref()
        } else {
            self.children.get(level)
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<K, V>> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            self.children.get_mut(level)
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node<K, V> {
        if level == "+" {
            self.plus.get_or_insert_with(|| Box::new(Node::new()))
        } else {
            self.children.get_or_insert(level)
        }
    }

    fn remove_child(&mut self, level: &str) -> Option<Node<K, V>> {
        if level == "+" {
            self.plus.take().map(|b| *b)
        } else {
            self.children.remove(level)
        }
    }

    fn child_count(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some())
    }

    fn slot_mut(&mut self, hash: bool) -> &mut Option<Box<Subs<K, V>>> {
        if hash { &mut self.hash } else { &mut self.subs }
    }

    fn slot(&self, hash: bool) -> Option<&Subs<K, V>> {
        if hash {
            self.hash.as_deref()
        } else {
            self.subs.as_deref()
        }
    }
}

impl<K, V> Drop for Node<K, V> {
    /// Non-recursive drop: a chain of 32k nested nodes must not overflow the stack.
    fn drop(&mut self) {
        if self.children.len() == 0 && self.plus.is_none() {
            return;
        }
        let mut stack = Vec::new();
        self.children.drain_into(&mut stack);
        if let Some(p) = self.plus.take() {
            stack.push(*p);
        }
        while let Some(mut node) = stack.pop() {
            node.children.drain_into(&mut stack);
            if let Some(p) = node.plus.take() {
                stack.push(*p);
            }
            // `node` is now childless; its own drop returns immediately.
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// TopicTree

impl<K, V> TopicTree<K, V> {
    /// Number of (filter, key) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of trie nodes including the root (for tests, metrics and debugging). An empty tree has 1.
    pub fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            count += 1;
            node.children.for_each_node(|n| stack.push(n));
            if let Some(p) = node.plus.as_deref() {
                stack.push(p);
            }
        }
        count
    }

    /// Calls `f(filter, key, value)` for every subscription whose filter matches the topic name
    /// `topic`. MQTT rules: `+` matches exactly one level (including an empty one), `#` matches the
    /// parent level and any number of levels below; topics starting with `$` are not matched by
    /// filters starting with `+` or `#` [MQTT-4.7.2-1]. `filter` is the full filter string.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&str, &K, &V)) {
        let dollar = topic.starts_with('$');
        // `rest`: Some(remaining levels) or None once every level of the topic has been consumed.
        // Only `+` branches are deferred to the stack; the literal branch is followed in place, so
        // topics without `+` subscriptions on their path never allocate.
        let mut pending: Vec<(&Node<K, V>, Option<&str>)> = Vec::new();
        let mut current = Some((&self.root, Some(topic)));
        while let Some((node, rest)) = current.take().or_else(|| pending.pop()) {
            let wildcards = !(dollar && std::ptr::eq(node, &self.root));
            if wildcards && let Some(h) = node.hash.as_deref() {
                h.emit(&mut f);
            }
            match rest {
                None => {
                    if let Some(s) = node.subs.as_deref() {
                        s.emit(&mut f);
                    }
                }
                Some(rest) => {
                    let (level, tail) = match rest.split_once('/') {
                        Some((level, tail)) => (level, Some(tail)),
                        None => (rest, None),
                    };
                    if wildcards && let Some(p) = node.plus.as_deref() {
                        pending.push((p, tail));
                    }
                    if let Some(c) = node.children.get(level) {
                        current = Some((c, tail));
                    }
                }
            }
        }
    }

    /// All entries `(filter, key, value)`, in no particular order — for persistence and debugging.
    pub fn iter(&self) -> Iter<'_, K, V> {
        Iter {
            nodes: vec![&self.root],
            pending: Vec::new(),
            current: None,
        }
    }
}

impl<K: Eq + Hash + Clone, V> TopicTree<K, V> {
    pub fn new() -> Self {
        TopicTree {
            root: Node::new(),
            len: 0,
        }
    }

    /// Adds or replaces the subscription of `key` to `filter`; returns the previous value.
    /// The filter is assumed valid (validated by the caller). A `#` that is not the last level is
    /// treated as a literal level (never matched by valid topic names).
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let (path, hash) = parse_filter(filter);
        let mut node = &mut self.root;
        for level in path_levels(path) {
            node = node.child_or_insert(level);
        }
        let subs = node.slot_mut(hash).get_or_insert_with(|| {
            Box::new(Subs {
                filter: filter.into(),
                entries: Entries::new(),
            })
        });
        let old = subs.entries.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes the subscription of `key` to `filter`; returns the value if it existed.
    /// Nodes left empty are pruned so memory is returned.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let (path, hash) = parse_filter(filter);
        let mut node = &mut self.root;
        for level in path_levels(path) {
            node = node.child_mut(level)?;
        }
        let slot = node.slot_mut(hash);
        let subs = slot.as_mut()?;
        let old = subs.entries.remove(key)?;
        self.len -= 1;
        if subs.entries.is_empty() {
            *slot = None;
            self.prune(path);
        }
        Some(old)
    }

    /// Removes the topmost node of the trailing chain of `path` that holds nothing but that chain.
    fn prune(&mut self, path: Option<&str>) {
        let Some(path) = path else { return }; // the root is never removed
        // Pass 1: find the depth (1-based) of the topmost removable node.
        let mut cut: Option<usize> = None;
        let mut node = &self.root;
        let mut levels = path.split('/').peekable();
        let mut depth = 0;
        while let Some(level) = levels.next() {
            depth += 1;
            let Some(next) = node.child(level) else {
                return;
            };
            node = next;
            let path_children = usize::from(levels.peek().is_some());
            if node.subs.is_none() && node.hash.is_none() && node.child_count() == path_children {
                cut.get_or_insert(depth);
            } else {
                cut = None;
            }
        }
        let Some(cut) = cut else { return };
        // Pass 2: detach it from its parent (dropping the chain is non-recursive).
        let mut node = &mut self.root;
        let mut levels = path.split('/');
        for _ in 1..cut {
            let Some(next) = levels.next().and_then(|l| node.child_mut(l)) else {
                return;
            };
            node = next;
        }
        if let Some(level) = levels.next() {
            node.remove_child(level);
        }
    }

    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        let (path, hash) = parse_filter(filter);
        let mut node = &self.root;
        for level in path_levels(path) {
            node = node.child(level)?;
        }
        node.slot(hash)?.entries.get(key)
    }
}

impl<K: Eq + Hash + Clone, V> Default for TopicTree<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> fmt::Debug for TopicTree<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicTree")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Iterator over all `(filter, key, value)` entries of a [`TopicTree`].
pub struct Iter<'a, K, V> {
    nodes: Vec<&'a Node<K, V>>,
    pending: Vec<&'a Subs<K, V>>,
    current: Option<(&'a str, EntriesIter<'a, K, V>)>,
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (String, &'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((filter, it)) = &mut self.current {
                if let Some((k, v)) = it.next() {
                    return Some(((*filter).to_owned(), k, v));
                }
                self.current = None;
            }
            if let Some(s) = self.pending.pop() {
                self.current = Some((&*s.filter, s.entries.iter()));
                continue;
            }
            let node = self.nodes.pop()?;
            self.pending.extend(node.subs.as_deref());
            self.pending.extend(node.hash.as_deref());
            node.children.for_each_node(|n| self.nodes.push(n));
            self.nodes.extend(node.plus.as_deref());
        }
    }
}

// ---------------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    fn matches<V: Clone>(t: &TopicTree<u32, V>, topic: &str) -> Vec<(String, u32, V)> {
        let mut out = Vec::new();
        t.for_each_match(topic, |f, k, v| out.push((f.to_owned(), *k, v.clone())));
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out
    }

    fn is_match(filter: &str, topic: &str) -> bool {
        let mut t = TopicTree::new();
        t.insert(filter, 1u32, ());
        let n = matches(&t, topic).len();
        assert!(n <= 1);
        n == 1
    }

    /// Reference matcher, written independently of the trie.
    fn brute_match(filter: &str, topic: &str) -> bool {
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        if topic.starts_with('$') && (f[0] == "+" || f[0] == "#") {
            return false;
        }
        let mut i = 0;
        loop {
            if i == f.len() {
                return i == t.len();
            }
            if f[i] == "#" && i + 1 == f.len() {
                return true;
            }
            if i == t.len() {
                return false;
            }
            if f[i] != "+" && f[i] != t[i] {
                return false;
            }
            i += 1;
        }
    }

    #[test]
    fn spec_examples() {
        let cases: &[(&str, &str, bool)] = &[
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            ("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
            ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true),
            ("sport/tennis/player1/#", "sport/tennis/player2", false),
            ("sport/tennis/player1/#", "sport/tennis", false),
            ("sport/#", "sport", true),
            ("sport/#", "sport/", true),
            ("sport/#", "sports", false),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player2", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/tennis/+", "sport/tennis", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("+", "finance", true),
            ("#", "/finance", true),
            ("#", "finance", true),
            ("#", "$SYS/monitor/Clients", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/#", "$SYS", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("+/#", "$SYS", false),
            ("a/$x/#", "a/$x/y", true),
            ("+/$x", "a/$x", true),
            ("a/+/b", "a//b", true),
            ("a//b", "a//b", true),
            ("a/+/b", "a/b", false),
            ("+", "", true),
            ("/", "/", true),
            ("+/+", "/", true),
            ("#", "", true),
            ("sport/tennis/player1", "sport/tennis/player1", true),
            ("sport/tennis/player1", "sport/tennis/player1/", false),
        ];
        for &(filter, topic, expected) in cases {
            assert_eq!(is_match(filter, topic), expected, "{filter:?} vs {topic:?}");
            assert_eq!(brute_match(filter, topic), expected, "brute {filter:?} vs {topic:?}");
        }
    }

    #[test]
    fn insert_replace_get_remove() {
        let mut t = TopicTree::new();
        assert!(t.is_empty());
        assert_eq!(t.insert("a/b", 1u32, "x"), None);
        assert_eq!(t.insert("a/b", 1, "y"), Some("x"));
        assert_eq!(t.len(), 1);
        assert_eq!(t.get("a/b", &1), Some(&"y"));
        assert_eq!(t.get("a/b", &2), None);
        assert_eq!(t.get("a", &1), None);
        assert_eq!(t.get("a/b/#", &1), None);
        assert_eq!(t.remove("a/b", &2), None);
        assert_eq!(t.remove("a/c", &1), None);
        assert_eq!(t.remove("a/b/c", &1), None);
        assert_eq!(t.remove("a/b", &1), Some("y"));
        assert_eq!(t.remove("a/b", &1), None);
        assert!(t.is_empty());
        assert_eq!(t.node_count(), 1);
    }

    #[test]
    fn remove_prunes() {
        let filters = [
            "#",
            "+",
            "a",
            "a/#",
            "a/+",
            "a/+/c",
            "a/b/c/d/e/f",
            "a/b/c",
            "+/+/+/#",
            "/",
            "//",
            "///#",
            "$SYS/#",
            "a/b/c/d/e/g",
        ];
        // Remove in several orders; every time the tree must end up with only the root.
        for rot in 0..filters.len() {
            let mut t = TopicTree::new();
            for (i, f) in filters.iter().enumerate() {
                t.insert(f, i as u32, ());
                t.insert(f, 100, ());
            }
            assert_eq!(t.len(), 2 * filters.len());
            for j in 0..filters.len() {
                let f = filters[(j * 5 + rot) % filters.len()];
                let i = filters.iter().position(|x| *x == f).unwrap() as u32;
                assert_eq!(t.remove(f, &100), Some(()));
                assert_eq!(t.remove(f, &i), Some(()));
                // Everything else is still there.
                for (k, g) in filters.iter().enumerate() {
                    let present = t.get(g, &(k as u32)).is_some();
                    let removed = (0..=j).any(|jj| filters[(jj * 5 + rot) % filters.len()] == *g);
                    assert_eq!(present, !removed, "{g} after removing {f}");
                }
            }
            assert!(t.is_empty());
            assert_eq!(t.node_count(), 1);
        }
    }

    #[test]
    fn prune_keeps_shared_prefixes() {
        let mut t = TopicTree::new();
        t.insert("a/b/c/d", 1u32, ());
        t.insert("a/b", 1, ());
        assert_eq!(t.node_count(), 5);
        t.remove("a/b/c/d", &1);
        assert_eq!(t.node_count(), 3); // root, a, b
        assert_eq!(matches(&t, "a/b").len(), 1);
        t.remove("a/b", &1);
        assert_eq!(t.node_count(), 1);

        t.insert("x/+/#", 1, ());
        t.insert("x/+", 2, ());
        t.remove("x/+/#", &1);
        assert_eq!(t.node_count(), 3);
        assert_eq!(matches(&t, "x/y"), vec![("x/+".into(), 2, ())]);
        t.remove("x/+", &2);
        assert_eq!(t.node_count(), 1);
    }

    #[test]
    fn several_keys_and_overlapping_filters() {
        let mut t = TopicTree::new();
        // Many keys on one filter (crosses the small-vec -> map threshold and back).
        for k in 0..50u32 {
            t.insert("s/+/t", k, k * 10);
        }
        // The same key on overlapping filters: one callback per matching filter.
        t.insert("s/#", 7, 1);
        t.insert("s/x/t", 7, 2);
        t.insert("#", 7, 3);
        t.insert("s/x/#", 7, 4);
        t.insert("s/y/t", 7, 5); // does not match
        let m = matches(&t, "s/x/t");
        assert_eq!(m.len(), 54);
        let for7: Vec<(String, u32)> = m.iter().filter(|e| e.1 == 7).map(|e| (e.0.clone(), e.2)).collect();
        assert_eq!(
            for7,
            vec![
                ("#".to_owned(), 3),
                ("s/#".to_owned(), 1),
                ("s/+/t".to_owned(), 70),
                ("s/x/#".to_owned(), 4),
                ("s/x/t".to_owned(), 2),
            ]
        );
        for k in 0..50u32 {
            assert_eq!(t.get("s/+/t", &k), Some(&(k * 10)));
        }
        for k in 0..48u32 {
            assert_eq!(t.remove("s/+/t", &k), Some(k * 10));
        }
        assert_eq!(matches(&t, "s/q/t").len(), 4); // 48, 49, s/#, #
        assert_eq!(t.len(), 7);
    }

    #[test]
    fn many_children_map_and_back() {
        let mut t = TopicTree::new();
        for i in 0..100u32 {
            t.insert(&format!("d/{i}/t"), i, i);
        }
        for i in 0..100u32 {
            assert_eq!(matches(&t, &format!("d/{i}/t")), vec![(format!("d/{i}/t"), i, i)]);
        }
        for i in 0..97u32 {
            assert_eq!(t.remove(&format!("d/{i}/t"), &i), Some(i));
        }
        assert_eq!(t.node_count(), 1 + 1 + 3 * 2);
        for i in 97..100u32 {
            assert_eq!(matches(&t, &format!("d/{i}/t")).len(), 1);
            assert_eq!(t.remove(&format!("d/{i}/t"), &i), Some(i));
        }
        assert_eq!(t.node_count(), 1);
    }

    #[test]
    fn iter_lists_everything() {
        let mut t = TopicTree::new();
        let mut expected = BTreeSet::new();
        for (i, f) in ["#", "a/#", "a", "+/b", "a/b", "", "/"].iter().enumerate() {
            for k in 0..(i as u32 + 1) * 2 {
                t.insert(f, k, i);
                expected.insert((f.to_string(), k, i));
            }
        }
        let got: BTreeSet<(String, u32, usize)> = t.iter().map(|(f, k, v)| (f, *k, *v)).collect();
        assert_eq!(got, expected);
        assert_eq!(t.iter().count(), t.len());
        assert_eq!(TopicTree::<u32, ()>::new().iter().count(), 0);
    }

    #[test]
    fn deep_filters_do_not_overflow_the_stack() {
        let deep = "/".repeat(100_000); // 100_001 empty levels
        let deep_plus = vec!["+"; 50_000].join("/");
        let deep_topic = vec!["x"; 50_000].join("/");
        let mut t = TopicTree::new();
        t.insert(&deep, 1u32, ());
        t.insert(&deep_plus, 2, ());
        t.insert(&format!("{deep}/#"), 3, ());
        assert_eq!(matches(&t, &deep).len(), 2);
        assert_eq!(matches(&t, &deep_topic).len(), 1);
        assert_eq!(t.iter().count(), 3);
        assert!(t.node_count() > 150_000);
        assert_eq!(t.remove(&deep, &1), Some(()));
        assert_eq!(t.remove(&deep_plus, &2), Some(()));
        assert_eq!(t.node_count(), 100_002);
        drop(t); // still holds a 100k-deep chain
    }

    #[test]
    fn compact_layout() {
        // Every node costs this much: keep the enums at Vec size (boxed maps).
        assert!(mem::size_of::<Children<u64, u8>>() <= 32);
        assert!(mem::size_of::<Node<u64, u8>>() <= 56);
        assert!(mem::size_of::<Subs<u64, u8>>() <= 48);
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn random_filter(rng: &mut XorShift) -> String {
        const LEVELS: [&str; 6] = ["a", "b", "", "$s", "+", "+"];
        let n = 1 + rng.below(4);
        let mut levels: Vec<&str> = (0..n).map(|_| LEVELS[rng.below(LEVELS.len())]).collect();
        if rng.below(4) == 0 {
            if rng.below(2) == 0 {
                levels.push("#");
            } else {
                *levels.last_mut().unwrap() = "#";
            }
        }
        levels.join("/")
    }

    fn random_topic(rng: &mut XorShift) -> String {
        const LEVELS: [&str; 5] = ["a", "b", "", "$s", "c"];
        let n = 1 + rng.below(5);
        let levels: Vec<&str> = (0..n).map(|_| LEVELS[rng.below(LEVELS.len())]).collect();
        levels.join("/")
    }

    #[test]
    fn differential_against_brute_force() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut total_matches = 0;
        for round in 0..20 {
            let mut t: TopicTree<u32, u64> = TopicTree::new();
            let mut shadow: HashMap<(String, u32), u64> = HashMap::new();
            for step in 0..1500 {
                let filter = random_filter(&mut rng);
                let key = rng.below(12) as u32;
                if rng.below(3) == 0 {
                    assert_eq!(t.remove(&filter, &key), shadow.remove(&(filter.clone(), key)));
                } else {
                    let v = rng.next();
                    assert_eq!(t.insert(&filter, key, v), shadow.insert((filter.clone(), key), v));
                }
                assert_eq!(t.len(), shadow.len());
                if step % 100 == 0 {
                    for _ in 0..50 {
                        let topic = random_topic(&mut rng);
                        let mut expected: Vec<(String, u32, u64)> = shadow
                            .iter()
                            .filter(|((f, _), _)| brute_match(f, &topic))
                            .map(|((f, k), v)| (f.clone(), *k, *v))
                            .collect();
                        expected.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
                        total_matches += expected.len();
                        assert_eq!(matches(&t, &topic), expected, "round {round} topic {topic:?}");
                    }
                    for ((f, k), v) in &shadow {
                        assert_eq!(t.get(f, k), Some(v));
                    }
                    let listed: HashMap<(String, u32), u64> = t.iter().map(|(f, k, v)| ((f, *k), *v)).collect();
                    assert_eq!(listed, shadow);
                }
            }
            // Drain everything; the trie must collapse to the root.
            let keys: Vec<(String, u32)> = shadow.keys().cloned().collect();
            for (f, k) in keys {
                assert_eq!(t.remove(&f, &k), shadow.remove(&(f.clone(), k)));
            }
            assert!(t.is_empty());
            assert_eq!(t.node_count(), 1);
        }
        assert!(
            total_matches > 10_000,
            "the random workload must produce matches: {total_matches}"
        );
    }

    fn vm_rss_kb() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// `cargo test --release -- --ignored --nocapture million`
    #[test]
    #[ignore]
    fn million_subscriptions_benchmark() {
        use std::time::Instant;
        const N: u32 = 1_000_000;
        let rss0 = vm_rss_kb().unwrap_or(0);
        let mut t: TopicTree<u32, u8> = TopicTree::new();
        let start = Instant::now();
        for i in 0..N {
            t.insert(&format!("devices/{i}/telemetry/+"), i, 1);
        }
        // Some wildcards: monitoring clients, per-device catch-alls, a few global listeners.
        for k in 0..100 {
            t.insert("devices/+/telemetry/#", N + k, 0);
        }
        for i in (0..N).step_by(1000) {
            t.insert(&format!("devices/{i}/#"), N + 1000 + i, 2);
        }
        for k in 0..5 {
            t.insert("#", N + 10_000_000 + k, 0);
        }
        let insert = start.elapsed();
        let rss1 = vm_rss_kb().unwrap_or(0);
        println!(
            "inserted {} subscriptions ({} nodes) in {:?} ({:.0} ns/insert); RSS +{} MiB ({:.0} bytes/sub)",
            t.len(),
            t.node_count(),
            insert,
            insert.as_nanos() as f64 / t.len() as f64,
            (rss1 - rss0) / 1024,
            (rss1 - rss0) as f64 * 1024.0 / t.len() as f64
        );

        let mut rng = XorShift(42);
        let topics: Vec<String> = (0..100_000)
            .map(|_| format!("devices/{}/telemetry/temp", rng.below(N as usize)))
            .collect();
        let start = Instant::now();
        let mut callbacks = 0usize;
        for topic in &topics {
            t.for_each_match(topic, |_, _, _| callbacks += 1);
        }
        let elapsed = start.elapsed();
        println!(
            "100k matches in {:?}: {:.0} ns/match, {:.2} M matches/s, {} callbacks ({:.1}/match)",
            elapsed,
            elapsed.as_nanos() as f64 / 1e5,
            1e5 / elapsed.as_secs_f64() / 1e6,
            callbacks,
            callbacks as f64 / 1e5
        );

        let status: Vec<String> = (0..100_000)
            .map(|_| format!("devices/{}/status", rng.below(N as usize)))
            .collect();
        let start = Instant::now();
        let mut callbacks = 0usize;
        for topic in &status {
            t.for_each_match(topic, |_, _, _| callbacks += 1);
        }
        let elapsed = start.elapsed();
        println!(
            "100k 'devices/<i>/status' (few matches, lookup cost) in {:?}: {:.0} ns/match, {:.1} callbacks/match",
            elapsed,
            elapsed.as_nanos() as f64 / 1e5,
            callbacks as f64 / 1e5
        );

        let start = Instant::now();
        let mut misses = 0usize;
        for i in 0..100_000u32 {
            t.for_each_match(&format!("other/{i}/x"), |_, _, _| misses += 1);
        }
        println!("100k non-device topics (only '#' matches) in {:?}", start.elapsed());
        assert_eq!(misses, 500_000);

        let start = Instant::now();
        for i in 0..N {
            t.remove(&format!("devices/{i}/telemetry/+"), &i);
        }
        let removal = start.elapsed();
        println!(
            "removed 1M in {:?}; {} entries / {} nodes left; RSS now +{} MiB",
            removal,
            t.len(),
            t.node_count(),
            vm_rss_kb().unwrap_or(0).saturating_sub(rss0) / 1024
        );
    }
}
