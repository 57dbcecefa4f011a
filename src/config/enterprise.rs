//! HiveMQ Enterprise sections that Apiary reads and keeps in the model: `<rest-api>`,
//! `<health-api>`, `<control-center>` and `<overload-protection>`.
//!
//! Only the documented elements are accepted (REFERENCE §3, §5): `enabled`, and
//! `listeners/http{port, bind-address, name}`; the control center also takes
//! `users/user{name, password}` (HiveMQ's Docker images write it).
//! When `<listeners>` is omitted, the documented default listener applies
//! (REST API 0.0.0.0:8888, health API 0.0.0.0:8889, control center 0.0.0.0:8080);
//! an empty `<listeners/>` means no listener.

use serde::Serialize;

use super::error::ConfigError;
use super::listeners::DEFAULT_BIND_ADDRESS;
use super::tls::redact;
use super::walk::Node;

/// Default REST API port.
pub const DEFAULT_REST_API_PORT: u16 = 8888;
/// Default health API port.
pub const DEFAULT_HEALTH_API_PORT: u16 = 8889;
/// Default control center port.
pub const DEFAULT_CONTROL_CENTER_PORT: u16 = 8080;

/// `<listeners><http>` of an enterprise HTTP service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpListener {
    /// `port` (required).
    pub port: u16,
    /// `bind-address` (default `0.0.0.0`).
    pub bind_address: String,
    /// `name` (optional).
    pub name: Option<String>,
}

impl HttpListener {
    fn on(port: u16) -> Self {
        HttpListener {
            port,
            bind_address: DEFAULT_BIND_ADDRESS.to_string(),
            name: None,
        }
    }
}

/// `<rest-api>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestApiConfig {
    /// `enabled` (default false).
    pub enabled: bool,
    /// `listeners/http*` (default one on 0.0.0.0:8888).
    pub listeners: Vec<HttpListener>,
}

impl Default for RestApiConfig {
    fn default() -> Self {
        RestApiConfig {
            enabled: false,
            listeners: vec![HttpListener::on(DEFAULT_REST_API_PORT)],
        }
    }
}

/// `<health-api>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthApiConfig {
    /// `enabled` (default false).
    pub enabled: bool,
    /// `listeners/http*` (default one on 0.0.0.0:8889).
    pub listeners: Vec<HttpListener>,
}

impl Default for HealthApiConfig {
    fn default() -> Self {
        HealthApiConfig {
            enabled: false,
            listeners: vec![HttpListener::on(DEFAULT_HEALTH_API_PORT)],
        }
    }
}

/// `<control-center>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControlCenterConfig {
    /// `enabled` (default true in HiveMQ Enterprise).
    pub enabled: bool,
    /// `listeners/http*` (default one on 0.0.0.0:8080).
    pub listeners: Vec<HttpListener>,
    /// `users/user*` (default none: the product's built-in login applies).
    pub users: Vec<ControlCenterUser>,
}

impl Default for ControlCenterConfig {
    fn default() -> Self {
        ControlCenterConfig {
            enabled: true,
            listeners: vec![HttpListener::on(DEFAULT_CONTROL_CENTER_PORT)],
            users: Vec::new(),
        }
    }
}

/// `<users><user>` of the control center.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControlCenterUser {
    /// `name`.
    pub name: String,
    /// `password` (HiveMQ expects a SHA-256 hash; redacted in JSON).
    #[serde(serialize_with = "redact")]
    pub password: String,
}

/// `<overload-protection>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverloadProtectionConfig {
    /// `enabled` (default true).
    pub enabled: bool,
}

impl Default for OverloadProtectionConfig {
    fn default() -> Self {
        OverloadProtectionConfig { enabled: true }
    }
}

fn parse_http_listeners(n: &Node<'_>) -> Result<Vec<HttpListener>, ConfigError> {
    n.expect_children(&["http"], &["http"])?;
    n.children()
        .map(|h| {
            h.expect_children(&["port", "bind-address", "name"], &[])?;
            Ok(HttpListener {
                port: h.required("port")?.int(0u16, 65535)?,
                bind_address: h
                    .opt_string("bind-address")?
                    .unwrap_or_else(|| DEFAULT_BIND_ADDRESS.to_string()),
                name: h.opt_string("name")?,
            })
        })
        .collect()
}

/// Reads `<rest-api>`.
pub(crate) fn parse_rest_api(n: &Node<'_>) -> Result<RestApiConfig, ConfigError> {
    n.expect_children(&["enabled", "listeners"], &[])?;
    let d = RestApiConfig::default();
    Ok(RestApiConfig {
        enabled: n.bool_or("enabled", d.enabled)?,
        listeners: n.opt("listeners", parse_http_listeners)?.unwrap_or(d.listeners),
    })
}

/// Reads `<health-api>`.
pub(crate) fn parse_health_api(n: &Node<'_>) -> Result<HealthApiConfig, ConfigError> {
    n.expect_children(&["enabled", "listeners"], &[])?;
    let d = HealthApiConfig::default();
    Ok(HealthApiConfig {
        enabled: n.bool_or("enabled", d.enabled)?,
        listeners: n.opt("listeners", parse_http_listeners)?.unwrap_or(d.listeners),
    })
}

/// Reads `<control-center>`.
pub(crate) fn parse_control_center(n: &Node<'_>) -> Result<ControlCenterConfig, ConfigError> {
    n.expect_children(&["enabled", "listeners", "users"], &[])?;
    let d = ControlCenterConfig::default();
    let users = match n.child("users") {
        None => d.users,
        Some(u) => {
            u.expect_children(&["user"], &["user"])?;
            u.children()
                .map(|user| {
                    user.expect_children(&["name", "password"], &[])?;
                    Ok(ControlCenterUser {
                        name: user.required("name")?.string()?,
                        password: user.required("password")?.string()?,
                    })
                })
                .collect::<Result<_, ConfigError>>()?
        }
    };
    Ok(ControlCenterConfig {
        enabled: n.bool_or("enabled", d.enabled)?,
        listeners: n.opt("listeners", parse_http_listeners)?.unwrap_or(d.listeners),
        users,
    })
}

/// Reads `<overload-protection>`.
pub(crate) fn parse_overload_protection(n: &Node<'_>) -> Result<OverloadProtectionConfig, ConfigError> {
    n.expect_children(&["enabled"], &[])?;
    Ok(OverloadProtectionConfig {
        enabled: n.bool_or("enabled", true)?,
    })
}
