//! Reading HiveMQ's `config.xml`.
//!
//! # Layout
//! - `env`: `${ENV:NAME}` / `${NAME}` substitution on the raw text (HiveMQ's `EnvVarUtil`).
//! - `xml`: a tiny element tree built with quick-xml, with the line of every element.
//! - `walk`: strict reading of that tree (unknown / duplicated / missing elements, types,
//!   ranges, enumerations), producing [`ConfigError`]s that name the line and element path.
//! - [`model`]: the typed [`Config`] and HiveMQ's defaults; `sections`: the plain CE sections.
//! - [`listeners`], [`tls`], [`cluster`], [`enterprise`]: one file per concept.
//!
//! # Behaviour
//! Loading is fail-fast: any problem is an error (HiveMQ itself logs and falls back to the
//! defaults for everything but an unset variable). Every section is optional, may appear in any
//! order and at most once; an element the operator wrote is never silently replaced by a
//! default. Booleans are `true`/`false` (any case), numbers and values are trimmed.

pub mod cluster;
pub mod enterprise;
pub(crate) mod env;
pub mod error;
pub mod listeners;
pub mod model;
mod sections;
pub mod tls;
mod walk;
pub(crate) mod xml;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use cluster::{
    BroadcastDiscovery, ClusterConfig, ClusterTls, ClusterTransport, Discovery, FailureDetection, Heartbeat,
    NodeAddress, TcpHealthCheck, TcpTransport, UdpTransport,
};
pub use enterprise::{
    ControlCenterConfig, ControlCenterUser, HealthApiConfig, HttpListener, OverloadProtectionConfig, RestApiConfig,
};
pub use error::ConfigError;
pub use listeners::{
    Listener, TcpListenerConfig, TlsTcpListenerConfig, TlsWebSocketListenerConfig, WebSocketListenerConfig,
};
pub use model::{
    Config, EXPIRY_NEVER, MAX_PACKET_SIZE, MqttConfig, PersistenceMode, QueueStrategy, Restrictions, Security,
};
pub use tls::{ClientAuthenticationMode, Keystore, TlsConfig, Truststore};

use walk::Node;

/// The top-level sections, in the order they are listed in error messages.
const SECTIONS: &[&str] = &[
    "listeners",
    "mqtt",
    "restrictions",
    "security",
    "persistence",
    "anonymous-usage-statistics",
    "cluster",
    "rest-api",
    "health-api",
    "control-center",
    "overload-protection",
];

impl Config {
    /// Reads the file, substitutes placeholders from the process environment, parses, validates.
    ///
    /// Error messages name the file by `path` as given.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
            path: path.display().to_string(),
            error,
        })?;
        Config::parse(&text, &path.display().to_string(), &env::process_env)
    }

    /// Same from text; `source` is the name used in error messages (e.g. "config.xml");
    /// `env` looks up variables.
    pub fn parse(text: &str, source: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        // A UTF-8 byte order mark is not part of the document.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let substituted = env::substitute(text, source, env)?;
        let root = xml::parse_document(&substituted, source)?;
        if root.name != "hivemq" {
            return Err(ConfigError::WrongRoot {
                file: source.to_string(),
                line: root.line,
                found: root.name,
            });
        }
        let root = Node::root(&root, source);
        root.expect_children(SECTIONS, &[])?;

        let mut config = Config::default();
        if let Some(n) = root.child("listeners") {
            let listeners = listeners::parse_listeners(&n)?;
            if !listeners.is_empty() {
                config.listeners = listeners;
            }
        }
        if let Some(n) = root.child("mqtt") {
            config.mqtt = sections::parse_mqtt(&n)?;
        }
        if let Some(n) = root.child("restrictions") {
            config.restrictions = sections::parse_restrictions(&n)?;
        }
        if let Some(n) = root.child("security") {
            config.security = sections::parse_security(&n)?;
        }
        if let Some(n) = root.child("persistence") {
            config.persistence = sections::parse_persistence(&n)?;
        }
        if let Some(n) = root.child("anonymous-usage-statistics") {
            config.anonymous_usage_statistics = sections::parse_usage_statistics(&n)?;
        }
        if let Some(n) = root.child("cluster") {
            config.cluster = cluster::parse_cluster(&n)?;
        }
        if let Some(n) = root.child("rest-api") {
            config.rest_api = enterprise::parse_rest_api(&n)?;
        }
        if let Some(n) = root.child("health-api") {
            config.health_api = enterprise::parse_health_api(&n)?;
        }
        if let Some(n) = root.child("control-center") {
            config.control_center = enterprise::parse_control_center(&n)?;
        }
        if let Some(n) = root.child("overload-protection") {
            config.overload_protection = enterprise::parse_overload_protection(&n)?;
        }
        Ok(config)
    }

    /// The effective configuration as pretty JSON (for `apiary config check`).
    /// Passwords are shown as `"***"`.
    pub fn to_pretty_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\": \"cannot serialize the configuration: {e}\"}}"))
    }
}
