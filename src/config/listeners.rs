//! MQTT listeners: `<listeners>` with any number of `tcp-listener`, `tls-tcp-listener`,
//! `websocket-listener` and `tls-websocket-listener`.

use std::collections::HashMap;

use serde::Serialize;

use super::error::ConfigError;
use super::tls::{TlsConfig, parse_listener_tls};
use super::walk::Node;

/// Default bind address of every listener.
pub const DEFAULT_BIND_ADDRESS: &str = "0.0.0.0";
/// Default MQTT port (the listener added when none is configured).
pub const DEFAULT_MQTT_PORT: u16 = 1883;
/// Default websocket path.
pub const DEFAULT_WEBSOCKET_PATH: &str = "/mqtt";

/// One MQTT listener.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Listener {
    /// `<tcp-listener>`.
    Tcp(TcpListenerConfig),
    /// `<tls-tcp-listener>`.
    TlsTcp(TlsTcpListenerConfig),
    /// `<websocket-listener>`.
    #[serde(rename = "websocket")]
    WebSocket(WebSocketListenerConfig),
    /// `<tls-websocket-listener>`.
    #[serde(rename = "tls-websocket")]
    TlsWebSocket(TlsWebSocketListenerConfig),
}

impl Listener {
    /// The port (0 = ephemeral).
    pub fn port(&self) -> u16 {
        match self {
            Listener::Tcp(l) => l.port,
            Listener::TlsTcp(l) => l.port,
            Listener::WebSocket(l) => l.port,
            Listener::TlsWebSocket(l) => l.port,
        }
    }

    /// The bind address as written (default `0.0.0.0`).
    pub fn bind_address(&self) -> &str {
        match self {
            Listener::Tcp(l) => &l.bind_address,
            Listener::TlsTcp(l) => &l.bind_address,
            Listener::WebSocket(l) => &l.bind_address,
            Listener::TlsWebSocket(l) => &l.bind_address,
        }
    }

    /// The optional listener name.
    pub fn name(&self) -> Option<&str> {
        match self {
            Listener::Tcp(l) => l.name.as_deref(),
            Listener::TlsTcp(l) => l.name.as_deref(),
            Listener::WebSocket(l) => l.name.as_deref(),
            Listener::TlsWebSocket(l) => l.name.as_deref(),
        }
    }

    /// The TLS settings, for the two TLS listener kinds.
    pub fn tls(&self) -> Option<&TlsConfig> {
        match self {
            Listener::TlsTcp(l) => Some(&l.tls),
            Listener::TlsWebSocket(l) => Some(&l.tls),
            Listener::Tcp(_) | Listener::WebSocket(_) => None,
        }
    }

    /// The element name in config.xml (`tcp-listener`, ...).
    pub fn element_name(&self) -> &'static str {
        match self {
            Listener::Tcp(_) => "tcp-listener",
            Listener::TlsTcp(_) => "tls-tcp-listener",
            Listener::WebSocket(_) => "websocket-listener",
            Listener::TlsWebSocket(_) => "tls-websocket-listener",
        }
    }
}

/// `<tcp-listener>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpListenerConfig {
    /// `port` (required, 0..=65535; 0 = ephemeral).
    pub port: u16,
    /// `bind-address` (default `0.0.0.0`).
    pub bind_address: String,
    /// `name` (optional).
    pub name: Option<String>,
}

impl Default for TcpListenerConfig {
    /// The listener HiveMQ adds when none is configured: 0.0.0.0:1883.
    fn default() -> Self {
        TcpListenerConfig {
            port: DEFAULT_MQTT_PORT,
            bind_address: DEFAULT_BIND_ADDRESS.to_string(),
            name: None,
        }
    }
}

/// `<tls-tcp-listener>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsTcpListenerConfig {
    /// `port` (required).
    pub port: u16,
    /// `bind-address` (default `0.0.0.0`).
    pub bind_address: String,
    /// `name` (optional).
    pub name: Option<String>,
    /// `tls` (required).
    pub tls: TlsConfig,
}

/// `<websocket-listener>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebSocketListenerConfig {
    /// `port` (required).
    pub port: u16,
    /// `bind-address` (default `0.0.0.0`).
    pub bind_address: String,
    /// `name` (optional).
    pub name: Option<String>,
    /// `path` (default `/mqtt`).
    pub path: String,
    /// `subprotocols/subprotocol*` (default `mqttv3.1`, `mqtt`).
    pub subprotocols: Vec<String>,
    /// `allow-extensions` (default false).
    pub allow_extensions: bool,
}

/// `<tls-websocket-listener>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsWebSocketListenerConfig {
    /// `port` (required).
    pub port: u16,
    /// `bind-address` (default `0.0.0.0`).
    pub bind_address: String,
    /// `name` (optional).
    pub name: Option<String>,
    /// `path` (default `/mqtt`).
    pub path: String,
    /// `subprotocols/subprotocol*` (default `mqttv3.1`, `mqtt`).
    pub subprotocols: Vec<String>,
    /// `allow-extensions` (default false).
    pub allow_extensions: bool,
    /// `tls` (required).
    pub tls: TlsConfig,
}

/// The default websocket subprotocols.
pub fn default_subprotocols() -> Vec<String> {
    vec!["mqttv3.1".to_string(), "mqtt".to_string()]
}

/// Common fields of all listener kinds.
struct Base {
    port: u16,
    bind_address: String,
    name: Option<String>,
}

fn base(n: &Node<'_>) -> Result<Base, ConfigError> {
    Ok(Base {
        port: n.required("port")?.int(0u16, 65535)?,
        bind_address: n
            .opt_string("bind-address")?
            .unwrap_or_else(|| DEFAULT_BIND_ADDRESS.to_string()),
        name: n.opt_string("name")?,
    })
}

/// Websocket-only fields.
struct Ws {
    path: String,
    subprotocols: Vec<String>,
    allow_extensions: bool,
}

fn ws(n: &Node<'_>) -> Result<Ws, ConfigError> {
    let path = n
        .opt_string("path")?
        .unwrap_or_else(|| DEFAULT_WEBSOCKET_PATH.to_string());
    Ok(Ws {
        path,
        subprotocols: n
            .opt("subprotocols", |s| s.string_list("subprotocol"))?
            .unwrap_or_else(default_subprotocols),
        allow_extensions: n.bool_or("allow-extensions", false)?,
    })
}

const TCP: &[&str] = &["port", "bind-address", "name"];
const TLS_TCP: &[&str] = &["port", "bind-address", "name", "tls"];
const WS: &[&str] = &[
    "port",
    "bind-address",
    "name",
    "path",
    "subprotocols",
    "allow-extensions",
];
const TLS_WS: &[&str] = &[
    "port",
    "bind-address",
    "name",
    "path",
    "subprotocols",
    "allow-extensions",
    "tls",
];

/// Reads one listener element.
fn parse_listener(n: &Node<'_>) -> Result<Listener, ConfigError> {
    Ok(match n.el.name.as_str() {
        "tcp-listener" => {
            n.expect_children(TCP, &[])?;
            let b = base(n)?;
            Listener::Tcp(TcpListenerConfig {
                port: b.port,
                bind_address: b.bind_address,
                name: b.name,
            })
        }
        "tls-tcp-listener" => {
            n.expect_children(TLS_TCP, &[])?;
            let b = base(n)?;
            Listener::TlsTcp(TlsTcpListenerConfig {
                port: b.port,
                bind_address: b.bind_address,
                name: b.name,
                tls: parse_listener_tls(&n.required("tls")?)?,
            })
        }
        "websocket-listener" => {
            n.expect_children(WS, &[])?;
            let b = base(n)?;
            let w = ws(n)?;
            Listener::WebSocket(WebSocketListenerConfig {
                port: b.port,
                bind_address: b.bind_address,
                name: b.name,
                path: w.path,
                subprotocols: w.subprotocols,
                allow_extensions: w.allow_extensions,
            })
        }
        "tls-websocket-listener" => {
            n.expect_children(TLS_WS, &[])?;
            let b = base(n)?;
            let w = ws(n)?;
            Listener::TlsWebSocket(TlsWebSocketListenerConfig {
                port: b.port,
                bind_address: b.bind_address,
                name: b.name,
                path: w.path,
                subprotocols: w.subprotocols,
                allow_extensions: w.allow_extensions,
                tls: parse_listener_tls(&n.required("tls")?)?,
            })
        }
        // `expect_children` on <listeners> only lets the four kinds through.
        other => return Err(n.invalid(format!("<{other}> is not a listener"))),
    })
}

const KINDS: &[&str] = &[
    "tcp-listener",
    "tls-tcp-listener",
    "websocket-listener",
    "tls-websocket-listener",
];

/// Reads `<listeners>`. An empty `<listeners/>` yields an empty list (the caller applies the
/// 0.0.0.0:1883 default). Two listeners on the same bind address and port are an error
/// (port 0, an ephemeral port, never conflicts).
pub(crate) fn parse_listeners(n: &Node<'_>) -> Result<Vec<Listener>, ConfigError> {
    n.expect_children(KINDS, KINDS)?;
    let mut out = Vec::new();
    let mut by_addr: HashMap<(String, u16), usize> = HashMap::new();
    for child in n.children() {
        let l = parse_listener(&child)?;
        if l.port() != 0 {
            let key = (l.bind_address().to_string(), l.port());
            if let Some(first) = by_addr.insert(key, child.line()) {
                return Err(child.invalid(format!(
                    "another listener (line {first}) already uses bind address {} and port {}",
                    l.bind_address(),
                    l.port()
                )));
            }
        }
        out.push(l);
    }
    Ok(out)
}
