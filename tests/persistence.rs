//! Persistence: state survives a restart and a SIGKILL; the data folder is locked; a corrupt
//! data file is a clear error.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use apiary::config::PersistenceMode;
use apiary::mqtt::{Packet, Properties, ProtocolVersion, QoS};
use bytes::Bytes;
use common::*;

fn subscribe(filter: &str) -> Packet {
    subscribe_packet(1, filter, QoS::ExactlyOnce)
}

/// Sets up a persistent subscriber "keeper" on "p/#" (offline), publishes `n` QoS 1 messages
/// and one retained message, each acknowledged.
async fn fill(addr: std::net::SocketAddr, n: u16) {
    let (mut sub, _) = RawClient::connect(addr, connect_packet(ProtocolVersion::V311, "keeper", false)).await;
    sub.send(&subscribe("p/#")).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    sub.send(&Packet::Disconnect(apiary::mqtt::Disconnect {
        reason: 0,
        properties: Properties::default(),
    }))
    .await;
    assert!(sub.until_closed().await.is_empty());
    let (mut publ, _) = RawClient::connect(addr, connect_packet(ProtocolVersion::V311, "filler", true)).await;
    for i in 1..=n {
        publ.send(&publish_packet("p/q", QoS::AtLeastOnce, i, false, &format!("m{i}")))
            .await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(a)) if a.packet_id == i));
    }
    publ.send(&publish_packet("p/retained", QoS::AtLeastOnce, 1000, true, "kept"))
        .await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
}

/// After the restart: the session is there with its subscription and queue, the retained
/// message too.
async fn check(addr: std::net::SocketAddr, n: u16) {
    let (mut sub, ack) = RawClient::connect(addr, connect_packet(ProtocolVersion::V311, "keeper", false)).await;
    assert!(ack.session_present, "the persistent session survived");
    for i in 1..=n {
        match sub.recv().await {
            Some(Packet::Publish(p)) => {
                assert_eq!(p.payload, Bytes::from(format!("m{i}")));
                sub.send(&Packet::PubAck(apiary::mqtt::PubResponse {
                    packet_id: p.packet_id,
                    reason: 0,
                    properties: Properties::default(),
                }))
                .await;
            }
            other => panic!("expected queued message {i}, got {other:?}"),
        }
    }
    // The retained message was also routed to the session when published.
    assert!(matches!(sub.recv().await, Some(Packet::Publish(p)) if p.topic == "p/retained"));
    let (mut fresh, _) = RawClient::connect(addr, connect_packet(ProtocolVersion::V311, "fresh", true)).await;
    fresh.send(&subscribe("p/retained")).await;
    assert!(matches!(fresh.recv().await, Some(Packet::SubAck(_))));
    assert!(matches!(fresh.recv().await, Some(Packet::Publish(p)) if p.retain && p.payload == "kept"));
}

#[tokio::test]
async fn state_survives_restart() {
    let b = TestBroker::start(|_| {}).await;
    fill(b.addr, 25).await;
    let b = b.restart().await;
    check(b.addr, 25).await;
    b.stop().await;
}

#[tokio::test]
async fn in_memory_mode_keeps_nothing_on_disk() {
    let b = TestBroker::start(|c| c.persistence = PersistenceMode::InMemory).await;
    fill(b.addr, 3).await;
    assert!(!b.data_dir().join(apiary::store::DB_FILE).exists());
    let b = b.restart().await;
    let (_c, ack) = RawClient::connect(b.addr, connect_packet(ProtocolVersion::V311, "keeper", false)).await;
    assert!(!ack.session_present);
    b.stop().await;
}

#[tokio::test]
async fn data_folder_is_locked() {
    let b = TestBroker::start(|_| {}).await;
    let err = apiary::store::Store::open(&b.data_dir())
        .err()
        .expect("second open must fail");
    assert!(err.to_string().contains("in use by another Apiary process"), "{err}");
    b.stop().await;
}

#[tokio::test]
async fn corrupt_and_foreign_data_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join(apiary::store::DB_FILE),
        b"this is not a database at all, just text",
    )
    .unwrap();
    let err = apiary::store::Store::open(&data).err().expect("corrupt file must fail");
    let text = err.to_string();
    assert!(
        text.contains("apiary.redb") && text.contains("corrupt or not an Apiary data file"),
        "{text}"
    );
    // The file is left as it was: never a silent wipe.
    assert_eq!(
        std::fs::read(data.join(apiary::store::DB_FILE)).unwrap(),
        b"this is not a database at all, just text"
    );

    // A valid redb file of someone else's.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    {
        let db = redb_file(&other.join(apiary::store::DB_FILE));
        drop(db);
    }
    let err = apiary::store::Store::open(&other)
        .err()
        .expect("foreign file must fail");
    assert!(err.to_string().contains("no Apiary format marker"), "{err}");
}

fn redb_file(path: &std::path::Path) -> redb::Database {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let def: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("foreign");
        txn.open_table(def).unwrap().insert("x", 1).unwrap();
    }
    txn.commit().unwrap();
    db
}

/// Starts the real binary on a free port; returns the child and its MQTT address.
fn spawn_broker(dir: &std::path::Path) -> (Child, std::net::SocketAddr) {
    let config = dir.join("config.xml");
    std::fs::write(
        &config,
        "<hivemq><listeners><tcp-listener><port>0</port><bind-address>127.0.0.1</bind-address></tcp-listener></listeners></hivemq>",
    )
    .unwrap();
    let mut child = Command::new(apiary_bin())
        .args(["run", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("APIARY_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn apiary");
    let stdout = child.stdout.take().unwrap();
    let mut port = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("log line");
        if let Some(rest) = line.split("and on port ").nth(1) {
            port = rest
                .trim()
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse::<u16>()
                .ok();
        }
        if line.contains("Started Apiary in") {
            break;
        }
    }
    let port = port.expect("the listener port in the log");
    (child, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

/// What was acknowledged before a SIGKILL is there after it.
#[tokio::test]
async fn acknowledged_state_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_broker(dir.path());
    fill(addr, 50).await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let (mut child, addr) = spawn_broker(dir.path());
    check(addr, 50).await;
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The will of a persistent session whose node was killed is published after the restart
/// (the client never said goodbye) [MQTT-3.1.2-8].
#[tokio::test]
async fn will_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_broker(dir.path());
    let mut connect = connect_packet(ProtocolVersion::V5, "doomed", false);
    connect.properties.session_expiry_interval = Some(600);
    connect.will = Some(apiary::mqtt::Will {
        topic: "wills/doomed".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties {
            will_delay_interval: Some(1),
            ..Default::default()
        },
    });
    let (_doomed, ack) = RawClient::connect(addr, connect).await;
    assert_eq!(ack.code, 0);
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let (mut child, addr) = spawn_broker(dir.path());
    // The will is retained, so a subscriber finds it once it has been published.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (mut c, _) = RawClient::connect(addr, connect_packet(ProtocolVersion::V5, "watcher", true)).await;
        c.send(&subscribe("wills/#")).await;
        assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
        if let Ok(Some(Packet::Publish(p))) = c.recv_within(std::time::Duration::from_millis(300)).await {
            assert_eq!(p.payload, Bytes::from("gone"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the will was not published after the restart"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
