//! `<cluster>`: transport, discovery, replication and failure detection.
//!
//! The authority is HiveMQ's cluster documentation (`shared/seed/hivemq-clusters.txt`):
//! - without `<transport>` and `<discovery>` HiveMQ uses **UDP transport with multicast
//!   discovery**; both transports default to bind-port **8000**;
//! - UDP: multicast-enabled true, multicast-address 228.8.8.8, multicast-port 45588;
//! - TLS is a `<tls>` block inside `<tcp>`, off unless `<enabled>true</enabled>`;
//! - broadcast discovery: 255.255.255.255, port 8555, port-range 5;
//! - heartbeat: enabled, 3000/9000 ms with TCP, 8000/40000 ms with UDP;
//! - TCP health check: enabled, bind-port 0 (ephemeral), port-range 50;
//! - replica-count 2.
//!
//! `external-port` 0 means "not set" in HiveMQ and is stored as `None`.

use std::net::IpAddr;

use serde::Serialize;

use super::error::ConfigError;
use super::tls::{ClientAuthenticationMode, Keystore, Truststore, parse_client_auth, parse_keystore, parse_truststore};
use super::walk::Node;

/// Default cluster transport port (TCP and UDP).
pub const DEFAULT_CLUSTER_PORT: u16 = 8000;
/// Default UDP multicast group.
pub const DEFAULT_MULTICAST_ADDRESS: &str = "228.8.8.8";
/// Default UDP multicast port.
pub const DEFAULT_MULTICAST_PORT: u16 = 45588;
/// Default broadcast discovery address.
pub const DEFAULT_BROADCAST_ADDRESS: &str = "255.255.255.255";
/// Default broadcast discovery port.
pub const DEFAULT_BROADCAST_PORT: u16 = 8555;
/// Default broadcast discovery port range.
pub const DEFAULT_BROADCAST_PORT_RANGE: u16 = 5;
/// Default extension discovery reload interval in seconds.
pub const DEFAULT_RELOAD_INTERVAL_SECS: u32 = 60;
/// Default replica count.
pub const DEFAULT_REPLICA_COUNT: u32 = 2;
/// Default TCP health check port range.
pub const DEFAULT_HEALTH_CHECK_PORT_RANGE: u16 = 50;

/// `<cluster>`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterConfig {
    /// `enabled` (default false).
    pub enabled: bool,
    /// `transport` (default UDP).
    pub transport: ClusterTransport,
    /// `discovery` (default multicast).
    pub discovery: Discovery,
    /// `replication/replica-count` (default 2, minimum 1).
    pub replica_count: u32,
    /// `failure-detection`.
    pub failure_detection: FailureDetection,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        let transport = ClusterTransport::default();
        ClusterConfig {
            enabled: false,
            failure_detection: FailureDetection {
                heartbeat: Heartbeat::default_for(&transport),
                tcp_health_check: TcpHealthCheck::default(),
            },
            transport,
            discovery: Discovery::Multicast,
            replica_count: DEFAULT_REPLICA_COUNT,
        }
    }
}

/// `<transport>`: exactly one of `<tcp>` or `<udp>`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
// Read once at startup; the size difference (TLS settings inline) does not matter.
#[allow(clippy::large_enum_variant)]
pub enum ClusterTransport {
    /// `<tcp>` (recommended by HiveMQ; the only one that can use TLS).
    Tcp(TcpTransport),
    /// `<udp>` (HiveMQ's default).
    Udp(UdpTransport),
}

impl Default for ClusterTransport {
    fn default() -> Self {
        ClusterTransport::Udp(UdpTransport::default())
    }
}

impl ClusterTransport {
    /// The address to bind (`None`: let the node choose an interface, HiveMQ's `null`).
    pub fn bind_address(&self) -> Option<&str> {
        match self {
            ClusterTransport::Tcp(t) => t.bind_address.as_deref(),
            ClusterTransport::Udp(u) => u.bind_address.as_deref(),
        }
    }

    /// The port to bind.
    pub fn bind_port(&self) -> u16 {
        match self {
            ClusterTransport::Tcp(t) => t.bind_port,
            ClusterTransport::Udp(u) => u.bind_port,
        }
    }

    /// `tcp` or `udp`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClusterTransport::Tcp(_) => "tcp",
            ClusterTransport::Udp(_) => "udp",
        }
    }
}

/// `<transport><tcp>`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TcpTransport {
    /// `bind-address` (default none: HiveMQ's `null`).
    pub bind_address: Option<String>,
    /// `bind-port` (default 8000).
    pub bind_port: u16,
    /// `external-address` behind NAT (default none).
    pub external_address: Option<String>,
    /// `external-port` behind NAT (default none; a written 0 is also none).
    pub external_port: Option<u16>,
    /// `tls`, present only when `<tls><enabled>true</enabled>` (TLS is off by default).
    pub tls: Option<ClusterTls>,
}

impl Default for TcpTransport {
    fn default() -> Self {
        TcpTransport {
            bind_address: None,
            bind_port: DEFAULT_CLUSTER_PORT,
            external_address: None,
            external_port: None,
            tls: None,
        }
    }
}

/// `<transport><udp>`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UdpTransport {
    /// `bind-address` (default none: HiveMQ's `null`).
    pub bind_address: Option<String>,
    /// `bind-port` (default 8000).
    pub bind_port: u16,
    /// `external-address` behind NAT (default none).
    pub external_address: Option<String>,
    /// `external-port` behind NAT (default none; a written 0 is also none).
    pub external_port: Option<u16>,
    /// `multicast-enabled` (default true).
    pub multicast_enabled: bool,
    /// `multicast-address` (default 228.8.8.8).
    pub multicast_address: String,
    /// `multicast-port` (default 45588).
    pub multicast_port: u16,
}

impl Default for UdpTransport {
    fn default() -> Self {
        UdpTransport {
            bind_address: None,
            bind_port: DEFAULT_CLUSTER_PORT,
            external_address: None,
            external_port: None,
            multicast_enabled: true,
            multicast_address: DEFAULT_MULTICAST_ADDRESS.to_string(),
            multicast_port: DEFAULT_MULTICAST_PORT,
        }
    }
}

/// `<tcp><tls>` when enabled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterTls {
    /// `protocols/protocol*`; empty means the implementation's defaults.
    pub protocols: Vec<String>,
    /// `cipher-suites/cipher-suite*`; empty means the implementation's defaults.
    pub cipher_suites: Vec<String>,
    /// `server-keystore` (required when TLS is enabled).
    pub server_keystore: Keystore,
    /// `server-certificate-truststore`: trusted server certificates.
    pub server_certificate_truststore: Option<Truststore>,
    /// `client-authentication-mode` (default `NONE`).
    pub client_authentication_mode: ClientAuthenticationMode,
    /// `client-authentication-keystore`: this node's client certificate.
    pub client_authentication_keystore: Option<Keystore>,
    /// `client-certificate-truststore`: trusted client certificates.
    pub client_certificate_truststore: Option<Truststore>,
}

/// `<discovery>`: exactly one mechanism.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Discovery {
    /// `<static>`: the listed nodes (host + cluster bind-port).
    Static(Vec<NodeAddress>),
    /// `<multicast/>` (HiveMQ's default): uses the UDP transport's multicast address and port.
    Multicast,
    /// `<broadcast>`.
    Broadcast(BroadcastDiscovery),
    /// `<extension>`: nodes come from a discovery extension.
    Extension {
        /// `reload-interval` in seconds (default 60, minimum 1).
        reload_interval_secs: u32,
    },
}

/// `<static><node>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct NodeAddress {
    /// `host`: hostname or IP.
    pub host: String,
    /// `port`: the node's cluster bind-port.
    pub port: u16,
}

/// `<broadcast>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BroadcastDiscovery {
    /// `broadcast-address` (default 255.255.255.255).
    pub broadcast_address: String,
    /// `port` (default 8555).
    pub port: u16,
    /// `port-range`: ports `port..=port+port_range` are tried (default 5).
    pub port_range: u16,
}

impl Default for BroadcastDiscovery {
    fn default() -> Self {
        BroadcastDiscovery {
            broadcast_address: DEFAULT_BROADCAST_ADDRESS.to_string(),
            port: DEFAULT_BROADCAST_PORT,
            port_range: DEFAULT_BROADCAST_PORT_RANGE,
        }
    }
}

/// `<failure-detection>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureDetection {
    /// `heartbeat`.
    pub heartbeat: Heartbeat,
    /// `tcp-health-check`.
    pub tcp_health_check: TcpHealthCheck,
}

/// `<heartbeat>`; its defaults depend on the transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heartbeat {
    /// `enabled` (default true).
    pub enabled: bool,
    /// `interval` in ms (default 3000 with TCP, 8000 with UDP).
    pub interval_ms: u64,
    /// `timeout` in ms, greater than the interval (default 9000 with TCP, 40000 with UDP).
    pub timeout_ms: u64,
}

impl Heartbeat {
    /// HiveMQ's heartbeat defaults for a transport.
    pub fn default_for(transport: &ClusterTransport) -> Self {
        let (interval_ms, timeout_ms) = match transport {
            ClusterTransport::Tcp(_) => (3000, 9000),
            ClusterTransport::Udp(_) => (8000, 40000),
        };
        Heartbeat {
            enabled: true,
            interval_ms,
            timeout_ms,
        }
    }
}

/// `<tcp-health-check>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpHealthCheck {
    /// `enabled` (default true).
    pub enabled: bool,
    /// `bind-address` (default none: HiveMQ's `null`).
    pub bind_address: Option<String>,
    /// `bind-port` (default 0: ephemeral).
    pub bind_port: u16,
    /// `port-range`: ports to check on other nodes (default 50).
    pub port_range: u16,
    /// `external-address` behind NAT (default none).
    pub external_address: Option<String>,
    /// `external-port` behind NAT (default none; a written 0 is also none).
    pub external_port: Option<u16>,
}

impl Default for TcpHealthCheck {
    fn default() -> Self {
        TcpHealthCheck {
            enabled: true,
            bind_address: None,
            bind_port: 0,
            port_range: DEFAULT_HEALTH_CHECK_PORT_RANGE,
            external_address: None,
            external_port: None,
        }
    }
}

// ------------------------------------------------------------------------------------------
// Parsing

const MAX_MS: u64 = i32::MAX as u64;

/// Reads `<cluster>`.
pub(crate) fn parse_cluster(n: &Node<'_>) -> Result<ClusterConfig, ConfigError> {
    n.expect_children(
        &["enabled", "transport", "discovery", "replication", "failure-detection"],
        &[],
    )?;
    let enabled = n.bool_or("enabled", false)?;
    let transport = n.opt("transport", parse_transport)?.flatten().unwrap_or_default();
    let discovery_node = n.child("discovery");
    let discovery = match &discovery_node {
        Some(d) => parse_discovery(d)?,
        None => None,
    };
    let discovery = discovery.unwrap_or(Discovery::Multicast);
    let replica_count = match n.child("replication") {
        None => DEFAULT_REPLICA_COUNT,
        Some(r) => {
            r.expect_children(&["replica-count"], &[])?;
            r.int_or("replica-count", 1u32, i32::MAX as u32, DEFAULT_REPLICA_COUNT)?
        }
    };
    let failure_detection = match n.child("failure-detection") {
        None => FailureDetection {
            heartbeat: Heartbeat::default_for(&transport),
            tcp_health_check: TcpHealthCheck::default(),
        },
        Some(f) => parse_failure_detection(&f, &transport)?,
    };

    // An explicit <multicast/> needs what it runs on: the UDP transport's multicast group.
    // (When <discovery> is omitted the model keeps HiveMQ's default, multicast, whatever the
    // transport: the seed's own TLS example has a TCP transport and no <discovery>.)
    if let Some(m) = discovery_node.as_ref().and_then(|d| d.child("multicast")) {
        match &transport {
            ClusterTransport::Tcp(_) => {
                return Err(m.invalid(
                    "multicast discovery needs the UDP transport, but the transport is TCP; \
                     use <static>, <broadcast> or <extension> discovery with TCP",
                ));
            }
            ClusterTransport::Udp(u) if !u.multicast_enabled => {
                return Err(m.invalid(
                    "multicast discovery needs <multicast-enabled>true</multicast-enabled> \
                     in the UDP transport",
                ));
            }
            ClusterTransport::Udp(_) => {}
        }
    }

    Ok(ClusterConfig {
        enabled,
        transport,
        discovery,
        replica_count,
        failure_detection,
    })
}

/// An optional port where 0 (HiveMQ's default) means "not set".
fn external_port(n: &Node<'_>) -> Result<Option<u16>, ConfigError> {
    Ok(n.opt("external-port", |p| p.int(0u16, 65535))?.filter(|&p| p != 0))
}

/// Reads `<transport>`; `None` for an empty element.
fn parse_transport(n: &Node<'_>) -> Result<Option<ClusterTransport>, ConfigError> {
    n.expect_children(&["tcp", "udp"], &[])?;
    if let (Some(_), Some(udp)) = (n.child("tcp"), n.child("udp")) {
        return Err(udp.invalid("only one cluster transport may be configured, but <tcp> is also present"));
    }
    if let Some(t) = n.child("tcp") {
        t.expect_children(
            &["bind-address", "bind-port", "external-address", "external-port", "tls"],
            &[],
        )?;
        return Ok(Some(ClusterTransport::Tcp(TcpTransport {
            bind_address: t.opt_string("bind-address")?,
            bind_port: t.int_or("bind-port", 0u16, 65535, DEFAULT_CLUSTER_PORT)?,
            external_address: t.opt_string("external-address")?,
            external_port: external_port(&t)?,
            tls: t.opt("tls", parse_cluster_tls)?.flatten(),
        })));
    }
    if let Some(u) = n.child("udp") {
        u.expect_children(
            &[
                "bind-address",
                "bind-port",
                "external-address",
                "external-port",
                "multicast-enabled",
                "multicast-address",
                "multicast-port",
            ],
            &[],
        )?;
        let multicast_address = match u.child("multicast-address") {
            None => DEFAULT_MULTICAST_ADDRESS.to_string(),
            Some(a) => {
                let s = a.string()?;
                if !s.parse::<IpAddr>().is_ok_and(|ip| ip.is_multicast()) {
                    return Err(a.invalid(format!(
                        "\"{s}\" is not an IP multicast address (224.0.0.0/4 or ff00::/8)"
                    )));
                }
                s
            }
        };
        return Ok(Some(ClusterTransport::Udp(UdpTransport {
            bind_address: u.opt_string("bind-address")?,
            bind_port: u.int_or("bind-port", 0u16, 65535, DEFAULT_CLUSTER_PORT)?,
            external_address: u.opt_string("external-address")?,
            external_port: external_port(&u)?,
            multicast_enabled: u.bool_or("multicast-enabled", true)?,
            multicast_address,
            multicast_port: u.int_or("multicast-port", 1u16, 65535, DEFAULT_MULTICAST_PORT)?,
        })));
    }
    Ok(None)
}

/// Reads `<tcp><tls>`; `None` unless enabled (all settings are still checked).
fn parse_cluster_tls(n: &Node<'_>) -> Result<Option<ClusterTls>, ConfigError> {
    n.expect_children(
        &[
            "enabled",
            "protocols",
            "cipher-suites",
            "server-keystore",
            "server-certificate-truststore",
            "client-authentication-mode",
            "client-authentication-keystore",
            "client-certificate-truststore",
        ],
        &[],
    )?;
    let enabled = n.bool_or("enabled", false)?;
    let protocols = n.opt("protocols", |p| p.string_list("protocol"))?.unwrap_or_default();
    let cipher_suites = n
        .opt("cipher-suites", |p| p.string_list("cipher-suite"))?
        .unwrap_or_default();
    let server_keystore = n.opt("server-keystore", parse_keystore)?;
    let server_certificate_truststore = n.opt("server-certificate-truststore", parse_truststore)?;
    let client_authentication_mode = n
        .opt("client-authentication-mode", parse_client_auth)?
        .unwrap_or_default();
    let client_authentication_keystore = n.opt("client-authentication-keystore", parse_keystore)?;
    let client_certificate_truststore = n.opt("client-certificate-truststore", parse_truststore)?;
    if !enabled {
        return Ok(None);
    }
    let Some(server_keystore) = server_keystore else {
        return Err(ConfigError::Missing {
            file: n.file.to_string(),
            line: n.line(),
            path: n.path.clone(),
            name: "server-keystore",
        });
    };
    Ok(Some(ClusterTls {
        protocols,
        cipher_suites,
        server_keystore,
        server_certificate_truststore,
        client_authentication_mode,
        client_authentication_keystore,
        client_certificate_truststore,
    }))
}

/// Reads `<discovery>`; `None` for an empty element.
fn parse_discovery(n: &Node<'_>) -> Result<Option<Discovery>, ConfigError> {
    const KINDS: &[&str] = &["static", "multicast", "broadcast", "extension"];
    n.expect_children(KINDS, &[])?;
    let mut kinds = n.children();
    let Some(d) = kinds.next() else {
        return Ok(None);
    };
    if let Some(second) = kinds.next() {
        return Err(second.invalid(format!(
            "only one discovery mechanism may be configured, but <{}> is also present (line {})",
            d.el.name,
            d.line()
        )));
    }
    let discovery = match d.el.name.as_str() {
        "static" => {
            d.expect_children(&["node"], &["node"])?;
            let mut nodes = Vec::new();
            for node in d.children() {
                node.expect_children(&["host", "port"], &[])?;
                nodes.push(NodeAddress {
                    host: node.required("host")?.string()?,
                    port: node.required("port")?.int(1u16, 65535)?,
                });
            }
            Discovery::Static(nodes)
        }
        "multicast" => {
            d.expect_children(&[], &[])?;
            Discovery::Multicast
        }
        "broadcast" => {
            d.expect_children(&["broadcast-address", "port", "port-range"], &[])?;
            let b = BroadcastDiscovery {
                broadcast_address: d
                    .opt_string("broadcast-address")?
                    .unwrap_or_else(|| DEFAULT_BROADCAST_ADDRESS.to_string()),
                port: d.int_or("port", 1u16, 65535, DEFAULT_BROADCAST_PORT)?,
                port_range: d.int_or("port-range", 0u16, 65535, DEFAULT_BROADCAST_PORT_RANGE)?,
            };
            if u32::from(b.port) + u32::from(b.port_range) > 65535 {
                return Err(d.invalid(format!(
                    "port {} plus port-range {} exceeds the largest port 65535",
                    b.port, b.port_range
                )));
            }
            Discovery::Broadcast(b)
        }
        _ => {
            d.expect_children(&["reload-interval"], &[])?;
            Discovery::Extension {
                reload_interval_secs: d.int_or(
                    "reload-interval",
                    1u32,
                    i32::MAX as u32,
                    DEFAULT_RELOAD_INTERVAL_SECS,
                )?,
            }
        }
    };
    Ok(Some(discovery))
}

/// Reads `<failure-detection>`.
fn parse_failure_detection(n: &Node<'_>, transport: &ClusterTransport) -> Result<FailureDetection, ConfigError> {
    n.expect_children(&["heartbeat", "tcp-health-check"], &[])?;
    let default_hb = Heartbeat::default_for(transport);
    let heartbeat = match n.child("heartbeat") {
        None => default_hb,
        Some(h) => {
            h.expect_children(&["enabled", "interval", "timeout"], &[])?;
            let hb = Heartbeat {
                enabled: h.bool_or("enabled", true)?,
                interval_ms: h.int_or("interval", 1u64, MAX_MS, default_hb.interval_ms)?,
                timeout_ms: h.int_or("timeout", 1u64, MAX_MS, default_hb.timeout_ms)?,
            };
            if hb.timeout_ms <= hb.interval_ms {
                let default_note = |written: bool| {
                    if written {
                        String::new()
                    } else {
                        format!(", the default for {} transport", transport.kind().to_uppercase())
                    }
                };
                let at = h.child("timeout").or_else(|| h.child("interval")).unwrap_or(h.clone());
                return Err(at.invalid(format!(
                    "the heartbeat timeout ({} ms{}) must be greater than the interval ({} ms{})",
                    hb.timeout_ms,
                    default_note(h.child("timeout").is_some()),
                    hb.interval_ms,
                    default_note(h.child("interval").is_some()),
                )));
            }
            hb
        }
    };
    let tcp_health_check = match n.child("tcp-health-check") {
        None => TcpHealthCheck::default(),
        Some(t) => {
            t.expect_children(
                &[
                    "enabled",
                    "bind-address",
                    "bind-port",
                    "port-range",
                    "external-address",
                    "external-port",
                ],
                &[],
            )?;
            let hc = TcpHealthCheck {
                enabled: t.bool_or("enabled", true)?,
                bind_address: t.opt_string("bind-address")?,
                bind_port: t.int_or("bind-port", 0u16, 65535, 0)?,
                port_range: t.int_or("port-range", 0u16, 65535, DEFAULT_HEALTH_CHECK_PORT_RANGE)?,
                external_address: t.opt_string("external-address")?,
                external_port: external_port(&t)?,
            };
            if hc.bind_port != 0 && u32::from(hc.bind_port) + u32::from(hc.port_range) > 65535 {
                return Err(t.invalid(format!(
                    "bind-port {} plus port-range {} exceeds the largest port 65535",
                    hc.bind_port, hc.port_range
                )));
            }
            hc
        }
    };
    Ok(FailureDetection {
        heartbeat,
        tcp_health_check,
    })
}
