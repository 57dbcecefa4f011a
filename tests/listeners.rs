//! Listener-wide behaviour: all four listener kinds from one config.xml (the shipped sample),
//! and incoming-bandwidth-throttling over a real socket.

mod common;

use std::time::{Duration, Instant};

use apiary::config::{Config, PersistenceMode};
use apiary::listener::websocket::WsStream;
use apiary::mqtt::{Packet, ProtocolVersion, Publish, QoS};
use bytes::{Bytes, BytesMut};
use common::pki::Pki;
use common::{RawClient, TestBroker, connect_packet, subscribe_packet};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn subscribe(filter: &str) -> Packet {
    subscribe_packet(1, filter, QoS::AtMostOnce)
}

fn publish(topic: &str, payload: Bytes) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic.into(),
        packet_id: 0,
        properties: Default::default(),
        payload,
    })
}

async fn ws_client(port: u16, pki: Option<&Pki>, id: &str) -> RawClient {
    let scheme = if pki.is_some() { "wss" } else { "ws" };
    let mut request = format!("{scheme}://localhost:{port}/mqtt")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let stream: Box<dyn common::Duplex> = match pki {
        Some(pki) => Box::new(pki.connect(addr, None).await.0.expect("TLS")),
        None => Box::new(tokio::net::TcpStream::connect(addr).await.expect("connect")),
    };
    let (ws, _) = tokio_tungstenite::client_async(request, stream).await.expect("upgrade");
    let (client, ack) =
        RawClient::connect_over(WsStream::new(ws), connect_packet(ProtocolVersion::V311, id, true)).await;
    assert_eq!(ack.code, 0);
    client
}

/// conf/examples/all-listeners.xml, with ephemeral ports and the keystore from the environment
/// placeholders: a message published on each listener reaches subscribers on all four.
#[tokio::test]
async fn all_listener_kinds_from_the_sample_config() {
    let pki = Pki::new();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/examples/all-listeners.xml");
    let text = std::fs::read_to_string(&path).expect("sample config");
    let text = ["1883", "8883", "8000", "8443"]
        .iter()
        .fold(text, |t, port| {
            t.replace(&format!("<port>{port}</port>"), "<port>0</port>")
        })
        .replace(
            "<bind-address>0.0.0.0</bind-address>",
            "<bind-address>127.0.0.1</bind-address>",
        );
    let keystore = pki.server_keystore_pem.display().to_string();
    let truststore = pki.ca_pem.display().to_string();
    let env = |name: &str| match name {
        "APIARY_KEYSTORE" => Some(keystore.clone()),
        "APIARY_TRUSTSTORE" => Some(truststore.clone()),
        "APIARY_KEYSTORE_PASSWORD" | "APIARY_KEY_PASSWORD" | "APIARY_TRUSTSTORE_PASSWORD" => Some(String::new()),
        _ => None,
    };
    let mut config = Config::parse(&text, "all-listeners.xml", &env).expect("the sample parses");
    assert_eq!(config.listeners.len(), 4);
    config.persistence = PersistenceMode::InMemory;
    let broker = TestBroker::start_in(tempfile::tempdir().expect("tempdir"), config).await;
    let ports: Vec<u16> = broker.addrs().iter().map(|a| a.port()).collect();

    let tcp_addr = std::net::SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let (tcp, _) = RawClient::connect(tcp_addr, connect_packet(ProtocolVersion::V311, "tcp", true)).await;
    let client_cert = pki.client("all-listeners-client", false);
    let (tls_stream, _) = pki
        .connect(
            std::net::SocketAddr::from(([127, 0, 0, 1], ports[1])),
            Some(&client_cert),
        )
        .await;
    let (tls, ack) = RawClient::connect_over(
        tls_stream.expect("TLS"),
        connect_packet(ProtocolVersion::V311, "tls", true),
    )
    .await;
    assert_eq!(ack.code, 0);
    let ws = ws_client(ports[2], None, "ws").await;
    let wss = ws_client(ports[3], Some(&pki), "wss").await;

    let mut clients = [("tcp", tcp), ("tls", tls), ("ws", ws), ("wss", wss)];
    for (_, c) in clients.iter_mut() {
        c.send(&subscribe("all/#")).await;
        assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
    }
    for i in 0..clients.len() {
        let from = clients[i].0;
        clients[i]
            .1
            .send(&publish(&format!("all/{from}"), Bytes::from(format!("from {from}"))))
            .await;
        for (name, c) in clients.iter_mut() {
            match c.recv().await {
                Some(Packet::Publish(p)) => {
                    assert_eq!(p.topic, format!("all/{from}"), "at {name}");
                    assert_eq!(&p.payload[..], format!("from {from}").as_bytes());
                }
                other => panic!("{name} expected the PUBLISH from {from}, got {other:?}"),
            }
        }
    }
    broker.stop().await;
}

/// A client pushing N bytes through a listener limited to R bytes/s needs about N/R seconds,
/// and is slowed down rather than disconnected.
#[tokio::test]
async fn incoming_bandwidth_is_throttled() {
    const RATE: u64 = 50_000;
    const MESSAGES: usize = 15;
    const SIZE: usize = 10_000;
    let broker = TestBroker::start(|c| {
        c.persistence = PersistenceMode::InMemory;
        c.restrictions.incoming_bandwidth_throttling = RATE;
    })
    .await;
    let (mut sub, _) = RawClient::connect(broker.addr, connect_packet(ProtocolVersion::V311, "sub", true)).await;
    sub.send(&subscribe("throttled/#")).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let (mut publisher, _) = RawClient::connect(broker.addr, connect_packet(ProtocolVersion::V311, "pub", true)).await;

    // Everything in one write; the broker decides how fast it is read.
    let mut bytes = BytesMut::new();
    for i in 0..MESSAGES {
        let packet = publish(&format!("throttled/{i}"), Bytes::from(vec![b'x'; SIZE]));
        apiary::mqtt::encode(&packet, ProtocolVersion::V311, &mut bytes).expect("encode");
    }
    let total = bytes.len();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        publisher.send_raw(&bytes).await;
        publisher
    });
    for i in 0..MESSAGES {
        match sub.recv().await {
            Some(Packet::Publish(p)) => assert_eq!(p.topic, format!("throttled/{i}")),
            other => panic!("expected PUBLISH {i}, got {other:?}"),
        }
    }
    let took = started.elapsed();
    let expected = Duration::from_secs_f64(total as f64 / RATE as f64);
    assert!(
        took >= expected.mul_f64(0.8),
        "{total} bytes at {RATE} B/s took {took:?}, expected about {expected:?}"
    );
    assert!(
        took < expected * 4,
        "{total} bytes took {took:?}, far more than {expected:?}"
    );

    // Still connected.
    let mut publisher = writer.await.expect("writer");
    publisher.send(&Packet::PingReq).await;
    assert!(matches!(publisher.recv().await, Some(Packet::PingResp)));
    broker.stop().await;
}
