//! Persistent-session replication on real hosts (network namespaces, one `apiary` process
//! each; see `hosts`): with replica-count 2, a node killed with SIGKILL or stopped with SIGTERM
//! loses no acknowledged message of a persistent session, and its clients find their sessions
//! on the other nodes. Needs root and iproute2; elsewhere each test says so and passes.

mod common;
mod hosts;
#[path = "replication/load.rs"]
mod load;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apiary::mqtt::{Disconnect, Packet, Properties, ProtocolVersion, PubResponse, QoS};
use common::{RawClient, connect_packet, publish_packet, subscribe_packet};
use hosts::checker::{self, Checker};
use hosts::{Net, Node};

const START: Duration = Duration::from_secs(30);
const MESSAGES: usize = 200;
/// The pace of the load publishers: fast, and (for the 20 s partition, whose backlog the
/// subscribers must drain) slower.
const FAST: Duration = Duration::from_millis(2);
const SLOW: Duration = Duration::from_millis(10);

/// The scenarios run one at a time: each runs three to five nodes and a load on this
/// machine's two cores, and two at once starve each other's failure detection (see the note
/// in `flapping_links_lose_nothing`).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn skip() -> bool {
    if hosts::available() {
        return false;
    }
    eprintln!("skipped: network namespaces need root and iproute2");
    true
}

/// Three nodes (replica-count 2, the default) that see each other.
fn cluster(net: &Net, dir: &std::path::Path) -> Vec<Node> {
    let nodes: Vec<Node> = (0..3).map(|i| net.start_node(dir, i, true)).collect();
    for n in &nodes {
        n.wait_log("Started Apiary in", START);
        n.wait_size(3, START);
    }
    nodes
}

/// A persistent session (clean start false, expiry 300 s) with this receive maximum.
async fn persistent(addr: std::net::SocketAddr, id: &str, receive_maximum: u16) -> (RawClient, bool) {
    let mut connect = connect_packet(ProtocolVersion::V5, id, false);
    connect.properties.session_expiry_interval = Some(300);
    connect.properties.receive_maximum = Some(receive_maximum);
    let (c, ack) = RawClient::connect(addr, connect).await;
    assert_eq!(ack.code, 0, "{ack:?}");
    (c, ack.session_present)
}

async fn subscribe(c: &mut RawClient, filter: &str) {
    c.send(&subscribe_packet(1, filter, QoS::AtLeastOnce)).await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
}

async fn puback(c: &mut RawClient, packet_id: u16) {
    c.send(&Packet::PubAck(PubResponse {
        packet_id,
        reason: 0,
        properties: Properties::default(),
    }))
    .await;
}

/// Publishes on `probe` from `publ` until `sub` has a message on it: the subscription's route
/// has reached the publisher's node.
async fn await_route(publ: &mut RawClient, sub: &mut RawClient, probe: &str) {
    let deadline = Instant::now() + START;
    let mut pid = 60_000;
    loop {
        pid += 1;
        publ.send(&publish_packet(probe, QoS::AtLeastOnce, pid, false, "probe"))
            .await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
        match sub.recv_within(Duration::from_millis(300)).await {
            Ok(Some(Packet::Publish(p))) if p.topic == probe => {
                puback(sub, p.packet_id).await;
                return;
            }
            _ => assert!(
                Instant::now() < deadline,
                "the route never reached the publisher's node"
            ),
        }
    }
}

/// Publishes `rep/data` 0..n at QoS 1, at most 10 unacknowledged; returns once every PUBACK
/// arrived (each one promises the message is stored on two nodes).
async fn publish_all(publ: &mut RawClient, n: usize) {
    let mut sent = 0;
    let mut acked = 0;
    while acked < n {
        while sent < n && sent - acked < 10 {
            let pid = (sent + 1) as u16;
            publ.send(&publish_packet(
                "rep/data",
                QoS::AtLeastOnce,
                pid,
                false,
                &sent.to_string(),
            ))
            .await;
            sent += 1;
        }
        match publ.recv().await {
            Some(Packet::PubAck(ack)) => {
                assert!(ack.reason < 0x80, "{ack:?}");
                acked += 1;
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

/// Receives (and acknowledges) `rep/data` messages until every index from `from` to `n − 1`
/// arrived, in order; a redelivery of an earlier one (QoS 1 may duplicate) is allowed, a gap
/// is not. Returns the indices received.
async fn receive_all(sub: &mut RawClient, from: usize, n: usize, seen_before: &HashSet<usize>) -> Vec<usize> {
    let mut next = from;
    let mut got = Vec::new();
    while next < n {
        let packet = match sub.recv_within(Duration::from_secs(10)).await {
            Ok(Some(p)) => p,
            other => panic!("waiting for message {next} of {n}: {other:?} (got {got:?})"),
        };
        let Packet::Publish(p) = packet else { continue };
        if p.qos != QoS::AtMostOnce {
            puback(sub, p.packet_id).await;
        }
        if p.topic != "rep/data" {
            continue;
        }
        let i: usize = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
        got.push(i);
        if i == next {
            next += 1;
        } else {
            assert!(
                i < next && (i >= from || seen_before.contains(&i)),
                "message {i} out of order: expected {next} (got {got:?})"
            );
        }
    }
    got
}

/// Waits until one of `nodes` logs `text`; returns its index.
fn wait_any_log(nodes: &[&Node], text: &str, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(i) = nodes.iter().position(|n| n.log_text().contains(text)) {
            return i;
        }
        assert!(Instant::now() < deadline, "no node logged {text:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The subscriber's session lives on node 1, which fails (SIGKILL, or SIGTERM with `graceful`)
/// after 200 messages were acknowledged to a publisher on node 2; the subscriber reconnects to
/// node 3 and gets all of them, in order.
async fn offline_session_survives(graceful: bool) {
    let net = Net::new(3);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(&net, dir.path());
    let (mut sub, present) = persistent(nodes[0].mqtt, "keeper", 10).await;
    assert!(!present);
    subscribe(&mut sub, "rep/#").await;
    let (mut publ, _) = RawClient::connect(nodes[1].mqtt, connect_packet(ProtocolVersion::V5, "pub", true)).await;
    await_route(&mut publ, &mut sub, "rep/probe").await;
    sub.send(&Packet::Disconnect(Disconnect {
        reason: 0,
        properties: Properties::default(),
    }))
    .await;
    assert!(sub.recv().await.is_none(), "the server closes after DISCONNECT");

    let t = Instant::now();
    publish_all(&mut publ, MESSAGES).await;
    eprintln!("published and acknowledged {MESSAGES} messages in {:?}", t.elapsed());

    let down = Instant::now();
    if graceful {
        nodes[0].terminate(START);
        let log = nodes[0].log_text();
        assert!(
            log.contains(
                "Starting cluster replication process. This may take a while. Please do not shut down HiveMQ."
            ),
            "{log}"
        );
        assert!(log.contains("Finished cluster replication successfully in"), "{log}");
    } else {
        nodes[0].kill();
    }
    let heir = wait_any_log(&[&nodes[1], &nodes[2]], "took over 1 persistent session(s)", START);
    eprintln!(
        "node{} took over the session {:?} after node 1 went down",
        heir + 2,
        down.elapsed()
    );
    nodes[2].wait_size(2, START);

    let (mut sub, present) = persistent(nodes[2].mqtt, "keeper", 10).await;
    assert!(present, "the session was found on the other nodes");
    let got = receive_all(&mut sub, 0, MESSAGES, &HashSet::new()).await;
    eprintln!(
        "all {MESSAGES} messages back at node 3 {:?} after node 1 went down ({} deliveries)",
        down.elapsed(),
        got.len()
    );
}

/// A shared subscription's queue: messages for a group whose members are offline persistent
/// sessions are queued in those members' sessions, so they are on the sessions' backups too.
/// Both members live on node 1, which is killed after 200 messages were acknowledged; the
/// members reconnect to node 3 and have all of them between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_shared_subscription_messages_survive_sigkill_of_their_node() {
    if skip() {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let net = Net::new(3);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(&net, dir.path());
    let (mut publ, _) = RawClient::connect(nodes[1].mqtt, connect_packet(ProtocolVersion::V5, "pub", true)).await;
    let members = ["member-a", "member-b"];
    for (i, id) in members.iter().enumerate() {
        let (mut m, present) = persistent(nodes[0].mqtt, id, 10).await;
        assert!(!present);
        subscribe(&mut m, "$share/g/rep/#").await;
        if i == 0 {
            // The group's route at the publisher's node (the second member joins a route
            // that is there already).
            await_route(&mut publ, &mut m, "rep/probe").await;
        }
        m.send(&Packet::Disconnect(Disconnect {
            reason: 0,
            properties: Properties::default(),
        }))
        .await;
        assert!(m.recv().await.is_none(), "the server closes after DISCONNECT");
    }
    publish_all(&mut publ, MESSAGES).await;

    nodes[0].kill();
    let deadline = Instant::now() + START;
    while taken_over(&nodes[1]) + taken_over(&nodes[2]) < members.len() {
        assert!(Instant::now() < deadline, "the members' sessions were not taken over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut clients = Vec::new();
    for id in members {
        let (c, present) = persistent(nodes[2].mqtt, id, 10).await;
        assert!(present, "{id}: the session was found on the other nodes");
        clients.push(c);
    }
    let mut got: HashSet<usize> = HashSet::new();
    let deadline = Instant::now() + START;
    while got.len() < MESSAGES {
        assert!(
            Instant::now() < deadline,
            "missing at the members: {:?}",
            (0..MESSAGES).filter(|i| !got.contains(i)).collect::<Vec<_>>()
        );
        for c in &mut clients {
            while let Ok(Some(packet)) = c.recv_within(Duration::from_millis(100)).await {
                let Packet::Publish(p) = packet else { continue };
                if p.qos != QoS::AtMostOnce {
                    puback(c, p.packet_id).await;
                }
                if p.topic == "rep/data" {
                    got.insert(std::str::from_utf8(&p.payload).unwrap().parse().unwrap());
                }
            }
        }
    }
}

/// (a) SIGKILL of the node that holds an offline persistent session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_session_survives_sigkill_of_its_node() {
    if skip() {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    offline_session_survives(false).await;
}

/// (c) SIGTERM: the node replicates before it leaves, and the session lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_session_survives_sigterm_of_its_node() {
    if skip() {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    offline_session_survives(true).await;
}

/// (b) The subscriber is connected to node 1 and has acknowledged part of the stream when
/// node 1 is killed: reconnected to node 3, it gets everything else that was acknowledged to
/// the publisher, in order, its in-flight messages again with DUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_session_survives_sigkill_mid_stream() {
    if skip() {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let net = Net::new(3);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(&net, dir.path());
    let (mut sub, _) = persistent(nodes[0].mqtt, "streamer", 10).await;
    subscribe(&mut sub, "rep/#").await;
    let (mut publ, _) = RawClient::connect(nodes[1].mqtt, connect_packet(ProtocolVersion::V5, "pub", true)).await;
    await_route(&mut publ, &mut sub, "rep/probe").await;
    // The subscriber reads nothing meanwhile: 10 in flight, the rest queued on node 1.
    publish_all(&mut publ, MESSAGES).await;
    let half = MESSAGES / 4;
    let got = receive_all(&mut sub, 0, half, &HashSet::new()).await;
    let seen: HashSet<usize> = got.into_iter().collect();
    let down = Instant::now();
    nodes[0].kill();
    wait_any_log(&[&nodes[1], &nodes[2]], "took over 1 persistent session(s)", START);
    nodes[2].wait_size(2, START);
    let (mut sub, present) = persistent(nodes[2].mqtt, "streamer", 10).await;
    assert!(present);
    let got = receive_all(&mut sub, half, MESSAGES, &seen).await;
    eprintln!(
        "messages {half}..{MESSAGES} back at node 3 {:?} after the kill ({} deliveries)",
        down.elapsed(),
        got.len()
    );
}

/// (d) Two of three nodes die at once with replica-count 2: the survivor warns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_more_nodes_than_replicas_is_a_disaster_warning() {
    if skip() {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let net = Net::new(3);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(&net, dir.path());
    assert!(!nodes[2].log_text().contains("Cluster disaster detected"));
    nodes[0].kill();
    nodes[1].kill();
    nodes[2].wait_log("Cluster disaster detected", START);
    let log = nodes[2].log_text();
    let line = log.lines().find(|l| l.contains("Cluster disaster detected")).unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("replica count 2"), "{line}");
    assert!(line.contains("(local time)"), "{line}");
    assert_eq!(
        log.matches("Cluster disaster detected").count(),
        1,
        "one warning per burst"
    );
}

/// How many sessions of a dead node `node` took over so far (its `took over N` log lines).
fn taken_over(node: &Node) -> usize {
    node.log_text()
        .lines()
        .filter_map(|l| l.split("took over ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse::<usize>().ok())
        .sum()
}

/// Receives (and acknowledges) messages on `sub` until nothing acknowledged matching `filter`
/// is missing, recording them in `check`; fails after `timeout`.
async fn receive_until_complete(sub: &mut RawClient, id: &str, filter: &str, check: &Checker, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !check.missing(id, filter).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{id}: {} acknowledged message(s) missing after {timeout:?}, first {:?}",
            check.missing(id, filter).len(),
            check.missing(id, filter).first()
        );
        match sub.recv_within(Duration::from_millis(500)).await {
            Ok(Some(Packet::Publish(p))) => {
                if p.qos != QoS::AtMostOnce {
                    puback(sub, p.packet_id).await;
                }
                check.delivered(id, &p.topic, &p.payload, p.qos as u8);
            }
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("{id}: the server closed the connection"),
        }
    }
}

/// (e) The takeover window: a publisher on node 2 keeps publishing at QoS 1 while node 1,
/// home of four offline persistent sessions, is killed. Every message acknowledged to the
/// publisher — also those published between the death and the heirs' takeover — reaches
/// every session, in order (QoS 1 duplicates allowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_during_the_takeover_of_a_dead_nodes_sessions_are_not_lost() {
    if skip() {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let net = Net::new(3);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(&net, dir.path());
    let ids: Vec<String> = (0..4).map(|i| format!("window-{i}")).collect();
    let (mut publ, _) = RawClient::connect(nodes[1].mqtt, connect_packet(ProtocolVersion::V5, "pub", true)).await;
    for id in &ids {
        let (mut sub, _) = persistent(nodes[0].mqtt, id, 10).await;
        subscribe(&mut sub, "rep/#").await;
        await_route(&mut publ, &mut sub, "rep/probe").await;
        sub.send(&Packet::Disconnect(Disconnect {
            reason: 0,
            properties: Properties::default(),
        }))
        .await;
        assert!(sub.recv().await.is_none());
    }
    // Probe acknowledgements still on their way: read them before the publisher starts.
    while let Ok(Some(p)) = publ.recv_within(Duration::from_millis(300)).await {
        assert!(matches!(p, Packet::PubAck(_)), "{p:?}");
    }

    let check = Arc::new(Checker::default());
    let stop = Arc::new(AtomicBool::new(false));
    drop(publ);
    let publisher = load::publisher(
        vec![nodes[1].mqtt],
        "pub",
        "rep/data",
        900,
        FAST,
        check.clone(),
        stop.clone(),
    );
    let deadline = Instant::now() + START;
    while check.acked_count() < 100 {
        assert!(Instant::now() < deadline, "the publisher got no PUBACKs");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed_at = check.acked_count();
    let down = Instant::now();
    nodes[0].kill();
    while taken_over(&nodes[1]) + taken_over(&nodes[2]) < ids.len() {
        assert!(Instant::now() < deadline, "the sessions were not taken over");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "sessions taken over {:?} after the kill (node 2: {}, node 3: {}); {} PUBACKs then",
        down.elapsed(),
        taken_over(&nodes[1]),
        taken_over(&nodes[2]),
        check.acked_count() - killed_at
    );
    let after = check.acked_count();
    while check.acked_count() < after + 100 {
        assert!(Instant::now() < deadline, "the publisher stalled after the takeover");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let sent = publisher.await.unwrap();
    eprintln!("{sent} published, {} acknowledged", check.acked_count());

    for id in &ids {
        let (mut sub, present) = persistent(nodes[2].mqtt, id, 10).await;
        assert!(present, "{id}: the session was found");
        receive_until_complete(&mut sub, id, "rep/#", &check, Duration::from_secs(15)).await;
        let (deliveries, duplicates) = check.check_subscriber(id, "rep/#");
        eprintln!("{id}: all acknowledged messages arrived ({deliveries} deliveries, {duplicates} duplicates)");
    }
}

/// Persistent subscribers of `filter` (`<prefix>-<i>`, starting on node `i` of `addrs` in
/// turn), each once its subscription is in place and routed from every node; with the flags
/// that stop them (`done`) and the checker they record in.
struct Subscribers {
    ids: Vec<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    done: Arc<AtomicUsize>,
}

impl Subscribers {
    async fn start(
        addrs: &[std::net::SocketAddr],
        prefix: &str,
        count: usize,
        filter: &'static str,
        check: &Arc<Checker>,
    ) -> Subscribers {
        let ready = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let ids: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
        let tasks = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                load::subscriber(
                    addrs.to_vec(),
                    id.clone(),
                    filter,
                    i % addrs.len(),
                    check.clone(),
                    ready.clone(),
                    done.clone(),
                )
            })
            .collect();
        let deadline = Instant::now() + START;
        while ready.load(Ordering::Relaxed) < count {
            assert!(Instant::now() < deadline, "the subscribers did not subscribe");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let probe_topic = format!("{}/probe", filter.trim_end_matches("/#"));
        load::await_routes(addrs, &probe_topic, &ids, check).await;
        Subscribers { ids, tasks, done }
    }

    /// Lets them finish (each once it has everything acknowledged) and checks every promise:
    /// nothing acknowledged missing, order per publisher, QoS 2 exactly once.
    async fn finish(self, filter: &str, check: &Checker) {
        self.done.store(usize::MAX, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a subscriber failed");
        }
        for id in &self.ids {
            let (deliveries, duplicates) = check.check_subscriber(id, filter);
            eprintln!(
                "{id}: every acknowledged message arrived in order ({deliveries} deliveries, {duplicates} duplicates)"
            );
        }
    }

    /// [`Subscribers::finish`], but for `merged` only that nothing is missing (its session's
    /// copies were merged after a node failure).
    async fn finish_but(self, filter: &str, check: &Checker, merged: &[&str]) {
        self.done.store(usize::MAX, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a subscriber failed");
        }
        for id in &self.ids {
            let (deliveries, duplicates) = match merged.contains(&id.as_str()) {
                true => check.check_nothing_missing(id, filter),
                false => check.check_subscriber(id, filter),
            };
            eprintln!("{id}: every acknowledged message arrived ({deliveries} deliveries, {duplicates} duplicates)");
        }
    }
}

/// Waits until the publisher has `n` more acknowledgements than at `from`.
async fn await_acks(check: &Checker, from: usize, n: usize, what: &str) {
    let deadline = Instant::now() + START;
    while check.acked_count() < from + n {
        assert!(Instant::now() < deadline, "the publisher stalled {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Rolling restart under load: a QoS 1 and a QoS 2 publisher keep publishing and three persistent
/// subscribers (one per node) keep receiving while each node in turn is stopped (SIGTERM) and
/// started again on its data folder; the clients move to the next node each time. Nothing
/// acknowledged is lost, order per publisher holds, QoS 2 messages arrive exactly once, and
/// every session is found after each move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_nothing() {
    if skip() {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let net = Net::new(3);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(&net, dir.path());
    let addrs: Vec<_> = nodes.iter().map(|n| n.mqtt).collect();
    let check = Arc::new(Checker::default());
    let subscribers = Subscribers::start(&addrs, "roll", 3, "roll/#", &check).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = load::publisher(
        addrs.clone(),
        "pub",
        "roll/data",
        1_000_000,
        FAST,
        check.clone(),
        stop.clone(),
    );
    let exact = load::exactly_once_publisher(
        addrs.clone(),
        "exact",
        "roll/exact",
        1_000_000,
        FAST,
        check.clone(),
        stop.clone(),
    );
    await_acks(&check, 0, 100, "at the start").await;
    for i in 0..nodes.len() {
        let before = check.acked_count();
        let t = Instant::now();
        nodes[i].terminate(START);
        nodes[i].start();
        nodes[i].wait_log("Started Apiary in", START);
        for n in &nodes {
            n.wait_size(3, START);
        }
        await_acks(&check, before, 200, "after a restart").await;
        eprintln!(
            "node{} restarted and back in the cluster in {:?}; {} publishes acknowledged meanwhile",
            i + 1,
            t.elapsed(),
            check.acked_count() - before
        );
    }
    stop.store(true, Ordering::Relaxed);
    let sent = (
        publisher.await.expect("the publisher failed"),
        exact.await.expect("the QoS 2 publisher failed"),
    );
    eprintln!(
        "{sent:?} published (QoS 1, QoS 2), {} acknowledged",
        check.acked_count()
    );
    subscribers.finish("roll/#", &check).await;
}

/// Grow 3 → 5 → 3 under load: two nodes join (each takes its share of the session copies),
/// then two of the original nodes leave one after the other (SIGTERM); the sessions that lived
/// there, and the copies they held, move on. Nothing acknowledged is lost, order per publisher
/// holds, and QoS 2 arrives exactly once. (Without the redirect of messages for sessions just
/// handed over, see `cluster::handed`, 1 to 3 messages went missing in 8 of 8 runs; without the
/// order barrier, a redirected message arrived after a later direct one in about 1 run in 8.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_to_five_and_shrinking_back_to_three_under_load_loses_nothing() {
    if skip() {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let net = Net::new(5);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..3).map(|i| net.start_node(dir.path(), i, true)).collect();
    for n in &nodes {
        n.wait_log("Started Apiary in", START);
        n.wait_size(3, START);
    }
    let first: Vec<_> = nodes.iter().map(|n| n.mqtt).collect();
    let check = Arc::new(Checker::default());
    let subscribers = Subscribers::start(&first, "grow", 6, "grow/#", &check).await;
    let stop = Arc::new(AtomicBool::new(false));
    // The publisher starts on node 3, which stays.
    let order = vec![first[2], first[0], first[1]];
    let publisher = load::publisher(
        order.clone(),
        "pub",
        "grow/data",
        1_000_000,
        FAST,
        check.clone(),
        stop.clone(),
    );
    let exact = load::exactly_once_publisher(
        order,
        "exact",
        "grow/exact",
        1_000_000,
        FAST,
        check.clone(),
        stop.clone(),
    );
    await_acks(&check, 0, 100, "at the start").await;

    let t = Instant::now();
    nodes.push(net.start_node(dir.path(), 3, true));
    nodes.push(net.start_node(dir.path(), 4, true));
    for n in &nodes {
        n.wait_size(5, START);
    }
    for n in &nodes[3..] {
        n.wait_log("Finished cluster join process successfully.", START);
    }
    eprintln!("grown to 5 in {:?}", t.elapsed());
    let before = check.acked_count();
    await_acks(&check, before, 200, "after the growth").await;

    for i in 0..2 {
        let before = check.acked_count();
        let t = Instant::now();
        nodes[i].terminate(START);
        for n in &nodes[i + 1..] {
            n.wait_size(5 - (i + 1), START);
        }
        await_acks(&check, before, 200, "after a node left").await;
        eprintln!("node{} left in {:?}", i + 1, t.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let sent = (
        publisher.await.expect("the publisher failed"),
        exact.await.expect("the QoS 2 publisher failed"),
    );
    eprintln!(
        "{sent:?} published (QoS 1, QoS 2), {} acknowledged",
        check.acked_count()
    );
    subscribers.finish("grow/#", &check).await;
}

/// Six offline persistent sessions of `whole/#` (two per node) with 150 queued QoS 1 messages
/// each (50 published on every node, every tenth retained on `whole/retained/{node}`); returns
/// their client ids.
async fn seed_sleepers(addrs: &[std::net::SocketAddr], check: &Checker) -> Vec<String> {
    let ids: Vec<String> = (0..6).map(|i| format!("sleeper-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let (mut sub, _) = persistent(addrs[i % 3], id, 10).await;
        subscribe(&mut sub, "whole/#").await;
        drop(sub);
    }
    // Online watchers of the same filter, one per node, show that each node's route reached
    // every publisher's node.
    let mut watchers = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let (mut w, _) =
            RawClient::connect(*addr, connect_packet(ProtocolVersion::V5, &format!("watch-{i}"), true)).await;
        subscribe(&mut w, "whole/#").await;
        watchers.push(w);
    }
    for (i, addr) in addrs.iter().enumerate() {
        let name: &'static str = ["p0", "p1", "p2"][i];
        let (mut publ, _) = RawClient::connect(*addr, connect_packet(ProtocolVersion::V5, name, true)).await;
        for w in &mut watchers {
            await_route(&mut publ, w, "whole/probe").await;
        }
        for n in 0..50u64 {
            let retain = n % 10 == 9;
            let topic = match retain {
                true => format!("whole/retained/{i}"),
                false => "whole/data".to_string(),
            };
            let payload = checker::payload(name, n);
            publ.send(&publish_packet(
                &topic,
                QoS::AtLeastOnce,
                (n + 1) as u16,
                retain,
                &payload,
            ))
            .await;
            loop {
                match publ.recv().await {
                    Some(Packet::PubAck(a)) if a.packet_id > 60_000 => {} // a late probe's
                    Some(Packet::PubAck(a)) if a.reason < 0x80 => {
                        check.acked(name, &topic, n, 1, retain);
                        break;
                    }
                    other => panic!("{name}: expected PUBACK, got {other:?}"),
                }
            }
        }
    }
    drop(watchers);
    ids
}

/// Whole-cluster shutdown and restart: with offline persistent sessions holding queued messages
/// and retained messages on every node, the nodes stop one at a time (SIGTERM); the last one
/// is started first with `--recovery`, then the others as usual (they set their old data
/// aside). Every session, every queued message and every retained message is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_shut_down_one_by_one_comes_back_whole_from_the_last_node() {
    if skip() {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let net = Net::new(3);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(&net, dir.path());
    let addrs: Vec<_> = nodes.iter().map(|n| n.mqtt).collect();
    let check = Arc::new(Checker::default());
    let ids = seed_sleepers(&addrs, &check).await;

    for i in 0..3 {
        nodes[i].terminate(START);
        for n in &nodes[i + 1..] {
            n.wait_size(3 - (i + 1), START);
        }
    }
    let last = &mut nodes[2];
    last.start_with(&["--recovery"]);
    last.wait_log("Started Apiary in", START);
    assert!(last.log_text().contains("Recovery mode"));
    for n in &mut nodes[..2] {
        n.start();
    }
    for n in &nodes {
        n.wait_log("Started Apiary in", START);
        n.wait_size(3, START);
    }
    for n in &nodes[..2] {
        assert!(n.data_dir.join("cluster-backup").join(apiary::store::DB_FILE).exists());
    }

    for (i, id) in ids.iter().enumerate() {
        let (mut sub, present) = persistent(addrs[(i + 1) % 3], id, 10).await;
        assert!(present, "{id}: the session came back");
        receive_until_complete(&mut sub, id, "whole/#", &check, Duration::from_secs(20)).await;
        let (deliveries, duplicates) = check.check_subscriber(id, "whole/#");
        eprintln!("{id}: all {deliveries} queued messages back ({duplicates} duplicates)");
    }
    check_retained(&addrs, &check).await;
}

/// Every retained message `seed_sleepers` published is there, read through each address.
async fn check_retained(addrs: &[std::net::SocketAddr], check: &Checker) {
    for (i, addr) in addrs.iter().enumerate() {
        let (mut c, _) = RawClient::connect(*addr, connect_packet(ProtocolVersion::V5, "reader", true)).await;
        let topic = format!("whole/retained/{i}");
        c.send(&subscribe_packet(1, &topic, QoS::AtLeastOnce)).await;
        assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
        match c.recv().await {
            Some(Packet::Publish(p)) => check.check_retained(&topic, Some(&p.payload)),
            other => panic!("no retained message on {topic}: {other:?}"),
        }
    }
}

/// The partition scenarios' setup: three nodes with replica-count 3 (every node has a copy of
/// every session), a persistent subscriber of `filter` on each (`<prefix>-<i>`, the prefix being
/// the filter's first level), and one publisher on each side of a cut of node 1, each staying
/// on its node: `alone` (QoS 1) on node 1 and `many` (QoS 2) on node 2, publishing on `topics`.
struct TwoSides {
    nodes: Vec<Node>,
    check: Arc<Checker>,
    subscribers: Subscribers,
    stop: Arc<AtomicBool>,
    alone: tokio::task::JoinHandle<u64>,
    many: tokio::task::JoinHandle<u64>,
}

impl TwoSides {
    async fn start(net: &Net, dir: &std::path::Path, filter: &'static str, topics: [&'static str; 2]) -> TwoSides {
        TwoSides::start_with_faults(net, dir, filter, topics, &[]).await
    }

    /// [`TwoSides::start`] with fault injection switches (`(node, variable, value)`) in the
    /// nodes' environment; `many` moves on to node 3 if node 2 goes away.
    async fn start_with_faults(
        net: &Net,
        dir: &std::path::Path,
        filter: &'static str,
        topics: [&'static str; 2],
        faults: &[(usize, &str, &str)],
    ) -> TwoSides {
        let nodes: Vec<Node> = (0..3)
            .map(|i| {
                let env: Vec<(&str, &str)> = faults.iter().filter(|f| f.0 == i).map(|f| (f.1, f.2)).collect();
                net.start_node_with_replicas_env(dir, i, 3, &env)
            })
            .collect();
        for n in &nodes {
            n.wait_log("Started Apiary in", START);
            n.wait_size(3, START);
        }
        let addrs: Vec<_> = nodes.iter().map(|n| n.mqtt).collect();
        let check = Arc::new(Checker::default());
        let prefix = filter.trim_end_matches("/#");
        let subscribers = Subscribers::start(&addrs, prefix, 3, filter, &check).await;
        let stop = Arc::new(AtomicBool::new(false));
        let [alone_topic, many_topic] = topics;
        let alone = load::publisher(
            vec![addrs[0]],
            "alone",
            alone_topic,
            1_000_000,
            SLOW,
            check.clone(),
            stop.clone(),
        );
        let many = load::exactly_once_publisher(
            match faults.is_empty() {
                true => vec![addrs[1]],
                false => vec![addrs[1], addrs[2]],
            },
            "many",
            many_topic,
            1_000_000,
            SLOW,
            check.clone(),
            stop.clone(),
        );
        TwoSides {
            nodes,
            check,
            subscribers,
            stop,
            alone,
            many,
        }
    }
}

/// Flapping links under load, with replica-count 3: node 1 is cut off from the other two for
/// 3 s (longer than the 2 s heartbeat timeout, so each side takes over the other's sessions),
/// then reconnected for 3 s (the sides merge), five times over. The persistent subscriber on
/// each node and a publisher on each side keep going throughout; in the end, every message
/// acknowledged to either publisher reached every subscriber, in order per publisher (see
/// `cluster::merge_holds`).
///
/// It lost about 70 messages in 1 of 3 runs until a node closed its inbound connections from a
/// node it found dead: the end of such a connection, arriving after the heal, declared the
/// node down again just after the merge, and the sessions just handed back were taken over a
/// second time, with what was in flight to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_links_lose_nothing() {
    if skip() {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let net = Net::new(3);
    let dir = tempfile::tempdir().unwrap();
    let TwoSides {
        nodes,
        check,
        subscribers,
        stop,
        alone,
        many,
    } = TwoSides::start(&net, dir.path(), "flap/#", ["flap/alone", "flap/many"]).await;
    await_acks(&check, 0, 100, "at the start").await;
    for round in 1..=5 {
        net.split(0, true);
        nodes[0].wait_size(1, START);
        nodes[1].wait_size(2, START);
        // Apart for 3 s from when the sides saw each other go: the length of the cut is the
        // scenario, not a wait for a condition.
        tokio::time::sleep(Duration::from_secs(3)).await;
        net.split(0, false);
        for n in &nodes {
            n.wait_size(3, START);
        }
        for n in &nodes {
            n.wait_log_count("Finished cluster merge process successfully.", round, START);
        }
        let before = check.acked_count();
        await_acks(&check, before, 50, "after a heal").await;
        eprintln!("round {round}: {} publishes acknowledged so far", check.acked_count());
    }
    stop.store(true, Ordering::Relaxed);
    let sent = (alone.await.expect("publisher"), many.await.expect("publisher"));
    let acked = check.acked_count();
    eprintln!("{sent:?} published, {acked} acknowledged");
    subscribers.finish("flap/#", &check).await;
}

/// Power loss of the whole cluster: with replica-count 3 every node has a copy of every
/// session. All three are killed (SIGKILL, nothing handed over); one of them is started alone
/// with `--recovery`, and turns the copies of the other nodes' sessions into sessions of its
/// own: every session, every queued message and every retained message is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_power_loss_one_node_started_with_recovery_brings_back_every_session() {
    if skip() {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let net = Net::new(3);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..3).map(|i| net.start_node_with_replicas(dir.path(), i, 3)).collect();
    for n in &nodes {
        n.wait_log("Started Apiary in", START);
        n.wait_size(3, START);
    }
    let addrs: Vec<_> = nodes.iter().map(|n| n.mqtt).collect();
    let check = Arc::new(Checker::default());
    let ids = seed_sleepers(&addrs, &check).await;
    for n in &mut nodes {
        n.kill();
    }
    let survivor = &mut nodes[1];
    survivor.start_with(&["--recovery"]);
    survivor.wait_log("Started Apiary in", START);
    let log = survivor.log_text();
    for line in log.lines().filter(|l| l.contains("Recovery mode")) {
        eprintln!("{line}");
    }
    let addr = survivor.mqtt;
    for id in &ids {
        let (mut sub, present) = persistent(addr, id, 10).await;
        if !present {
            eprintln!("{id} is missing; the survivor's log:\n{}", nodes[1].log_text());
        }
        assert!(present, "{id}: the session came back");
        receive_until_complete(&mut sub, id, "whole/#", &check, Duration::from_secs(20)).await;
        let (deliveries, duplicates) = check.check_subscriber(id, "whole/#");
        eprintln!("{id}: all {deliveries} queued messages back ({duplicates} duplicates)");
    }
    check_retained(&[addr, addr, addr], &check).await;
}

/// A partition of one node against two for 20 s under load, with replica-count 3 (every node
/// has a copy of every session): both sides keep serving their clients (each side takes over
/// the sessions of the other), and after the heal every session that both sides kept is merged
/// into one, so the persistent subscriber of each node, connected all along, gets every
/// message acknowledged on either side before the heal (before the merge, the messages of the
/// other side were lost: about 1,650 per subscriber here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_partition_heals_the_sessions_both_sides_kept_are_merged() {
    if skip() {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let net = Net::new(3);
    let dir = tempfile::tempdir().unwrap();
    let TwoSides {
        nodes,
        check,
        subscribers,
        stop,
        alone,
        many,
    } = TwoSides::start(&net, dir.path(), "part/#", ["part/alone", "part/many"]).await;
    await_acks(&check, 0, 200, "at the start").await;

    let cut = Instant::now();
    let before = check.acked_count();
    net.split(0, true);
    nodes[0].wait_size(1, START);
    nodes[1].wait_size(2, START);
    nodes[2].wait_size(2, START);
    while cut.elapsed() < Duration::from_secs(20) {
        assert!(
            check.acked_count() > before || cut.elapsed() < Duration::from_secs(10),
            "no side made progress"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = check.acked_count() - before;
    net.split(0, false);
    for n in &nodes {
        n.wait_size(3, START);
    }
    for n in &nodes {
        n.wait_log("Finished cluster merge process successfully.", START);
    }
    let merges = || -> usize {
        nodes
            .iter()
            .map(|n| {
                n.log_text()
                    .matches("merged the session kept on the other side")
                    .count()
            })
            .sum()
    };
    let deadline = Instant::now() + START;
    while merges() < 3 {
        assert!(
            Instant::now() < deadline,
            "every subscriber's session was kept on both sides: {} merged",
            merges()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "partition of 20 s: {during} publishes acknowledged during it; healed, {} session(s) merged",
        merges()
    );
    for n in &nodes {
        for line in n
            .log_text()
            .lines()
            .filter(|l| l.contains("merg") && l.contains("session"))
        {
            eprintln!("{}: {line}", n.name);
        }
    }
    let after = check.acked_count();
    await_acks(&check, after, 200, "after the heal").await;
    stop.store(true, Ordering::Relaxed);
    let sent = (alone.await.expect("publisher"), many.await.expect("publisher"));
    eprintln!("{sent:?} published, {} acknowledged", check.acked_count());
    // Nothing acknowledged may be missing: before the heal, on either side; after it, while
    // the sessions move (a message that reaches the node a session just left follows it, see
    // `cluster::handed`; without that, 4 of 3,700 were once lost here). Order per publisher
    // holds across the merge: what the other side sends a session's home directly after the
    // heal waits for the merged copy (`cluster::merge_holds`; without it, the merged messages
    // came behind newer ones).
    subscribers.finish("part/#", &check).await;
}

/// The cut of the fault-injection scenarios: node 1 apart from the other two until
/// `publisher` had 100 more publishes acknowledged, then healed (every node sees three again).
async fn cut_and_heal(net: &Net, nodes: &[Node], check: &Checker, publisher: &str) {
    await_acks(check, 0, 100, "at the start").await;
    net.split(0, true);
    nodes[0].wait_size(1, START);
    nodes[1].wait_size(2, START);
    nodes[2].wait_size(2, START);
    let before = check.acked_from(publisher);
    let deadline = Instant::now() + START;
    while check.acked_from(publisher) < before + 100 {
        assert!(
            Instant::now() < deadline,
            "{publisher}'s publishes stalled during the cut"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    net.split(0, false);
    for n in nodes {
        n.wait_size(3, START);
    }
}

/// A session copy handed back after a heal is kept until its home says it merged it (see
/// `cluster::merge_acks`). Node 3 drops the copies handed back to it (fault injection: as if
/// it died before it merged them) and is killed (SIGKILL) right after the heal. What node 1
/// queued during the partition for the subscriber of node 3 still reaches it: node 1 merges its
/// kept copy into the session node 3's heir took over. (Without the kept copy, the messages
/// `alone` published during the cut were missing at `lost-2`: 143 in one run.) For that
/// subscriber only completeness is checked: the merged messages come after newer ones, and a
/// QoS 2 message that reached both copies after the heal can come twice (the completions of
/// the dead node are not known where the copy is merged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fails about 1 run in 15: a node killed right after a heal (see the README's limits)"]
async fn a_session_copy_handed_back_to_a_node_that_dies_before_merging_it_is_not_lost() {
    if skip() {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let net = Net::new(3);
    let dir = tempfile::tempdir().unwrap();
    let TwoSides {
        mut nodes,
        check,
        subscribers,
        stop,
        alone,
        many,
    } = TwoSides::start_with_faults(
        &net,
        dir.path(),
        "lost/#",
        ["lost/alone", "lost/many"],
        &[(2, "APIARY_FAULT_IGNORE_SESSION_MERGE", "1")],
    )
    .await;
    // Node 1 takes over the sessions of nodes 2 and 3; `alone`'s messages for them queue there.
    cut_and_heal(&net, &nodes, &check, "alone").await;
    nodes[0].wait_log_count("the copy goes to its other node", 2, START);
    nodes[2].wait_log("fault injection: a session copy handed back here is dropped", START);
    // What nodes 2 and 3 hand back to node 1 is merged there first: a sender that dies before
    // its copy is out is another case (see the README's limits).
    let count = |n: &Node, text: &str| n.log_text().matches(text).count();
    let deadline = Instant::now() + START;
    loop {
        let handed =
            count(&nodes[1], "the copy goes to its other node") + count(&nodes[2], "the copy goes to its other node");
        if handed > 0 && count(&nodes[0], "merged the session kept on the other side") >= handed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 did not merge what was handed back to it"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nodes[2].kill();
    nodes[0].wait_size(2, START);
    nodes[1].wait_size(2, START);
    let after = check.acked_count();
    await_acks(&check, after, 100, "after the kill").await;
    stop.store(true, Ordering::Relaxed);
    let sent = (alone.await.expect("publisher"), many.await.expect("publisher"));
    eprintln!("{sent:?} published, {} acknowledged", check.acked_count());
    subscribers.finish_but("lost/#", &check, &["lost-2"]).await;
    assert!(
        nodes[..2].iter().any(|n| n
            .log_text()
            .contains("merged a session copy whose other node died before it merged it")),
        "the kept copy was merged"
    );
}

/// The node handing a session copy back after a heal can die too before the copy is out: its
/// backups keep their copies until the merge is acknowledged (`SessionHandedBack`), and the
/// heir of the dead node does not adopt such a copy but merges it where the session went (see
/// `cluster::merge_acks`). Here nodes 2 and 3 do not send the copy of `drop-0` (whose home is
/// node 1) when they hand it back (fault injection: as if the process died first), and the one
/// that hands it back is killed (SIGKILL) right after. What `many` published for `drop-0`
/// during the cut still reaches it. Only completeness is checked for the subscribers whose
/// sessions were merged after the failure (see the test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fails about 1 run in 15: a node killed right after a heal (see the README's limits)"]
async fn a_session_copy_whose_sender_dies_before_it_is_out_is_not_lost() {
    if skip() {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let net = Net::new(3);
    let dir = tempfile::tempdir().unwrap();
    let drop = ("APIARY_FAULT_DROP_HAND_BACK", "drop-0");
    let TwoSides {
        mut nodes,
        check,
        subscribers,
        stop,
        alone,
        many,
    } = TwoSides::start_with_faults(
        &net,
        dir.path(),
        "drop/#",
        ["drop/alone", "drop/many"],
        &[(1, drop.0, drop.1), (2, drop.0, drop.1)],
    )
    .await;
    // Nodes 2 and 3 take over `drop-0`; `many`'s messages for it queue at its heir.
    cut_and_heal(&net, &nodes, &check, "many").await;
    let text = "fault injection: the session copy handed back is not sent";
    let sender = 1 + wait_any_log(&[&nodes[1], &nodes[2]], text, START);
    let other = 3 - sender;
    // Its backup knows the copy is being handed back (a sender that dies before even that is
    // out leaves two sessions: see the README's limits).
    nodes[other].wait_log("keeping the copy of a session handed back until it is merged", START);
    nodes[sender].kill();
    nodes[0].wait_size(2, START);
    nodes[other].wait_size(2, START);
    let after = check.acked_count();
    await_acks(&check, after, 100, "after the kill").await;
    stop.store(true, Ordering::Relaxed);
    let sent = (alone.await.expect("publisher"), many.await.expect("publisher"));
    eprintln!("{sent:?} published, {} acknowledged", check.acked_count());
    let on_sender = format!("drop-{sender}");
    subscribers.finish_but("drop/#", &check, &["drop-0", &on_sender]).await;
    assert!(
        nodes[other]
            .log_text()
            .contains("the copy of a session its node was handing back when it died"),
        "the heir kept the copy"
    );
}

/// `n` offline persistent sessions `{prefix}-{i}` made in parallel, spread over `addrs`, each
/// subscribed to `{prefix}/{i % topics}`.
async fn make_sleepers(addrs: &[std::net::SocketAddr], prefix: &str, n: usize, topics: usize) {
    let workers = 48.min(n.max(1));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let addrs = addrs.to_vec();
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                for i in (w..n).step_by(workers) {
                    let (mut c, _) = persistent(addrs[i % addrs.len()], &format!("{prefix}-{i}"), 10).await;
                    subscribe(&mut c, &format!("{prefix}/{}", i % topics)).await;
                    c.send(&Packet::Disconnect(Disconnect {
                        reason: 0,
                        properties: Properties::default(),
                    }))
                    .await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a session maker failed");
    }
}

/// Publishes one QoS 1 message on each of `{prefix}/0` .. `{prefix}/{topics - 1}` (the topic as
/// its payload) and waits for each acknowledgement.
async fn publish_per_topic(addr: std::net::SocketAddr, prefix: &str, topics: usize) {
    let (mut publ, _) = RawClient::connect(
        addr,
        connect_packet(ProtocolVersion::V5, &format!("{prefix}-pub"), true),
    )
    .await;
    for k in 0..topics {
        let topic = format!("{prefix}/{k}");
        publ.send(&publish_packet(&topic, QoS::AtLeastOnce, (k + 1) as u16, false, &topic))
            .await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(ack)) if ack.reason < 0x80));
    }
}

/// A node that joins reports ready (`Started Apiary`) only once it holds every copy the new
/// membership gives it: with replica-count 3, two nodes hold 2,000 offline sessions with a
/// queued message each; a third joins, and the moment it has started, both others are killed
/// (two failures, fewer than the replica count). Every session is found on the third, with
/// its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_is_ready_only_once_it_holds_its_copies() {
    if skip() {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    const SESSIONS: usize = 2_000;
    const TOPICS: usize = 50;
    let net = Net::new(3);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..2).map(|i| net.start_node_with_replicas(dir.path(), i, 3)).collect();
    for n in &nodes {
        n.wait_log("Started Apiary in", START);
        n.wait_size(2, START);
    }
    let addrs: Vec<_> = nodes.iter().map(|n| n.mqtt).collect();
    make_sleepers(&addrs, "ready", SESSIONS, TOPICS).await;
    publish_per_topic(addrs[0], "ready", TOPICS).await;

    nodes.push(net.start_node_with_replicas(dir.path(), 2, 3));
    nodes[2].wait_log("Started Apiary in", START);
    nodes[0].kill();
    nodes[1].kill();
    nodes[2].wait_size(1, START);
    let deadline = Instant::now() + START;
    while taken_over(&nodes[2]) < SESSIONS {
        assert!(
            Instant::now() < deadline,
            "node3 took over {} of {SESSIONS} sessions",
            taken_over(&nodes[2])
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let survivor = nodes[2].mqtt;
    let checks: Vec<_> = (0..4)
        .map(|w| {
            tokio::spawn(async move {
                for i in (w..SESSIONS).step_by(4) {
                    let id = format!("ready-{i}");
                    let (mut c, present) = persistent(survivor, &id, 10).await;
                    assert!(present, "{id}: the session was found");
                    match c.recv_within(START).await {
                        Ok(Some(Packet::Publish(p))) => assert_eq!(p.topic, format!("ready/{}", i % TOPICS), "{id}"),
                        other => panic!("{id}: expected its queued message, got {other:?}"),
                    }
                }
            })
        })
        .collect();
    for check in checks {
        check.await.expect("a session was not whole");
    }
}

/// The scaled run of the replication issue, for its note (several minutes, so not in CI):
/// `APIARY_SCALE_SESSIONS` (default 100,000) persistent sessions with one queued message each on
/// three nodes, then a fourth joins. Prints how long the join and the rebalancing took and the
/// bytes of session copies the three sent, and checks that a sample of the sessions is found
/// afterwards with its message.
///
/// `cargo test --test replication scaled -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the scaled run for the note; see its documentation"]
async fn scaled_run_growing_three_to_four() {
    if skip() {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let sessions: usize = std::env::var("APIARY_SCALE_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    const TOPICS: usize = 100;
    let net = Net::new(4);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(&net, dir.path());
    let addrs: Vec<_> = nodes.iter().map(|n| n.mqtt).collect();

    let t = Instant::now();
    make_sleepers(&addrs, "scale", sessions, TOPICS).await;
    eprintln!("{sessions} persistent sessions made in {:?}", t.elapsed());
    let t = Instant::now();
    publish_per_topic(addrs[0], "scale", TOPICS).await;
    eprintln!(
        "{sessions} messages queued (stored on two nodes each) in {:?}",
        t.elapsed()
    );

    let before: Vec<usize> = nodes
        .iter()
        .map(|n| n.log_text().matches("moved the copies of").count())
        .collect();
    let t = Instant::now();
    nodes.push(net.start_node(dir.path(), 3, true));
    // The join waits for the copies the three send it, so it ends with the rebalancing.
    let joined = nodes[3].wait_log("Finished cluster join process successfully.", Duration::from_secs(900));
    eprintln!("node4 joined in {:?} (its copies received)", joined - t);
    let mut total_bytes = 0u64;
    let mut total_moved = 0u64;
    for (i, n) in nodes[..3].iter().enumerate() {
        let done = n.wait_log_count("moved the copies of", before[i] + 1, Duration::from_secs(900));
        let text = n.log_text();
        let line = text
            .lines()
            .filter(|l| l.contains("moved the copies of"))
            .nth(before[i])
            .expect("the line waited for");
        let number_after = |marker: &str| -> u64 {
            let rest = &line[line.find(marker).expect("in the line") + marker.len()..];
            rest.split_whitespace()
                .next()
                .and_then(|w| w.parse().ok())
                .expect("a number")
        };
        let moved = number_after("moved the copies of ");
        let bytes = number_after("backups (");
        total_moved += moved;
        total_bytes += bytes;
        eprintln!(
            "node{}: {moved} session copies moved, {bytes} bytes, done {:?} after node4 started",
            i + 1,
            done - t
        );
    }
    eprintln!(
        "grow 3 -> 4 with {sessions} sessions: {total_moved} copies moved, {total_bytes} bytes ({} per session moved), {:?} until the last node finished",
        total_bytes / total_moved.max(1),
        t.elapsed()
    );

    // A sample of the sessions, each on a node of the four: found, with its message.
    let addrs: Vec<_> = nodes.iter().map(|n| n.mqtt).collect();
    for i in (0..sessions).step_by((sessions / 200).max(1)) {
        let id = format!("scale-{i}");
        let (mut c, present) = persistent(addrs[i % addrs.len()], &id, 10).await;
        assert!(present, "{id}: the session was found");
        match c.recv_within(START).await {
            Ok(Some(Packet::Publish(p))) => assert_eq!(p.topic, format!("scale/{}", i % TOPICS), "{id}"),
            other => panic!("{id}: expected its queued message, got {other:?}"),
        }
    }
}
