//! Topic matching with one million subscriptions in a `TopicTree`.
//! `cargo bench --bench topic_tree` (add `-- --quick` for a short run).
//!
//! The subscriptions look like a multi-tenant deployment: 1,000 tenants × 1,000 devices, 80 %
//! exact filters, 10 % `+` on the last level, 5 % `+` on the middle level, 5 % `tenant/T/#`.
//! Topics matched are `tenant/T/device/D/temp` for pseudo-random T and D (hits), and a topic in
//! an unknown tenant (miss).

use std::hint::black_box;

use apiary::broker::topic_tree::TopicTree;
use criterion::{Criterion, criterion_group, criterion_main};

const SUBSCRIPTIONS: u32 = 1_000_000;

fn filter(i: u32) -> String {
    let (tenant, device) = (i % 1000, i / 1000);
    match i % 20 {
        0 | 1 => format!("tenant/{tenant}/device/{device}/+"),
        2 => format!("tenant/{tenant}/+/{device}/temp"),
        3 => format!("tenant/{tenant}/#"),
        _ => format!("tenant/{tenant}/device/{device}/temp"),
    }
}

fn build() -> TopicTree<u32, u8> {
    let mut tree = TopicTree::new();
    for i in 0..SUBSCRIPTIONS {
        tree.insert(&filter(i), i, 1);
    }
    assert_eq!(tree.len(), SUBSCRIPTIONS as usize);
    tree
}

fn matching(c: &mut Criterion) {
    let tree = build();
    // A fixed pseudo-random walk over tenants and devices (no RNG dependency, same every run).
    let topics: Vec<String> = (0..1024u32)
        .map(|i| {
            let x = i.wrapping_mul(2_654_435_761);
            format!("tenant/{}/device/{}/temp", x % 1000, (x >> 10) % 1000)
        })
        .collect();
    let mut group = c.benchmark_group("topic_tree_1M");
    let mut next = 0;
    group.bench_function("match_hit", |b| {
        b.iter(|| {
            next = (next + 1) % topics.len();
            let mut n = 0u32;
            tree.for_each_match(black_box(&topics[next]), |_, _, _| n += 1);
            black_box(n)
        })
    });
    group.bench_function("match_miss", |b| {
        b.iter(|| {
            let mut n = 0u32;
            tree.for_each_match(black_box("tenant/unknown/device/1/temp"), |_, _, _| n += 1);
            black_box(n)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = matching
}
criterion_main!(benches);
