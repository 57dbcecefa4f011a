//! WebSocket listeners, plain and TLS: MQTT at QoS 0/1/2 with rumqttc's WebSocket transport,
//! packets split across messages and several packets in one message (our codec over
//! tokio-tungstenite), and refused upgrades (wrong path, wrong subprotocol).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use apiary::config::{
    ClientAuthenticationMode, Listener, PersistenceMode, TlsWebSocketListenerConfig, WebSocketListenerConfig,
    listeners::default_subprotocols,
};
use apiary::listener::websocket::WsStream;
use apiary::mqtt::{self, Packet, ProtocolVersion, Subscribe, SubscriptionOptions};
use bytes::BytesMut;
use common::pki::Pki;
use common::{Duplex, RawClient, TestBroker, V4Client, connect_packet};
use futures_util::{SinkExt, StreamExt};
use rumqttc::QoS;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

fn ws_listener() -> Listener {
    Listener::WebSocket(WebSocketListenerConfig {
        port: 0,
        bind_address: "127.0.0.1".into(),
        name: Some("ws-test".into()),
        path: "/mqtt".into(),
        subprotocols: default_subprotocols(),
        allow_extensions: false,
    })
}

fn tls_ws_listener(pki: &Pki) -> Listener {
    Listener::TlsWebSocket(TlsWebSocketListenerConfig {
        port: 0,
        bind_address: "127.0.0.1".into(),
        name: Some("tls-ws-test".into()),
        path: "/mqtt".into(),
        subprotocols: default_subprotocols(),
        allow_extensions: false,
        tls: apiary::config::TlsConfig {
            keystore: apiary::config::Keystore {
                path: pki.server_keystore_pem.display().to_string(),
                password: String::new(),
                private_key_password: String::new(),
            },
            truststore: None,
            protocols: Vec::new(),
            cipher_suites: Vec::new(),
            prefer_server_cipher_suites: None,
            handshake_timeout_ms: 10_000,
            client_authentication_mode: ClientAuthenticationMode::None,
        },
    })
}

/// A broker with a WebSocket listener (first) and a TLS WebSocket listener (second).
async fn start(pki: &Pki) -> TestBroker {
    let (ws, wss) = (ws_listener(), tls_ws_listener(pki));
    TestBroker::start(move |c| {
        c.persistence = PersistenceMode::InMemory;
        c.listeners = vec![ws, wss];
    })
    .await
}

/// Opens a WebSocket to `path` offering `protocols`, over TLS when `pki` is given.
async fn ws_open(
    addr: SocketAddr,
    path: &str,
    protocols: &str,
    pki: Option<&Pki>,
) -> Result<(WebSocketStream<Box<dyn Duplex>>, String), WsError> {
    let scheme = if pki.is_some() { "wss" } else { "ws" };
    let mut request = format!("{scheme}://localhost:{}{path}", addr.port())
        .into_client_request()
        .expect("request");
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocols).expect("header"),
        );
    }
    let stream: Box<dyn Duplex> = match pki {
        Some(pki) => Box::new(pki.connect(addr, None).await.0.expect("TLS handshake")),
        None => Box::new(tokio::net::TcpStream::connect(addr).await.expect("connect")),
    };
    let (ws, response) = tokio_tungstenite::client_async(request, stream).await?;
    let chosen = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((ws, chosen))
}

fn encode(packet: &Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    mqtt::encode(packet, ProtocolVersion::V311, &mut out).expect("encode");
    out.to_vec()
}

fn rumqttc_options(id: &str, url: String, port: u16, pki: Option<&Pki>) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(id, url, port);
    options.set_keep_alive(Duration::from_secs(30));
    match pki {
        Some(pki) => options.set_transport(rumqttc::Transport::wss_with_config(rumqttc::TlsConfiguration::Rustls(
            pki.client_config(None),
        ))),
        None => options.set_transport(rumqttc::Transport::Ws),
    };
    options
}

/// rumqttc over plain WebSocket publishes at QoS 0, 1 and 2 to rumqttc over TLS WebSocket.
#[tokio::test]
async fn rumqttc_qos_0_1_2_over_ws_and_wss() {
    let pki = Pki::new();
    let broker = start(&pki).await;
    let addrs = broker.addrs();
    let (ws, wss) = (addrs[0].port(), addrs[1].port());
    let (mut sub, _) = V4Client::connect_with(rumqttc_options(
        "wss-sub",
        format!("wss://127.0.0.1:{wss}/mqtt"),
        wss,
        Some(&pki),
    ))
    .await;
    let (mut publisher, _) =
        V4Client::connect_with(rumqttc_options("ws-pub", format!("ws://127.0.0.1:{ws}/mqtt"), ws, None)).await;
    sub.client.subscribe("ws/#", QoS::ExactlyOnce).await.expect("subscribe");
    sub.wait_for("SUBACK", |p| matches!(p, rumqttc::Packet::SubAck(_)))
        .await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let topic = format!("ws/{qos:?}");
        publisher
            .client
            .publish(&topic, qos, false, format!("payload {qos:?}"))
            .await
            .expect("publish");
        let p = sub.next_publish().await;
        assert_eq!(p.topic, topic);
        assert_eq!(p.qos, qos);
        assert_eq!(&p.payload[..], format!("payload {qos:?}").as_bytes());
    }
    // The publisher's own QoS 2 flow completes.
    publisher
        .wait_for("PUBCOMP", |p| matches!(p, rumqttc::Packet::PubComp(_)))
        .await;
    broker.stop().await;
}

/// A packet may be split across WebSocket messages, and one message may carry several packets.
#[tokio::test]
async fn packets_split_across_and_packed_into_messages() {
    let pki = Pki::new();
    let broker = start(&pki).await;
    for (addr, tls) in [(broker.addrs()[0], None), (broker.addrs()[1], Some(&pki))] {
        let (ws, chosen) = ws_open(addr, "/mqtt", "mqtt", tls).await.expect("upgrade");
        assert_eq!(chosen, "mqtt");
        let mut client = RawClient::over(WsStream::new(ws), ProtocolVersion::V311);
        // CONNECT in three messages.
        let connect = encode(&Packet::Connect(connect_packet(ProtocolVersion::V311, "ws-raw", true)));
        client.send_raw(&connect[..1]).await;
        client.send_raw(&connect[1..5]).await;
        client.send_raw(&connect[5..]).await;
        assert!(matches!(client.recv().await, Some(Packet::ConnAck(a)) if a.code == 0));
        // SUBSCRIBE and PINGREQ in one message.
        let mut both = encode(&Packet::Subscribe(Subscribe {
            packet_id: 7,
            properties: Default::default(),
            filters: vec![("raw/#".into(), SubscriptionOptions::default())],
        }));
        both.extend(encode(&Packet::PingReq));
        client.send_raw(&both).await;
        assert!(matches!(client.recv().await, Some(Packet::SubAck(a)) if a.packet_id == 7));
        assert!(matches!(client.recv().await, Some(Packet::PingResp)));
        client
            .send(&Packet::Disconnect(apiary::mqtt::Disconnect {
                reason: 0,
                properties: Default::default(),
            }))
            .await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn answers_with_the_offered_subprotocol() {
    let pki = Pki::new();
    let broker = start(&pki).await;
    let addr = broker.addrs()[0];
    let (_, chosen) = ws_open(addr, "/mqtt", "mqttv3.1", None).await.expect("upgrade");
    assert_eq!(chosen, "mqttv3.1");
    let (_, chosen) = ws_open(addr, "/mqtt", "chat, mqtt", None).await.expect("upgrade");
    assert_eq!(chosen, "mqtt");
    broker.stop().await;
}

fn refused_status(result: Result<(WebSocketStream<Box<dyn Duplex>>, String), WsError>) -> u16 {
    match result {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

#[tokio::test]
async fn wrong_path_and_subprotocol_are_refused() {
    let pki = Pki::new();
    let broker = start(&pki).await;
    for (addr, tls) in [(broker.addrs()[0], None), (broker.addrs()[1], Some(&pki))] {
        assert_eq!(refused_status(ws_open(addr, "/other", "mqtt", tls).await), 404);
        assert_eq!(refused_status(ws_open(addr, "/mqtt", "wamp.2.json", tls).await), 400);
        assert_eq!(refused_status(ws_open(addr, "/mqtt", "", tls).await), 400);
    }
    // The listener still serves well-formed upgrades.
    let (ws, _) = ws_open(broker.addrs()[0], "/mqtt", "mqtt", None)
        .await
        .expect("upgrade");
    let (_, ack) = RawClient::connect_over(
        WsStream::new(ws),
        connect_packet(ProtocolVersion::V311, "after-refusals", true),
    )
    .await;
    assert_eq!(ack.code, 0);
    broker.stop().await;
}

/// MQTT over WebSocket uses binary messages only [MQTT-6.0.0-1]: a text message closes it.
#[tokio::test]
async fn text_message_closes_the_connection() {
    let pki = Pki::new();
    let broker = start(&pki).await;
    let (mut ws, _) = ws_open(broker.addrs()[0], "/mqtt", "mqtt", None)
        .await
        .expect("upgrade");
    let connect = encode(&Packet::Connect(connect_packet(ProtocolVersion::V311, "texter", true)));
    ws.send(Message::Binary(connect.into())).await.expect("send");
    assert!(matches!(ws.next().await, Some(Ok(Message::Binary(_)))), "CONNACK");
    ws.send(Message::Text("hello".into())).await.expect("send");
    let closed = tokio::time::timeout(common::WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the broker closed the connection");
    broker.stop().await;
}

/// A WebSocket subscriber that stops reading does not make the broker buffer without bound:
/// QoS 0 messages past `max-queue-size` pending ones are dropped for it, the publisher is never
/// held up, and the subscriber later gets far fewer messages than were published.
#[tokio::test]
async fn slow_websocket_consumer_is_bounded() {
    const MESSAGES: usize = 2_000;
    let pki = Pki::new();
    let (ws, wss) = (ws_listener(), tls_ws_listener(&pki));
    let broker = TestBroker::start(move |c| {
        c.persistence = PersistenceMode::InMemory;
        c.mqtt.max_queue_size = 10;
        c.listeners = vec![
            ws,
            wss,
            common::test_config(PersistenceMode::InMemory).listeners[0].clone(),
        ];
    })
    .await;
    let addrs = broker.addrs();
    let (socket, _) = ws_open(addrs[0], "/mqtt", "mqtt", None).await.expect("upgrade");
    let (mut sub, _) = RawClient::connect_over(
        WsStream::new(socket),
        connect_packet(ProtocolVersion::V311, "slow-ws", true),
    )
    .await;
    sub.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec![("slow/#".into(), SubscriptionOptions::default())],
    }))
    .await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));

    let (mut publisher, _) = RawClient::connect(addrs[2], connect_packet(ProtocolVersion::V311, "fast", true)).await;
    let payload = bytes::Bytes::from(vec![b'x'; 10_000]);
    for i in 0..MESSAGES {
        publisher
            .send(&Packet::Publish(apiary::mqtt::Publish {
                dup: false,
                qos: apiary::mqtt::QoS::AtMostOnce,
                retain: false,
                topic: format!("slow/{i}"),
                packet_id: 0,
                properties: Default::default(),
                payload: payload.clone(),
            }))
            .await;
    }
    // Packets are handled in order: the PINGRESP means every PUBLISH was routed.
    publisher.send(&Packet::PingReq).await;
    assert!(matches!(publisher.recv().await, Some(Packet::PingResp)));

    let mut received = 0;
    while let Ok(Some(packet)) = sub.recv_within(Duration::from_millis(500)).await {
        assert!(matches!(packet, Packet::Publish(_)));
        received += 1;
    }
    assert!(received > 0, "the subscriber gets messages once it reads");
    assert!(
        received < MESSAGES / 2,
        "{received} of {MESSAGES} delivered: the broker buffered them instead of bounding the queue"
    );
    broker.stop().await;
}
