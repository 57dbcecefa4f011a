//! Clients that keep going while nodes come and go: a QoS 1 publisher and persistent
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
    tokio::spawn(async move {
        let connect = connect_packet(ProtocolVersion::V5, name, true);
        // Packet id → message number, and the numbers in order for resending.
        let mut in_flight: BTreeMap<u64, u16> = BTreeMap::new();
        let mut next = 0u64;
        let mut node = 0;
        loop {
            let (i, mut c, _) = connect_any(&addrs, node, &connect).await;
            node = i;
            let mut alive = true;
            for (n, pid) in &in_flight {
                let mut packet = publish_packet(topic, QoS::AtLeastOnce, *pid, false, &checker::payload(name, *n));
                if let Packet::Publish(p) = &mut packet {
                    p.dup = true;
                }
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
                    if !c
                        .try_send(&publish_packet(topic, QoS::AtLeastOnce, pid, false, &payload))
                        .await
                    {
                        break;
                    }
                    in_flight.insert(next, pid);
                    next += 1;
                    tokio::time::sleep(every).await;
                }
                match c.recv_within(Duration::from_millis(1)).await {
                    Ok(Some(Packet::PubAck(ack))) => {
                        assert!(ack.reason < 0x80, "{name}: {ack:?}");
                        let n = in_flight
                            .iter()
                            .find(|(_, pid)| **pid == ack.packet_id)
                            .map(|(n, _)| *n);
                        if let Some(n) = n {
                            in_flight.remove(&n);
                            check.acked(name, topic, n, 1, false);
                        }
                        last_ack = Instant::now();
                    }
                    Ok(Some(Packet::Disconnect(_))) | Ok(None) => alive = false,
                    Ok(Some(other)) => panic!("{name}: expected PUBACK, got {other:?}"),
                    Err(_) => assert!(
                        in_flight.is_empty() || last_ack.elapsed() < Duration::from_secs(30),
                        "{name}: no PUBACK for 30 s from node {node}"
                    ),
                }
            }
            node += 1;
        }
    })
}

/// A persistent subscriber (clean start false, session expiry 300 s) of `filter`, starting on
/// node `home`: acknowledges and records every message; when its node goes away it
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
        // Once `done`: since when, and how many were missing then.
        let mut finishing: Option<(Instant, usize)> = None;
        loop {
            let (i, mut c, present) = connect_any(&addrs, node, &connect).await;
            node = i;
            if subscribed {
                assert!(present, "{id}: reconnected to node {i}, but the session was not there");
            } else {
                assert!(c.try_send(&subscribe_packet(1, filter, QoS::AtLeastOnce)).await);
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
                    Ok(Some(Packet::Publish(p))) => {
                        if p.qos != QoS::AtMostOnce {
                            let ack = Packet::PubAck(PubResponse {
                                packet_id: p.packet_id,
                                reason: 0,
                                properties: Properties::default(),
                            });
                            if !c.try_send(&ack).await {
                                break;
                            }
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
