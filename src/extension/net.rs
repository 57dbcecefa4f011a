//! The network an extension may use, done by the host: HTTP(S) requests and DNS lookups, each
//! checked against the extension's [`Grants`] before anything leaves the machine.
//!
//! Both block the calling thread, which is the extension's own call thread (never a runtime
//! worker), and both end within the given timeout — the epoch deadline only interrupts wasm
//! code, so the time a plugin spends in here must be bounded here.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use ureq::http;

use super::grants::Grants;

/// The most of a response body an extension gets.
pub const MAX_RESPONSE_BODY: u64 = 16 << 20;

/// A request as the plugin made it.
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A response, whatever its status.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Sends `request` if the grants allow its host and port; redirects are returned, not followed
/// (a redirect could lead outside the allow-list).
pub fn http_send(grants: &Grants, request: Request, timeout: Duration) -> Result<Response, String> {
    let uri: http::Uri = request
        .url
        .parse()
        .map_err(|e| format!("bad url {:?}: {e}", request.url))?;
    let port = match (uri.scheme_str(), uri.port_u16()) {
        (Some("http" | "https"), Some(port)) => port,
        (Some("http"), None) => 80,
        (Some("https"), None) => 443,
        _ => return Err(format!("bad url {:?}: only http:// and https:// URLs", request.url)),
    };
    let host = uri.host().unwrap_or_default();
    if !grants.allows_http(host, port) {
        return Err(format!(
            "not allowed: {host}:{port} is not in http.allow of conf/sandbox.properties"
        ));
    }
    let mut builder = http::Request::builder().method(request.method.as_str()).uri(uri);
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let built = builder.body(request.body).map_err(|e| format!("bad request: {e}"))?;
    let mut response = agent(timeout).run(built).map_err(|e| e.to_string())?;
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BODY)
        .read_to_vec()
        .map_err(|e| format!("reading the response: {e}"))?;
    Ok(Response { status, headers, body })
}

/// An agent for one call: no proxy from the environment, no redirects, errors only for
/// transport failures, TLS with the system's roots through rustls' aws-lc-rs provider (the
/// one the broker's listeners use).
fn agent(timeout: Duration) -> ureq::Agent {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    let provider = PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .unversioned_rustls_crypto_provider(provider)
        .build();
    ureq::Agent::config_builder()
        .proxy(None)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .tls_config(tls)
        .build()
        .into()
}

/// Every A and AAAA address of `name`, if the grants allow the name; asks `dns.server` when
/// granted, else the system's resolvers (`/etc/resolv.conf`).
pub fn dns_resolve(grants: &Grants, name: &str, timeout: Duration) -> Result<Vec<String>, String> {
    if !grants.allows_dns(name) {
        return Err(format!(
            "not allowed: {name:?} is not in dns.allow of conf/sandbox.properties"
        ));
    }
    let (config, mut options) = match grants.dns_server {
        Some(server) => {
            let mut ns = NameServerConfig::udp_and_tcp(server.ip());
            for c in &mut ns.connections {
                c.port = server.port();
            }
            // The server the operator named answers alone: not the hosts file either.
            let mut options = ResolverOpts::default();
            options.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
            (ResolverConfig::from_name_servers(vec![ns]), options)
        }
        None => hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?,
    };
    options.timeout = timeout.min(options.timeout.max(Duration::from_secs(1)));
    options.attempts = options.attempts.max(1);
    options.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
    options.cache_size = 0;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a resolver: {e}"))?;
    runtime.block_on(async {
        let resolver = hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(|e| format!("cannot start a resolver: {e}"))?;
        let lookup = tokio::time::timeout(timeout, resolver.lookup_ip(name))
            .await
            .map_err(|_| format!("looking up {name:?}: no answer within {timeout:?}"))?;
        match lookup {
            Ok(ips) => {
                let mut all: Vec<IpAddr> = ips.iter().collect();
                all.sort();
                all.dedup();
                Ok(all.iter().map(IpAddr::to_string).collect())
            }
            Err(e) if e.is_nx_domain() => Err(format!("looking up {name:?}: no such name (NXDOMAIN)")),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(format!("looking up {name:?}: {e}")),
        }
    })
}
