//! What the operator grants an extension beyond its own configuration: the extension folder's
//! `conf/sandbox.properties`. Nothing is granted without it.
//!
//! ```properties
//! # hosts this extension may send HTTP(S) requests to: host or host:port, *.suffix, or *
//! http.allow=s3.eu-central-1.amazonaws.com:443, 10.0.0.5:9000
//! # names it may look up in DNS: exact, *.suffix, or *
//! dns.allow=tasks.hivemq
//! # the DNS server to ask (ip or ip:port, port 53 by default) instead of /etc/resolv.conf
//! dns.server=10.0.0.2:53
//! # environment variables of the broker it may read
//! env.allow=AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
//! ```
//!
//! The file sits beside `config.properties` because both come with the extension folder the
//! operator drops in: what a plugin may reach is readable in one place before it is enabled.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::properties;

/// Where the file is, relative to the extension folder.
pub const RELATIVE_PATH: &str = "conf/sandbox.properties";

/// What one extension may reach. The default grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    http: Vec<Pattern>,
    dns: Vec<Pattern>,
    /// Asked instead of the system's resolvers.
    pub dns_server: Option<SocketAddr>,
    /// Names of environment variables the extension sees (with the broker's values).
    pub env: Vec<String>,
}

/// A host or name pattern: exact (`s3.amazonaws.com`), a suffix (`*.amazonaws.com`, which does
/// not match `amazonaws.com` itself), or anything (`*`); optionally with a port (HTTP only).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    host: HostPattern,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `.amazonaws.com` for `*.amazonaws.com`.
    Suffix(String),
    Exact(String),
}

impl Grants {
    /// Reads `conf/sandbox.properties` of `folder`; no file grants nothing. An entry that does
    /// not parse is an error naming the key, so that a typo does not silently deny (or grant).
    pub fn read(folder: &Path) -> anyhow::Result<Grants> {
        let text = match std::fs::read_to_string(folder.join(RELATIVE_PATH)) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Grants::default()),
            Err(e) => anyhow::bail!("cannot read {RELATIVE_PATH}: {e}"),
        };
        Grants::parse(&text)
    }

    pub fn parse(text: &str) -> anyhow::Result<Grants> {
        let mut grants = Grants::default();
        for (key, value) in properties::parse(text) {
            let items = || value.split(',').map(str::trim).filter(|s| !s.is_empty());
            let bad = |why: &str| anyhow::anyhow!("{RELATIVE_PATH}: {key}={value}: {why}");
            match key.as_str() {
                "http.allow" => {
                    for item in items() {
                        grants.http.push(Pattern::parse(item, true).map_err(|e| bad(&e))?);
                    }
                }
                "dns.allow" => {
                    for item in items() {
                        grants.dns.push(Pattern::parse(item, false).map_err(|e| bad(&e))?);
                    }
                }
                "dns.server" => grants.dns_server = Some(parse_server(&value).map_err(|e| bad(&e))?),
                "env.allow" => grants.env.extend(items().map(str::to_owned)),
                _ => {
                    return Err(bad(
                        "unknown key (expected http.allow, dns.allow, dns.server, env.allow)",
                    ));
                }
            }
        }
        Ok(grants)
    }

    /// Whether a request to `host:port` is allowed.
    pub fn allows_http(&self, host: &str, port: u16) -> bool {
        self.http.iter().any(|p| p.matches(host, Some(port)))
    }

    /// Whether looking up `name` is allowed.
    pub fn allows_dns(&self, name: &str) -> bool {
        self.dns.iter().any(|p| p.matches(name, None))
    }
}

impl Pattern {
    fn parse(item: &str, with_port: bool) -> Result<Pattern, String> {
        let (host, port) = match split_port(item) {
            Some((host, port)) if with_port => {
                let port = port.parse().map_err(|_| format!("{item:?}: bad port"))?;
                (host, Some(port))
            }
            Some(_) => return Err(format!("{item:?}: a name, without a port")),
            None => (item, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let host = match host.as_str() {
            "*" => HostPattern::Any,
            h if h.starts_with("*.") && h.len() > 2 => HostPattern::Suffix(h[1..].to_owned()),
            h if h.is_empty() || h.contains('*') || h.contains('/') => {
                return Err(format!("{item:?}: expected a host, *.suffix or *"));
            }
            h => HostPattern::Exact(h.trim_end_matches('.').to_owned()),
        };
        Ok(Pattern { host, port })
    }

    fn matches(&self, host: &str, port: Option<u16>) -> bool {
        if let (Some(allowed), Some(port)) = (self.port, port)
            && allowed != port
        {
            return false;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        match &self.host {
            HostPattern::Any => true,
            HostPattern::Suffix(suffix) => host.ends_with(suffix.as_str()),
            HostPattern::Exact(exact) => host == exact,
        }
    }
}

/// `host:port` → (host, port); `[v6]:port` too; a bare IPv6 literal or a host has no port.
fn split_port(item: &str) -> Option<(&str, &str)> {
    if item.starts_with('[') {
        let end = item.find(']')?;
        return item[end + 1..].strip_prefix(':').map(|port| (&item[..=end], port));
    }
    match item.matches(':').count() {
        1 => item.split_once(':'),
        _ => None,
    }
}

/// `ip` or `ip:port` (port 53 by default).
fn parse_server(value: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    value
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| "expected an IP address, optionally with :port".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_granted_without_the_file() {
        let g = Grants::default();
        assert!(!g.allows_http("example.com", 443));
        assert!(!g.allows_dns("example.com"));
        assert!(g.env.is_empty());
    }

    #[test]
    fn hosts_suffixes_ports_and_wildcards() {
        let g = Grants::parse(
            "http.allow = s3.amazonaws.com:443, *.example.org, 127.0.0.1:9000, [::1]:80\n\
             dns.allow = tasks.hivemq, *.svc.cluster.local\n\
             dns.server = 10.0.0.2\n\
             env.allow = AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY\n",
        )
        .unwrap();
        assert!(g.allows_http("s3.amazonaws.com", 443));
        assert!(g.allows_http("S3.AmazonAWS.com.", 443));
        assert!(!g.allows_http("s3.amazonaws.com", 80));
        assert!(g.allows_http("a.b.example.org", 8080));
        assert!(
            !g.allows_http("example.org", 80),
            "*.suffix does not match the bare suffix"
        );
        assert!(!g.allows_http("evilexample.org", 80));
        assert!(g.allows_http("127.0.0.1", 9000));
        assert!(!g.allows_http("127.0.0.1", 9001));
        assert!(g.allows_http("[::1]", 80));
        assert!(g.allows_dns("tasks.hivemq"));
        assert!(g.allows_dns("tasks.hivemq."));
        assert!(g.allows_dns("hivemq.default.svc.cluster.local"));
        assert!(!g.allows_dns("tasks.other"));
        assert_eq!(g.dns_server, Some("10.0.0.2:53".parse().unwrap()));
        assert_eq!(g.env, ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]);
        let any = Grants::parse("http.allow=*\ndns.allow=*\ndns.server=127.0.0.1:5353").unwrap();
        assert!(any.allows_http("anything", 1));
        assert!(any.allows_dns("anything"));
        assert_eq!(any.dns_server, Some("127.0.0.1:5353".parse().unwrap()));
    }

    #[test]
    fn a_typo_is_an_error_naming_the_key() {
        for (text, key) in [
            ("http.alow=x", "http.alow"),
            ("http.allow=host:port", "http.allow"),
            ("dns.allow=name:53", "dns.allow"),
            ("dns.server=not-an-ip", "dns.server"),
            ("http.allow=a*b", "http.allow"),
        ] {
            let e = Grants::parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
