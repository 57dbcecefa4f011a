//! Key stores and trust stores from disk: PEM and PKCS#12. A Java KeyStore (JKS/JCEKS), HiveMQ's
//! usual format, has no maintained Rust reader; it is refused with the `keytool` command that
//! converts it, since operators migrating from HiveMQ will hit this first.

use std::path::Path;

use anyhow::{Context, bail};
use p12_keystore::{KeyStore, KeyStoreEntry, Pkcs12ImportPolicy};
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};

use crate::config::tls::{Keystore, Truststore};

/// A server identity: certificate chain (leaf first) and its private key.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

enum Format {
    Pem,
    Pkcs12,
}

/// Recognises the format from the first bytes, refusing Java key stores.
fn format_of(path: &str, data: &[u8]) -> anyhow::Result<Format> {
    const JKS: [u8; 4] = [0xFE, 0xED, 0xFE, 0xED];
    const JCEKS: [u8; 4] = [0xCE, 0xCE, 0xCE, 0xCE];
    if data.starts_with(&JKS) || data.starts_with(&JCEKS) {
        let stem = Path::new(path)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "keystore".into());
        bail!(
            "{path} is a Java KeyStore (JKS), which Apiary cannot read; convert it to PKCS#12 with \
             `keytool -importkeystore -srckeystore {path} -destkeystore {stem}.p12 -deststoretype pkcs12` \
             and point <path> at the .p12 file"
        );
    }
    if data.windows(10).any(|w| w == b"-----BEGIN") {
        return Ok(Format::Pem);
    }
    // PKCS#12 is DER: a SEQUENCE.
    if data.first() == Some(&0x30) {
        return Ok(Format::Pkcs12);
    }
    bail!("{path} is neither PEM nor PKCS#12 (nor JKS)")
}

fn read(path: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {path}"))
}

/// Loads a `<keystore>`: a PEM file holding the certificate chain and the private key
/// (optionally an encrypted PKCS#8 key, opened with `private-key-password`), or a PKCS#12 file
/// opened with `password`.
pub fn load_identity(keystore: &Keystore) -> anyhow::Result<Identity> {
    let path = keystore.path.as_str();
    let data = read(path, "keystore")?;
    match format_of(path, &data)? {
        Format::Pem => pem_identity(path, &data, &keystore.private_key_password),
        Format::Pkcs12 => pkcs12_identity(path, &data, keystore),
    }
}

fn pem_identity(path: &str, data: &[u8], key_password: &str) -> anyhow::Result<Identity> {
    let mut chain = Vec::new();
    let mut key = None;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(data) {
        let (kind, der) = section.with_context(|| format!("{path}: malformed PEM"))?;
        let found = match kind {
            SectionKind::Certificate => {
                chain.push(CertificateDer::from(der));
                None
            }
            SectionKind::PrivateKey => Some(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))),
            SectionKind::RsaPrivateKey => Some(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der))),
            SectionKind::EcPrivateKey => Some(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der))),
            _ => None,
        };
        if found.is_some() && key.replace(found).is_some() {
            bail!("{path} holds more than one private key");
        }
    }
    let key = match key.flatten() {
        Some(k) => k,
        None => encrypted_pem_key(path, data, key_password)?,
    };
    if chain.is_empty() {
        bail!("{path} holds no certificate: the PEM keystore needs the certificate chain and the key");
    }
    Ok(Identity { chain, key })
}

/// An `ENCRYPTED PRIVATE KEY` block (PKCS#8 with PBES2), which the PEM parser above skips.
fn encrypted_pem_key(path: &str, data: &[u8], password: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    const BEGIN: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
    const END: &str = "-----END ENCRYPTED PRIVATE KEY-----";
    let text = String::from_utf8_lossy(data);
    let block = text
        .find(BEGIN)
        .and_then(|start| text[start..].find(END).map(|len| &text[start..start + len + END.len()]));
    let Some(block) = block else {
        bail!("{path} holds no private key: the PEM keystore needs the certificate chain and the key");
    };
    // Base64 first, then DER: der's streaming PEM reader cannot parse PBES2 parameters.
    let (_, der) = pkcs8::der::pem::decode_vec(block.as_bytes())
        .map_err(|e| anyhow::anyhow!("{path}: malformed encrypted private key: {e}"))?;
    let info = pkcs8::EncryptedPrivateKeyInfoRef::try_from(der.as_slice())
        .map_err(|e| anyhow::anyhow!("{path}: malformed encrypted private key: {e}"))?;
    let plain = info
        .decrypt(password)
        .map_err(|_| anyhow::anyhow!("{path}: cannot decrypt the private key: wrong <private-key-password>?"))?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        plain.as_bytes().to_vec(),
    )))
}

fn open_pkcs12(path: &str, data: &[u8], password: &str, policy: Pkcs12ImportPolicy) -> anyhow::Result<KeyStore> {
    KeyStore::from_pkcs12(data, password, policy)
        .map_err(|e| anyhow::anyhow!("cannot open the PKCS#12 file {path} (wrong password or damaged file): {e}"))
}

fn pkcs12_identity(path: &str, data: &[u8], keystore: &Keystore) -> anyhow::Result<Identity> {
    // PKCS#12 files use one password for the store and its keys; try the key password too,
    // for files written by tools that kept them apart.
    let store = open_pkcs12(path, data, &keystore.password, Pkcs12ImportPolicy::Strict).or_else(|first| {
        if keystore.private_key_password != keystore.password && !keystore.private_key_password.is_empty() {
            open_pkcs12(path, data, &keystore.private_key_password, Pkcs12ImportPolicy::Strict).map_err(|_| first)
        } else {
            Err(first)
        }
    })?;
    let Some((alias, keychain)) = store.private_key_chain() else {
        bail!("{path} holds no private key entry");
    };
    let chain: Vec<_> = keychain
        .certs()
        .iter()
        .map(|c| CertificateDer::from(c.as_der().to_vec()))
        .collect();
    if chain.is_empty() {
        bail!("{path}: the key entry {alias:?} has no certificate");
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(keychain.key().as_der().to_vec()));
    Ok(Identity { chain, key })
}

/// Loads a `<truststore>`: a PEM bundle of CA certificates or a PKCS#12 file of certificates.
pub fn load_trusted(truststore: &Truststore) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let path = truststore.path.as_str();
    let data = read(path, "truststore")?;
    let certs: Vec<_> = match format_of(path, &data)? {
        Format::Pem => CertificateDer::pem_slice_iter(&data)
            .collect::<Result<_, _>>()
            .with_context(|| format!("{path}: malformed PEM"))?,
        Format::Pkcs12 => {
            // Raw: every certificate counts, whether or not Java marked it as trusted.
            let store = open_pkcs12(path, &data, &truststore.password, Pkcs12ImportPolicy::Raw)?;
            store
                .entries()
                .flat_map(|(_, entry)| match entry {
                    KeyStoreEntry::Certificate(c) => vec![c.as_der().to_vec()],
                    KeyStoreEntry::PrivateKeyChain(k) => k.certs().iter().map(|c| c.as_der().to_vec()).collect(),
                    KeyStoreEntry::Secret(_) => Vec::new(),
                })
                .map(CertificateDer::from)
                .collect()
        }
    };
    if certs.is_empty() {
        bail!("the truststore {path} holds no certificate");
    }
    Ok(certs)
}

/// The subject of a DER certificate, for the log ("CN=client, O=Example").
pub fn subject(der: &[u8]) -> String {
    p12_keystore::Certificate::from_der(der)
        .map(|c| c.subject().to_string())
        .unwrap_or_else(|_| "<unparsable certificate>".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keystore(path: &Path) -> Keystore {
        Keystore {
            path: path.display().to_string(),
            password: "pw".into(),
            private_key_password: "pw".into(),
        }
    }

    #[test]
    fn jks_is_refused_with_the_conversion_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.jks");
        std::fs::write(&path, [0xFE, 0xED, 0xFE, 0xED, 0, 0, 0, 2]).expect("write");
        let err = load_identity(&keystore(&path)).expect_err("JKS is refused").to_string();
        assert!(err.contains("Java KeyStore"), "{err}");
        assert!(
            err.contains("-deststoretype pkcs12") && err.contains("server.p12"),
            "{err}"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = load_identity(&keystore(Path::new("/nonexistent/ks.pem")))
            .expect_err("missing file")
            .to_string();
        assert!(err.contains("/nonexistent/ks.pem"), "{err}");
    }

    #[test]
    fn pem_without_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("only-cert.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        std::fs::write(&path, cert.cert.pem()).expect("write");
        let err = load_identity(&keystore(&path)).expect_err("no key").to_string();
        assert!(err.contains("no private key"), "{err}");
    }

    #[test]
    fn pem_chain_and_key_in_one_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        std::fs::write(
            &path,
            format!("{}{}", cert.cert.pem(), cert.signing_key.serialize_pem()),
        )
        .expect("write");
        let id = load_identity(&keystore(&path)).expect("loads");
        assert_eq!(id.chain.len(), 1);
        assert!(subject(&id.chain[0]).contains("rcgen"), "{}", subject(&id.chain[0]));
    }
}
