//! Static File Discovery: the node list is `nodes` in `conf/config.properties`
//! (`host:port,host:port`, IPv6 as `[::1]:7800`); `reload-interval` optionally sets the reload
//! interval in seconds. The broker re-reads the file before every call, so editing it changes
//! the cluster's discovery without a restart.

use apiary_extension_sdk::{Discovery, DiscoveryInput, DiscoveryOutput, NodeAddress, config, log};

#[derive(Default)]
struct StaticDiscovery {
    /// The last list read, to log changes only.
    last: Vec<String>,
}

impl Discovery for StaticDiscovery {
    fn init(&mut self, input: &DiscoveryInput) -> Result<DiscoveryOutput, String> {
        log::info(&format!(
            "static discovery for node {} at {}:{}",
            input.own_cluster_id, input.own_address.host, input.own_address.port
        ));
        self.reload(input)
    }

    fn reload(&mut self, _input: &DiscoveryInput) -> Result<DiscoveryOutput, String> {
        let text = config::get("nodes").ok_or("`nodes` is not set in conf/config.properties")?;
        let nodes = parse_nodes(&text)?;
        let shown: Vec<String> = text.split(',').map(|s| s.trim().to_owned()).collect();
        if shown != self.last {
            log::info(&format!("node list: {}", shown.join(", ")));
            self.last = shown;
        }
        let mut output = DiscoveryOutput::nodes(nodes);
        if let Some(secs) = config::get("reload-interval") {
            let secs = secs
                .trim()
                .parse()
                .map_err(|_| format!("reload-interval: not a number: {secs:?}"))?;
            output = output.with_reload_interval(secs);
        }
        Ok(output)
    }
}

/// `host:port,host:port` → addresses; an entry that does not parse is an error (the broker then
/// keeps the previous list, rather than losing nodes to a typo).
fn parse_nodes(text: &str) -> Result<Vec<NodeAddress>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| {
            let (host, port) = entry.rsplit_once(':').ok_or(format!("{entry:?}: expected host:port"))?;
            let port = port.parse().map_err(|_| format!("{entry:?}: bad port"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            Ok(NodeAddress { host, port })
        })
        .collect()
}

apiary_extension_sdk::export_discovery!(StaticDiscovery);
