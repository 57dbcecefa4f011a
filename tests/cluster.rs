//! Several nodes in one process on loopback ports: membership, routing between nodes and
//! cluster-wide retained messages. (Separate processes on separate hosts: tests/cluster_hosts.rs.)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use apiary::config::Config;
use apiary::mqtt::{Packet, Properties, ProtocolVersion, QoS, Subscribe, SubscriptionOptions};
use bytes::Bytes;
use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn node_config(port: u16, peers: &[u16]) -> Config {
    let nodes: String = peers
        .iter()
        .map(|p| format!("<node><host>127.0.0.1</host><port>{p}</port></node>"))
        .collect();
    let xml = format!(
        "<hivemq>
           <listeners><tcp-listener><port>0</port><bind-address>127.0.0.1</bind-address></tcp-listener></listeners>
           <cluster>
             <enabled>true</enabled>
             <transport><tcp><bind-address>127.0.0.1</bind-address><bind-port>{port}</bind-port></tcp></transport>
             <discovery><static>{nodes}</static></discovery>
             <failure-detection><heartbeat><interval>200</interval><timeout>1000</timeout></heartbeat></failure-detection>
           </cluster>
         </hivemq>"
    );
    Config::parse(&xml, "test.xml", &|_| None).expect("valid test config")
}

async fn start_cluster(n: usize) -> Vec<TestBroker> {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let starts = ports.iter().map(|p| {
        let config = node_config(*p, &ports);
        async move { TestBroker::start_in(tempfile::tempdir().unwrap(), config).await }
    });
    let nodes = futures_join_all(starts).await;
    for node in &nodes {
        wait_until("the cluster formed", || {
            node.broker().cluster().is_some_and(|c| c.size() == n)
        })
        .await;
    }
    nodes
}

/// Runs the futures concurrently (nodes wait for each other while joining).
async fn futures_join_all<F: std::future::Future<Output = TestBroker> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<TestBroker> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("node start"));
    }
    out
}

async fn subscriber(addr: SocketAddr, id: &str, filter: &str) -> RawClient {
    let (mut c, _) = RawClient::connect(addr, connect_packet(ProtocolVersion::V5, id, true)).await;
    c.send(&subscribe_packet(1, filter, QoS::ExactlyOnce)).await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
    c
}

/// Three nodes started at once form one cluster; a message published on any node reaches the
/// subscribers of every node, once, in order, at the QoS they asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_route_messages_between_each_other() {
    let nodes = start_cluster(3).await;
    let ids: std::collections::HashSet<String> = nodes
        .iter()
        .map(|n| n.broker().cluster().unwrap().id().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "every node has its own cluster id");

    let mut on_1 = subscriber(nodes[0].addr, "s1", "cross/#").await;
    let mut on_3 = subscriber(nodes[2].addr, "s3", "cross/#").await;
    // Routes reach the other nodes asynchronously: publish until the far subscriber has one.
    let (mut publ, _) = RawClient::connect(nodes[1].addr, connect_packet(ProtocolVersion::V5, "p2", true)).await;
    let mut pid = 0;
    loop {
        pid += 1;
        publ.send(&publish_packet("cross/probe", QoS::AtLeastOnce, pid, false, "probe"))
            .await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
        if let Ok(Some(Packet::Publish(_))) = on_3.recv_within(Duration::from_millis(200)).await {
            break;
        }
        assert!(pid < 50, "routes never reached node 3");
    }
    // Drain node 1's probes (its route is local or already known).
    while let Ok(Some(_)) = on_1.recv_within(Duration::from_millis(200)).await {}
    while let Ok(Some(_)) = on_3.recv_within(Duration::from_millis(200)).await {}

    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        pid += 1;
        publ.send(&publish_packet(
            &format!("cross/{i}"),
            qos,
            pid,
            false,
            &format!("m{i}"),
        ))
        .await;
        if qos == QoS::AtLeastOnce {
            assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
        }
        if qos == QoS::ExactlyOnce {
            assert!(matches!(publ.recv().await, Some(Packet::PubRec(_))));
            publ.send(&Packet::PubRel(apiary::mqtt::PubResponse {
                packet_id: pid,
                reason: 0,
                properties: Properties::default(),
            }))
            .await;
        }
        for sub in [&mut on_1, &mut on_3] {
            loop {
                match sub.recv().await {
                    Some(Packet::Publish(p)) => {
                        assert_eq!(p.payload, Bytes::from(format!("m{i}")));
                        assert_eq!(p.qos, qos);
                        if qos == QoS::AtLeastOnce {
                            sub.send(&Packet::PubAck(apiary::mqtt::PubResponse {
                                packet_id: p.packet_id,
                                reason: 0,
                                properties: Properties::default(),
                            }))
                            .await;
                        }
                        if qos == QoS::ExactlyOnce {
                            sub.send(&Packet::PubRec(apiary::mqtt::PubResponse {
                                packet_id: p.packet_id,
                                reason: 0,
                                properties: Properties::default(),
                            }))
                            .await;
                        }
                        break;
                    }
                    Some(Packet::PubRel(r)) => {
                        sub.send(&Packet::PubComp(r)).await;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }
    // Order per publisher and topic across nodes.
    for i in 0..50u16 {
        publ.send(&publish_packet(
            "cross/order",
            QoS::AtMostOnce,
            0,
            false,
            &i.to_string(),
        ))
        .await;
    }
    let mut seen = Vec::new();
    while seen.len() < 50 {
        match on_3.recv().await {
            Some(Packet::Publish(p)) if p.topic == "cross/order" => {
                seen.push(String::from_utf8_lossy(&p.payload).to_string())
            }
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    assert_eq!(seen, (0..50).map(|i| i.to_string()).collect::<Vec<_>>());
    for n in nodes {
        n.stop().await;
    }
}

/// A retained message published on node A is there for a subscriber on node B right after
/// the PUBACK (read-your-writes across nodes); its deletion too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_is_cluster_wide_right_after_the_ack() {
    let nodes = start_cluster(3).await;
    let (mut publ, _) = RawClient::connect(nodes[0].addr, connect_packet(ProtocolVersion::V5, "rp", true)).await;
    for round in 0..5u16 {
        let value = format!("v{round}");
        publ.send(&publish_packet("cfg/rw", QoS::AtLeastOnce, round + 1, true, &value))
            .await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
        // Immediately after the ack, on another node.
        let mut sub = subscriber(nodes[1 + usize::from(round) % 2].addr, &format!("rs{round}"), "cfg/rw").await;
        match sub.recv().await {
            Some(Packet::Publish(p)) => assert_eq!(p.payload, Bytes::from(value)),
            other => panic!("expected the retained message, got {other:?}"),
        }
    }
    publ.send(&publish_packet("cfg/rw", QoS::AtLeastOnce, 100, true, ""))
        .await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    let mut sub = subscriber(nodes[2].addr, "after-delete", "cfg/rw").await;
    assert!(
        sub.recv_within(Duration::from_millis(300)).await.is_err(),
        "deleted everywhere"
    );
    for n in nodes {
        n.stop().await;
    }
}

/// A node that stops leaves the cluster at once. Restarted on its data folder, it comes back
/// as a new member: the data of its previous run is set aside in `cluster-backup/` (the
/// cluster holds the current state), and it gets the retained messages it missed from the
/// others before it serves clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_leaves_and_rejoins_as_a_new_member() {
    let mut nodes = start_cluster(3).await;
    let leaving = nodes.pop().unwrap();
    let id = leaving.broker().cluster().unwrap().id().clone();
    let config = leaving.config.clone();
    // Something persistent on the leaving node, so that its data file is worth keeping.
    let (mut own, _) = RawClient::connect(leaving.addr, connect_packet(ProtocolVersion::V5, "own", true)).await;
    own.send(&publish_packet("kept/before", QoS::AtLeastOnce, 1, true, "before"))
        .await;
    assert!(matches!(own.recv().await, Some(Packet::PubAck(_))));
    drop(own);
    let dir = leaving.stop().await;
    for n in &nodes {
        wait_until("the others see it leave", || n.broker().cluster().unwrap().size() == 2).await;
    }
    let (mut publ, _) = RawClient::connect(nodes[0].addr, connect_packet(ProtocolVersion::V5, "p", true)).await;
    publ.send(&publish_packet(
        "missed/while/away",
        QoS::AtLeastOnce,
        1,
        true,
        "hello again",
    ))
    .await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));

    let data = dir.path().join("data");
    let back = TestBroker::start_in(dir, config).await;
    assert_ne!(
        back.broker().cluster().unwrap().id(),
        &id,
        "a restarted node is a new member"
    );
    assert!(
        data.join("cluster-backup").join(apiary::store::DB_FILE).exists(),
        "the previous run's data is kept in cluster-backup/"
    );
    wait_until("three again", || back.broker().cluster().unwrap().size() == 3).await;
    // The join finished before the node served clients: the retained messages are there, the
    // one it missed and its own from before (which the cluster kept).
    let mut sub = subscriber(back.addr, "returning", "missed/#").await;
    assert!(matches!(sub.recv().await, Some(Packet::Publish(p)) if p.payload == "hello again"));
    let mut sub = subscriber(back.addr, "returning2", "kept/#").await;
    assert!(matches!(sub.recv().await, Some(Packet::Publish(p)) if p.payload == "before"));
    back.stop().await;
    for n in nodes {
        n.stop().await;
    }
}

/// A client id is unique in the cluster: connecting on node B takes the session over from
/// node A — the old connection gets 0x8E, and the subscriptions, queued messages and in-flight
/// packet ids move along [MQTT-3.1.4-3].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_takeover_across_nodes() {
    let nodes = start_cluster(2).await;
    let mut connect = connect_packet(ProtocolVersion::V5, "roamer", false);
    connect.properties.session_expiry_interval = Some(300);
    connect.properties.receive_maximum = Some(1);
    let (mut on_a, _) = RawClient::connect(nodes[0].addr, connect.clone()).await;
    on_a.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![(
            "roam/#".into(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )],
    }))
    .await;
    assert!(matches!(on_a.recv().await, Some(Packet::SubAck(_))));
    // Two messages: one in flight (never acked), one queued behind the window of 1.
    let (mut publ, _) = RawClient::connect(nodes[0].addr, connect_packet(ProtocolVersion::V5, "pa", true)).await;
    publ.send(&publish_packet("roam/1", QoS::AtLeastOnce, 1, false, "first"))
        .await;
    publ.send(&publish_packet("roam/2", QoS::AtLeastOnce, 2, false, "second"))
        .await;
    let Some(Packet::Publish(inflight)) = on_a.recv().await else {
        panic!()
    };
    assert_eq!(inflight.payload, "first");
    wait_until("one queued", || {
        nodes[0]
            .broker()
            .session_info("roamer")
            .is_some_and(|s| s.inflight == 1 && s.queued == 1)
    })
    .await;

    let (mut on_b, ack) = RawClient::connect(nodes[1].addr, connect).await;
    assert!(ack.session_present, "the session came along");
    let seen = on_a.until_closed().await;
    assert!(
        matches!(seen.last(), Some(Packet::Disconnect(d)) if d.reason == 0x8E),
        "{seen:?}"
    );
    assert!(
        nodes[0].broker().session_info("roamer").is_none(),
        "exactly one session: on B"
    );
    // The in-flight message comes again with its packet id and DUP, then the queued one.
    let Some(Packet::Publish(again)) = on_b.recv().await else {
        panic!()
    };
    assert!(again.dup && again.packet_id == inflight.packet_id && again.payload == "first");
    on_b.send(&Packet::PubAck(apiary::mqtt::PubResponse {
        packet_id: again.packet_id,
        reason: 0,
        properties: Properties::default(),
    }))
    .await;
    let Some(Packet::Publish(next)) = on_b.recv().await else {
        panic!()
    };
    assert_eq!(next.payload, "second");
    // And the subscription works on B for messages published on A.
    on_b.send(&Packet::PubAck(apiary::mqtt::PubResponse {
        packet_id: next.packet_id,
        reason: 0,
        properties: Properties::default(),
    }))
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    let mut pid = 10;
    loop {
        pid += 1;
        publ.send(&publish_packet("roam/3", QoS::AtLeastOnce, pid, false, "third"))
            .await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
        if let Ok(Some(Packet::Publish(p))) = on_b.recv_within(Duration::from_millis(300)).await {
            assert_eq!(p.payload, "third");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the route to B never arrived");
    }
    for n in nodes {
        n.stop().await;
    }
}

/// Two connections with one client id racing on two nodes end with exactly one session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_client_ids_end_with_one_session() {
    let nodes = start_cluster(2).await;
    for round in 0..5 {
        let id = format!("racer{round}");
        let (a, b) = (nodes[0].addr, nodes[1].addr);
        let c1 = connect_packet(ProtocolVersion::V5, &id, false);
        let c2 = c1.clone();
        let (r1, r2) = tokio::join!(RawClient::connect(a, c1), RawClient::connect(b, c2));
        let (mut k1, mut k2) = (r1.0, r2.0);
        // Whatever the interleaving, at most one of the two stays connected, and one session
        // exists in the cluster.
        let gone1 = matches!(
            k1.recv_within(Duration::from_millis(500)).await,
            Ok(None) | Ok(Some(Packet::Disconnect(_)))
        );
        let gone2 = matches!(
            k2.recv_within(Duration::from_millis(500)).await,
            Ok(None) | Ok(Some(Packet::Disconnect(_)))
        );
        assert!(gone1 || gone2, "round {round}: both connections stayed");
        let sessions = nodes
            .iter()
            .filter(|n| n.broker().session_info(&id).is_some_and(|s| s.connected))
            .count();
        assert!(sessions <= 1, "round {round}: {sessions} live sessions");
        wait_until("one session in the cluster", || {
            nodes.iter().filter(|n| n.broker().session_info(&id).is_some()).count() == 1
        })
        .await;
    }
    for n in nodes {
        n.stop().await;
    }
}

/// A shared subscription group with members on two nodes gets each message exactly once in
/// the whole cluster, spread over the members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_across_nodes() {
    let nodes = start_cluster(3).await;
    let mut members = [
        subscriber(nodes[0].addr, "worker-a", "$share/workers/jobs/#").await,
        subscriber(nodes[1].addr, "worker-b", "$share/workers/jobs/#").await,
    ];
    // Wait until node 3 knows both nodes' members: then its round robin alternates.
    wait_until("group routes on node 3", || {
        nodes[2].broker().cluster().unwrap().routes_len() == 2
    })
    .await;
    let (mut publ, _) = RawClient::connect(nodes[2].addr, connect_packet(ProtocolVersion::V5, "boss", true)).await;
    for i in 1..=20u16 {
        publ.send(&publish_packet("jobs/x", QoS::AtLeastOnce, i, false, &i.to_string()))
            .await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    }
    let mut received = Vec::new();
    let mut per_member = [0; 2];
    for (i, m) in members.iter_mut().enumerate() {
        while let Ok(Some(Packet::Publish(p))) = m.recv_within(Duration::from_millis(500)).await {
            m.send(&Packet::PubAck(apiary::mqtt::PubResponse {
                packet_id: p.packet_id,
                reason: 0,
                properties: Properties::default(),
            }))
            .await;
            received.push(String::from_utf8_lossy(&p.payload).to_string());
            per_member[i] += 1;
        }
    }
    received.sort_by_key(|s| s.parse::<u32>().unwrap());
    assert_eq!(
        received,
        (1..=20).map(|i| i.to_string()).collect::<Vec<_>>(),
        "each message exactly once"
    );
    assert!(
        per_member[0] > 0 && per_member[1] > 0,
        "both members got work: {per_member:?}"
    );
    for n in nodes {
        n.stop().await;
    }
}

/// Reads one cluster frame body.
async fn read_frame(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; 4];
    tokio::time::timeout(WAIT, stream.read_exact(&mut header))
        .await
        .expect("a frame in time")
        .expect("read");
    let len = apiary::cluster::wire::frame_len(header).expect("length");
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.expect("read");
    body
}

/// Rolling upgrade: a node of the first release (cluster protocol version 1, no retained
/// versions) next to this one. They negotiate version 1; this node sends its retained messages
/// in version 1's form (a deletion as an empty payload) and applies the ones the old node sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_release_peer_is_spoken_to_in_version_1() {
    use apiary::cluster::wire::{self, Hello, Message as Wire};
    use tokio::io::AsyncWriteExt;
    let port = free_port();
    let node = TestBroker::start_in(tempfile::tempdir().unwrap(), node_config(port, &[port])).await;
    let (mut publ, _) = RawClient::connect(node.addr, connect_packet(ProtocolVersion::V5, "p", true)).await;
    for (pid, (topic, payload)) in [("old/kept", "k"), ("old/gone", "x"), ("old/gone", "")]
        .into_iter()
        .enumerate()
    {
        publ.send(&publish_packet(topic, QoS::AtLeastOnce, pid as u16 + 1, true, payload))
            .await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    }

    // The old node: it dials in, and listens for the new node to dial back.
    let old_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hello = |chosen_version| Hello {
        magic: wire::MAGIC,
        min_version: 1,
        max_version: 1,
        node: "FIRSTRELEASE".into(),
        address: old_listener.local_addr().unwrap().to_string(),
        chosen_version,
        refusal: None,
    };
    let mut out = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    out.write_all(&wire::encode(&hello(0))).await.unwrap();
    let answer = wire::decode_hello(&read_frame(&mut out).await).unwrap();
    assert_eq!((answer.chosen_version, answer.max_version), (1, wire::MAX_VERSION));
    // A retained message as the old node replicates it.
    let from_old = apiary::broker::message::Message {
        topic: "old/new".into(),
        payload: Bytes::from_static(b"from v1"),
        qos: 1,
        retain: true,
        properties: Default::default(),
        expires_at_ms: None,
        publisher: "c".into(),
        created_ms: apiary::broker::message::now_ms(),
    };
    out.write_all(&wire::encode(&Wire::LegacyRetainedPut {
        seq: 9,
        message: from_old,
    }))
    .await
    .unwrap();
    // Keep the old node alive in the new one's eyes.
    let beats = tokio::spawn(async move {
        loop {
            if out.write_all(&wire::encode(&Wire::Heartbeat)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let (mut inbound, _) = tokio::time::timeout(WAIT, old_listener.accept())
        .await
        .expect("the node dials back")
        .unwrap();
    let theirs = wire::decode_hello(&read_frame(&mut inbound).await).unwrap();
    assert_eq!(theirs.max_version, wire::MAX_VERSION);
    inbound.write_all(&wire::encode(&hello(1))).await.unwrap();
    let (mut snapshot, mut acked) = (None, false);
    while snapshot.is_none() || !acked {
        match wire::decode_message(&read_frame(&mut inbound).await).unwrap() {
            Wire::LegacyRetainedSnapshot(messages) => snapshot = Some(messages),
            Wire::RetainedAck { seq: 9 } => acked = true,
            m @ (Wire::RetainedSnapshot(_) | Wire::RetainedPut { .. }) => panic!("a version 2 message: {m:?}"),
            _ => {}
        }
    }
    // (It may already hold the old node's message too: that one was sent first.)
    let snapshot = snapshot.unwrap();
    let payload_of = |topic: &str| snapshot.iter().find(|m| m.topic == topic).map(|m| m.payload.clone());
    assert_eq!(payload_of("old/kept"), Some(Bytes::from_static(b"k")));
    assert_eq!(
        payload_of("old/gone"),
        Some(Bytes::new()),
        "the deletion travels as an empty payload"
    );
    let mut sub = subscriber(node.addr, "reader", "old/#").await;
    let mut got = Vec::new();
    for _ in 0..2 {
        match sub.recv().await {
            Some(Packet::Publish(p)) => got.push(p.payload),
            other => panic!("expected a retained message, got {other:?}"),
        }
    }
    got.sort();
    assert_eq!(got, vec![Bytes::from_static(b"from v1"), Bytes::from_static(b"k")]);
    beats.abort();
    node.stop().await;
}
