//! A discovery plugin as it was built against `apiary:extension@1.0.0` (a copy of that WIT is in
//! `wit/`, frozen): a newer 1.x broker must keep loading it. It answers the node `10.1.0.1:7800`
//! and logs through the 1.0 `log` interface.

wit_bindgen::generate!({ world: "discovery", path: "wit" });

use apiary::extension::log::{Level, log};
use apiary::extension::types::{DiscoveryInput, DiscoveryOutput, NodeAddress};
use exports::apiary::extension::cluster_discovery::Guest;

struct V10;

impl Guest for V10 {
    fn init(input: DiscoveryInput) -> Result<DiscoveryOutput, String> {
        log(Level::Info, &format!("1.0 plugin init for {}", input.own_cluster_id));
        Self::reload(input)
    }

    fn reload(_input: DiscoveryInput) -> Result<DiscoveryOutput, String> {
        Ok(DiscoveryOutput {
            nodes: Some(vec![NodeAddress {
                host: "10.1.0.1".into(),
                port: 7800,
            }]),
            reload_interval_secs: None,
        })
    }

    fn destroy(_input: DiscoveryInput) {}
}

export!(V10);
