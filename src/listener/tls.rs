//! TLS for `tls-tcp-listener` and `tls-websocket-listener`, with rustls: the `<tls>` settings
//! become a [`ServerConfig`] at start-up, so every mistake (bad keystore, unknown cipher suite)
//! stops the broker before it accepts anything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::crypto::aws_lc_rs;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::keystore;
use crate::config::tls::{ClientAuthenticationMode, TlsConfig};

/// Accepts TLS connections for one listener.
#[derive(Clone)]
pub struct Acceptor {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    client_auth: ClientAuthenticationMode,
}

impl Acceptor {
    /// Builds the listener's TLS configuration from `<tls>`.
    pub fn new(tls: &TlsConfig) -> anyhow::Result<Acceptor> {
        // Named explicitly: rustls refuses to guess when more than one provider is compiled in.
        let mut provider = aws_lc_rs::default_provider();
        if !tls.cipher_suites.is_empty() {
            provider.cipher_suites = cipher_suites(&tls.cipher_suites)?;
        }
        let versions = protocol_versions(&tls.protocols)?;
        let provider = Arc::new(provider);
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .context("the configured <protocols> and <cipher-suites> have nothing in common")?;

        let builder = match tls.client_authentication_mode {
            ClientAuthenticationMode::None => builder.with_no_client_auth(),
            mode => {
                let Some(truststore) = &tls.truststore else {
                    bail!("<client-authentication-mode> {mode:?} needs a <truststore> to verify client certificates");
                };
                let mut roots = RootCertStore::empty();
                for cert in keystore::load_trusted(truststore)? {
                    roots
                        .add(cert)
                        .with_context(|| format!("the truststore {} holds a bad certificate", truststore.path))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if mode == ClientAuthenticationMode::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                builder.with_client_cert_verifier(verifier.build().context("cannot use the truststore")?)
            }
        };
        let identity = keystore::load_identity(&tls.keystore)?;
        let mut config = builder
            .with_single_cert(identity.chain, identity.key)
            .with_context(|| format!("the keystore {} has an unusable certificate or key", tls.keystore.path))?;
        config.ignore_client_order = tls.prefer_server_cipher_suites.unwrap_or(false);
        Ok(Acceptor {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshake_timeout: Duration::from_millis(tls.handshake_timeout_ms),
            client_auth: tls.client_authentication_mode,
        })
    }

    /// Runs the TLS handshake within `handshake-timeout`. A failure is logged and yields `None`:
    /// it concerns this client only.
    pub async fn accept<S>(&self, stream: S, peer: SocketAddr, listener: &str) -> Option<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let tls = match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::info!(%peer, listener, "TLS handshake failed: {e}");
                return None;
            }
            Err(_) => {
                tracing::info!(
                    %peer,
                    listener,
                    "TLS handshake failed: not done within {} ms",
                    self.handshake_timeout.as_millis()
                );
                return None;
            }
        };
        if self.client_auth != ClientAuthenticationMode::None {
            match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                Some(cert) => tracing::info!(
                    %peer,
                    listener,
                    "TLS client certificate subject: {}",
                    keystore::subject(cert)
                ),
                None => tracing::info!(%peer, listener, "TLS client without a certificate"),
            }
        }
        Some(tls)
    }
}

/// The IANA name of a suite, as Java and HiveMQ write it: rustls says `TLS13_AES_128_GCM_SHA256`
/// where IANA says `TLS_AES_128_GCM_SHA256`.
fn iana_name(suite: &SupportedCipherSuite) -> String {
    let name = suite.suite().as_str().unwrap_or_default();
    match name.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => name.to_string(),
    }
}

/// Maps `<cipher-suite>` names to rustls suites, in the configured order. A name rustls does
/// not implement (CBC and RSA key exchange suites, say) stops the start-up: silently dropping it
/// could leave the operator with a different cipher list than the one written down.
fn cipher_suites(names: &[String]) -> anyhow::Result<Vec<SupportedCipherSuite>> {
    let all = aws_lc_rs::ALL_CIPHER_SUITES;
    names
        .iter()
        .map(|name| {
            let wanted = name.trim();
            all.iter()
                .find(|s| iana_name(s) == wanted || s.suite().as_str() == Some(wanted))
                .copied()
                .ok_or_else(|| {
                    let known: Vec<_> = all.iter().map(iana_name).collect();
                    anyhow::anyhow!(
                        "unknown or unsupported <cipher-suite> {wanted:?}; supported: {}",
                        known.join(", ")
                    )
                })
        })
        .collect()
}

/// Maps `<protocol>` names (`TLSv1.2`, `TLSv1.3`) to rustls versions; none configured means both.
/// Older versions are not implemented by rustls; they are skipped with a warning as long as a
/// usable one remains, since HiveMQ configs often still list them.
fn protocol_versions(names: &[String]) -> anyhow::Result<Vec<&'static SupportedProtocolVersion>> {
    if names.is_empty() {
        return Ok(vec![&rustls::version::TLS13, &rustls::version::TLS12]);
    }
    let mut versions = Vec::new();
    for name in names {
        match name.trim() {
            "TLSv1.3" => versions.push(&rustls::version::TLS13),
            "TLSv1.2" => versions.push(&rustls::version::TLS12),
            old @ ("TLSv1" | "TLSv1.1" | "SSLv3" | "SSLv2Hello") => {
                tracing::warn!("<protocol> {old} is obsolete and not supported; it is ignored");
            }
            other => bail!("unknown <protocol> {other:?}; supported: TLSv1.2, TLSv1.3"),
        }
    }
    if versions.is_empty() {
        bail!("none of the configured <protocols> is supported; use TLSv1.2 and/or TLSv1.3");
    }
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hivemq_cipher_suite_names_map_to_rustls() {
        let suites = cipher_suites(&[
            "TLS_AES_128_GCM_SHA256".into(),
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into(),
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256".into(),
            "TLS13_AES_256_GCM_SHA384".into(),
        ])
        .expect("known suites");
        let names: Vec<_> = suites.iter().map(iana_name).collect();
        assert_eq!(
            names,
            [
                "TLS_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_AES_256_GCM_SHA384"
            ]
        );
    }

    #[test]
    fn unknown_cipher_suite_is_an_error_naming_it() {
        let err = cipher_suites(&["TLS_RSA_WITH_AES_128_CBC_SHA".into()])
            .expect_err("CBC is not implemented")
            .to_string();
        assert!(err.contains("TLS_RSA_WITH_AES_128_CBC_SHA"), "{err}");
        assert!(
            err.contains("TLS_AES_128_GCM_SHA256"),
            "lists the supported ones: {err}"
        );
    }

    #[test]
    fn protocols() {
        assert_eq!(protocol_versions(&[]).expect("default").len(), 2);
        let v = protocol_versions(&["TLSv1.1".into(), "TLSv1.2".into()]).expect("1.2 remains");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].version, rustls::ProtocolVersion::TLSv1_2);
        assert!(protocol_versions(&["TLSv1.1".into()]).is_err());
        assert!(protocol_versions(&["TLSv9".into()]).is_err());
    }
}
