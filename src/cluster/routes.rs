//! The route table: which other nodes have subscribers for which filters. Every node keeps a
//! full copy, fed by deltas (`RoutesAdded` / `RoutesRemoved`) and repaired by anti-entropy
//! (digest, then a full snapshot on mismatch), so a lost delta or a restart cannot leave a
//! stale or missing route for long. A publish is forwarded once per node whose filters match.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::NodeId;
use super::wire::filter_set_hash;
use crate::broker::topic_tree::TopicTree;

#[derive(Debug, Default)]
pub struct RemoteRoutes {
    by_node: HashMap<NodeId, HashSet<String>>,
    /// Plain filters, by node.
    tree: TopicTree<NodeId, ()>,
    /// Shared subscription groups by their inner filter, keyed by (node, `$share/...` key).
    shared: TopicTree<(NodeId, Arc<str>), ()>,
}

impl RemoteRoutes {
    pub fn add(&mut self, node: &NodeId, filters: impl IntoIterator<Item = String>) {
        let set = self.by_node.entry(node.clone()).or_default();
        for f in filters {
            match crate::mqtt::topic::parse_shared(&f) {
                Ok(Some(s)) => {
                    self.shared.insert(s.filter, (node.clone(), Arc::from(f.as_str())), ());
                }
                _ => {
                    self.tree.insert(&f, node.clone(), ());
                }
            }
            set.insert(f);
        }
    }

    pub fn remove(&mut self, node: &NodeId, filters: impl IntoIterator<Item = String>) {
        let Some(set) = self.by_node.get_mut(node) else { return };
        for f in filters {
            if set.remove(&f) {
                Self::unindex(&mut self.tree, &mut self.shared, node, &f);
            }
        }
    }

    /// Replaces everything known for `node` (a snapshot).
    pub fn replace(&mut self, node: &NodeId, filters: Vec<String>) {
        self.drop_node(node);
        self.add(node, filters);
    }

    /// The plain (not shared) filters known for `node`.
    pub fn plain_filters_of(&self, node: &NodeId) -> Vec<String> {
        self.by_node
            .get(node)
            .map(|set| {
                set.iter()
                    .filter(|f| !matches!(crate::mqtt::topic::parse_shared(f), Ok(Some(_))))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets a node that left the cluster.
    pub fn drop_node(&mut self, node: &NodeId) {
        if let Some(set) = self.by_node.remove(node) {
            for f in set {
                Self::unindex(&mut self.tree, &mut self.shared, node, &f);
            }
        }
    }

    fn unindex(
        tree: &mut TopicTree<NodeId, ()>,
        shared: &mut TopicTree<(NodeId, Arc<str>), ()>,
        node: &NodeId,
        f: &str,
    ) {
        match crate::mqtt::topic::parse_shared(f) {
            Ok(Some(s)) => {
                shared.remove(s.filter, &(node.clone(), Arc::from(f)));
            }
            _ => {
                tree.remove(f, node);
            }
        }
    }

    /// The shared subscription groups matching `topic`, with each node that has members.
    pub fn shared_for(&self, topic: &str) -> Vec<(Arc<str>, NodeId)> {
        let mut out = Vec::new();
        self.shared
            .for_each_match(topic, |_, (node, group), _| out.push((group.clone(), node.clone())));
        out
    }

    /// The nodes with at least one subscription matching `topic`, each once.
    pub fn nodes_for(&self, topic: &str) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = Vec::new();
        self.tree.for_each_match(topic, |_, node, _| {
            if !nodes.contains(node) {
                nodes.push(node.clone());
            }
        });
        nodes
    }

    /// (count, hash) of what we hold for `node`, to compare with its digest.
    pub fn digest_of(&self, node: &NodeId) -> (u64, u64) {
        match self.by_node.get(node) {
            Some(set) => (set.len() as u64, filter_set_hash(set.iter().map(String::as_str))),
            None => (0, filter_set_hash(std::iter::empty())),
        }
    }

    pub fn len(&self) -> usize {
        self.tree.len() + self.shared.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        NodeId::from(s)
    }

    #[test]
    fn one_forward_per_node() {
        let mut r = RemoteRoutes::default();
        r.add(&n("b"), ["a/#".to_string(), "a/+".to_string()]);
        r.add(&n("c"), ["x".to_string()]);
        assert_eq!(r.nodes_for("a/1"), vec![n("b")]);
        assert!(r.nodes_for("y").is_empty());
    }

    #[test]
    fn shared_groups_are_kept_apart_from_plain_filters() {
        let mut r = RemoteRoutes::default();
        r.add(&n("b"), ["$share/g/jobs/#".to_string()]);
        r.add(&n("c"), ["$share/g/jobs/#".to_string(), "jobs/+".to_string()]);
        assert_eq!(
            r.nodes_for("jobs/1"),
            vec![n("c")],
            "only plain filters get a plain forward"
        );
        let mut groups = r.shared_for("jobs/1");
        groups.sort();
        assert_eq!(
            groups,
            vec![
                (Arc::from("$share/g/jobs/#"), n("b")),
                (Arc::from("$share/g/jobs/#"), n("c"))
            ]
        );
        r.remove(&n("b"), ["$share/g/jobs/#".to_string()]);
        assert_eq!(r.shared_for("jobs/1").len(), 1);
    }

    #[test]
    fn snapshot_replaces_and_drop_forgets() {
        let mut r = RemoteRoutes::default();
        r.add(&n("b"), ["old".to_string()]);
        r.replace(&n("b"), vec!["new".to_string()]);
        assert!(r.nodes_for("old").is_empty());
        assert_eq!(r.nodes_for("new"), vec![n("b")]);
        assert_eq!(r.digest_of(&n("b")), (1, filter_set_hash(["new"].into_iter())));
        r.drop_node(&n("b"));
        assert!(r.is_empty());
    }

    #[test]
    fn deltas_lost_and_repaired_by_digest() {
        // b holds {a, b}; we missed the delta for "b": the digest shows it.
        let mut r = RemoteRoutes::default();
        r.add(&n("b"), ["a".to_string()]);
        let theirs = (2, filter_set_hash(["a", "b"].into_iter()));
        assert_ne!(r.digest_of(&n("b")), theirs);
        r.replace(&n("b"), vec!["a".into(), "b".into()]);
        assert_eq!(r.digest_of(&n("b")), theirs);
    }

    /// Three nodes change their subscriptions at random; deltas between them are lost (20 %)
    /// and reordered. After one anti-entropy round (digest, snapshot on mismatch) every node's
    /// view of every other node equals the truth.
    #[test]
    #[allow(clippy::needless_range_loop)] // nodes are indices into several tables at once
    fn lossy_reordered_deltas_converge_after_anti_entropy() {
        let names = [n("a"), n("b"), n("c")];
        let mut truth: Vec<HashSet<String>> = vec![HashSet::new(); 3];
        let mut views: Vec<RemoteRoutes> = (0..3).map(|_| RemoteRoutes::default()).collect();
        let mut in_flight: Vec<(usize, usize, bool, String)> = Vec::new(); // (from, to, add, filter)
        let mut x: u64 = 0x9E37_79B9;
        let mut rand = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for _ in 0..3000 {
            let node = rand(3) as usize;
            let filter = format!("t/{}/#", rand(12));
            let add = !truth[node].contains(&filter);
            if add {
                truth[node].insert(filter.clone());
            } else {
                truth[node].remove(&filter);
            }
            for to in (0..3).filter(|&t| t != node) {
                if rand(5) != 0 {
                    in_flight.push((node, to, add, filter.clone()));
                }
            }
            // Deliver a random queued delta now and then, out of order.
            while !in_flight.is_empty() && rand(2) == 0 {
                let i = rand(in_flight.len() as u64) as usize;
                let (from, to, add, f) = in_flight.swap_remove(i);
                if add {
                    views[to].add(&names[from], [f]);
                } else {
                    views[to].remove(&names[from], [f]);
                }
            }
        }
        // Anti-entropy: each node compares every peer's digest and asks for a snapshot.
        for to in 0..3 {
            for from in (0..3).filter(|&f| f != to) {
                let digest = (
                    truth[from].len() as u64,
                    filter_set_hash(truth[from].iter().map(String::as_str)),
                );
                if views[to].digest_of(&names[from]) != digest {
                    views[to].replace(&names[from], truth[from].iter().cloned().collect());
                }
            }
        }
        for to in 0..3 {
            for from in (0..3).filter(|&f| f != to) {
                assert_eq!(views[to].digest_of(&names[from]).0, truth[from].len() as u64);
                for topic in (0..12).map(|i| format!("t/{i}/x")) {
                    let routed = views[to].nodes_for(&topic).contains(&names[from]);
                    let expected = truth[from].contains(&format!("t/{}/#", &topic[2..topic.len() - 2]));
                    assert_eq!(routed, expected, "node {to}'s view of {from} for {topic}");
                }
            }
        }
    }
}
