//! Test certificates, made with rcgen into a temp folder for each test (none is committed):
//! a CA, a server certificate for localhost, client certificates, and TLS client configs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A certificate and its key, in PEM files and as DER.
pub struct Pair {
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    pub cert: CertificateDer<'static>,
    pub key: Vec<u8>,
}

/// A CA with a server certificate and the files a listener needs.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca_params: CertificateParams,
    ca_key: KeyPair,
    pub ca_cert: CertificateDer<'static>,
    /// The CA certificate (a truststore).
    pub ca_pem: PathBuf,
    pub server: Pair,
    /// Server chain and key in one PEM file: a PEM keystore.
    pub server_keystore_pem: PathBuf,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_params = ca_params("Apiary Test CA");
        let ca_key = KeyPair::generate().expect("key");
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).expect("write");
        let mut pki = Pki {
            ca_cert: ca.der().clone(),
            ca_params,
            ca_key,
            ca_pem,
            server: Pair {
                cert_pem: PathBuf::new(),
                key_pem: PathBuf::new(),
                cert: CertificateDer::from(Vec::new()),
                key: Vec::new(),
            },
            server_keystore_pem: dir.path().join("server-keystore.pem"),
            dir,
        };
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, "localhost");
        pki.server = pki.issue("server", params);
        let keystore = format!(
            "{}{}",
            std::fs::read_to_string(&pki.server.cert_pem).expect("read"),
            std::fs::read_to_string(&pki.server.key_pem).expect("read")
        );
        std::fs::write(&pki.server_keystore_pem, keystore).expect("write");
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn issue(&self, name: &str, params: CertificateParams) -> Pair {
        let key = KeyPair::generate().expect("key");
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).expect("sign");
        write_pair(self.dir.path(), name, cert.pem(), cert.der().clone(), &key)
    }

    /// A client certificate signed by the CA; `expired` makes one that ended in 2001.
    pub fn client(&self, cn: &str, expired: bool) -> Pair {
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        self.issue(cn, params)
    }

    /// A client certificate from another CA, which the broker does not trust.
    pub fn untrusted_client(&self, cn: &str) -> Pair {
        let other_params = ca_params("Some Other CA");
        let other_key = KeyPair::generate().expect("key");
        let issuer = Issuer::from_params(&other_params, &other_key);
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &issuer).expect("sign");
        write_pair(self.dir.path(), cn, cert.pem(), cert.der().clone(), &key)
    }

    /// The server identity as a PKCS#12 file (written by the p12-keystore crate).
    pub fn server_p12(&self, password: &str) -> PathBuf {
        use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
        let key = PrivateKey::from_der(&self.server.key).expect("key");
        let chain = PrivateKeyChain::new(
            b"server".to_vec(),
            key,
            [
                Certificate::from_der(&self.server.cert).expect("cert"),
                Certificate::from_der(&self.ca_cert).expect("cert"),
            ],
        );
        let mut store = KeyStore::new();
        store.add_entry("server", KeyStoreEntry::PrivateKeyChain(chain));
        let data = store.writer(password).write().expect("PKCS#12");
        let path = self.path("server.p12");
        std::fs::write(&path, data).expect("write");
        path
    }

    /// A rustls client config trusting the CA, optionally presenting a certificate.
    pub fn client_config(&self, client: Option<&Pair>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_cert.clone()).expect("root");
        let builder =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots);
        let config = match client {
            Some(pair) => builder
                .with_client_auth_cert(
                    vec![pair.cert.clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pair.key.clone())),
                )
                .expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        Arc::new(config)
    }

    /// Opens a TLS connection to `addr` as `localhost`. Also returns the client's local address,
    /// which is how the broker's log names the peer.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        client: Option<&Pair>,
    ) -> (std::io::Result<TlsStream<TcpStream>>, SocketAddr) {
        let tcp = TcpStream::connect(addr).await.expect("tcp connect");
        let local = tcp.local_addr().expect("local addr");
        let connector = TlsConnector::from(self.client_config(client));
        let name = ServerName::try_from("localhost").expect("name");
        (connector.connect(name, tcp).await, local)
    }
}

fn write_pair(dir: &Path, name: &str, cert_pem: String, cert: CertificateDer<'static>, key: &KeyPair) -> Pair {
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert_pem).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    Pair {
        cert_pem: cert_path,
        key_pem: key_path,
        cert,
        key: key.serialize_der(),
    }
}
