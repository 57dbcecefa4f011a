//! Clients that keep going while nodes come and go: QoS 1 and QoS 2 publishers and persistent
//! subscribers that reconnect to the next node when theirs goes away, as a real client with a
//! list of brokers would, recording every acknowledgement and delivery in a [`Checker`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apiary::mqtt::{Connect, Packet, Properties, ProtocolVersion, PubResponse, QoS};

use crate::common::{RawClient, connect_packet, publish_packet, subscribe_packet};
use crate::hosts::checker::{self, Checker};

/// With `APIARY_TEST_TRACE` set, the clients print each reconnect and each QoS 2 delivery with
/// its packet id (for a failed scenario: which node sent what, and when).
fn trace(line: impl FnOnce() -> String) {
    if std::env::var_os("APIARY_TEST_TRACE").is_some() {
        eprintln!("{:?} {}", std::time::SystemTime::now(), line());
    }
}

/// How long a client keeps trying to find a node that takes it.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// Connects to the first of `addrs`, from index `start` on, that accepts `connect`; returns
/// its index. Panics when none did for [`RECONNECT_FOR`].
async fn connect_any(addrs: &[SocketAddr], start: usize, connect: &Connect) -> (usize, RawClient, bool) {
    let deadline = Instant::now() + RECONNECT_FOR;
    loop {
        for k in 0..addrs.len() {
            let i = (start + k) % addrs.len();
            let attempt = tokio::time::timeout(
                Duration::from_secs(5),
                RawClient::try_connect(addrs[i], connect.clone()),
            );
            if let Ok(Some((c, ack))) = attempt.await
                && ack.code == 0
            {
                return (i, c, ack.session_present);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{}: no node accepted the connection",
            connect.client_id
        );
        // Pacing between rounds of attempts, not a condition.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes `name:0`, `name:1`, … on `topic` at QoS 1 (10 unacknowledged at most, one every
/// `every`) until `stop` or `limit`, recording each PUBACK in `check`. When its node goes away it
/// reconnects to the next one and first sends again, with DUP, what was not acknowledged.
/// Returns how many it published.
pub fn publisher(
    addrs: Vec<SocketAddr>,
    name: &'static str,
    topic: &'static str,
    limit: u64,
    every: Duration,
    check: Arc<Checker>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(publish(QoS::AtLeastOnce, addrs, name, topic, limit, every, check, stop))
}

/// [`publisher`] at QoS 2, with a persistent session (so that the broker knows, on whichever
/// node it resumes, which packet ids it has received already): a message counts as
/// acknowledged at its PUBREC; after a reconnect, what had no PUBREC is sent again with DUP, and
/// PUBREL again for what had no PUBCOMP.
pub fn exactly_once_publisher(
    addrs: Vec<SocketAddr>,
    name: &'static str,
    topic: &'static str,
    limit: u64,
    every: Duration,
    check: Arc<Checker>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(publish(QoS::ExactlyOnce, addrs, name, topic, limit, every, check, stop))
}

fn pub_response(packet_id: u16) -> PubResponse {
    PubResponse {
        packet_id,
        reason: 0,
        properties: Properties::default(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn publish(
    qos: QoS,
    addrs: Vec<SocketAddr>,
    name: &'static str,
    topic: &'static str,
    limit: u64,
    every: Duration,
    check: Arc<Checker>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let exactly_once = qos == QoS::ExactlyOnce;
    let mut connect = connect_packet(ProtocolVersion::V5, name, !exactly_once);
    if exactly_once {
        connect.properties.session_expiry_interval = Some(300);
    }
    // Message number → (packet id, PUBREC received).
    let mut in_flight: BTreeMap<u64, (u16, bool)> = BTreeMap::new();
    let mut next = 0u64;
    let mut node = 0;
    let mut connected_once = false;
    loop {
        let (i, mut c, present) = connect_any(&addrs, node, &connect).await;
        node = i;
        assert!(
            !exactly_once || !connected_once || present,
            "{name}: reconnected to node {i}, but its session was not there"
        );
        connected_once = true;
        let mut alive = true;
        if exactly_once {
            trace(|| {
                format!(
                    "{name} connected to {} (session present: {present}), resending {in_flight:?}",
                    addrs[i]
                )
            });
        }
        for (n, (pid, received)) in &in_flight {
            let packet = match received {
                true => Packet::PubRel(pub_response(*pid)),
                false => {
                    let mut packet = publish_packet(topic, qos, *pid, false, &checker::payload(name, *n));
                    if let Packet::Publish(p) = &mut packet {
                        p.dup = true;
                    }
                    packet
                }
            };
            alive &= c.try_send(&packet).await;
        }
        let mut last_ack = Instant::now();
        while alive {
            let stopping = stop.load(Ordering::Relaxed) || next >= limit;
            if stopping && in_flight.is_empty() {
                return next;
            }
            if !stopping && in_flight.len() < 10 {
                let pid = (next % 60_000 + 1) as u16;
                let payload = checker::payload(name, next);
                if !c.try_send(&publish_packet(topic, qos, pid, false, &payload)).await {
                    break;
                }
                in_flight.insert(next, (pid, false));
                next += 1;
                tokio::time::sleep(every).await;
            }
            let of = |in_flight: &BTreeMap<u64, (u16, bool)>, packet_id: u16| {
                in_flight
                    .iter()
                    .find(|(_, (pid, _))| *pid == packet_id)
                    .map(|(n, _)| *n)
            };
            match c.recv_within(Duration::from_millis(1)).await {
                Ok(Some(Packet::PubAck(ack))) if !exactly_once => {
                    assert!(ack.reason < 0x80, "{name}: {ack:?}");
                    if let Some(n) = of(&in_flight, ack.packet_id) {
                        in_flight.remove(&n);
                        check.acked(name, topic, n, 1, false);
                    }
                    last_ack = Instant::now();
                }
                Ok(Some(Packet::PubRec(rec))) if exactly_once => {
                    assert!(rec.reason < 0x80, "{name}: {rec:?}");
                    if let Some(n) = of(&in_flight, rec.packet_id)
                        && let Some((_, received)) = in_flight.get_mut(&n)
                        && !*received
                    {
                        *received = true;
                        check.acked(name, topic, n, 2, false);
                    }
                    if !c.try_send(&Packet::PubRel(pub_response(rec.packet_id))).await {
                        break;
                    }
                    last_ack = Instant::now();
                }
                Ok(Some(Packet::PubComp(comp))) if exactly_once => {
                    if let Some(n) = of(&in_flight, comp.packet_id) {
                        in_flight.remove(&n);
                    }
                    last_ack = Instant::now();
                }
                Ok(Some(Packet::Disconnect(_))) | Ok(None) => alive = false,
                Ok(Some(other)) => panic!("{name}: expected an acknowledgement, got {other:?}"),
                Err(_) => assert!(
                    in_flight.is_empty() || last_ack.elapsed() < Duration::from_secs(30),
                    "{name}: no acknowledgement for 30 s from node {node}"
                ),
            }
        }
        node += 1;
    }
}

/// A persistent subscriber (clean start false, session expiry 300 s) of `filter` at QoS 2 (QoS 1
/// messages arrive at QoS 1), starting on node `home`: acknowledges and records every message
/// (a QoS 2 one once per packet id until its PUBREL, as a real receiver does); when its node goes away it
/// reconnects to the next one and expects its session there. Once `done` is set (to n > 0)
/// it stops as soon as none of the first n acknowledged messages is missing (and fails if
/// nothing more arrives for 30 s).
/// `ready` counts subscribers whose subscription is in place.
pub fn subscriber(
    addrs: Vec<SocketAddr>,
    id: String,
    filter: &'static str,
    home: usize,
    check: Arc<Checker>,
    ready: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut connect = connect_packet(ProtocolVersion::V5, &id, false);
        connect.properties.session_expiry_interval = Some(300);
        connect.properties.receive_maximum = Some(10);
        let mut node = home;
        let mut subscribed = false;
        // QoS 2 packet ids received and not yet released (kept across reconnects: the session
        // is).
        let mut awaiting_release: std::collections::HashSet<u16> = Default::default();
        // Once `done`: since when, and how many were missing then.
        let mut finishing: Option<(Instant, usize)> = None;
        loop {
            let (i, mut c, present) = connect_any(&addrs, node, &connect).await;
            node = i;
            trace(|| format!("{id} connected to {} (session present: {present})", addrs[i]));
            if subscribed {
                assert!(present, "{id}: reconnected to node {i}, but the session was not there");
            } else {
                assert!(c.try_send(&subscribe_packet(1, filter, QoS::ExactlyOnce)).await);
                assert!(matches!(c.recv().await, Some(Packet::SubAck(_))), "{id}: no SUBACK");
                subscribed = true;
                ready.fetch_add(1, Ordering::Relaxed);
            }
            loop {
                let up_to = done.load(Ordering::Relaxed);
                if up_to > 0 {
                    let missing = check.missing_among_first(&id, filter, up_to);
                    if missing.is_empty() {
                        return;
                    }
                    // Failing only when nothing more arrives: a long backlog drains slowly.
                    let (since, before) = *finishing.get_or_insert((Instant::now(), missing.len()));
                    if missing.len() < before {
                        finishing = Some((Instant::now(), missing.len()));
                    }
                    assert!(
                        since.elapsed() < Duration::from_secs(30),
                        "{id}: {} acknowledged message(s) missing, none arrived for 30 s, first {:?}",
                        missing.len(),
                        missing.first()
                    );
                }
                match c.recv_within(Duration::from_millis(200)).await {
                    Ok(Some(Packet::Publish(p))) if p.qos == QoS::ExactlyOnce => {
                        // Delivered once per packet id until its PUBREL: a resend of one that
                        // got no PUBREC through is the same message.
                        let first = awaiting_release.insert(p.packet_id);
                        if first {
                            check.delivered(&id, &p.topic, &p.payload, 2);
                        }
                        trace(|| {
                            format!(
                                "{id} at {}: QoS 2 {:?} id {} dup {} first {first}",
                                addrs[node], p.payload, p.packet_id, p.dup
                            )
                        });
                        if !c.try_send(&Packet::PubRec(pub_response(p.packet_id))).await {
                            break;
                        }
                    }
                    Ok(Some(Packet::PubRel(rel))) => {
                        awaiting_release.remove(&rel.packet_id);
                        if !c.try_send(&Packet::PubComp(pub_response(rel.packet_id))).await {
                            break;
                        }
                    }
                    Ok(Some(Packet::Publish(p))) => {
                        if p.qos != QoS::AtMostOnce && !c.try_send(&Packet::PubAck(pub_response(p.packet_id))).await {
                            break;
                        }
                        check.delivered(&id, &p.topic, &p.payload, p.qos as u8);
                    }
                    Ok(Some(Packet::Disconnect(_))) | Ok(None) => break,
                    Ok(Some(_)) | Err(_) => {}
                }
            }
            node += 1;
        }
    })
}

/// Publishes probes (`probe-<node>:<k>`) from every node until each of `subscribers` has one
/// from each: their routes have reached every node.
pub async fn await_routes(addrs: &[SocketAddr], topic: &str, subscribers: &[String], check: &Checker) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, addr) in addrs.iter().enumerate() {
        let name = format!("probe-{i}");
        let (mut c, _) = RawClient::connect(*addr, connect_packet(ProtocolVersion::V5, &name, true)).await;
        let mut k = 0u64;
        while subscribers.iter().any(|s| check.delivered_from(s, &name) == 0) {
            assert!(
                Instant::now() < deadline,
                "the subscribers' routes did not reach node {i}"
            );
            k += 1;
            let pid = (k % 60_000 + 1) as u16;
            c.send(&publish_packet(
                topic,
                QoS::AtLeastOnce,
                pid,
                false,
                &checker::payload(&name, k),
            ))
            .await;
            assert!(matches!(c.recv().await, Some(Packet::PubAck(_))));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
