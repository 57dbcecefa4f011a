//! Where a persistent session's replicas live: a pure function of the client id and the live
//! membership, the same on every node that sees the same members.
//!
//! A session lives on its *home* node (where its client connected last). Its backups are the
//! `replica-count − 1` other live nodes that rank highest for the client id by rendezvous
//! (highest-random-weight) hashing: every (client id, node id) pair gets a score and the highest
//! scores win. When a node joins or leaves, only the sessions for which it ranks among the top
//! change backups, so a membership change moves about `1/n` of the replicas.
//!
//! The score is FNV-1a over both ids followed by a SplitMix64 finaliser: fixed constants, so it
//! is the same across builds, platforms and Rust releases (unlike `DefaultHasher`).

use super::NodeId;

/// The rendezvous score of `node` for `client`; higher ranks first.
pub fn score(client: &str, node: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut h = OFFSET;
    // The separator keeps ("ab", "c") and ("a", "bc") apart.
    for b in client.bytes().chain(std::iter::once(0xff)).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    // SplitMix64: spreads FNV's weak low bits over the whole word.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// How many copies a session gets: the configured count, reduced to the cluster size.
pub fn effective_count(replica_count: usize, live_nodes: usize) -> usize {
    replica_count.min(live_nodes).max(1)
}

/// The backups of `client`'s session living on `home`: the `effective_count − 1` nodes of
/// `live` (the home excluded, whether listed or not) that rank highest, best first. Ties (two
/// node ids with the same score) are broken by node id, so the order is total.
pub fn backups(client: &str, home: &str, live: &[NodeId], replica_count: usize) -> Vec<NodeId> {
    let mut others: Vec<(u64, &NodeId)> = live
        .iter()
        .filter(|n| &***n != home)
        .map(|n| (score(client, n), n))
        .collect();
    others.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    others.dedup_by(|a, b| a.1 == b.1);
    let wanted = effective_count(replica_count, others.len() + 1) - 1;
    others.into_iter().take(wanted).map(|(_, n)| n.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn nodes(ids: &[&str]) -> Vec<NodeId> {
        ids.iter().map(|s| Arc::from(*s)).collect()
    }

    #[test]
    fn the_score_is_fixed_across_builds() {
        // Changing these would move every replica of a running cluster during an upgrade.
        assert_eq!(score("client", "node"), 0xca7b_82b5_980c_f036);
        assert_ne!(score("ab", "c"), score("a", "bc"));
    }

    #[test]
    fn backups_exclude_the_home_and_respect_the_count() {
        let live = nodes(&["a", "b", "c", "d"]);
        for client in ["x", "y", "sensor-17", ""] {
            let two = backups(client, "a", &live, 2);
            assert_eq!(two.len(), 1);
            assert_ne!(&*two[0], "a");
            let three = backups(client, "a", &live, 3);
            assert_eq!(three.len(), 2);
            assert_eq!(three[0], two[0], "a larger count extends the same ranking");
            assert!(!three.iter().any(|n| &**n == "a"));
        }
        assert!(backups("x", "a", &live, 1).is_empty(), "count 1: the home only");
    }

    #[test]
    fn a_count_above_the_cluster_size_uses_every_node() {
        let live = nodes(&["a", "b", "c"]);
        let mut all = backups("x", "b", &live, 7);
        all.sort();
        assert_eq!(all, nodes(&["a", "c"]));
        assert_eq!(effective_count(7, 3), 3);
        assert!(backups("x", "a", &nodes(&["a"]), 2).is_empty(), "alone: no backup");
        assert_eq!(effective_count(2, 0), 1);
    }

    #[test]
    fn the_order_of_the_member_list_does_not_matter() {
        let a = nodes(&["n1", "n2", "n3", "n4", "n5"]);
        let mut b = a.clone();
        b.reverse();
        for i in 0..100 {
            let client = format!("c{i}");
            assert_eq!(backups(&client, "n1", &a, 3), backups(&client, "n1", &b, 3));
        }
    }

    /// A node joining takes over only the sessions for which it ranks top; the others keep
    /// their backup, and the load spreads evenly.
    #[test]
    fn a_join_moves_few_replicas_and_the_load_is_even() {
        let before = nodes(&["n1", "n2", "n3", "n4"]);
        let mut after = before.clone();
        after.push(Arc::from("n5"));
        let mut moved = 0;
        let mut load: HashMap<NodeId, usize> = HashMap::new();
        let total = 4000;
        for i in 0..total {
            let client = format!("client-{i}");
            let old = backups(&client, "n1", &before, 2);
            let new = backups(&client, "n1", &after, 2);
            if old != new {
                moved += 1;
                assert_eq!(&*new[0], "n5", "only to the new node");
            }
            *load.entry(new[0].clone()).or_default() += 1;
        }
        // Four candidates besides the home: about a quarter moves to the new one.
        assert!((total / 6..total / 3).contains(&moved), "moved {moved}");
        for (node, n) in load {
            assert!((total / 6..total / 3).contains(&n), "{node}: {n}");
        }
    }
}
