//! Docker DNS Discovery: the cluster's nodes are the A records of one DNS name, as HiveMQ's DNS
//! discovery extension does it. Docker answers `tasks.<service>` (Swarm) or a compose service's
//! name with one A record per running container, so every container finds all the others.
//!
//! Every call resolves the name (through the broker: `dns::resolve`, limited to the names the
//! operator allows in `conf/sandbox.properties`) and reports each IPv4 address as a node on this
//! node's own cluster port: all nodes are assumed to listen on the same port. A failed lookup
//! is an `Err`, so the broker keeps the previous list.
//!
//! Settings, each from the first non-empty source: the environment (the variables the operator
//! grants with `env.allow`), then `conf/config.properties`, then the default — the environment
//! wins, as in HiveMQ's extension:
//!
//! - the name: `APIARY_DNS_DISCOVERY_ADDRESS`, `HIVEMQ_DNS_DISCOVERY_ADDRESS`, `discoveryAddress`
//!   (required);
//! - the lookup timeout in seconds: `APIARY_DNS_DISCOVERY_TIMEOUT`, `HIVEMQ_DNS_DISCOVERY_TIMEOUT`,
//!   `resolutionTimeout` (30);
//! - the reload interval in seconds: `APIARY_DNS_RELOAD_INTERVAL`, `HIVEMQ_DNS_RELOAD_INTERVAL`,
//!   `HIVEMQ_DNS_DISCOVERY_INTERVAL`, `reloadInterval` (30).
//!
//! The environment and the file are read again on every call, so a changed file applies at the
//! next reload. The reload interval goes back to the broker with every answer.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use apiary_extension_sdk::{Discovery, DiscoveryInput, DiscoveryOutput, NodeAddress, config, dns, log};

/// `resolutionTimeout` and `reloadInterval` when nothing sets them (HiveMQ's defaults).
const DEFAULT_SECS: u32 = 30;

const ADDRESS_KEY: &str = "discoveryAddress";
const ADDRESS_ENV: &[&str] = &["APIARY_DNS_DISCOVERY_ADDRESS", "HIVEMQ_DNS_DISCOVERY_ADDRESS"];
const TIMEOUT_KEY: &str = "resolutionTimeout";
const TIMEOUT_ENV: &[&str] = &["APIARY_DNS_DISCOVERY_TIMEOUT", "HIVEMQ_DNS_DISCOVERY_TIMEOUT"];
const RELOAD_KEY: &str = "reloadInterval";
/// `HIVEMQ_DNS_DISCOVERY_INTERVAL` is what HiveMQ's Docker DNS image sets.
const RELOAD_ENV: &[&str] = &[
    "APIARY_DNS_RELOAD_INTERVAL",
    "HIVEMQ_DNS_RELOAD_INTERVAL",
    "HIVEMQ_DNS_DISCOVERY_INTERVAL",
];
/// HiveMQ's own DNS server setting; here the operator sets `dns.server` in sandbox.properties.
const SERVER_KEY: &str = "dnsServerAddress";
const SERVER_ENV: &[&str] = &["APIARY_DNS_SERVER_ADDRESS", "HIVEMQ_DNS_SERVER_ADDRESS"];

/// A source of settings by name: the environment or conf/config.properties.
type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The settings in force for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    /// The DNS name whose A records are the nodes.
    address: String,
    /// A lookup that takes longer counts as failed.
    timeout_secs: u32,
    /// Handed back to the broker with every answer.
    reload_secs: u32,
}

/// Reads the settings. `notes` collects what the operator should know but does not stop
/// discovery (a bad environment value that fell back to the file, an ignored key); an `Err` does.
fn read_settings(env: Lookup, file: Lookup, notes: &mut Vec<String>) -> Result<Settings, String> {
    let address = match first_env(env, ADDRESS_ENV) {
        Some((_, value)) => value,
        None => non_blank(file(ADDRESS_KEY)).ok_or_else(|| {
            format!(
                "no discovery address: set {} (and allow it with env.allow in conf/sandbox.properties) \
                 or {ADDRESS_KEY} in conf/config.properties",
                ADDRESS_ENV[0]
            )
        })?,
    };
    let timeout_secs = seconds(env, file, TIMEOUT_ENV, TIMEOUT_KEY, notes)?;
    let reload_secs = seconds(env, file, RELOAD_ENV, RELOAD_KEY, notes)?;
    if timeout_secs > reload_secs {
        notes.push(format!(
            "{TIMEOUT_KEY} ({timeout_secs} s) should not be above {RELOAD_KEY} ({reload_secs} s)"
        ));
    }
    let server = first_env(env, SERVER_ENV)
        .map(|(name, _)| name.to_owned())
        .or_else(|| non_blank(file(SERVER_KEY)).map(|_| SERVER_KEY.to_owned()));
    if let Some(name) = server {
        notes.push(format!(
            "{name} is ignored: the broker asks the DNS server set as dns.server in conf/sandbox.properties \
             (default: the system's resolv.conf)"
        ));
    }
    Ok(Settings {
        address,
        timeout_secs,
        reload_secs,
    })
}

/// The first of `names` set to something other than blanks, with its name.
fn first_env(env: Lookup, names: &[&'static str]) -> Option<(&'static str, String)> {
    names.iter().find_map(|&name| non_blank(env(name)).map(|v| (name, v)))
}

fn non_blank(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// A number of seconds: the environment if it holds one (else a note, and on to the file), the
/// file (where a bad value is an error, as it keeps HiveMQ's extension from starting), or the
/// default.
fn seconds(
    env: Lookup,
    file: Lookup,
    names: &[&'static str],
    key: &str,
    notes: &mut Vec<String>,
) -> Result<u32, String> {
    if let Some((name, value)) = first_env(env, names) {
        match parse_secs(&value) {
            Some(secs) => return Ok(secs),
            None => notes.push(format!(
                "{name}={value:?} is not a whole number of seconds (at least 1); \
                 using {key} from conf/config.properties or the default instead"
            )),
        }
    }
    match non_blank(file(key)) {
        Some(value) => parse_secs(&value).ok_or_else(|| {
            format!("{key}={value:?} in conf/config.properties is not a whole number of seconds (at least 1)")
        }),
        None => Ok(DEFAULT_SECS),
    }
}

fn parse_secs(value: &str) -> Option<u32> {
    value.parse().ok().filter(|&secs| secs >= 1)
}

/// The node IPs in a lookup's answer: its IPv4 addresses (A records), sorted, without
/// duplicates. No answer within the timeout, or no A record, is an error like a failed lookup:
/// the broker then keeps the nodes it has.
fn node_ips(settings: &Settings, answer: Result<Vec<String>, String>, took: Duration) -> Result<Vec<Ipv4Addr>, String> {
    let name = &settings.address;
    let addresses = answer.map_err(|e| format!("DNS lookup of {name:?} failed: {e}"))?;
    if took > Duration::from_secs(u64::from(settings.timeout_secs)) {
        return Err(format!(
            "DNS lookup of {name:?} failed: no answer within {TIMEOUT_KEY} ({} s; took {:.1} s)",
            settings.timeout_secs,
            took.as_secs_f64()
        ));
    }
    let mut ips: Vec<Ipv4Addr> = addresses.iter().filter_map(|a| a.trim().parse().ok()).collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        let others = if addresses.is_empty() {
            "no addresses at all".to_owned()
        } else {
            format!("only {}", addresses.join(", "))
        };
        return Err(format!("DNS lookup of {name:?} found no A (IPv4) record ({others})"));
    }
    Ok(ips)
}

/// What changed between two sorted address lists, for the log.
fn changes(before: &[Ipv4Addr], now: &[Ipv4Addr]) -> String {
    let list = |ips: Vec<&Ipv4Addr>| ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let new = list(now.iter().filter(|ip| !before.contains(ip)).collect());
    let gone = list(before.iter().filter(|ip| !now.contains(ip)).collect());
    match (new.is_empty(), gone.is_empty()) {
        (false, false) => format!("new {new}; gone {gone}"),
        (false, true) => format!("new {new}"),
        (true, false) => format!("gone {gone}"),
        (true, true) => "unchanged".to_owned(),
    }
}

#[derive(Default)]
struct DockerDiscovery {
    /// The settings last logged, to log them again only when they change.
    settings: Option<Settings>,
    /// The notes last logged, likewise.
    notes: Vec<String>,
    /// The addresses last reported.
    ips: Vec<Ipv4Addr>,
}

impl DockerDiscovery {
    fn discover(&mut self, input: &DiscoveryInput) -> Result<DiscoveryOutput, String> {
        let env = |name: &str| std::env::var(name).ok();
        let file = |key: &str| config::get(key);
        let mut notes = Vec::new();
        let settings = read_settings(&env, &file, &mut notes);
        if notes != self.notes {
            for note in &notes {
                log::warn(note);
            }
            self.notes = notes;
        }
        let settings = settings?;
        let port = input.own_address.port;
        if self.settings.as_ref() != Some(&settings) {
            log::info(&format!(
                "nodes: the A records of {:?}, on cluster port {port}; lookup timeout {} s, reload every {} s",
                settings.address, settings.timeout_secs, settings.reload_secs
            ));
            self.settings = Some(settings.clone());
        }
        let started = Instant::now();
        let answer = dns::resolve(&settings.address);
        let ips = node_ips(&settings, answer, started.elapsed())?;
        if ips != self.ips {
            let shown: Vec<String> = ips.iter().map(ToString::to_string).collect();
            log::info(&format!(
                "{} resolves to {} node(s): {} ({})",
                settings.address,
                ips.len(),
                shown.join(", "),
                changes(&self.ips, &ips)
            ));
            self.ips = ips.clone();
        }
        let nodes = ips
            .iter()
            .map(|ip| NodeAddress {
                host: ip.to_string(),
                port,
            })
            .collect();
        Ok(DiscoveryOutput::nodes(nodes).with_reload_interval(settings.reload_secs))
    }
}

impl Discovery for DockerDiscovery {
    fn init(&mut self, input: &DiscoveryInput) -> Result<DiscoveryOutput, String> {
        log::info(&format!(
            "Docker DNS discovery for node {} at {}:{}",
            input.own_cluster_id, input.own_address.host, input.own_address.port
        ));
        self.discover(input)
    }

    fn reload(&mut self, input: &DiscoveryInput) -> Result<DiscoveryOutput, String> {
        self.discover(input)
    }
}

apiary_extension_sdk::export_discovery!(DockerDiscovery);

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |key| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    fn read(env: &[(&str, &str)], file: &[(&str, &str)]) -> (Result<Settings, String>, Vec<String>) {
        let mut notes = Vec::new();
        let settings = read_settings(&map(env), &map(file), &mut notes);
        (settings, notes)
    }

    fn settings(address: &str, timeout_secs: u32, reload_secs: u32) -> Settings {
        Settings {
            address: address.into(),
            timeout_secs,
            reload_secs,
        }
    }

    #[test]
    fn defaults_and_file() {
        let (s, notes) = read(&[], &[("discoveryAddress", " tasks.apiary ")]);
        assert_eq!(s, Ok(settings("tasks.apiary", 30, 30)));
        assert!(notes.is_empty(), "{notes:?}");
        let (_, notes) = read(&[], &[("discoveryAddress", "x"), ("reloadInterval", "5")]);
        assert!(notes[0].contains("resolutionTimeout (30 s) should not be above reloadInterval (5 s)"));
        let (s, notes) = read(
            &[],
            &[
                ("discoveryAddress", "tasks.apiary"),
                ("resolutionTimeout", "2"),
                ("reloadInterval", "5"),
            ],
        );
        assert_eq!(s, Ok(settings("tasks.apiary", 2, 5)));
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn environment_wins_apiary_names_first() {
        let file = [
            ("discoveryAddress", "from-file"),
            ("resolutionTimeout", "2"),
            ("reloadInterval", "5"),
        ];
        let (s, _) = read(
            &[
                ("HIVEMQ_DNS_DISCOVERY_ADDRESS", "hivemq-name"),
                ("HIVEMQ_DNS_DISCOVERY_TIMEOUT", "3"),
                ("HIVEMQ_DNS_RELOAD_INTERVAL", "7"),
            ],
            &file,
        );
        assert_eq!(s, Ok(settings("hivemq-name", 3, 7)));
        let (s, _) = read(
            &[
                ("APIARY_DNS_DISCOVERY_ADDRESS", "apiary-name"),
                ("HIVEMQ_DNS_DISCOVERY_ADDRESS", "hivemq-name"),
                ("APIARY_DNS_DISCOVERY_TIMEOUT", "1"),
                ("APIARY_DNS_RELOAD_INTERVAL", "9"),
                ("HIVEMQ_DNS_RELOAD_INTERVAL", "7"),
            ],
            &file,
        );
        assert_eq!(s, Ok(settings("apiary-name", 1, 9)));
        // Blank variables count as unset; the Docker image's interval name is understood.
        let (s, _) = read(
            &[
                ("APIARY_DNS_DISCOVERY_ADDRESS", "  "),
                ("HIVEMQ_DNS_DISCOVERY_INTERVAL", "4"),
            ],
            &file,
        );
        assert_eq!(s, Ok(settings("from-file", 2, 4)));
    }

    #[test]
    fn a_bad_environment_number_falls_back_to_the_file_a_bad_file_number_is_an_error() {
        let (s, notes) = read(
            &[
                ("APIARY_DNS_RELOAD_INTERVAL", "soon"),
                ("APIARY_DNS_DISCOVERY_TIMEOUT", "0"),
            ],
            &[("discoveryAddress", "x"), ("reloadInterval", "6")],
        );
        assert_eq!(s, Ok(settings("x", 30, 6)));
        assert!(
            notes.iter().any(|n| n.contains("APIARY_DNS_RELOAD_INTERVAL=\"soon\"")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("APIARY_DNS_DISCOVERY_TIMEOUT=\"0\"")),
            "{notes:?}"
        );
        let (s, _) = read(&[], &[("discoveryAddress", "x"), ("reloadInterval", "-1")]);
        let e = s.unwrap_err();
        assert!(e.contains("reloadInterval=\"-1\" in conf/config.properties"), "{e}");
    }

    #[test]
    fn no_address_is_a_clear_error() {
        let (s, _) = read(&[("APIARY_DNS_RELOAD_INTERVAL", "5")], &[("discoveryAddress", "")]);
        let e = s.unwrap_err();
        assert!(e.contains("no discovery address"), "{e}");
        assert!(
            e.contains("APIARY_DNS_DISCOVERY_ADDRESS") && e.contains("env.allow"),
            "{e}"
        );
        assert!(e.contains("discoveryAddress in conf/config.properties"), "{e}");
    }

    #[test]
    fn a_dns_server_setting_is_pointed_to_the_sandbox() {
        let (_, notes) = read(
            &[("HIVEMQ_DNS_SERVER_ADDRESS", "10.0.0.2")],
            &[("discoveryAddress", "x"), ("resolutionTimeout", "1")],
        );
        assert!(notes.iter().any(|n| n.contains("dns.server")), "{notes:?}");
    }

    #[test]
    fn answers() {
        let s = settings("tasks.apiary", 2, 5);
        let quick = Duration::from_millis(5);
        let answer = Ok(vec![
            "10.0.0.3".into(),
            "fd00::3".into(),
            "10.0.0.2".into(),
            "10.0.0.3".into(),
            "junk".into(),
        ]);
        assert_eq!(
            node_ips(&s, answer, quick),
            Ok(vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)])
        );
        let e = node_ips(&s, Err("no such name".into()), quick).unwrap_err();
        assert_eq!(e, "DNS lookup of \"tasks.apiary\" failed: no such name");
        let e = node_ips(&s, Ok(vec!["10.0.0.2".into()]), Duration::from_secs(3)).unwrap_err();
        assert!(e.contains("no answer within resolutionTimeout (2 s"), "{e}");
        let e = node_ips(&s, Ok(vec!["fd00::3".into()]), quick).unwrap_err();
        assert!(e.contains("no A (IPv4) record (only fd00::3)"), "{e}");
        let e = node_ips(&s, Ok(vec![]), quick).unwrap_err();
        assert!(e.contains("no A (IPv4) record (no addresses at all)"), "{e}");
    }

    #[test]
    fn changes_are_described() {
        let ip = |n| Ipv4Addr::new(10, 0, 0, n);
        assert_eq!(changes(&[], &[ip(1), ip(2)]), "new 10.0.0.1, 10.0.0.2");
        assert_eq!(changes(&[ip(1), ip(2)], &[ip(2), ip(3)]), "new 10.0.0.3; gone 10.0.0.1");
        assert_eq!(changes(&[ip(1), ip(2)], &[ip(2)]), "gone 10.0.0.1");
        assert_eq!(changes(&[ip(1)], &[ip(1)]), "unchanged");
    }
}
