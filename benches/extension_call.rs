//! What an extension costs: one `reload` call into the static-discovery sample (the store, the
//! epoch deadline, the canonical ABI both ways and the `config` host call it makes), and loading
//! the component — compiled, then from the compiled-code cache.
//! `cargo bench --bench extension_call` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apiary::extension::sandbox::{Call, DiscoveryInput, Limits, NodeAddress, Sandbox};
use criterion::{Criterion, criterion_group, criterion_main};

/// Builds the sample for wasm32-wasip2 (release) and returns its component.
fn sample() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target").join("wasm-guests");
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(root.join("extensions/static-discovery/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("run cargo");
    assert!(
        status.success(),
        "building the sample failed (rustup target add wasm32-wasip2?)"
    );
    target.join("wasm32-wasip2/release/static_discovery.wasm")
}

fn input() -> DiscoveryInput {
    DiscoveryInput {
        own_cluster_id: "bench".into(),
        own_address: NodeAddress {
            host: "127.0.0.1".into(),
            port: 7800,
        },
        reload_interval_secs: 60,
    }
}

fn extension(c: &mut Criterion) {
    let wasm = std::fs::read(sample()).expect("the sample component");
    let cache = std::env::temp_dir().join(format!("apiary-bench-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let load = || {
        let sandbox = Sandbox::new(Some(&cache)).expect("sandbox");
        let started = Instant::now();
        let plugin = sandbox.load("bench", &wasm).expect("load");
        (plugin, started.elapsed(), sandbox.cache_hits())
    };
    let (_, compiled, _) = load();
    let (plugin, cached, hits) = load();
    println!(
        "load of a {} KiB component: compiled {compiled:?}, from the cache {cached:?} (cache hits: {hits})",
        wasm.len() / 1024
    );
    let _ = std::fs::remove_dir_all(&cache);

    let limits = Limits {
        memory_bytes: 64 << 20,
        call_timeout: Duration::from_secs(30),
    };
    let config = vec![(
        "nodes".to_owned(),
        "10.0.0.1:7800,10.0.0.2:7800,10.0.0.3:7800".to_owned(),
    )];
    let mut instance = plugin
        .instantiate(limits, config.clone(), Default::default())
        .expect("instantiate");
    let input = input();
    c.bench_function("extension/reload call (3 nodes)", |b| {
        b.iter(|| black_box(instance.discover(Call::Reload, &input).expect("no trap")))
    });
    c.bench_function("extension/instantiate", |b| {
        b.iter(|| {
            black_box(
                plugin
                    .instantiate(limits, config.clone(), Default::default())
                    .expect("instantiate"),
            )
        })
    });
}

criterion_group!(benches, extension);
criterion_main!(benches);
