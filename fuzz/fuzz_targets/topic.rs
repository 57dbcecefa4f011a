//! Topic helpers and the subscription tree.
//!
//! Input (lossily UTF-8 decoded) is split on NUL, which no MQTT string may contain: the last part
//! is the topic name, the parts before it are topic filters (at most 16). With a single part, it
//! is used as both the filter and the topic.
//!
//! Checks:
//! * `valid_topic_filter`, `valid_topic_name`, `parse_shared`, `matches` never panic;
//! * `parse_shared` returns parts that put back together give the input, with a valid filter and a
//!   well-formed share name;
//! * a valid topic name is a valid filter that matches itself;
//! * for a valid topic name, `TopicTree::for_each_match` reports exactly the valid filters for
//!   which `matches` is true, also after each removal; `len`, `get` and `iter` agree with what was
//!   inserted, and removing everything leaves an empty tree with only the root node.
#![no_main]

use std::collections::BTreeSet;

use apiary::broker::topic_tree::TopicTree;
use apiary::mqtt::topic::{matches, parse_shared, valid_topic_filter, valid_topic_name};
use libfuzzer_sys::fuzz_target;

const MAX_FILTERS: usize = 16;

fn check_shared(f: &str) {
    if let Ok(Some(shared)) = parse_shared(f) {
        assert_eq!(format!("$share/{}/{}", shared.group, shared.filter), f);
        assert!(!shared.group.is_empty());
        assert!(!shared.group.contains(['+', '#', '/']), "bad share name {:?}", shared.group);
        assert!(valid_topic_filter(shared.filter), "invalid filter in {shared:?}");
    }
}

/// Keys of the subscriptions the tree reports for `topic`, checking the reported filter string.
fn tree_matches(tree: &TopicTree<usize, ()>, filters: &[&str], topic: &str) -> BTreeSet<usize> {
    let mut found = BTreeSet::new();
    tree.for_each_match(topic, |filter, &key, _| {
        assert_eq!(filter, filters[key], "tree reported the wrong filter string for key {key}");
        assert!(found.insert(key), "tree reported key {key} ({filter:?}) twice for {topic:?}");
    });
    found
}

fn check_tree(tree: &TopicTree<usize, ()>, filters: &[&str], live: &BTreeSet<usize>, topic: Option<&str>) {
    assert_eq!(tree.len(), live.len());
    assert_eq!(tree.is_empty(), live.is_empty());
    let listed: BTreeSet<usize> = tree
        .iter()
        .map(|(filter, &key, _)| {
            assert_eq!(filter, filters[key]);
            key
        })
        .collect();
    assert_eq!(&listed, live, "iter() differs from the live subscriptions");
    for &key in live {
        assert!(tree.get(filters[key], &key).is_some(), "get({:?}, {key}) is None", filters[key]);
    }
    if let Some(topic) = topic {
        let want: BTreeSet<usize> = live.iter().copied().filter(|&k| matches(filters[k], topic)).collect();
        let got = tree_matches(tree, filters, topic);
        assert_eq!(
            got,
            want,
            "TopicTree and matches() disagree for topic {topic:?}; filters {:?}",
            live.iter().map(|&k| filters[k]).collect::<Vec<_>>()
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parts: Vec<&str> = text.split('\0').collect();
    let (topic, filters) = match parts.split_last() {
        Some((topic, [])) => (*topic, vec![*topic]),
        Some((topic, filters)) => (*topic, filters.iter().take(MAX_FILTERS).copied().collect()),
        None => return,
    };

    let topic_ok = valid_topic_name(topic);
    check_shared(topic);
    if topic_ok {
        assert!(valid_topic_filter(topic), "valid topic name {topic:?} is not a valid filter");
        assert!(matches(topic, topic), "{topic:?} does not match itself");
    }

    let mut tree: TopicTree<usize, ()> = TopicTree::new();
    let mut live = BTreeSet::new();
    for (key, &filter) in filters.iter().enumerate() {
        check_shared(filter);
        if !valid_topic_filter(filter) {
            continue;
        }
        if topic_ok {
            let _ = matches(filter, topic);
        }
        assert!(tree.insert(filter, key, ()).is_none());
        live.insert(key);
    }
    let topic = topic_ok.then_some(topic);
    check_tree(&tree, &filters, &live, topic);
    if live.is_empty() {
        return;
    }

    // Re-inserting replaces; the tree does not grow.
    let nodes = tree.node_count();
    for &key in &live {
        assert!(tree.insert(filters[key], key, ()).is_some());
    }
    assert_eq!(tree.node_count(), nodes);
    check_tree(&tree, &filters, &live, topic);

    // Remove every other subscription, then the rest, checking after each removal.
    let order: Vec<usize> = live
        .iter()
        .copied()
        .step_by(2)
        .chain(live.iter().copied().skip(1).step_by(2))
        .collect();
    for key in order {
        assert!(tree.remove(filters[key], &key).is_some(), "remove({:?}, {key}) found nothing", filters[key]);
        assert!(tree.remove(filters[key], &key).is_none());
        live.remove(&key);
        check_tree(&tree, &filters, &live, topic);
    }
    assert!(tree.is_empty());
    assert_eq!(tree.node_count(), 1, "nodes left after removing every subscription");
});
