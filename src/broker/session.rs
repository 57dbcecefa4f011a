//! One client's session: its subscriptions, the messages on their way to it (queued, then in
//! flight with a packet id), and the QoS 2 packet ids it has sent us. A session outlives its
//! network connection when it has a session expiry interval.
//!
//! Methods here change only this session; what has to reach the disk or the connection is
//! recorded in [`Effects`] and carried out by the broker once the whole operation is done.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::QueueStrategy;
use crate::listener::outbox;
use crate::mqtt::{self, Packet, ProtocolVersion, PubResponse, Publish, QoS};
use crate::store::records::{OutgoingRecord, SessionRecord, SubscriptionRecord, WillRecord};
use crate::store::{StoreOp, Ticket};

/// What the broker asks a connection task to do.
#[derive(Debug)]
pub enum Outbound {
    /// Write this packet, once everything up to the ticket is on disk.
    Packet(Box<Packet>, Option<Ticket>),
    /// Send DISCONNECT with this reason (MQTT 5) and close the connection.
    Disconnect(u8),
}

/// The broker's side of a live network connection.
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    /// Unique per connection, so calls from a connection that was taken over are ignored.
    pub id: u64,
    pub tx: outbox::Sender<Outbound>,
    pub version: ProtocolVersion,
    /// The client's Receive Maximum: how many QoS 1/2 PUBLISHes may be unacknowledged.
    pub receive_maximum: u16,
    /// The client's Maximum Packet Size [MQTT-3.1.2-24].
    pub max_packet_size: u32,
    /// QoS 0 messages handed to the connection and not yet written: the bound that keeps a slow
    /// consumer from growing its buffer without limit (QoS 0 beyond it is dropped).
    pub qos0_pending: Arc<AtomicUsize>,
}

/// Side effects of a broker operation, applied in order after it.
#[derive(Default)]
pub struct Effects {
    pub ops: Vec<StoreOp>,
    /// Packets for connections; `true` = wait for this operation's ops to be committed first.
    pub sends: Vec<(outbox::Sender<Outbound>, Outbound, bool)>,
    /// Wills and other messages to publish once the current operation is done.
    pub publish: Vec<crate::broker::message::Message>,
    /// Completes when a retained message reached every node of the cluster.
    pub replicated: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Shared-group messages from other nodes that are settled here (acknowledged or
    /// dropped): (origin node, forward id, group).
    pub settled: Vec<(String, u64, Arc<str>)>,
    /// Cluster requests (forwards, session ops) whose acknowledgements this operation's
    /// store ticket waits for.
    pub awaits: Vec<u64>,
    /// Sessions that ended here, with the backups that must forget their copies.
    pub dropped_backups: Vec<(Arc<str>, Vec<Arc<str>>)>,
    /// Sessions whose backups get a whole new copy (in the same order of heirs).
    pub recopy: Vec<Arc<str>>,
    /// Sessions that hold the message being routed until its sender's order marker came.
    pub held_for: Vec<Arc<str>>,
    /// QoS 2 deliveries of persistent sessions completed: (client, message), for
    /// `merge_dedup`.
    pub completed_qos2: Vec<(Arc<str>, Arc<crate::broker::message::Message>)>,
}

/// Notes that a message is done with here, for the node that sent it, if it wants to know.
fn settle(rec: &OutgoingRecord, effects: &mut Effects) {
    if let (Some((node, id)), Some(group)) = (&rec.origin, &rec.shared) {
        effects.settled.push((node.clone(), *id, group.clone()));
    }
}

/// Limits from the `<mqtt>` configuration that sessions apply.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_queue_size: u64,
    pub strategy: QueueStrategy,
}

#[derive(Debug)]
pub struct Session {
    pub client_id: Arc<str>,
    /// Seconds the session outlives its connection; 0 = it ends with it; `u32::MAX` = never.
    pub expiry_interval: u32,
    /// Filter (as the client wrote it, `$share/...` included) → options.
    pub subscriptions: HashMap<String, SubscriptionRecord>,
    /// Messages not yet sent, by sequence number.
    queue: VecDeque<(u64, OutgoingRecord)>,
    /// Messages sent and not yet fully acknowledged, by packet id.
    inflight: BTreeMap<u16, (u64, OutgoingRecord)>,
    /// QoS 2 packet ids received and not yet released by PUBREL.
    incoming_qos2: HashSet<u16>,
    next_packet_id: u16,
    pub connection: Option<ConnectionHandle>,
    /// Boxed: most clients have none, and an inline will (~240 B) would be in every session.
    pub will: Option<Box<WillRecord>>,
    /// Bumped on every connect and disconnect; timers carry it and are ignored when stale.
    pub generation: u64,
    pub disconnected_at_ms: Option<u64>,
    /// When and where the current connection was made: in a cluster, the newer connection
    /// of a client id wins.
    pub claim: Option<ClaimStamp>,
    /// In a cluster, for a persistent session: the nodes keeping copies of it, best ranked
    /// first. `None` until the first replication, which then sends the whole session.
    pub backups: Option<Vec<Arc<str>>>,
}

/// (connect time in Unix ms, node id): orders the connections of one client id across nodes.
pub type ClaimStamp = (u64, String);

/// A session moving to another node when its client connects there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionExport {
    pub expiry_interval: u32,
    pub subscriptions: Vec<(String, SubscriptionRecord)>,
    /// Oldest first; in-flight messages keep their packet ids.
    pub outgoing: Vec<OutgoingRecord>,
    pub incoming_qos2: Vec<u16>,
}

impl Session {
    pub fn new(client_id: Arc<str>, expiry_interval: u32) -> Session {
        Session {
            client_id,
            expiry_interval,
            subscriptions: HashMap::new(),
            queue: VecDeque::new(),
            inflight: BTreeMap::new(),
            incoming_qos2: HashSet::new(),
            next_packet_id: 1,
            connection: None,
            will: None,
            generation: 0,
            disconnected_at_ms: None,
            claim: None,
            backups: None,
        }
    }

    /// Rebuilds a session read back from disk (disconnected).
    pub fn restore(
        client_id: Arc<str>,
        record: &SessionRecord,
        outgoing: Vec<(u64, OutgoingRecord)>,
        incoming_qos2: Vec<u16>,
        now_ms: u64,
    ) -> Session {
        let mut s = Session::new(client_id, record.expiry_interval);
        s.will = record.will.clone().map(Box::new);
        s.disconnected_at_ms = Some(record.disconnected_at_ms.unwrap_or(now_ms));
        for (seq, rec) in outgoing {
            match rec.packet_id {
                Some(pid) if !s.inflight.contains_key(&pid) => {
                    s.inflight.insert(pid, (seq, rec));
                }
                _ => s.queue.push_back((
                    seq,
                    OutgoingRecord {
                        packet_id: None,
                        released: false,
                        ..rec
                    },
                )),
            }
        }
        s.next_packet_id = s.inflight.keys().next_back().map_or(1, |p| p.wrapping_add(1).max(1));
        s.incoming_qos2 = incoming_qos2.into_iter().collect();
        s
    }

    /// Everything a session carries to another node.
    pub fn export(&self) -> SessionExport {
        let mut outgoing: Vec<&(u64, OutgoingRecord)> = self.inflight.values().chain(self.queue.iter()).collect();
        outgoing.sort_by_key(|(seq, _)| *seq);
        SessionExport {
            expiry_interval: self.expiry_interval,
            subscriptions: self.subscriptions.iter().map(|(f, r)| (f.clone(), *r)).collect(),
            outgoing: outgoing.into_iter().map(|(_, r)| r.clone()).collect(),
            incoming_qos2: self.incoming_qos2.iter().copied().collect(),
        }
    }

    /// Its queued and in-flight messages, in no particular order.
    pub fn outgoing(&self) -> impl Iterator<Item = &OutgoingRecord> {
        self.inflight.values().chain(self.queue.iter()).map(|(_, r)| r)
    }

    pub fn is_persistent(&self) -> bool {
        self.expiry_interval > 0
    }

    pub fn record(&self) -> SessionRecord {
        SessionRecord {
            expiry_interval: self.expiry_interval,
            disconnected_at_ms: if self.connection.is_some() {
                None
            } else {
                self.disconnected_at_ms
            },
            will: self.will.as_deref().cloned(),
        }
    }

    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// True if a QoS 1/2 message could be sent right now without queueing.
    pub fn has_window(&self) -> bool {
        match &self.connection {
            Some(c) => self.queue.is_empty() && self.inflight.len() < usize::from(c.receive_maximum),
            None => false,
        }
    }

    fn persist(&self, effects: &mut Effects, op: impl FnOnce(Arc<str>) -> StoreOp) {
        if self.is_persistent() {
            effects.ops.push(op(self.client_id.clone()));
        }
    }

    /// Hands a message to this session: sent at once if the connection has room, else queued.
    pub fn deliver(&mut self, seq: u64, rec: OutgoingRecord, limits: QueueLimits, now_ms: u64, effects: &mut Effects) {
        if rec.qos == 0 {
            // QoS 0 is sent to connected clients only and never stored [MQTT-4.3.1].
            if let Some(conn) = &self.connection
                && (conn.qos0_pending.load(Ordering::Relaxed) as u64) < limits.max_queue_size.max(1)
            {
                let publish = rec
                    .message
                    .to_publish(QoS::AtMostOnce, rec.retain, 0, &rec.subscription_ids, now_ms);
                if fits(&publish, conn) {
                    conn.qos0_pending.fetch_add(1, Ordering::Relaxed);
                    effects.sends.push((
                        conn.tx.clone(),
                        Outbound::Packet(Box::new(Packet::Publish(publish)), None),
                        false,
                    ));
                }
            }
            settle(&rec, effects);
            return;
        }
        if self.has_window() {
            self.send_new(seq, rec, now_ms, effects);
            return;
        }
        if self.queue.len() as u64 >= limits.max_queue_size {
            match limits.strategy {
                QueueStrategy::Discard => {
                    tracing::debug!(client = %self.client_id, "queue full, message discarded");
                    settle(&rec, effects);
                    return;
                }
                QueueStrategy::DiscardOldest => {
                    if let Some((old, dropped)) = self.queue.pop_front() {
                        self.persist(effects, |c| StoreOp::DeleteOutgoing(c, old));
                        settle(&dropped, effects);
                    }
                }
            }
            if limits.max_queue_size == 0 {
                return;
            }
        }
        self.persist(effects, |c| StoreOp::PutOutgoing(c, seq, rec.clone()));
        self.queue.push_back((seq, rec));
    }

    fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let pid = self.next_packet_id;
            self.next_packet_id = if pid == u16::MAX { 1 } else { pid + 1 };
            if !self.inflight.contains_key(&pid) {
                return pid;
            }
        }
    }

    /// Sends a QoS 1/2 message with a fresh packet id. The caller checked the window.
    fn send_new(&mut self, seq: u64, mut rec: OutgoingRecord, now_ms: u64, effects: &mut Effects) {
        let Some(conn) = self.connection.clone() else { return };
        if rec.message.is_expired(now_ms) {
            self.persist(effects, |c| StoreOp::DeleteOutgoing(c, seq));
            settle(&rec, effects);
            return;
        }
        let pid = self.allocate_packet_id();
        let qos = QoS::from_u8(rec.qos).unwrap_or(QoS::AtLeastOnce);
        let publish = rec
            .message
            .to_publish(qos, rec.retain, pid, &rec.subscription_ids, now_ms);
        if !fits(&publish, &conn) {
            // Too large for this client: dropped as if delivered [MQTT-3.1.2-25].
            self.persist(effects, |c| StoreOp::DeleteOutgoing(c, seq));
            settle(&rec, effects);
            return;
        }
        rec.packet_id = Some(pid);
        // The packet id must be on disk before the PUBLISH leaves, so that a restart resends
        // the same packet id and a QoS 2 receiver does not see a new message.
        let persistent = self.is_persistent();
        self.persist(effects, |c| StoreOp::PutOutgoing(c, seq, rec.clone()));
        self.inflight.insert(pid, (seq, rec));
        effects.sends.push((
            conn.tx.clone(),
            Outbound::Packet(Box::new(Packet::Publish(publish)), None),
            persistent,
        ));
    }

    /// Moves queued messages into flight while the window allows.
    pub fn pump(&mut self, now_ms: u64, effects: &mut Effects) {
        while let Some(conn) = &self.connection {
            if self.inflight.len() >= usize::from(conn.receive_maximum) {
                break;
            }
            let Some((seq, rec)) = self.queue.pop_front() else {
                break;
            };
            self.send_new(seq, rec, now_ms, effects);
        }
    }

    /// PUBACK for QoS 1 or PUBCOMP for QoS 2: the flow is complete.
    pub fn complete(&mut self, pid: u16, now_ms: u64, effects: &mut Effects) -> bool {
        match self.inflight.remove(&pid) {
            Some((seq, rec)) => {
                self.persist(effects, |c| StoreOp::DeleteOutgoing(c, seq));
                settle(&rec, effects);
                if rec.qos == 2 && self.is_persistent() {
                    effects
                        .completed_qos2
                        .push((self.client_id.clone(), rec.message.clone()));
                }
                self.pump(now_ms, effects);
                true
            }
            None => false,
        }
    }

    /// PUBREC: the receiver has the message; release it. Returns false for an unknown id. A
    /// PUBREC with an error reason ends the flow [MQTT-4.3.3-?]: the message is discarded.
    pub fn received(&mut self, pid: u16, reason: u8, now_ms: u64, effects: &mut Effects) -> bool {
        if reason >= 0x80 {
            return self.complete(pid, now_ms, effects);
        }
        let client = self.client_id.clone();
        let persistent = self.is_persistent();
        match self.inflight.get_mut(&pid) {
            Some((seq, rec)) if rec.qos == 2 => {
                if !rec.released {
                    rec.released = true;
                    if persistent {
                        effects.ops.push(StoreOp::PutOutgoing(client, *seq, rec.clone()));
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// After a reconnect: resend everything in flight, oldest first, then fill the window from
    /// the queue [MQTT-4.4.0-1].
    pub fn resume(&mut self, now_ms: u64, effects: &mut Effects) {
        let Some(conn) = self.connection.clone() else { return };
        let mut flights: Vec<(u64, u16)> = self.inflight.iter().map(|(pid, (seq, _))| (*seq, *pid)).collect();
        flights.sort_unstable();
        for (seq, pid) in flights {
            let Some((_, rec)) = self.inflight.get(&pid) else {
                continue;
            };
            let packet = if rec.released {
                Packet::PubRel(PubResponse {
                    packet_id: pid,
                    reason: 0,
                    properties: Default::default(),
                })
            } else if rec.message.is_expired(now_ms) {
                if let Some((_, expired)) = self.inflight.remove(&pid) {
                    settle(&expired, effects);
                }
                self.persist(effects, |c| StoreOp::DeleteOutgoing(c, seq));
                continue;
            } else {
                let qos = QoS::from_u8(rec.qos).unwrap_or(QoS::AtLeastOnce);
                let mut publish = rec
                    .message
                    .to_publish(qos, rec.retain, pid, &rec.subscription_ids, now_ms);
                publish.dup = true; // [MQTT-3.3.1-1]
                Packet::Publish(publish)
            };
            effects
                .sends
                .push((conn.tx.clone(), Outbound::Packet(Box::new(packet), None), false));
        }
        self.pump(now_ms, effects);
    }

    /// Takes out the shared-subscription messages that this (now disconnected) member has not
    /// had acknowledged, so that they can go to another member of their group.
    pub fn take_shared_pending(&mut self, effects: &mut Effects) -> Vec<(u64, OutgoingRecord)> {
        let mut taken = Vec::new();
        let pids: Vec<u16> = self
            .inflight
            .iter()
            .filter(|(_, (_, r))| r.shared.is_some() && !r.released)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in pids {
            if let Some((seq, rec)) = self.inflight.remove(&pid) {
                taken.push((seq, OutgoingRecord { packet_id: None, ..rec }));
            }
        }
        let (shared, own): (VecDeque<_>, VecDeque<_>) = self.queue.drain(..).partition(|(_, r)| r.shared.is_some());
        self.queue = own;
        taken.extend(shared);
        for (seq, _) in &taken {
            self.persist(effects, |c| StoreOp::DeleteOutgoing(c, *seq));
        }
        taken.sort_by_key(|(seq, _)| *seq);
        taken
    }

    /// Incoming QoS 2 PUBLISH: returns true if this packet id was already received (a resend;
    /// the message must not be delivered again [MQTT-4.3.3-9]).
    pub fn begin_incoming_qos2(&mut self, pid: u16, effects: &mut Effects) -> bool {
        if self.incoming_qos2.insert(pid) {
            self.persist(effects, |c| StoreOp::PutIncomingQos2(c, pid));
            false
        } else {
            true
        }
    }

    /// PUBREL: the packet id is free again. Returns false if it was unknown.
    pub fn release_incoming_qos2(&mut self, pid: u16, effects: &mut Effects) -> bool {
        if self.incoming_qos2.remove(&pid) {
            self.persist(effects, |c| StoreOp::DeleteIncomingQos2(c, pid));
            true
        } else {
            false
        }
    }

    /// Every row this session has on disk, to write it whole (when it becomes persistent).
    pub fn full_record_ops(&self) -> Vec<StoreOp> {
        let c = &self.client_id;
        let mut ops = vec![StoreOp::PutSession(c.clone(), self.record())];
        for (filter, rec) in &self.subscriptions {
            ops.push(StoreOp::PutSubscription(c.clone(), filter.clone(), *rec));
        }
        for (seq, rec) in self.inflight.values().chain(self.queue.iter()) {
            ops.push(StoreOp::PutOutgoing(c.clone(), *seq, rec.clone()));
        }
        for pid in &self.incoming_qos2 {
            ops.push(StoreOp::PutIncomingQos2(c.clone(), *pid));
        }
        ops
    }
}

/// Whether the PUBLISH fits the client's Maximum Packet Size.
fn fits(publish: &Publish, conn: &ConnectionHandle) -> bool {
    // An upper bound first (every field's length plus generous header room), so that most
    // messages need no exact count.
    let p = &publish.properties;
    let rough = publish.payload.len()
        + publish.topic.len()
        + p.content_type.as_ref().map_or(0, |s| s.len())
        + p.response_topic.as_ref().map_or(0, |s| s.len())
        + p.correlation_data.as_ref().map_or(0, |s| s.len())
        + p.user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len() + 5)
            .sum::<usize>()
        + p.subscription_identifiers.len() * 5
        + 64;
    if rough <= conn.max_packet_size as usize {
        return true;
    }
    let len = mqtt::encoded_len(&Packet::Publish(publish.clone()), conn.version);
    len <= conn.max_packet_size as usize
}
