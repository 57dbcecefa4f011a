//! Protocol behaviour checked byte-exactly with a raw client built on our codec.

mod common;

use std::time::Duration;

use apiary::mqtt::{
    Packet, Properties, ProtocolVersion, PubResponse, Publish, QoS, Subscribe, SubscriptionOptions, reason,
};
use bytes::Bytes;
use common::*;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

fn publish(topic: &str, qos: QoS, packet_id: u16, payload: &str) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::from(payload.to_owned()),
    })
}

fn subscribe(packet_id: u16, filter: &str, qos: QoS) -> Packet {
    subscribe_packet(packet_id, filter, qos)
}

fn ack(packet_id: u16) -> PubResponse {
    PubResponse {
        packet_id,
        reason: 0,
        properties: Properties::default(),
    }
}

async fn subscribed(b: &TestBroker, version: ProtocolVersion, id: &str, filter: &str, qos: QoS) -> RawClient {
    let (mut c, connack) = RawClient::connect(b.addr, connect_packet(version, id, true)).await;
    assert_eq!(connack.code, 0);
    c.send(&subscribe(1, filter, qos)).await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
    c
}

/// A second connection with the same client id takes the session over; the first gets
/// DISCONNECT 0x8E [MQTT-3.1.4-3].
#[tokio::test]
async fn session_takeover() {
    let b = TestBroker::start(|_| {}).await;
    let (mut first, _) = RawClient::connect(b.addr, connect_packet(V5, "same", false)).await;
    let (_second, ack) = RawClient::connect(b.addr, connect_packet(V5, "same", false)).await;
    assert_eq!(ack.code, 0);
    let seen = first.until_closed().await;
    assert!(
        matches!(seen.last(), Some(Packet::Disconnect(d)) if d.reason == reason::SESSION_TAKEN_OVER),
        "got {seen:?}"
    );
    b.stop().await;
}

/// A malformed packet closes the connection with DISCONNECT 0x81 in MQTT 5 [MQTT-4.13.1-1].
#[tokio::test]
async fn malformed_packet_gets_disconnect() {
    let b = TestBroker::start(|_| {}).await;
    let (mut c, _) = RawClient::connect(b.addr, connect_packet(V5, "bad", true)).await;
    // PUBLISH QoS 3 is malformed [MQTT-3.3.1-4].
    c.send_raw(&[0x36, 0x03, 0x00, 0x01, b'a']).await;
    let seen = c.until_closed().await;
    assert!(
        matches!(seen.last(), Some(Packet::Disconnect(d)) if d.reason == reason::MALFORMED_PACKET),
        "{seen:?}"
    );
    // The broker still serves others.
    let (_ok, ack) = RawClient::connect(b.addr, connect_packet(V5, "fine", true)).await;
    assert_eq!(ack.code, 0);
    b.stop().await;
}

/// A packet over the maximum size is refused from its fixed header, before it is buffered.
#[tokio::test]
async fn packet_too_large() {
    let b = TestBroker::start(|c| c.mqtt.max_packet_size = 1024).await;
    let (mut c, ack) = RawClient::connect(b.addr, connect_packet(V5, "big", true)).await;
    assert_eq!(ack.properties.maximum_packet_size, Some(1024));
    // Announce 1 MB and send only the header: the broker must not wait for the rest.
    c.send_raw(&[0x30, 0x80, 0x80, 0x40]).await;
    let seen = c.until_closed().await;
    assert!(
        matches!(seen.last(), Some(Packet::Disconnect(d)) if d.reason == reason::PACKET_TOO_LARGE),
        "{seen:?}"
    );
    b.stop().await;
}

/// The first packet must be CONNECT [MQTT-3.1.0-1]; a second CONNECT is a protocol error [MQTT-3.1.0-2].
#[tokio::test]
async fn connect_first_and_once() {
    let b = TestBroker::start(|_| {}).await;
    let mut c = RawClient::open(b.addr, V311).await;
    c.send(&Packet::PingReq).await;
    assert!(c.until_closed().await.is_empty());

    let (mut c, _) = RawClient::connect(b.addr, connect_packet(V5, "twice", true)).await;
    c.send(&Packet::Connect(connect_packet(V5, "twice", true))).await;
    let seen = c.until_closed().await;
    assert!(
        matches!(seen.last(), Some(Packet::Disconnect(d)) if d.reason == reason::PROTOCOL_ERROR),
        "{seen:?}"
    );
    b.stop().await;
}

/// An unknown protocol level gets return code 1 in 3.1.1 form [MQTT-3.1.2-2].
#[tokio::test]
async fn unsupported_protocol_version() {
    let b = TestBroker::start(|_| {}).await;
    let mut c = RawClient::open(b.addr, V311).await;
    // CONNECT "MQTT" level 9.
    c.send_raw(&[
        0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x09, 0x02, 0x00, 0x3c, 0x00, 0x00,
    ])
    .await;
    let seen = c.until_closed().await;
    assert!(
        matches!(seen.first(), Some(Packet::ConnAck(a)) if a.code == 1),
        "{seen:?}"
    );
    b.stop().await;
}

/// Empty client ids: assigned in MQTT 5 [MQTT-3.1.3-6]; refused in 3.1.1 without clean session
/// [MQTT-3.1.3-8]; refused when allow-empty-client-id is off.
#[tokio::test]
async fn empty_client_id() {
    let b = TestBroker::start(|_| {}).await;
    let (_c, ack) = RawClient::connect(b.addr, connect_packet(V5, "", true)).await;
    assert_eq!(ack.code, 0);
    assert!(
        ack.properties
            .assigned_client_identifier
            .is_some_and(|id| !id.is_empty())
    );
    let (_c, ack) = RawClient::connect(b.addr, connect_packet(V311, "", false)).await;
    assert_eq!(ack.code, 2, "identifier rejected");
    b.stop().await;

    let b = TestBroker::start(|c| c.security.allow_empty_client_id = false).await;
    let (_c, ack) = RawClient::connect(b.addr, connect_packet(V5, "", true)).await;
    assert_eq!(ack.code, reason::CLIENT_IDENTIFIER_NOT_VALID);
    b.stop().await;
}

/// A client silent for 1.5 × keep alive is disconnected [MQTT-3.1.2-24].
#[tokio::test]
async fn keep_alive_timeout() {
    let b = TestBroker::start(|_| {}).await;
    let mut connect = connect_packet(V5, "sleepy", true);
    connect.keep_alive = 1;
    let (mut c, _) = RawClient::connect(b.addr, connect).await;
    let started = std::time::Instant::now();
    let seen = c.until_closed().await;
    assert!(
        matches!(seen.last(), Some(Packet::Disconnect(d)) if d.reason == reason::KEEP_ALIVE_TIMEOUT),
        "{seen:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "not before 1.5 × keep alive"
    );
    b.stop().await;
}

/// Packets move the keep-alive deadline: a client that pings for longer than 1.5 × keep alive stays,
/// and is disconnected 1.5 × keep alive after its last packet. With bandwidth throttling the
/// connection never parks, so this is the packet loop's own timer.
#[tokio::test]
async fn keep_alive_timeout_counts_from_the_last_packet() {
    let b = TestBroker::start(|c| c.restrictions.incoming_bandwidth_throttling = 1_000_000).await;
    let mut connect = connect_packet(V5, "pinger", true);
    connect.keep_alive = 1;
    let (mut c, _) = RawClient::connect(b.addr, connect).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.send(&Packet::PingReq).await;
        assert_eq!(c.recv().await, Some(Packet::PingResp));
    }
    let last = std::time::Instant::now();
    let seen = c.until_closed().await;
    assert!(
        matches!(seen.last(), Some(Packet::Disconnect(d)) if d.reason == reason::KEEP_ALIVE_TIMEOUT),
        "{seen:?}"
    );
    let quiet = last.elapsed();
    assert!(
        quiet >= Duration::from_millis(1400),
        "not before 1.5 × keep alive: {quiet:?}"
    );
    assert!(quiet < Duration::from_secs(3), "not long after it either: {quiet:?}");
    b.stop().await;
}

/// The server lowers a keep alive above max-keep-alive and says so [MQTT-3.2.2-21].
#[tokio::test]
async fn server_keep_alive() {
    let b = TestBroker::start(|c| c.mqtt.max_keep_alive = 30).await;
    let (_c, ack) = RawClient::connect(b.addr, connect_packet(V5, "ka", true)).await;
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    b.stop().await;
}

/// A socket that never sends CONNECT is closed after no-connect-idle-timeout.
#[tokio::test]
async fn no_connect_idle_timeout() {
    let b = TestBroker::start(|c| c.restrictions.no_connect_idle_timeout_ms = 200).await;
    let mut c = RawClient::open(b.addr, V311).await;
    assert!(c.until_closed().await.is_empty());
    b.stop().await;
}

/// Topic aliases from the client: set with a topic, then used alone [MQTT-3.3.2-12].
#[tokio::test]
async fn inbound_topic_alias() {
    let b = TestBroker::start(|_| {}).await;
    let mut sub = subscribed(&b, V311, "sub", "alias/t", QoS::AtMostOnce).await;
    let (mut publ, _) = RawClient::connect(b.addr, connect_packet(V5, "pub", true)).await;
    let mut p = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "alias/t".into(),
        packet_id: 0,
        properties: Properties {
            topic_alias: Some(1),
            ..Default::default()
        },
        payload: Bytes::from_static(b"1"),
    };
    publ.send(&Packet::Publish(p.clone())).await;
    p.topic = String::new();
    p.payload = Bytes::from_static(b"2");
    publ.send(&Packet::Publish(p.clone())).await;
    for expected in ["1", "2"] {
        match sub.recv().await {
            Some(Packet::Publish(got)) => {
                assert_eq!(got.topic, "alias/t");
                assert_eq!(got.payload, Bytes::from(expected));
            }
            other => panic!("{other:?}"),
        }
    }
    // An alias above the maximum is an error [MQTT-3.3.2-9].
    p.properties.topic_alias = Some(1000);
    p.topic = "alias/t".into();
    publ.send(&Packet::Publish(p)).await;
    let seen = publ.until_closed().await;
    assert!(matches!(seen.last(), Some(Packet::Disconnect(d)) if d.reason == reason::TOPIC_ALIAS_INVALID));
    b.stop().await;
}

/// Topic aliases to the client when it allows them: the second message carries only the alias.
#[tokio::test]
async fn outbound_topic_alias() {
    let b = TestBroker::start(|_| {}).await;
    let mut connect = connect_packet(V5, "aliased", true);
    connect.properties.topic_alias_maximum = Some(4);
    let (mut sub, _) = RawClient::connect(b.addr, connect).await;
    sub.send(&subscribe(1, "long/topic/name", QoS::AtMostOnce)).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let (mut publ, _) = RawClient::connect(b.addr, connect_packet(V5, "pub", true)).await;
    publ.send(&publish("long/topic/name", QoS::AtMostOnce, 0, "a")).await;
    publ.send(&publish("long/topic/name", QoS::AtMostOnce, 0, "b")).await;
    let Some(Packet::Publish(first)) = sub.recv().await else {
        panic!()
    };
    let Some(Packet::Publish(second)) = sub.recv().await else {
        panic!()
    };
    assert_eq!(first.topic, "long/topic/name");
    let alias = first.properties.topic_alias.expect("alias set");
    assert_eq!(second.topic, "");
    assert_eq!(second.properties.topic_alias, Some(alias));
    b.stop().await;
}

/// The client's Receive Maximum bounds unacknowledged QoS 1 deliveries [MQTT-3.3.4-7].
#[tokio::test]
async fn client_receive_maximum() {
    let b = TestBroker::start(|_| {}).await;
    let mut connect = connect_packet(V5, "slow", true);
    connect.properties.receive_maximum = Some(2);
    let (mut sub, _) = RawClient::connect(b.addr, connect).await;
    sub.send(&subscribe(1, "rm", QoS::AtLeastOnce)).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let (mut publ, _) = RawClient::connect(b.addr, connect_packet(V5, "pub", true)).await;
    for i in 1..=5 {
        publ.send(&publish("rm", QoS::AtLeastOnce, i, &i.to_string())).await;
    }
    let mut ids = Vec::new();
    for _ in 0..2 {
        let Some(Packet::Publish(p)) = sub.recv().await else {
            panic!()
        };
        ids.push(p.packet_id);
    }
    assert!(
        sub.recv_within(Duration::from_millis(300)).await.is_err(),
        "no third message before an ack"
    );
    sub.send(&Packet::PubAck(ack(ids[0]))).await;
    let Some(Packet::Publish(p)) = sub.recv().await else {
        panic!()
    };
    assert_eq!(p.payload, Bytes::from("3"));
    b.stop().await;
}

/// More unacknowledged QoS 2 PUBLISHes than our Receive Maximum: DISCONNECT 0x93 [MQTT-3.3.4-9].
#[tokio::test]
async fn server_receive_maximum() {
    let b = TestBroker::start(|c| c.mqtt.server_receive_maximum = 2).await;
    let (mut c, ack) = RawClient::connect(b.addr, connect_packet(V5, "flood", true)).await;
    assert_eq!(ack.properties.receive_maximum, Some(2));
    for i in 1..=3 {
        c.send(&publish("x", QoS::ExactlyOnce, i, "x")).await;
    }
    let seen = c.until_closed().await;
    assert!(
        matches!(seen.last(), Some(Packet::Disconnect(d)) if d.reason == reason::RECEIVE_MAXIMUM_EXCEEDED),
        "{seen:?}"
    );
    b.stop().await;
}

/// A message larger than the client's Maximum Packet Size is not sent to it [MQTT-3.1.2-25].
#[tokio::test]
async fn client_maximum_packet_size() {
    let b = TestBroker::start(|_| {}).await;
    let mut connect = connect_packet(V5, "small", true);
    connect.properties.maximum_packet_size = Some(100);
    let (mut sub, _) = RawClient::connect(b.addr, connect).await;
    sub.send(&subscribe(1, "mps", QoS::AtLeastOnce)).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let (mut publ, _) = RawClient::connect(b.addr, connect_packet(V5, "pub", true)).await;
    publ.send(&publish("mps", QoS::AtLeastOnce, 1, &"x".repeat(200))).await;
    publ.send(&publish("mps", QoS::AtLeastOnce, 2, "small")).await;
    let Some(Packet::Publish(p)) = sub.recv().await else {
        panic!()
    };
    assert_eq!(p.payload, Bytes::from("small"));
    b.stop().await;
}

/// QoS 2 from a client: a resent PUBLISH before PUBREL is not delivered twice [MQTT-4.3.3-9].
#[tokio::test]
async fn qos2_exactly_once_inbound() {
    let b = TestBroker::start(|_| {}).await;
    let mut sub = subscribed(&b, V311, "sub", "eo", QoS::ExactlyOnce).await;
    let (mut publ, _) = RawClient::connect(b.addr, connect_packet(V311, "pub", true)).await;
    publ.send(&publish("eo", QoS::ExactlyOnce, 7, "once")).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(r)) if r.packet_id == 7));
    let Packet::Publish(mut again) = publish("eo", QoS::ExactlyOnce, 7, "once") else {
        unreachable!()
    };
    again.dup = true;
    publ.send(&Packet::Publish(again)).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(r)) if r.packet_id == 7));
    publ.send(&Packet::PubRel(ack(7))).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubComp(r)) if r.packet_id == 7));

    let Some(Packet::Publish(p)) = sub.recv().await else {
        panic!()
    };
    assert_eq!(p.qos, QoS::ExactlyOnce);
    sub.send(&Packet::PubRec(ack(p.packet_id))).await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(r)) if r.packet_id == p.packet_id));
    sub.send(&Packet::PubComp(ack(p.packet_id))).await;
    assert!(
        sub.recv_within(Duration::from_millis(300)).await.is_err(),
        "delivered exactly once"
    );
    b.stop().await;
}

/// Unacknowledged QoS 1 messages are resent with DUP and the same packet id on reconnect
/// [MQTT-4.4.0-1] [MQTT-3.3.1-1].
#[tokio::test]
async fn redelivery_on_reconnect() {
    let b = TestBroker::start(|_| {}).await;
    let (mut sub, _) = RawClient::connect(b.addr, connect_packet(V311, "redo", false)).await;
    sub.send(&subscribe(1, "redo", QoS::AtLeastOnce)).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let (mut publ, _) = RawClient::connect(b.addr, connect_packet(V311, "pub", true)).await;
    publ.send(&publish("redo", QoS::AtLeastOnce, 1, "m")).await;
    let Some(Packet::Publish(first)) = sub.recv().await else {
        panic!()
    };
    assert!(!first.dup);
    drop(sub);
    wait_until("disconnected", || {
        b.broker()
            .session_info("redo")
            .is_some_and(|s| !s.connected && s.inflight == 1)
    })
    .await;
    let (mut sub, ack) = RawClient::connect(b.addr, connect_packet(V311, "redo", false)).await;
    assert!(ack.session_present);
    let Some(Packet::Publish(again)) = sub.recv().await else {
        panic!()
    };
    assert!(again.dup);
    assert_eq!(again.packet_id, first.packet_id);
    b.stop().await;
}

/// Subscription identifiers are sent with matching messages [MQTT-3.3.4-3].
#[tokio::test]
async fn subscription_identifier() {
    let b = TestBroker::start(|_| {}).await;
    let (mut sub, _) = RawClient::connect(b.addr, connect_packet(V5, "sid", true)).await;
    sub.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties {
            subscription_identifiers: vec![42],
            ..Default::default()
        },
        filters: vec![(
            "sid/+".into(),
            SubscriptionOptions {
                qos: QoS::AtMostOnce,
                ..Default::default()
            },
        )],
    }))
    .await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let (mut publ, _) = RawClient::connect(b.addr, connect_packet(V5, "pub", true)).await;
    publ.send(&publish("sid/x", QoS::AtMostOnce, 0, "x")).await;
    let Some(Packet::Publish(p)) = sub.recv().await else {
        panic!()
    };
    assert_eq!(p.properties.subscription_identifiers, vec![42]);
    b.stop().await;
}

/// max-qos: SUBACK grants at most it; a PUBLISH above it is refused with 0x9B [MQTT-3.2.2-11].
#[tokio::test]
async fn maximum_qos() {
    let b = TestBroker::start(|c| c.mqtt.max_qos = 1).await;
    let (mut c, ack) = RawClient::connect(b.addr, connect_packet(V5, "mq", true)).await;
    assert_eq!(ack.properties.maximum_qos, Some(1));
    c.send(&subscribe(1, "mq", QoS::ExactlyOnce)).await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(s)) if s.reason_codes == vec![1]));
    c.send(&publish("mq", QoS::ExactlyOnce, 2, "x")).await;
    let seen = c.until_closed().await;
    assert!(
        matches!(seen.last(), Some(Packet::Disconnect(d)) if d.reason == reason::QOS_NOT_SUPPORTED),
        "{seen:?}"
    );
    b.stop().await;
}

/// Restrictions: client id length and connection count.
#[tokio::test]
async fn restrictions() {
    let b = TestBroker::start(|c| {
        c.restrictions.max_client_id_length = 5;
        c.restrictions.max_connections = 1;
    })
    .await;
    let (_c, ack) = RawClient::connect(b.addr, connect_packet(V5, "toolongid", true)).await;
    assert_eq!(ack.code, reason::CLIENT_IDENTIFIER_NOT_VALID);
    let (_ok, ack) = RawClient::connect(b.addr, connect_packet(V5, "one", true)).await;
    assert_eq!(ack.code, 0);
    let (_no, ack) = RawClient::connect(b.addr, connect_packet(V5, "two", true)).await;
    assert_eq!(ack.code, reason::QUOTA_EXCEEDED);
    let (_no, ack) = RawClient::connect(b.addr, connect_packet(V311, "two", true)).await;
    assert_eq!(ack.code, 3, "server unavailable in 3.1.1");
    b.stop().await;
}

/// Disabled features are refused per filter in SUBACK.
#[tokio::test]
async fn disabled_features_in_suback() {
    let b = TestBroker::start(|c| {
        c.mqtt.wildcard_subscriptions_enabled = false;
        c.mqtt.shared_subscriptions_enabled = false;
    })
    .await;
    let (mut c, ack) = RawClient::connect(b.addr, connect_packet(V5, "f", true)).await;
    assert_eq!(ack.properties.wildcard_subscription_available, Some(0));
    assert_eq!(ack.properties.shared_subscription_available, Some(0));
    let opts = SubscriptionOptions {
        qos: QoS::AtMostOnce,
        ..Default::default()
    };
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![
            ("a/#".into(), opts),
            ("$share/g/a".into(), opts),
            ("a/b".into(), opts),
            ("a/#/b".into(), opts),
        ],
    }))
    .await;
    let Some(Packet::SubAck(s)) = c.recv().await else {
        panic!()
    };
    assert_eq!(
        s.reason_codes,
        vec![
            reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
            reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
            0,
            reason::TOPIC_FILTER_INVALID
        ]
    );
    b.stop().await;
}

/// Retain Handling 1 sends retained messages only for a new subscription, 2 never [MQTT-3.3.1-10] [MQTT-3.3.1-11].
#[tokio::test]
async fn retain_handling() {
    let b = TestBroker::start(|_| {}).await;
    let (mut publ, _) = RawClient::connect(b.addr, connect_packet(V5, "pub", true)).await;
    let Packet::Publish(mut p) = publish("rh", QoS::AtLeastOnce, 1, "kept") else {
        unreachable!()
    };
    p.retain = true;
    publ.send(&Packet::Publish(p)).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    let (mut c, _) = RawClient::connect(b.addr, connect_packet(V5, "rh", true)).await;
    let sub = |id, rh| {
        Packet::Subscribe(Subscribe {
            packet_id: id,
            properties: Properties::default(),
            filters: vec![(
                "rh".into(),
                SubscriptionOptions {
                    qos: QoS::AtMostOnce,
                    retain_handling: rh,
                    ..Default::default()
                },
            )],
        })
    };
    c.send(&sub(1, 1)).await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
    assert!(matches!(c.recv().await, Some(Packet::Publish(p)) if p.retain));
    c.send(&sub(2, 1)).await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
    c.send(&sub(3, 2)).await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
    assert!(
        c.recv_within(Duration::from_millis(300)).await.is_err(),
        "no retained message for rh=1 (existing) or rh=2"
    );
    b.stop().await;
}

/// Session expiry: a session with expiry 1 s is gone 1 s after its connection [MQTT-3.1.2-23].
#[tokio::test]
async fn session_expiry() {
    let b = TestBroker::start(|_| {}).await;
    let mut connect = connect_packet(V5, "brief", false);
    connect.properties.session_expiry_interval = Some(1);
    let (mut c, _) = RawClient::connect(b.addr, connect.clone()).await;
    c.send(&Packet::Disconnect(apiary::mqtt::Disconnect {
        reason: 0,
        properties: Properties::default(),
    }))
    .await;
    wait_until("disconnected", || {
        b.broker().session_info("brief").is_some_and(|s| !s.connected)
    })
    .await;
    wait_until("expired", || b.broker().session_info("brief").is_none()).await;
    let (_c, ack) = RawClient::connect(b.addr, connect).await;
    assert!(!ack.session_present);
    b.stop().await;
}

/// Shared subscription: a member that leaves with unacknowledged messages has them sent to
/// another member.
#[tokio::test]
async fn shared_redelivery_to_other_member() {
    let b = TestBroker::start(|_| {}).await;
    let mut a = subscribed(&b, V5, "a", "$share/g/work", QoS::AtLeastOnce).await;
    let mut c = subscribed(&b, V5, "c", "$share/g/work", QoS::AtLeastOnce).await;
    let (mut publ, _) = RawClient::connect(b.addr, connect_packet(V5, "pub", true)).await;
    publ.send(&publish("work", QoS::AtLeastOnce, 1, "job1")).await;
    publ.send(&publish("work", QoS::AtLeastOnce, 2, "job2")).await;
    // One each; a never acknowledges and disconnects.
    let Some(Packet::Publish(pa)) = a.recv().await else {
        panic!()
    };
    let Some(Packet::Publish(pc)) = c.recv().await else {
        panic!()
    };
    c.send(&Packet::PubAck(ack(pc.packet_id))).await;
    drop(a);
    let Some(Packet::Publish(again)) = c.recv().await else {
        panic!()
    };
    assert_eq!(again.payload, pa.payload, "a's unacknowledged job went to c");
    b.stop().await;
}

/// MQTT 3.1 ("MQIsdp", level 3) clients are served.
#[tokio::test]
async fn mqtt_3_1_client() {
    let b = TestBroker::start(|_| {}).await;
    let v31 = ProtocolVersion::V31;
    let (mut c, ack) = RawClient::connect(b.addr, connect_packet(v31, "old-timer", true)).await;
    assert_eq!(ack.code, 0);
    c.send(&subscribe(1, "legacy/+", QoS::ExactlyOnce)).await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(s)) if s.reason_codes == vec![2]));
    c.send(&publish("legacy/x", QoS::AtLeastOnce, 5, "hi")).await;
    let mut got_ack = false;
    let mut got_msg = false;
    while !(got_ack && got_msg) {
        match c.recv().await {
            Some(Packet::PubAck(a)) if a.packet_id == 5 => got_ack = true,
            Some(Packet::Publish(p)) if p.payload == "hi" => got_msg = true,
            other => panic!("{other:?}"),
        }
    }
    // 3.1 has no empty client ids.
    let (_c, ack) = RawClient::connect(b.addr, connect_packet(v31, "", true)).await;
    assert_eq!(ack.code, 2);
    b.stop().await;
}

/// A DISCONNECT from the server carries a reason string unless the operator turned problem
/// information off or the client asked for none [MQTT-3.1.2-29].
#[tokio::test]
async fn problem_information() {
    for (allowed, requested, expect_reason) in [(true, None, true), (true, Some(0), false), (false, None, false)] {
        let b = TestBroker::start(|c| c.security.allow_request_problem_information = allowed).await;
        let mut connect = connect_packet(V5, "pi", true);
        connect.properties.request_problem_information = requested;
        let (mut c, _) = RawClient::connect(b.addr, connect).await;
        c.send(&Packet::Connect(connect_packet(V5, "pi", true))).await;
        let seen = c.until_closed().await;
        let Some(Packet::Disconnect(d)) = seen.last() else {
            panic!("{seen:?}")
        };
        assert_eq!(
            d.properties.reason_string.is_some(),
            expect_reason,
            "allowed={allowed} requested={requested:?}"
        );
        b.stop().await;
    }
}

/// Message expiry: a queued message whose interval runs out is not delivered [MQTT-3.3.2-5].
#[tokio::test]
async fn expired_queued_message_is_dropped() {
    let b = TestBroker::start(|_| {}).await;
    let mut connect = connect_packet(V5, "late", false);
    connect.properties.session_expiry_interval = Some(300);
    let (mut c, _) = RawClient::connect(b.addr, connect.clone()).await;
    c.send(&subscribe(1, "exp", QoS::AtLeastOnce)).await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
    drop(c);
    wait_until("offline", || {
        b.broker().session_info("late").is_some_and(|s| !s.connected)
    })
    .await;
    let (mut publ, _) = RawClient::connect(b.addr, connect_packet(V5, "pub", true)).await;
    let Packet::Publish(mut short) = publish("exp", QoS::AtLeastOnce, 1, "short") else {
        unreachable!()
    };
    short.properties.message_expiry_interval = Some(1);
    publ.send(&Packet::Publish(short)).await;
    publ.send(&publish("exp", QoS::AtLeastOnce, 2, "long")).await;
    wait_until("both queued", || {
        b.broker().session_info("late").is_some_and(|s| s.queued == 2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // let the 1 s expiry pass
    let (mut c, _) = RawClient::connect(b.addr, connect).await;
    let Some(Packet::Publish(p)) = c.recv().await else {
        panic!()
    };
    assert_eq!(p.payload, Bytes::from("long"), "the expired message was dropped");
    b.stop().await;
}

/// max-topic-length: a longer topic name is refused (0x90), a longer filter gets 0x8F in SUBACK.
#[tokio::test]
async fn max_topic_length() {
    let b = TestBroker::start(|c| c.restrictions.max_topic_length = 10).await;
    let (mut c, _) = RawClient::connect(b.addr, connect_packet(V5, "topics", true)).await;
    c.send(&subscribe(1, "a/very/long/filter", QoS::AtMostOnce)).await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(s)) if s.reason_codes == vec![reason::TOPIC_FILTER_INVALID]));
    c.send(&subscribe(2, "short/#", QoS::AtMostOnce)).await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(s)) if s.reason_codes == vec![0]));
    c.send(&publish("a/very/long/topic", QoS::AtMostOnce, 0, "x")).await;
    let seen = c.until_closed().await;
    assert!(
        matches!(seen.last(), Some(Packet::Disconnect(d)) if d.reason == reason::TOPIC_NAME_INVALID),
        "{seen:?}"
    );
    b.stop().await;
}
