//! A test plugin for the host's network interfaces. On every call, as `conf/config.properties`
//! says:
//! - `url`: GETs it; the body's lines (`host:port`) are the node list; a non-2xx status or a
//!   refused request is the call's error (with the host's message);
//! - `name`: looks it up; every address, on port 7800, is the node list;
//! - `env`: the node list is `<value of that variable>:7800` (or an error if it is not visible);
//! - `print`: writes that many lines to stdout, then answers with no change.

use apiary_extension_sdk::{Discovery, DiscoveryInput, DiscoveryOutput, NodeAddress, config, dns, http};

#[derive(Default)]
struct Probe;

impl Discovery for Probe {
    fn init(&mut self, input: &DiscoveryInput) -> Result<DiscoveryOutput, String> {
        self.reload(input)
    }

    fn reload(&mut self, _input: &DiscoveryInput) -> Result<DiscoveryOutput, String> {
        if let Some(url) = config::get("url") {
            let response = http::get(&url)?;
            if !response.is_success() {
                return Err(format!("status {}", response.status));
            }
            let body = String::from_utf8(response.body).map_err(|_| "body is not UTF-8")?;
            let nodes = body
                .lines()
                .filter_map(|l| l.trim().rsplit_once(':'))
                .filter_map(|(h, p)| {
                    Some(NodeAddress {
                        host: h.into(),
                        port: p.parse().ok()?,
                    })
                })
                .collect();
            return Ok(DiscoveryOutput::nodes(nodes));
        }
        if let Some(name) = config::get("name") {
            let ips = dns::resolve(&name)?;
            return Ok(DiscoveryOutput::nodes(
                ips.into_iter().map(|host| NodeAddress { host, port: 7800 }).collect(),
            ));
        }
        if let Some(var) = config::get("env") {
            let host = std::env::var(&var).map_err(|_| format!("{var} is not visible"))?;
            return Ok(DiscoveryOutput::nodes(vec![NodeAddress { host, port: 7800 }]));
        }
        if let Some(lines) = config::get("print") {
            for i in 0..lines.parse::<u32>().unwrap_or(0) {
                println!("probe line {i}");
            }
            eprintln!("probe done");
        }
        Ok(DiscoveryOutput::unchanged())
    }
}

apiary_extension_sdk::export_discovery!(Probe);
