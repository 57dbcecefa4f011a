//! Cluster tests on real hosts: network namespaces on a bridge, one `apiary` process each,
//! killed with SIGKILL and cut off with `ip link set … down`. Needs root and iproute2 (CI has
//! both); elsewhere each test says so and passes without running.

mod common;
mod hosts;

use std::time::{Duration, Instant};

use apiary::mqtt::{Packet, Properties, ProtocolVersion, QoS};
use bytes::Bytes;
use common::{RawClient, V5Client, connect_packet, publish_packet, subscribe_packet};
use hosts::{Net, Node};

const START: Duration = Duration::from_secs(30);

fn skip() -> bool {
    if hosts::available() {
        return false;
    }
    eprintln!("skipped: network namespaces need root and iproute2");
    true
}

async fn subscribe(c: &mut RawClient, filter: &str, qos: QoS) {
    c.send(&subscribe_packet(1, filter, qos)).await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
}

/// Nodes started one after another, in reverse order, form one cluster; messages cross it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formation_in_any_order_and_pubsub_across_hosts() {
    if skip() {
        return;
    }
    let net = Net::new(3);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for i in [2, 0, 1] {
        let node = net.start_node(dir.path(), i, true);
        node.wait_log("Started Apiary in", START);
        nodes.push(node);
    }
    for n in &nodes {
        n.wait_size(3, START);
        assert!(
            n.log_text().contains("Finished cluster join process successfully."),
            "{}",
            n.log_text()
        );
    }
    // nodes[1] is node1, nodes[0] is node3.
    let (mut sub, _) = RawClient::connect(nodes[1].mqtt, connect_packet(ProtocolVersion::V5, "sub-on-1", true)).await;
    subscribe(&mut sub, "hosts/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = RawClient::connect(nodes[0].mqtt, connect_packet(ProtocolVersion::V5, "pub-on-3", true)).await;
    // Retained first: it is on every node once acknowledged.
    publ.send(&publish_packet("hosts/retained", QoS::AtLeastOnce, 1, true, "kept"))
        .await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    let (mut late, _) = RawClient::connect(nodes[2].mqtt, connect_packet(ProtocolVersion::V5, "late-on-2", true)).await;
    subscribe(&mut late, "hosts/retained", QoS::AtLeastOnce).await;
    assert!(matches!(late.recv().await, Some(Packet::Publish(p)) if p.payload == "kept"));
    // The route from node 1 reaches node 3 asynchronously.
    let deadline = Instant::now() + START;
    let mut pid = 1;
    loop {
        pid += 1;
        publ.send(&publish_packet("hosts/live", QoS::AtLeastOnce, pid, false, "x"))
            .await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
        match sub.recv_within(Duration::from_millis(300)).await {
            Ok(Some(Packet::Publish(p))) if p.topic == "hosts/live" || p.topic == "hosts/retained" => break,
            _ => assert!(Instant::now() < deadline, "no message crossed from node 3 to node 1"),
        }
    }
    mosquitto_across_nodes(&nodes[1], &nodes[0]);
}

/// Interop: mosquitto_sub on one node, mosquitto_pub on another.
fn mosquitto_across_nodes(sub_node: &Node, pub_node: &Node) {
    if std::process::Command::new("mosquitto_sub")
        .arg("--help")
        .output()
        .is_err()
    {
        eprintln!("skipped the mosquitto part: mosquitto-clients not installed");
        return;
    }
    let mut sub = std::process::Command::new("mosquitto_sub")
        .args([
            "-V",
            "mqttv311",
            "-h",
            &sub_node.mqtt.ip().to_string(),
            "-t",
            "interop/#",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "30",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    // mosquitto_sub has no "subscribed" signal: publish until it has its message and exits.
    let deadline = Instant::now() + START;
    while sub.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "mosquitto_sub got nothing");
        let status = std::process::Command::new("mosquitto_pub")
            .args([
                "-V",
                "mqttv5",
                "-h",
                &pub_node.mqtt.ip().to_string(),
                "-t",
                "interop/x",
                "-q",
                "1",
                "-m",
                "from mosquitto_pub",
            ])
            .status()
            .expect("mosquitto_pub");
        assert!(status.success());
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = sub.wait_with_output().expect("output");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "from mosquitto_pub");
}

/// SIGKILL of a node: with the TCP health check, its peers drop it at once; without, after
/// the heartbeat timeout. Restarted on its data folder, it rejoins as a new member (new id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_detection_and_rejoin() {
    if skip() {
        return;
    }
    for health_check in [true, false] {
        let net = Net::new(3);
        let dir = tempfile::tempdir().unwrap();
        let mut nodes: Vec<Node> = (0..3).map(|i| net.start_node(dir.path(), i, health_check)).collect();
        for n in &nodes {
            n.wait_log("Started Apiary in", START);
            n.wait_size(3, START);
        }
        let id_line = |n: &Node| {
            n.log_text()
                .lines()
                .find(|l| l.contains("cluster id"))
                .map(|l| l.split("cluster id ").nth(1).unwrap_or("").to_string())
        };
        let before = id_line(&nodes[2]);
        let killed_at = Instant::now();
        nodes[2].kill();
        let detected = nodes[0].wait_size(2, START);
        nodes[1].wait_size(2, START);
        let took = detected - killed_at;
        eprintln!(
            "failure detection (SIGKILL → removal), health check {health_check}: {} ms",
            took.as_millis()
        );
        if health_check {
            assert!(
                took < Duration::from_millis(1500),
                "the health check removes a killed node at once, took {took:?}"
            );
        } else {
            assert!(
                took >= Duration::from_millis(1500),
                "without the health check, the heartbeat timeout decides, took {took:?}"
            );
        }
        nodes[2].start();
        nodes[2].wait_log("Started Apiary in", START);
        for n in &nodes {
            n.wait_size(3, START);
        }
        assert!(before.is_some());
        assert_ne!(id_line(&nodes[2]), before, "the node came back as a new member");
    }
}

/// A node cut off the network (no FIN, no RST) is dropped after the heartbeat timeout; when the
/// link comes back, the sides merge into one cluster again, and stay one. Twice over: whether
/// the connections from before a cut end before or after the merge is a matter of timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_and_merge() {
    if skip() {
        return;
    }
    let net = Net::new(3);
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<Node> = (0..3).map(|i| net.start_node(dir.path(), i, true)).collect();
    for n in &nodes {
        n.wait_log("Started Apiary in", START);
        n.wait_size(3, START);
    }
    for round in 1..=2 {
        net.set_link(2, false);
        nodes[0].wait_size(2, START);
        nodes[1].wait_size(2, START);
        nodes[2].wait_size(1, START);
        net.set_link(2, true);
        for n in &nodes {
            n.wait_size(3, START);
        }
        // The merge finishes after the sizes are back (it waits for the peers' state).
        let logged = |text: &str| nodes.iter().any(|n| n.log_text().matches(text).count() >= round);
        let deadline = Instant::now() + START;
        while !(logged("Starting cluster merge process.") && logged("Finished cluster merge process successfully.")) {
            assert!(Instant::now() < deadline, "merge log lines: {}", nodes[2].log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
        // Each side closed its connections to the other when it declared it down; their FINs
        // (and whatever was written last) are retransmitted once the link is back. Once they
        // are all through, the cluster is still whole: nobody took the end of a connection
        // from before the cut for a failure after the merge (that once sent the nodes into a
        // second takeover of the sessions they had just handed back).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let closing: Vec<String> = (0..3).flat_map(|i| net.closing_cluster_connections(i)).collect();
            if closing.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "connections still closing: {closing:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let left = |n: &Node| n.log_text().matches("node left the cluster").count();
        // The last end read lands in the core within moments; a second departure shows here.
        let watch_until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < watch_until {
            assert_eq!(
                nodes.iter().map(left).collect::<Vec<_>>(),
                vec![round, round, 2 * round],
                "each node saw the others go once per cut, while the link was down"
            );
            for n in &nodes {
                assert_eq!(n.cluster_size(), Some(3), "{}: {}", n.name, n.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The will of a client whose node dies is published by the cluster — once — after failure
/// detection plus the will delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_of_a_dead_nodes_client() {
    if skip() {
        return;
    }
    let net = Net::new(3);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..3).map(|i| net.start_node(dir.path(), i, true)).collect();
    for n in &nodes {
        n.wait_log("Started Apiary in", START);
        n.wait_size(3, START);
    }
    let (mut watcher, _) =
        RawClient::connect(nodes[0].mqtt, connect_packet(ProtocolVersion::V5, "watcher", true)).await;
    subscribe(&mut watcher, "wills/#", QoS::AtLeastOnce).await;
    let mut doomed = connect_packet(ProtocolVersion::V5, "doomed", true);
    doomed.will = Some(apiary::mqtt::Will {
        topic: "wills/doomed".into(),
        payload: Bytes::from_static(b"node died"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: Some(1),
            ..Default::default()
        },
    });
    let (_doomed, ack) = RawClient::connect(nodes[2].mqtt, doomed).await;
    assert_eq!(ack.code, 0);
    // Let the will registration and the watcher's route reach every node.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = Instant::now();
    nodes[2].kill();
    let mut got = 0;
    loop {
        match watcher.recv_within(Duration::from_secs(3)).await {
            Ok(Some(Packet::Publish(p))) => {
                assert_eq!(p.payload, "node died");
                got += 1;
                if got == 1 {
                    let took = killed_at.elapsed();
                    eprintln!("will of a dead node's client published after {} ms", took.as_millis());
                    assert!(took >= Duration::from_secs(1), "not before the will delay");
                }
            }
            Ok(Some(Packet::PubRel(_))) | Ok(Some(_)) => {}
            Ok(None) => panic!("watcher disconnected"),
            Err(_) => break,
        }
    }
    assert_eq!(got, 1, "published exactly once in the cluster");
}

/// A shared subscription group spread over two nodes: when one member's node dies, the QoS 1
/// messages its member had not acknowledged go to the other member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_messages_of_a_dead_members_node_go_to_another_member() {
    if skip() {
        return;
    }
    let net = Net::new(3);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..3).map(|i| net.start_node(dir.path(), i, true)).collect();
    for n in &nodes {
        n.wait_log("Started Apiary in", START);
        n.wait_size(3, START);
    }
    let (mut acking, _) = RawClient::connect(nodes[0].mqtt, connect_packet(ProtocolVersion::V5, "acking", true)).await;
    subscribe(&mut acking, "$share/g/work/#", QoS::AtLeastOnce).await;
    let (mut silent, _) = RawClient::connect(nodes[1].mqtt, connect_packet(ProtocolVersion::V5, "silent", true)).await;
    subscribe(&mut silent, "$share/g/work/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = RawClient::connect(nodes[2].mqtt, connect_packet(ProtocolVersion::V5, "boss", true)).await;

    // Publish until both members have had work (the routes reach node 3 asynchronously).
    let mut at_acking = std::collections::BTreeSet::new();
    let mut at_silent = std::collections::BTreeSet::new();
    let deadline = Instant::now() + START;
    let mut pid = 0u16;
    while at_silent.len() < 3 || at_acking.is_empty() {
        assert!(Instant::now() < deadline, "the group never spread over both nodes");
        pid += 1;
        publ.send(&publish_packet(
            "work/x",
            QoS::AtLeastOnce,
            pid,
            false,
            &pid.to_string(),
        ))
        .await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
        while let Ok(Some(Packet::Publish(p))) = acking.recv_within(Duration::from_millis(100)).await {
            acking
                .send(&Packet::PubAck(apiary::mqtt::PubResponse {
                    packet_id: p.packet_id,
                    reason: 0,
                    properties: Properties::default(),
                }))
                .await;
            at_acking.insert(String::from_utf8_lossy(&p.payload).to_string());
        }
        while let Ok(Some(Packet::Publish(p))) = silent.recv_within(Duration::from_millis(100)).await {
            at_silent.insert(String::from_utf8_lossy(&p.payload).to_string());
        }
    }
    nodes[1].kill();
    // The silent member's messages arrive at the acking member.
    let deadline = Instant::now() + START;
    while !at_silent.is_subset(&at_acking) {
        assert!(
            Instant::now() < deadline,
            "missing at the other member: {:?}",
            at_silent.difference(&at_acking).collect::<Vec<_>>()
        );
        if let Ok(Some(Packet::Publish(p))) = acking.recv_within(Duration::from_millis(200)).await {
            acking
                .send(&Packet::PubAck(apiary::mqtt::PubResponse {
                    packet_id: p.packet_id,
                    reason: 0,
                    properties: Properties::default(),
                }))
                .await;
            at_acking.insert(String::from_utf8_lossy(&p.payload).to_string());
        }
    }
}

/// Sets (or, with an empty payload, deletes) a retained message through a rumqttc client and
/// waits for the PUBACK.
async fn retain(addr: std::net::SocketAddr, id: &str, topic: &str, payload: &str) {
    use rumqttc::v5::mqttbytes::{QoS as Q5, v5::Packet as P5};
    let (mut c, _) = V5Client::connect(addr, id, |_| {}).await;
    c.client
        .publish(topic, Q5::AtLeastOnce, true, payload.to_owned())
        .await
        .unwrap();
    c.wait_for("PUBACK", |p| matches!(p, P5::PubAck(_))).await;
    let _ = c.client.disconnect().await;
}

/// The retained messages under `filter` a new rumqttc subscriber gets: (topic, payload).
async fn retained_at(addr: std::net::SocketAddr, id: &str, filter: &str) -> Vec<(String, String)> {
    use rumqttc::v5::Event;
    use rumqttc::v5::mqttbytes::{QoS as Q5, v5::Packet as P5};
    let (mut c, _) = V5Client::connect(addr, id, |_| {}).await;
    c.client.subscribe(filter, Q5::AtLeastOnce).await.unwrap();
    c.wait_for("SUBACK", |p| matches!(p, P5::SubAck(_))).await;
    // They follow the SUBACK at once; quiet for a while means there are no more.
    let mut got = Vec::new();
    while let Some(event) = c.next_event_within(Duration::from_millis(300)).await {
        if let Ok(Event::Incoming(P5::Publish(p))) = event {
            assert!(p.retain, "retained messages carry RETAIN on subscribe");
            let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
            got.push((text(&p.topic), text(&p.payload)));
        }
    }
    let _ = c.client.disconnect().await;
    got.sort();
    got
}

/// Retained messages converge after a partition, deletions included: the newest version of
/// every topic wins by the hybrid logical clock. Node 3 is cut off from the other nodes (not
/// from the clients: `Net::split`); alone, it sets C and sets A again; afterwards the majority deletes A and sets B. After the heal every node has B and
/// C, and no A: the deletion is newer than node 3's write, and its tombstone keeps node 3's
/// copy from coming back in the merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_converge_after_a_partition() {
    if skip() {
        return;
    }
    let began = Instant::now();
    let net = Net::new(3);
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<Node> = (0..3).map(|i| net.start_node(dir.path(), i, true)).collect();
    for n in &nodes {
        n.wait_log("Started Apiary in", START);
        n.wait_size(3, START);
    }
    retain(nodes[0].mqtt, "before", "part/a", "set before the partition").await;
    assert_eq!(
        retained_at(nodes[2].mqtt, "check-before", "part/#").await,
        vec![("part/a".to_string(), "set before the partition".to_string())]
    );

    net.split(2, true);
    nodes[0].wait_size(2, START);
    nodes[1].wait_size(2, START);
    nodes[2].wait_size(1, START);
    // Node 3 alone (its writes are acknowledged by itself).
    retain(nodes[2].mqtt, "alone-c", "part/c", "from node 3").await;
    retain(nodes[2].mqtt, "alone-a", "part/a", "again on node 3").await;
    // Then the majority: its delete is made at a later wall-clock millisecond (the nodes share
    // this machine's clock), so it is the newer version of A.
    let after = apiary::broker::message::now_ms() + 1;
    while apiary::broker::message::now_ms() <= after {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    retain(nodes[0].mqtt, "majority-a", "part/a", "").await;
    retain(nodes[1].mqtt, "majority-b", "part/b", "from the majority").await;

    let healed = Instant::now();
    net.split(2, false);
    for n in &nodes {
        n.wait_size(3, START);
    }
    let expected = vec![
        ("part/b".to_string(), "from the majority".to_string()),
        ("part/c".to_string(), "from node 3".to_string()),
    ];
    let deadline = Instant::now() + START;
    for (i, n) in nodes.iter().enumerate() {
        let mut round = 0;
        loop {
            round += 1;
            let got = retained_at(n.mqtt, &format!("check-{i}-{round}"), "part/#").await;
            if got == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {}: retained {got:?}, expected {expected:?}",
                i + 1
            );
        }
    }
    eprintln!(
        "retained messages converged {} ms after the heal ({} ms in all)",
        healed.elapsed().as_millis(),
        began.elapsed().as_millis()
    );
    for n in &nodes {
        n.wait_log("Starting cluster merge process.", START);
        n.wait_log("Finished cluster merge process successfully.", START);
    }
    // Node 3 took in the deletion and B; the majority took in C (and found node 3's A stale,
    // or node 3 had already taken in the deletion when it sent its snapshot).
    let merged = |n: &Node, needle: &str| {
        n.log_text()
            .lines()
            .any(|l| l.contains("Merged retained messages") && l.contains(needle))
    };
    assert!(
        merged(&nodes[2], "2 newer applied (1 of them deletions)"),
        "{}",
        nodes[2].log_text()
    );
    for n in &nodes[..2] {
        assert!(merged(n, "1 newer applied (0 of them deletions)"), "{}", n.log_text());
    }
}
