//! TLS settings shared by listeners (`listenerTLSEntity`) and, in part, the cluster transport.

use serde::{Serialize, Serializer};

use super::error::ConfigError;
use super::walk::Node;

/// Serializes a secret as `"***"` (or `""` when empty) so `to_pretty_json` never prints it.
pub(crate) fn redact<S: Serializer>(secret: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if secret.is_empty() { "" } else { "***" })
}

/// `<keystore>` / `<server-keystore>` / `<client-authentication-keystore>`: all three required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Keystore {
    /// `path`: the key store file (JKS in HiveMQ).
    pub path: String,
    /// `password` of the key store (redacted in JSON).
    #[serde(serialize_with = "redact")]
    pub password: String,
    /// `private-key-password` (redacted in JSON).
    #[serde(serialize_with = "redact")]
    pub private_key_password: String,
}

/// `<truststore>` / `<server-certificate-truststore>` / `<client-certificate-truststore>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Truststore {
    /// `path`: the trust store file.
    pub path: String,
    /// `password` of the trust store (redacted in JSON).
    #[serde(serialize_with = "redact")]
    pub password: String,
}

/// `client-authentication-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientAuthenticationMode {
    /// `NONE` (default): no client certificate is requested.
    #[default]
    None,
    /// `OPTIONAL`: a client certificate is used if presented.
    Optional,
    /// `REQUIRED`: a client certificate is required.
    Required,
}

/// Default TLS handshake timeout in milliseconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// `<tls>` of a `tls-tcp-listener` / `tls-websocket-listener`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsConfig {
    /// `keystore` (required).
    pub keystore: Keystore,
    /// `truststore` (optional; needed to verify client certificates).
    pub truststore: Option<Truststore>,
    /// `protocols/protocol*`; empty means the implementation's defaults.
    pub protocols: Vec<String>,
    /// `cipher-suites/cipher-suite*`; empty means the implementation's defaults.
    pub cipher_suites: Vec<String>,
    /// `prefer-server-cipher-suites`; `None` when not written (implementation default).
    pub prefer_server_cipher_suites: Option<bool>,
    /// `handshake-timeout` in milliseconds (default 10000).
    pub handshake_timeout_ms: u64,
    /// `client-authentication-mode` (default `NONE`).
    pub client_authentication_mode: ClientAuthenticationMode,
}

pub(crate) fn parse_keystore(n: &Node<'_>) -> Result<Keystore, ConfigError> {
    n.expect_children(&["path", "password", "private-key-password"], &[])?;
    Ok(Keystore {
        path: n.required("path")?.string()?,
        password: n.required("password")?.string_allow_empty()?,
        private_key_password: n.required("private-key-password")?.string_allow_empty()?,
    })
}

pub(crate) fn parse_truststore(n: &Node<'_>) -> Result<Truststore, ConfigError> {
    n.expect_children(&["path", "password"], &[])?;
    Ok(Truststore {
        path: n.required("path")?.string()?,
        password: n.required("password")?.string_allow_empty()?,
    })
}

pub(crate) fn parse_client_auth(n: &Node<'_>) -> Result<ClientAuthenticationMode, ConfigError> {
    n.one_of(&[
        ("NONE", ClientAuthenticationMode::None),
        ("OPTIONAL", ClientAuthenticationMode::Optional),
        ("REQUIRED", ClientAuthenticationMode::Required),
    ])
}

/// Reads a listener's `<tls>`.
pub(crate) fn parse_listener_tls(n: &Node<'_>) -> Result<TlsConfig, ConfigError> {
    n.expect_children(
        &[
            "keystore",
            "truststore",
            "protocols",
            "cipher-suites",
            "prefer-server-cipher-suites",
            "handshake-timeout",
            "client-authentication-mode",
        ],
        &[],
    )?;
    Ok(TlsConfig {
        keystore: parse_keystore(&n.required("keystore")?)?,
        truststore: n.opt("truststore", parse_truststore)?,
        protocols: n.opt("protocols", |p| p.string_list("protocol"))?.unwrap_or_default(),
        cipher_suites: n
            .opt("cipher-suites", |p| p.string_list("cipher-suite"))?
            .unwrap_or_default(),
        prefer_server_cipher_suites: n.opt("prefer-server-cipher-suites", Node::bool)?,
        handshake_timeout_ms: n.int_or("handshake-timeout", 1u64, i32::MAX as u64, DEFAULT_HANDSHAKE_TIMEOUT_MS)?,
        client_authentication_mode: n
            .opt("client-authentication-mode", parse_client_auth)?
            .unwrap_or_default(),
    })
}
