//! A discovery extension that misbehaves on purpose, for the broker's sandbox tests. What it
//! does is `mode` in its `conf/config.properties`:
//! - `loop`: never returns (burns CPU);
//! - `alloc`: allocates until the memory limit stops it;
//! - `panic`: panics (a trap);
//! - `sleep`: blocks in a host call (WASI sleep), where the epoch deadline cannot reach it;
//! - `slow`: takes `slow-ms` milliseconds (in a host call), then behaves;
//! - `garbage`: returns invalid addresses mixed with `nodes`;
//! - `error`: returns an error;
//! - anything else: behaves, returning `nodes` (`host:port,...`).
//!
//! `when=reload` misbehaves on `reload` only (`init` behaves).

use apiary_extension_sdk::{Discovery, DiscoveryInput, DiscoveryOutput, NodeAddress, config, log};

#[derive(Default)]
struct Hostile;

impl Discovery for Hostile {
    fn init(&mut self, _input: &DiscoveryInput) -> Result<DiscoveryOutput, String> {
        match config::get("when").as_deref() {
            Some("reload") => behave(),
            _ => misbehave(),
        }
    }

    fn reload(&mut self, _input: &DiscoveryInput) -> Result<DiscoveryOutput, String> {
        misbehave()
    }

    fn destroy(&mut self, _input: &DiscoveryInput) {
        log::info("hostile: destroy");
    }
}

fn misbehave() -> Result<DiscoveryOutput, String> {
    let mode = config::get("mode").unwrap_or_default();
    log::info(&format!("hostile: {mode}"));
    match mode.as_str() {
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![0xA5; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "panic" => panic!("hostile extension panics"),
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(3600));
            behave()
        }
        "slow" => {
            let ms = config::get("slow-ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            behave()
        }
        "garbage" => {
            // The valid ones first: the broker reads at most 1024 entries.
            let mut nodes = behave()?.nodes.unwrap_or_default();
            nodes.extend([
                node("", 1),
                node("not a host", 7800),
                node("127.0.0.1", 0),
                node(&"x".repeat(100_000), 7800),
                node("evil\n.example", 7800),
                node("[::1]", 7800),
            ]);
            nodes.extend((0..5000).map(|i| node(&format!("junk {i}"), 1)));
            Ok(DiscoveryOutput::nodes(nodes))
        }
        "error" => Err("registry unreachable".into()),
        _ => behave(),
    }
}

fn behave() -> Result<DiscoveryOutput, String> {
    let nodes = config::get("nodes").unwrap_or_default();
    let nodes = nodes
        .split(',')
        .filter_map(|e| e.trim().rsplit_once(':'))
        .filter_map(|(h, p)| Some(node(h, p.parse().ok()?)))
        .collect();
    Ok(DiscoveryOutput::nodes(nodes))
}

fn node(host: &str, port: u16) -> NodeAddress {
    NodeAddress {
        host: host.to_owned(),
        port,
    }
}

apiary_extension_sdk::export_discovery!(Hostile);
