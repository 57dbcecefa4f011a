//! TLS listeners: handshakes with rustls and mosquitto clients, each client authentication mode,
//! refused clients (expired, untrusted, no certificate, plain TCP) that are logged while the
//! broker keeps serving others, PEM and PKCS#12 keystores, and start-up errors.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use apiary::config::{
    ClientAuthenticationMode, Config, Keystore, Listener, PersistenceMode, TcpListenerConfig, TlsConfig,
    TlsTcpListenerConfig, Truststore,
};
use apiary::mqtt::{Packet, ProtocolVersion, Publish, QoS};
use apiary::server::{self, Options};
use bytes::Bytes;
use common::pki::{Pair, Pki};
use common::{RawClient, TestBroker, connect_packet, logs, subscribe_packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn tls_config(keystore: &Path, password: &str, pki: &Pki, mode: ClientAuthenticationMode) -> TlsConfig {
    TlsConfig {
        keystore: Keystore {
            path: keystore.display().to_string(),
            password: password.into(),
            private_key_password: password.into(),
        },
        truststore: Some(Truststore {
            path: pki.ca_pem.display().to_string(),
            password: String::new(),
        }),
        protocols: Vec::new(),
        cipher_suites: Vec::new(),
        prefer_server_cipher_suites: None,
        handshake_timeout_ms: 10_000,
        client_authentication_mode: mode,
    }
}

fn tls_listener(tls: TlsConfig) -> Listener {
    Listener::TlsTcp(TlsTcpListenerConfig {
        port: 0,
        bind_address: "127.0.0.1".into(),
        name: Some("tls-test".into()),
        tls,
    })
}

/// A broker with a TLS listener (first) and a TCP listener (second).
async fn start(tls: TlsConfig) -> TestBroker {
    logs::capture();
    TestBroker::start(|c| {
        c.persistence = PersistenceMode::InMemory;
        c.listeners.insert(0, tls_listener(tls));
    })
    .await
}

/// Connects over TLS and completes CONNECT/CONNACK; `None` when the broker refused.
async fn tls_mqtt(pki: &Pki, addr: SocketAddr, client: Option<&Pair>, id: &str) -> (Option<RawClient>, SocketAddr) {
    let (tls, local) = pki.connect(addr, client).await;
    let Ok(mut tls) = tls else { return (None, local) };
    // With TLS 1.3 the server checks the client certificate after the client finished its side
    // of the handshake: a refusal shows up as a failed write or read.
    let mut out = bytes::BytesMut::new();
    apiary::mqtt::encode(
        &Packet::Connect(connect_packet(ProtocolVersion::V311, id, true)),
        ProtocolVersion::V311,
        &mut out,
    )
    .expect("encode");
    if tls.write_all(&out).await.is_err() || tls.flush().await.is_err() {
        return (None, local);
    }
    let mut first = [0u8; 4];
    match tokio::time::timeout(common::WAIT, tls.read_exact(&mut first)).await {
        Ok(Ok(_)) if first == [0x20, 0x02, 0x00, 0x00] => (Some(RawClient::over(tls, ProtocolVersion::V311)), local),
        _ => (None, local),
    }
}

fn subscribe(topic: &str, qos: QoS) -> Packet {
    subscribe_packet(1, topic, qos)
}

fn publish(topic: &str, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic.into(),
        packet_id: 0,
        properties: Default::default(),
        payload: Bytes::from_static(payload),
    })
}

/// A message published by `from` reaches `to`, which subscribes to `topic` first.
async fn roundtrip(from: &mut RawClient, to: &mut RawClient, topic: &str) {
    to.send(&subscribe(topic, QoS::AtMostOnce)).await;
    assert!(matches!(to.recv().await, Some(Packet::SubAck(_))));
    from.send(&publish(topic, b"over tls")).await;
    match to.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"over tls"),
        other => panic!("expected the PUBLISH, got {other:?}"),
    }
}

#[tokio::test]
async fn pem_keystore_without_client_auth() {
    let pki = Pki::new();
    let broker = start(tls_config(
        &pki.server_keystore_pem,
        "",
        &pki,
        ClientAuthenticationMode::None,
    ))
    .await;
    let addrs = broker.addrs();
    let (tls, _) = tls_mqtt(&pki, addrs[0], None, "tls-sub").await;
    let mut tls = tls.expect("TLS client accepted");
    let (mut tcp, _) = RawClient::connect(addrs[1], connect_packet(ProtocolVersion::V311, "tcp-pub", true)).await;
    roundtrip(&mut tcp, &mut tls, "tls/none").await;
    // A client certificate is not asked for, so presenting one changes nothing.
    let client = pki.client("client-none", false);
    let (with_cert, _) = tls_mqtt(&pki, addrs[0], Some(&client), "tls-cert").await;
    assert!(with_cert.is_some());
    broker.stop().await;
}

#[tokio::test]
async fn required_client_auth() {
    let pki = Pki::new();
    let broker = start(tls_config(
        &pki.server_keystore_pem,
        "",
        &pki,
        ClientAuthenticationMode::Required,
    ))
    .await;
    let addr = broker.addrs()[0];

    // Refused: no certificate, an expired one from the trusted CA, one from another CA.
    let (none, local) = tls_mqtt(&pki, addr, None, "no-cert").await;
    assert!(none.is_none(), "a client without certificate is refused");
    logs::wait_for_line(&["TLS handshake failed", &local.to_string()]).await;

    let expired = pki.client("client-expired", true);
    let (c, local) = tls_mqtt(&pki, addr, Some(&expired), "expired").await;
    assert!(c.is_none(), "an expired certificate is refused");
    logs::wait_for_line(&["TLS handshake failed", &local.to_string(), "expired"]).await;

    let untrusted = pki.untrusted_client("client-untrusted");
    let (c, local) = tls_mqtt(&pki, addr, Some(&untrusted), "untrusted").await;
    assert!(c.is_none(), "an untrusted certificate is refused");
    logs::wait_for_line(&["TLS handshake failed", &local.to_string()]).await;

    // A plain TCP client on the TLS port gets no CONNACK.
    let mut plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let local = plain.local_addr().expect("addr");
    let mut out = bytes::BytesMut::new();
    apiary::mqtt::encode(
        &Packet::Connect(connect_packet(ProtocolVersion::V311, "plain", true)),
        ProtocolVersion::V311,
        &mut out,
    )
    .expect("encode");
    plain.write_all(&out).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(common::WAIT, plain.read_to_end(&mut answer)).await;
    assert_ne!(answer.first(), Some(&0x20), "no CONNACK for plain TCP: {answer:?}");
    logs::wait_for_line(&["TLS handshake failed", &local.to_string()]).await;

    // The broker still serves good clients, and logs their certificate subject.
    let good = pki.client("client-good", false);
    let (a, local) = tls_mqtt(&pki, addr, Some(&good), "good-a").await;
    let mut a = a.expect("a trusted certificate is accepted");
    logs::wait_for_line(&["client certificate subject", "CN=client-good", &local.to_string()]).await;
    let (b, _) = tls_mqtt(&pki, addr, Some(&good), "good-b").await;
    let mut b = b.expect("accepted");
    roundtrip(&mut a, &mut b, "tls/required").await;
    broker.stop().await;
}

#[tokio::test]
async fn optional_client_auth() {
    let pki = Pki::new();
    let broker = start(tls_config(
        &pki.server_keystore_pem,
        "",
        &pki,
        ClientAuthenticationMode::Optional,
    ))
    .await;
    let addr = broker.addrs()[0];
    let (anonymous, _) = tls_mqtt(&pki, addr, None, "anonymous").await;
    let mut anonymous = anonymous.expect("no certificate is fine");
    let good = pki.client("client-optional", false);
    let (with_cert, local) = tls_mqtt(&pki, addr, Some(&good), "with-cert").await;
    let mut with_cert = with_cert.expect("a trusted certificate is fine");
    logs::wait_for_line(&["CN=client-optional", &local.to_string()]).await;
    // A certificate that is presented is still verified.
    let untrusted = pki.untrusted_client("client-optional-untrusted");
    let (c, _) = tls_mqtt(&pki, addr, Some(&untrusted), "untrusted").await;
    assert!(c.is_none(), "an untrusted certificate is refused");
    roundtrip(&mut anonymous, &mut with_cert, "tls/optional").await;
    broker.stop().await;
}

#[tokio::test]
async fn pkcs12_keystore() {
    let pki = Pki::new();
    let p12 = pki.server_p12("store-secret");
    let broker = start(tls_config(&p12, "store-secret", &pki, ClientAuthenticationMode::None)).await;
    let (c, _) = tls_mqtt(&pki, broker.addrs()[0], None, "p12").await;
    assert!(c.is_some(), "served with the PKCS#12 identity");
    broker.stop().await;
}

/// A PKCS#12 file as OpenSSL writes it (AES-256 PBES2, SHA-256 MAC), and a PEM keystore whose
/// key is encrypted (opened with private-key-password). Skipped without the openssl binary.
#[tokio::test]
async fn openssl_keystores() {
    if std::process::Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIPPED: openssl is not installed");
        return;
    }
    let pki = Pki::new();
    let p12 = pki.path("openssl.p12");
    let status = std::process::Command::new("openssl")
        .args(["pkcs12", "-export", "-passout", "pass:p12-secret", "-in"])
        .arg(&pki.server.cert_pem)
        .arg("-inkey")
        .arg(&pki.server.key_pem)
        .arg("-out")
        .arg(&p12)
        .status()
        .expect("openssl");
    assert!(status.success());
    let encrypted_key = pki.path("encrypted.key");
    let status = std::process::Command::new("openssl")
        .args([
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:key-secret",
            "-in",
        ])
        .arg(&pki.server.key_pem)
        .arg("-out")
        .arg(&encrypted_key)
        .status()
        .expect("openssl");
    assert!(status.success());
    let pem = pki.path("encrypted-keystore.pem");
    std::fs::write(
        &pem,
        std::fs::read_to_string(&pki.server.cert_pem).expect("read")
            + &std::fs::read_to_string(&encrypted_key).expect("read"),
    )
    .expect("write");

    let mut pem_tls = tls_config(&pem, "", &pki, ClientAuthenticationMode::None);
    pem_tls.keystore.private_key_password = "key-secret".into();
    let broker = start(tls_config(&p12, "p12-secret", &pki, ClientAuthenticationMode::None)).await;
    let (c, _) = tls_mqtt(&pki, broker.addrs()[0], None, "openssl-p12").await;
    assert!(c.is_some(), "served with OpenSSL's PKCS#12");
    broker.stop().await;
    let broker = start(pem_tls).await;
    let (c, _) = tls_mqtt(&pki, broker.addrs()[0], None, "encrypted-pem").await;
    assert!(c.is_some(), "served with the encrypted PEM key");
    broker.stop().await;
}

/// Only protocols and cipher suites from the config are offered.
#[tokio::test]
async fn protocols_and_cipher_suites() {
    let pki = Pki::new();
    let mut tls = tls_config(&pki.server_keystore_pem, "", &pki, ClientAuthenticationMode::None);
    tls.protocols = vec!["TLSv1.2".into()];
    tls.cipher_suites = vec!["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into()];
    let broker = start(tls).await;
    let (stream, _) = pki.connect(broker.addrs()[0], None).await;
    let stream = stream.expect("handshake");
    let (_, session) = stream.get_ref();
    assert_eq!(session.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(
        session.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
    );
    broker.stop().await;
}

async fn start_error(listener: Listener) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        listeners: vec![
            Listener::Tcp(TcpListenerConfig {
                port: 0,
                bind_address: "127.0.0.1".into(),
                name: None,
            }),
            listener,
        ],
        persistence: PersistenceMode::InMemory,
        ..Config::default()
    };
    let result = server::start(Options {
        config,
        data_dir: dir.path().join("data"),
        extensions_dir: dir.path().join("extensions"),
        extension_cache_dir: None,
        extension_policy: Default::default(),
        recovery: false,
    })
    .await;
    match result {
        Ok(running) => {
            running.stop().await;
            panic!("the broker started")
        }
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn startup_errors_name_the_listener() {
    let pki = Pki::new();
    // Missing keystore file.
    let missing = pki.path("missing.p12");
    let err = start_error(tls_listener(tls_config(
        &missing,
        "x",
        &pki,
        ClientAuthenticationMode::None,
    )))
    .await;
    assert!(err.contains("tls-test") && err.contains("missing.p12"), "{err}");

    // Wrong PKCS#12 password.
    let p12 = pki.server_p12("right");
    let err = start_error(tls_listener(tls_config(
        &p12,
        "wrong",
        &pki,
        ClientAuthenticationMode::None,
    )))
    .await;
    assert!(err.contains("tls-test") && err.contains("wrong password"), "{err}");

    // A Java KeyStore: refused with the keytool command that converts it.
    let jks = pki.path("hivemq.jks");
    std::fs::write(&jks, [0xFE, 0xED, 0xFE, 0xED, 0, 0, 0, 2, 0, 0, 0, 1]).expect("write");
    let err = start_error(tls_listener(tls_config(
        &jks,
        "x",
        &pki,
        ClientAuthenticationMode::None,
    )))
    .await;
    assert!(err.contains("tls-test") && err.contains("Java KeyStore"), "{err}");
    assert!(
        err.contains("keytool -importkeystore -srckeystore") && err.contains("-deststoretype pkcs12"),
        "{err}"
    );

    // An unknown cipher suite.
    let mut tls = tls_config(&pki.server_keystore_pem, "", &pki, ClientAuthenticationMode::None);
    tls.cipher_suites = vec!["TLS_MADE_UP_SUITE".into()];
    let err = start_error(tls_listener(tls)).await;
    assert!(err.contains("tls-test") && err.contains("TLS_MADE_UP_SUITE"), "{err}");

    // Client authentication without a truststore.
    let mut tls = tls_config(&pki.server_keystore_pem, "", &pki, ClientAuthenticationMode::Required);
    tls.truststore = None;
    let err = start_error(tls_listener(tls)).await;
    assert!(err.contains("tls-test") && err.contains("truststore"), "{err}");

    // A port already in use.
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let err = start_error(Listener::TlsTcp(TlsTcpListenerConfig {
        port,
        bind_address: "127.0.0.1".into(),
        name: Some("tls-busy".into()),
        tls: tls_config(&pki.server_keystore_pem, "", &pki, ClientAuthenticationMode::None),
    }))
    .await;
    assert!(err.contains("tls-busy") && err.contains(&port.to_string()), "{err}");
}

/// mosquitto_pub with --cafile/--cert/--key publishes over TLS to a subscriber on TCP.
#[tokio::test]
async fn mosquitto_pub_with_client_certificate() {
    if std::process::Command::new("mosquitto_pub")
        .arg("--help")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: mosquitto_pub is not installed (apt-get install mosquitto-clients)");
        return;
    }
    let pki = Pki::new();
    let broker = start(tls_config(
        &pki.server_keystore_pem,
        "",
        &pki,
        ClientAuthenticationMode::Required,
    ))
    .await;
    let addrs = broker.addrs();
    let (mut sub, _) = RawClient::connect(addrs[1], connect_packet(ProtocolVersion::V311, "tcp-sub", true)).await;
    sub.send(&subscribe("mosquitto/tls", QoS::AtLeastOnce)).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));

    let client = pki.client("mosquitto-client", false);
    let output = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &addrs[0].port().to_string(), "-q", "1"])
        .args(["-t", "mosquitto/tls", "-m", "hello from mosquitto", "--cafile"])
        .arg(&pki.ca_pem)
        .arg("--cert")
        .arg(&client.cert_pem)
        .arg("--key")
        .arg(&client.key_pem)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .expect("mosquitto_pub finishes")
        .expect("runs");
    assert!(
        output.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    match sub.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"hello from mosquitto"),
        other => panic!("expected the PUBLISH, got {other:?}"),
    }
    logs::wait_for_line(&["client certificate subject", "CN=mosquitto-client"]).await;

    // Without a client certificate mosquitto_pub is refused.
    let output = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &addrs[0].port().to_string(), "-q", "1"])
        .args(["-t", "mosquitto/tls", "-m", "no cert", "--cafile"])
        .arg(&pki.ca_pem)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .expect("mosquitto_pub finishes")
        .expect("runs");
    assert!(!output.status.success(), "refused without a certificate");
    broker.stop().await;
}
