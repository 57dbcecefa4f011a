//! Publish/subscribe semantics through real client crates (rumqttc, MQTT 3.1.1 and 5).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use rumqttc::QoS as Q4;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PublishProperties};

/// QoS 0, 1 and 2 end to end, v3.1.1 publisher to v5 subscriber and back.
/// [MQTT-3.3.4-1] [MQTT-4.3.2-1] [MQTT-4.3.3-1]
#[tokio::test]
async fn qos_0_1_2_round_trip_between_versions() {
    let b = TestBroker::start(|_| {}).await;
    let (mut sub, _) = V5Client::connect(b.addr, "sub5", |_| {}).await;
    sub.client.subscribe("t/#", Q5::ExactlyOnce).await.unwrap();
    sub.wait_for("SUBACK", |p| matches!(p, P5::SubAck(_))).await;
    let (mut publ, _) = V4Client::connect(b.addr, "pub4", |_| {}).await;
    for (i, qos) in [Q4::AtMostOnce, Q4::AtLeastOnce, Q4::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publ.client
            .publish(format!("t/{i}"), qos, false, format!("m{i}"))
            .await
            .unwrap();
        let p = sub.next_publish().await;
        assert_eq!(p.topic, Bytes::from(format!("t/{i}")));
        assert_eq!(p.payload, Bytes::from(format!("m{i}")));
        assert_eq!(p.qos as u8, i as u8, "delivered at the publish QoS");
    }
    // And the other way, v5 → v3.1.1.
    publ.client.subscribe("back", Q4::AtLeastOnce).await.unwrap();
    publ.wait_for("SUBACK", |p| matches!(p, rumqttc::Packet::SubAck(_)))
        .await;
    sub.client
        .publish("back", Q5::ExactlyOnce, false, "hello")
        .await
        .unwrap();
    let p = publ.next_publish().await;
    assert_eq!(p.payload, Bytes::from("hello"));
    assert_eq!(
        p.qos,
        Q4::AtLeastOnce,
        "downgraded to the subscription's QoS [MQTT-3.8.4-8]"
    );
    b.stop().await;
}

/// Retained messages: set, replaced, deleted by an empty payload. [MQTT-3.3.1-5] [MQTT-3.3.1-6]
/// [MQTT-3.3.1-7] [MQTT-3.3.1-8]
#[tokio::test]
async fn retained_set_replace_delete() {
    let b = TestBroker::start(|_| {}).await;
    let (publ, _) = V4Client::connect(b.addr, "pub", |_| {}).await;
    publ.client.publish("r/a", Q4::AtLeastOnce, true, "one").await.unwrap();
    publ.client.publish("r/a", Q4::AtLeastOnce, true, "two").await.unwrap();
    publ.client.publish("r/b", Q4::AtLeastOnce, true, "bee").await.unwrap();
    wait_until("two retained", || b.broker().retained_count() == 2).await;

    let (mut sub, _) = V4Client::connect(b.addr, "sub", |_| {}).await;
    sub.client.subscribe("r/+", Q4::AtLeastOnce).await.unwrap();
    let mut got = [sub.next_publish().await, sub.next_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(
        got[0].payload,
        Bytes::from("two"),
        "the latest value replaced the first"
    );
    assert!(
        got[0].retain && got[1].retain,
        "retained messages carry RETAIN on subscribe"
    );

    publ.client.publish("r/a", Q4::AtLeastOnce, true, "").await.unwrap();
    wait_until("delete", || b.broker().retained_count() == 1).await;
    let (mut sub2, _) = V4Client::connect(b.addr, "sub2", |_| {}).await;
    sub2.client.subscribe("r/#", Q4::AtLeastOnce).await.unwrap();
    let p = sub2.next_publish().await;
    assert_eq!(p.topic, "r/b");
    b.stop().await;
}

/// Normal delivery of a retained publish to an existing subscription has RETAIN 0 unless
/// Retain As Published [MQTT-3.3.1-12] [MQTT-3.3.1-13].
#[tokio::test]
async fn retain_as_published() {
    let b = TestBroker::start(|_| {}).await;
    let (mut plain, _) = V5Client::connect(b.addr, "plain", |_| {}).await;
    plain.client.subscribe("rap", Q5::AtLeastOnce).await.unwrap();
    plain.wait_for("SUBACK", |p| matches!(p, P5::SubAck(_))).await;
    let (mut rap, _) = V5Client::connect(b.addr, "rap", |_| {}).await;
    let filter = rumqttc::v5::mqttbytes::v5::Filter {
        path: "rap".into(),
        qos: Q5::AtLeastOnce,
        nolocal: false,
        preserve_retain: true,
        retain_forward_rule: rumqttc::v5::mqttbytes::v5::RetainForwardRule::OnEverySubscribe,
    };
    rap.client.subscribe_many([filter]).await.unwrap();
    rap.wait_for("SUBACK", |p| matches!(p, P5::SubAck(_))).await;
    plain.client.publish("rap", Q5::AtLeastOnce, true, "x").await.unwrap();
    assert!(!plain.next_publish().await.retain);
    assert!(rap.next_publish().await.retain);
    b.stop().await;
}

/// A will is published when the connection is lost, and not after a normal DISCONNECT.
/// [MQTT-3.1.2-8] [MQTT-3.1.2-10]
#[tokio::test]
async fn will_on_loss_not_on_disconnect() {
    let b = TestBroker::start(|_| {}).await;
    let (mut watcher, _) = V4Client::connect(b.addr, "watcher", |_| {}).await;
    watcher.client.subscribe("wills/#", Q4::AtLeastOnce).await.unwrap();
    watcher
        .wait_for("SUBACK", |p| matches!(p, rumqttc::Packet::SubAck(_)))
        .await;

    let (polite, _) = V4Client::connect(b.addr, "polite", |o| {
        o.set_last_will(rumqttc::LastWill::new("wills/polite", "gone", Q4::AtLeastOnce, false));
    })
    .await;
    polite.client.disconnect().await.unwrap();
    wait_until("polite gone", || b.broker().session_info("polite").is_none()).await;

    let (crash, _) = V4Client::connect(b.addr, "crash", |o| {
        o.set_last_will(rumqttc::LastWill::new("wills/crash", "lost", Q4::AtLeastOnce, false));
    })
    .await;
    crash.kill();
    let p = watcher.next_publish().await;
    assert_eq!(p.topic, "wills/crash", "only the lost connection's will is published");
    assert_eq!(p.payload, Bytes::from("lost"));
    b.stop().await;
}

/// Will Delay Interval: a reconnect within the delay cancels the will [MQTT-3.1.3-9].
#[tokio::test]
async fn will_delay_cancelled_by_reconnect() {
    let b = TestBroker::start(|_| {}).await;
    let (mut watcher, _) = V5Client::connect(b.addr, "watcher", |_| {}).await;
    watcher.client.subscribe("wd/#", Q5::AtLeastOnce).await.unwrap();
    watcher.wait_for("SUBACK", |p| matches!(p, P5::SubAck(_))).await;
    let will = |topic: &str| {
        let props = rumqttc::v5::mqttbytes::v5::LastWillProperties {
            delay_interval: Some(2),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        };
        rumqttc::v5::mqttbytes::v5::LastWill::new(topic, "bye", Q5::AtLeastOnce, false, Some(props))
    };
    let persistent = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
    };
    let (a, _) = V5Client::connect(b.addr, "delayed-a", |o| {
        persistent(o);
        o.set_last_will(will("wd/a"));
    })
    .await;
    let (c, _) = V5Client::connect(b.addr, "delayed-c", |o| {
        persistent(o);
        o.set_last_will(will("wd/c"));
    })
    .await;
    a.kill();
    c.kill();
    // a comes back within the delay: its will is cancelled; c does not: its will goes out.
    let (_a2, ack) = V5Client::connect(b.addr, "delayed-a", persistent).await;
    assert!(ack.session_present);
    let p = watcher.next_publish().await;
    assert_eq!(p.topic, Bytes::from("wd/c"));
    assert!(
        tokio::time::timeout(Duration::from_secs(3), watcher.next_publish())
            .await
            .is_err(),
        "the cancelled will must not be published"
    );
    b.stop().await;
}

/// Persistent session: subscriptions and QoS 1 messages queued while offline are delivered on
/// reconnect, in order [MQTT-3.1.2-4] [MQTT-4.6.0-6].
#[tokio::test]
async fn offline_queue_delivered_in_order() {
    let b = TestBroker::start(|_| {}).await;
    let (mut sub, _) = V4Client::connect(b.addr, "offline", |o| {
        o.set_clean_session(false);
    })
    .await;
    sub.client.subscribe("q", Q4::AtLeastOnce).await.unwrap();
    sub.wait_for("SUBACK", |p| matches!(p, rumqttc::Packet::SubAck(_)))
        .await;
    sub.client.disconnect().await.unwrap();
    wait_until("offline", || {
        b.broker().session_info("offline").is_some_and(|s| !s.connected)
    })
    .await;

    let (publ, _) = V4Client::connect(b.addr, "pub", |_| {}).await;
    for i in 0..20 {
        publ.client
            .publish("q", Q4::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    wait_until("20 queued", || {
        b.broker().session_info("offline").is_some_and(|s| s.queued == 20)
    })
    .await;
    let (mut sub, ack) = V4Client::connect(b.addr, "offline", |o| {
        o.set_clean_session(false);
    })
    .await;
    assert!(ack.session_present);
    for i in 0..20 {
        assert_eq!(sub.next_publish().await.payload, Bytes::from(format!("{i}")));
    }
    b.stop().await;
}

/// max-queue-size with the discard and discard-oldest strategies.
#[tokio::test]
async fn queue_limit_strategies() {
    for (strategy, expect) in [
        (apiary::config::QueueStrategy::Discard, ["0", "1", "2"]),
        (apiary::config::QueueStrategy::DiscardOldest, ["7", "8", "9"]),
    ] {
        let b = TestBroker::start(|c| {
            c.mqtt.max_queue_size = 3;
            c.mqtt.queue_strategy = strategy;
        })
        .await;
        let (mut sub, _) = V4Client::connect(b.addr, "limited", |o| {
            o.set_clean_session(false);
        })
        .await;
        sub.client.subscribe("q", Q4::AtLeastOnce).await.unwrap();
        sub.wait_for("SUBACK", |p| matches!(p, rumqttc::Packet::SubAck(_)))
            .await;
        sub.client.disconnect().await.unwrap();
        wait_until("offline", || {
            b.broker().session_info("limited").is_some_and(|s| !s.connected)
        })
        .await;
        let (mut publ, _) = V4Client::connect(b.addr, "pub", |_| {}).await;
        for i in 0..10 {
            publ.client
                .publish("q", Q4::AtLeastOnce, false, format!("{i}"))
                .await
                .unwrap();
            publ.wait_for("PUBACK", |p| matches!(p, rumqttc::Packet::PubAck(_)))
                .await;
        }
        let (mut sub, _) = V4Client::connect(b.addr, "limited", |o| {
            o.set_clean_session(false);
        })
        .await;
        for e in expect {
            assert_eq!(sub.next_publish().await.payload, Bytes::from(e), "{strategy:?}");
        }
        b.stop().await;
    }
}

/// Shared subscriptions: each message to exactly one member, round-robin [MQTT-4.8.2-?].
#[tokio::test]
async fn shared_subscription_round_robin() {
    let b = TestBroker::start(|_| {}).await;
    let mut members = Vec::new();
    for i in 0..3 {
        let (mut m, _) = V5Client::connect(b.addr, &format!("member{i}"), |_| {}).await;
        m.client.subscribe("$share/g/jobs/+", Q5::AtLeastOnce).await.unwrap();
        m.wait_for("SUBACK", |p| matches!(p, P5::SubAck(_))).await;
        members.push(m);
    }
    let (publ, _) = V5Client::connect(b.addr, "pub", |_| {}).await;
    for i in 0..9 {
        publ.client
            .publish(format!("jobs/{i}"), Q5::AtLeastOnce, false, "x")
            .await
            .unwrap();
    }
    for m in &mut members {
        for _ in 0..3 {
            m.next_publish().await;
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(300), m.next_publish())
                .await
                .is_err(),
            "exactly 3 each"
        );
    }
    b.stop().await;
}

/// "#" and "+" at the first level do not match "$" topics [MQTT-4.7.2-1].
#[tokio::test]
async fn dollar_topics_not_matched_by_leading_wildcards() {
    let b = TestBroker::start(|_| {}).await;
    let (mut all, _) = V4Client::connect(b.addr, "all", |_| {}).await;
    all.client.subscribe("#", Q4::AtLeastOnce).await.unwrap();
    all.wait_for("SUBACK", |p| matches!(p, rumqttc::Packet::SubAck(_)))
        .await;
    let (mut sys, _) = V4Client::connect(b.addr, "sys", |_| {}).await;
    sys.client.subscribe("$SYS/#", Q4::AtLeastOnce).await.unwrap();
    sys.wait_for("SUBACK", |p| matches!(p, rumqttc::Packet::SubAck(_)))
        .await;
    let (publ, _) = V4Client::connect(b.addr, "pub", |_| {}).await;
    publ.client
        .publish("$SYS/x", Q4::AtLeastOnce, false, "s")
        .await
        .unwrap();
    publ.client.publish("plain", Q4::AtLeastOnce, false, "p").await.unwrap();
    assert_eq!(sys.next_publish().await.topic, "$SYS/x");
    assert_eq!(
        all.next_publish().await.topic,
        "plain",
        "# saw the plain topic and not $SYS/x"
    );
    b.stop().await;
}

/// User properties, content type, correlation data and response topic pass through unchanged;
/// the message expiry interval is forwarded [MQTT-3.3.2-6] [MQTT-3.3.2-17] [MQTT-3.3.2-20].
#[tokio::test]
async fn properties_pass_through() {
    let b = TestBroker::start(|_| {}).await;
    let (mut sub, _) = V5Client::connect(b.addr, "sub", |_| {}).await;
    sub.client.subscribe("props", Q5::AtLeastOnce).await.unwrap();
    sub.wait_for("SUBACK", |p| matches!(p, P5::SubAck(_))).await;
    let (publ, _) = V5Client::connect(b.addr, "pub", |_| {}).await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(100),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"corr")),
        user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
        ..Default::default()
    };
    publ.client
        .publish_with_properties("props", Q5::AtLeastOnce, false, "body", props)
        .await
        .unwrap();
    let p = sub.next_publish().await;
    let got = p.properties.expect("properties");
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.response_topic.as_deref(), Some("reply/here"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"corr"[..]));
    assert_eq!(
        got.user_properties,
        vec![("a".to_string(), "1".to_string()), ("a".to_string(), "2".to_string())]
    );
    assert_eq!(got.payload_format_indicator, Some(1));
    let expiry = got.message_expiry_interval.expect("expiry forwarded");
    assert!((99..=100).contains(&expiry), "remaining interval, got {expiry}");
    b.stop().await;
}

/// No Local: a client does not get its own messages on such a subscription [MQTT-3.8.3-3].
#[tokio::test]
async fn no_local() {
    let b = TestBroker::start(|_| {}).await;
    let (mut c, _) = V5Client::connect(b.addr, "self", |_| {}).await;
    let filter = rumqttc::v5::mqttbytes::v5::Filter {
        path: "nl".into(),
        qos: Q5::AtLeastOnce,
        nolocal: true,
        preserve_retain: false,
        retain_forward_rule: rumqttc::v5::mqttbytes::v5::RetainForwardRule::OnEverySubscribe,
    };
    c.client.subscribe_many([filter]).await.unwrap();
    c.wait_for("SUBACK", |p| matches!(p, P5::SubAck(_))).await;
    c.client.publish("nl", Q5::AtLeastOnce, false, "mine").await.unwrap();
    let (other, _) = V5Client::connect(b.addr, "other", |_| {}).await;
    other
        .client
        .publish("nl", Q5::AtLeastOnce, false, "theirs")
        .await
        .unwrap();
    assert_eq!(c.next_publish().await.payload, Bytes::from("theirs"));
    b.stop().await;
}
