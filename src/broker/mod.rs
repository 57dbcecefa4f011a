//! The broker: sessions, subscriptions, retained messages, wills and shared subscriptions of
//! one node, behind one lock.
//!
//! Connection tasks call in with what their client did (connect, publish, subscribe, acks,
//! disconnect) and get back what to answer and a store [`Ticket`] to wait for before answering.
//! Packets for other clients go out through each connection's [`Outbound`] channel. All I/O
//! (sockets, disk) happens elsewhere; every change here is a plain in-memory step plus a list
//! of [`session::Effects`].

mod handover;
mod merge_dedup;
pub mod message;
mod replicate;
pub mod retained;
pub mod session;
pub mod topic_tree;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::cluster::Cluster;
use crate::cluster::hlc::{self, Hlc};
use crate::config::{MqttConfig, Restrictions, Security};
use crate::mqtt::{self, QoS, SubscriptionOptions, reason};
use crate::store::records::{OutgoingRecord, SubscriptionRecord, WillRecord};
use crate::store::{Loaded, Store, StoreError, StoreOp, Ticket};
pub use handover::{HandedDelivery, HeldAck, HoldOrder, ORDER_HOLD_LIMIT};
use message::{Message, now_ms};
pub use replicate::HandBack;
use retained::{Applied, Retained, RetainedEntry};
pub use session::{ClaimStamp, SessionExport};
use session::{ConnectionHandle, Effects, Outbound, QueueLimits, Session};
use topic_tree::TopicTree;

/// How often expired retained-message tombstones are dropped.
const TOMBSTONE_SWEEP: Duration = Duration::from_secs(10 * 60);

/// A peer's clock this far ahead of ours is logged (its versions then win over ours until our
/// wall clock catches up; the order stays consistent, but "newest" means "of the fastest clock").
const CLOCK_LEAD_WARNING_MS: u64 = 60_000;

/// The settings the broker applies, from config.xml.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub mqtt: MqttConfig,
    pub restrictions: Restrictions,
    pub security: Security,
    /// Part of a cluster: the wills of clients of a node that died are published by the
    /// other nodes, so a restarting node does not publish them again.
    pub clustered: bool,
}

/// Who a subscription in the topic tree belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subscriber {
    Client(Arc<str>),
    /// A shared subscription group, by its full `$share/{group}/{filter}` string.
    Shared(Arc<str>),
}

/// The members of one shared subscription, served round-robin.
#[derive(Debug, Default)]
struct SharedGroup {
    members: Vec<Arc<str>>,
    next: usize,
}

struct State {
    sessions: HashMap<Arc<str>, Box<Session>>,
    tree: TopicTree<Subscriber, SubscriptionRecord>,
    shared: HashMap<Arc<str>, SharedGroup>,
    retained: Retained,
    /// Versions every retained write (local ones, and those from peers it observes).
    /// Invariant: it has observed every version in `retained`, so a local write is newer than
    /// anything this node holds.
    clock: Hlc,
    /// When a peer's clock ahead of ours was last warned about (Unix ms).
    clock_warned_ms: u64,
    /// Sequence numbers order every message handed to a session.
    next_seq: u64,
    /// Filters with local subscribers (shared ones by their inner filter), with how many: the
    /// routes this node announces to the cluster.
    local_filters: HashMap<String, usize>,
    /// Route changes not yet told to the cluster: (added, removed).
    route_changes: (Vec<String>, Vec<String>),
    /// Connections waiting for the other nodes to hand over their client id's session.
    claims: HashMap<Arc<str>, handover::Claim>,
    /// Sessions handed over to this node moments ago, and the QoS 2 messages they were given.
    recent_qos2: handover::RecentQos2,
    /// Direct messages held for sessions handed over here, for per-publisher order.
    order_holds: handover::OrderHolds,
    /// QoS 2 deliveries a partition's merge must not repeat.
    merge_dedup: merge_dedup::MergeDedup,
}

impl Default for State {
    fn default() -> State {
        State {
            sessions: HashMap::new(),
            tree: TopicTree::default(),
            shared: HashMap::new(),
            retained: Retained::default(),
            // Node 0 until the node joins a cluster and has an id (`attach_cluster`).
            clock: Hlc::new(0),
            clock_warned_ms: 0,
            next_seq: 0,
            local_filters: HashMap::new(),
            route_changes: Default::default(),
            claims: HashMap::new(),
            recent_qos2: Default::default(),
            order_holds: Default::default(),
            merge_dedup: Default::default(),
        }
    }
}

impl State {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn route_added(&mut self, filter: &str) {
        let count = self.local_filters.entry(filter.to_owned()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.route_changes.0.push(filter.to_owned());
        }
    }

    fn route_removed(&mut self, filter: &str) {
        if let Some(count) = self.local_filters.get_mut(filter) {
            *count -= 1;
            if *count == 0 {
                self.local_filters.remove(filter);
                self.route_changes.1.push(filter.to_owned());
            }
        }
    }
}

/// A timer the broker asks for; it carries the session generation so a stale one is ignored.
#[derive(Debug, Clone)]
enum Timer {
    Will {
        client: Arc<str>,
        generation: u64,
        delay: Duration,
    },
    Expiry {
        client: Arc<str>,
        generation: u64,
        after: Duration,
    },
}

pub struct Broker {
    state: Mutex<State>,
    settings: Settings,
    store: Option<Store>,
    next_connection_id: AtomicU64,
    connections: AtomicUsize,
    /// Set when the node stops: pending timers then do nothing.
    stopped: AtomicBool,
    /// The cluster this node is part of, if clustering is on.
    cluster: OnceLock<Arc<Cluster>>,
    /// Tickets without file persistence (only replication acknowledgements back them).
    memory_tickets: AtomicU64,
}

/// What a client asks for in CONNECT, after validation.
pub struct ConnectRequest {
    pub client_id: Arc<str>,
    pub clean_start: bool,
    /// Session expiry interval, already capped by the configured maximum.
    pub expiry_interval: u32,
    pub will: Option<WillRecord>,
    pub connection: ConnectionHandle,
    /// In a cluster: the session handed over by the node that held it, and this connection's
    /// claim stamp.
    pub imported: Option<SessionExport>,
    pub claim: Option<ClaimStamp>,
    /// With `imported` from a live node: what it waits for before taking direct messages.
    pub order: Option<handover::HoldOrder>,
}

/// A node's answer to another node's claim on a client id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ClaimAnswer {
    /// The session (if this node had one) is handed over and gone from here.
    Handover(Option<SessionExport>),
    /// A newer connection of the client id is here: the claim loses.
    Refused,
}

pub struct ConnectOutcome {
    pub session_present: bool,
    pub ticket: Ticket,
}

pub struct PublishOutcome {
    pub ticket: Ticket,
    /// For a retained message in a cluster: completes once every node has applied it.
    pub replicated: Option<tokio::sync::oneshot::Receiver<()>>,
    /// At least one subscription matched (MQTT 5: reason 0x10 otherwise).
    pub matched: bool,
    /// A QoS 2 resend of a packet id already received; it was not delivered again.
    pub duplicate: bool,
}

/// What applying a peer's retained entries did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetainedMerge {
    /// Entries newer than what this node had (sets and deletions).
    pub applied: usize,
    /// Of those, deletions.
    pub deleted: usize,
    /// Entries this node already had, or had something newer for.
    pub stale: usize,
}

/// A snapshot of one session, for the admin API and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    pub connected: bool,
    pub queued: usize,
    pub inflight: usize,
    pub subscriptions: usize,
}

/// How a message forwarded by another node came.
pub struct PeerForward<'a> {
    pub sender: &'a Arc<str>,
    /// The shared groups the sender chose this node to serve.
    pub shared_groups: &'a [String],
    /// The sender and its forward id, for shared-group settlement.
    pub origin: Option<(String, u64)>,
    /// A redelivery to shared groups only.
    pub shared_only: bool,
    /// The forward's sequence number, when it is acknowledged (else 0).
    pub ack: u64,
    /// Cluster requests the acknowledgement waits for as well (redirects from here).
    pub requests: &'a [u64],
}

/// Where a message to route comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin<'a> {
    /// Published on this node (a client or a will): forwarded to other nodes too.
    Local,
    /// Forwarded by another node: for local subscribers only, and for the shared groups that
    /// node chose us to serve.
    Peer {
        /// The node that sent it here.
        sender: &'a Arc<str>,
        groups: &'a [String],
        /// The sending node and its forward id, for shared-group settlement.
        origin: Option<&'a (String, u64)>,
        /// A redelivery to shared groups only.
        shared_only: bool,
    },
    /// Parked by another node while a dead node's sessions were taken over: for the sessions
    /// this node adopted from it only (see `cluster::takeover`).
    Heir { clients: &'a HashSet<Arc<str>> },
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// DISCONNECT with reason 0x00: the will is discarded [MQTT-3.1.2-10].
    Normal,
    /// DISCONNECT 0x04, a protocol error, a lost socket, a keep-alive timeout: the will is published.
    WithWill,
}

impl Broker {
    /// A broker with the state read back from disk (or empty) and its timers started. Must be
    /// called inside a tokio runtime.
    pub fn new(settings: Settings, store: Option<Store>, loaded: Loaded) -> Arc<Broker> {
        let broker = Arc::new(Broker {
            state: Mutex::new(State::default()),
            settings,
            store,
            next_connection_id: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            cluster: OnceLock::new(),
            memory_tickets: AtomicU64::new(0),
        });
        broker.restore(loaded);
        let weak = Arc::downgrade(&broker);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TOMBSTONE_SWEEP);
            every.tick().await;
            loop {
                every.tick().await;
                match weak.upgrade() {
                    Some(broker) if !broker.stopped.load(Ordering::Acquire) => broker.expire_tombstones(now_ms()),
                    _ => return,
                }
            }
        });
        broker
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; keep serving rather than cascade it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn limits(&self) -> QueueLimits {
        QueueLimits {
            max_queue_size: self.settings.mqtt.max_queue_size,
            strategy: self.settings.mqtt.queue_strategy,
        }
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a new network connection against `max-connections`; false if the limit is reached.
    pub fn try_admit_connection(&self) -> bool {
        let max = self.settings.restrictions.max_connections;
        if max < 0 {
            self.connections.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                ((n as i64) < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn release_connection(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Waits until everything up to the ticket is on disk (at once without file persistence)
    /// and, in a cluster, every copy it promises exists: the session changes reached the
    /// backups and the forwarded messages the nodes they went to (see [`Cluster::bind`]).
    pub async fn wait(&self, ticket: Ticket) -> Result<(), StoreError> {
        if let Some(store) = &self.store
            && ticket > 0
        {
            store.wait(ticket).await?;
        }
        if let Some(cluster) = self.cluster.get() {
            cluster
                .wait_replicated(ticket, crate::cluster::replication::Kind::Forward)
                .await;
        }
        Ok(())
    }

    pub fn is_committed(&self, ticket: Ticket) -> bool {
        self.store.as_ref().is_none_or(|s| s.is_committed(ticket))
            && self.cluster.get().is_none_or(|c| c.replicated(ticket))
    }

    /// Queues store ops; with `fresh`, a new ticket even for none (replication waits on it).
    fn submit_ops(&self, ops: Vec<StoreOp>, fresh: bool) -> Ticket {
        match &self.store {
            Some(store) => store.submit_with(ops, fresh),
            None if fresh => self.memory_tickets.fetch_add(1, Ordering::Relaxed) + 1,
            None => self.memory_tickets.load(Ordering::Relaxed),
        }
    }

    /// Queues store ops made outside the broker's state (the cluster's replica tables).
    pub fn submit(&self, ops: Vec<StoreOp>) -> Ticket {
        self.submit_ops(ops, false)
    }

    // ----- restore -----------------------------------------------------------------------

    fn restore(self: &Arc<Self>, loaded: Loaded) {
        let now = now_ms();
        let mut state = self.lock();
        let mut effects = Effects::default();
        let mut timers = Vec::new();
        for entry in loaded.retained {
            // Every stored version is observed, so new local writes are newer than all of them
            // even if the wall clock went back while the node was down.
            state.clock.observe(entry.version, now);
            if entry.message.as_ref().is_some_and(|m| m.is_expired(now)) {
                continue;
            }
            // The same rule as between nodes resolves a topic with both a message and a
            // tombstone on disk (possible only after a build without tombstones ran on it).
            state
                .retained
                .apply(&entry.topic, entry.version, entry.message.map(Arc::new));
        }
        for topic in state.retained.expire_tombstones(now) {
            effects.ops.push(StoreOp::DropTombstone(topic));
        }
        for (client, loaded) in loaded.sessions {
            if let Some(max) = loaded.outgoing.iter().map(|(seq, _)| *seq).max() {
                state.next_seq = state.next_seq.max(max);
            }
            let session = Session::restore(
                client.clone(),
                &loaded.record,
                loaded.outgoing,
                loaded.incoming_qos2,
                now,
            );
            let gone_for = Duration::from_millis(now.saturating_sub(session.disconnected_at_ms.unwrap_or(now)));
            state.sessions.insert(client.clone(), Box::new(session));
            for (filter, record) in loaded.subscriptions {
                add_subscription(&mut state, &client, filter, record);
            }
            let Some(session) = state.sessions.get_mut(&client) else {
                continue;
            };
            let generation = session.generation;
            // The node went down without the client saying goodbye: its will is due
            // [MQTT-3.1.2-8] — unless the cluster already published it.
            if self.settings.clustered {
                session.will = None;
            }
            if let Some(will) = &session.will {
                let delay = Duration::from_secs(u64::from(will.delay_secs)).saturating_sub(gone_for);
                timers.push(Timer::Will {
                    client: client.clone(),
                    generation,
                    delay,
                });
            }
            if session.expiry_interval != u32::MAX {
                let after = Duration::from_secs(u64::from(session.expiry_interval)).saturating_sub(gone_for);
                timers.push(Timer::Expiry {
                    client: client.clone(),
                    generation,
                    after,
                });
            }
            // Record the disconnect time, so a later restart counts expiry from it.
            let record = session.record();
            effects.ops.push(StoreOp::PutSession(client.clone(), record));
        }
        tracing::info!(
            sessions = state.sessions.len(),
            retained = state.retained.len(),
            tombstones = state.retained.tombstone_count(),
            "restored persistent state"
        );
        self.finish(&mut state, effects, timers);
    }

    // ----- connect / disconnect -----------------------------------------------------------

    /// Registers a connection of `client` that is asking the other nodes for its session.
    pub fn begin_claim(&self, client: &Arc<str>, stamp: ClaimStamp) {
        self.lock().claims.insert(client.clone(), handover::Claim::new(stamp));
    }

    /// Forgets a claim whose connection was refused.
    pub fn end_claim(&self, client: &Arc<str>) {
        self.lock().claims.remove(client);
    }

    /// Another node's connection of `client` claims the session: hand it over unless a newer
    /// connection of that id is here (or waiting here).
    pub fn answer_claim(self: &Arc<Self>, client: &str, stamp: &ClaimStamp, clean_start: bool) -> ClaimAnswer {
        let now = now_ms();
        let mut state = self.lock();
        let client: Arc<str> = Arc::from(client);
        if let Some(claim) = state.claims.get_mut(&client) {
            if claim.stamp > *stamp {
                return ClaimAnswer::Refused;
            }
            claim.superseded = true;
            if !claim.parked.is_empty() {
                tracing::warn!(
                    %client,
                    count = claim.parked.len(),
                    "a newer connection elsewhere claimed a session while messages redirected to it waited here; they are dropped"
                );
            }
        }
        let Some(session) = state.sessions.get_mut(&client) else {
            return ClaimAnswer::Handover(None);
        };
        if session.connection.is_some() && session.claim.as_ref().is_some_and(|ours| ours > stamp) {
            return ClaimAnswer::Refused;
        }
        let mut effects = Effects::default();
        if let Some(old) = session.connection.take() {
            effects
                .sends
                .push((old.tx.clone(), Outbound::Disconnect(reason::SESSION_TAKEN_OVER), false));
        }
        session.generation += 1;
        take_shared_pending(&mut state, &client, self.limits(), now, &mut effects);
        // Messages still held for the session go with it.
        let held_acks = match state.order_holds.release(&client) {
            Some(released) => self.deliver_released(&mut state, &client, released, &mut effects),
            None => Vec::new(),
        };
        if let Some(cluster) = self.cluster.get() {
            // (Acknowledged once stored here, like the session's other messages until the
            // claiming node has it.)
            cluster.ack_held(held_acks, 0);
        }
        let Some(session) = state.sessions.get_mut(&client) else {
            return ClaimAnswer::Handover(None);
        };
        // The old connection's will: published when the session ends or has no delay, else
        // cancelled by the new connection [MQTT-3.1.3-9].
        if let Some(will) = session.will.take()
            && (clean_start || will.delay_secs == 0)
        {
            effects.publish.push(will.message);
        }
        let export = session.export();
        remove_session(&mut state, &client, &mut effects);
        tracing::debug!(client = %client, "session handed over to node {}", stamp.1);
        self.finish(&mut state, effects, Vec::new());
        ClaimAnswer::Handover(Some(export))
    }

    /// Connects a client. In a cluster, `None` when a newer connection of the same client id
    /// on another node superseded this one while it waited for the handover.
    pub fn connect(self: &Arc<Self>, req: ConnectRequest) -> Option<ConnectOutcome> {
        let now = now_ms();
        let mut state = self.lock();
        let mut effects = Effects::default();
        let client = req.client_id.clone();
        let parked = match state.claims.remove(&client) {
            Some(claim) if claim.superseded => return None,
            Some(claim) => claim.parked,
            None => Vec::new(),
        };
        let mut barrier = None;
        let mut held_acks = Vec::new();
        if let Some(export) = req.imported {
            self.install_imported(&mut state, &client, export, &mut effects);
            Broker::handover_installed(&mut state, &client);
            if let Some(order) = req.order {
                // (A hold the session still had here ends first.)
                if let Some(released) = state.order_holds.start(&client, &order) {
                    held_acks = self.deliver_released(&mut state, &client, released, &mut effects);
                }
                barrier = Some(order);
            }
            // (Without a handover, a session here got those messages as they came.)
            self.deliver_parked(&mut state, &client, parked, &mut effects);
        }

        let mut session_present = false;
        if let Some(existing) = state.sessions.get_mut(&client) {
            let taken_over = existing.connection.take();
            if let Some(old) = taken_over {
                // Session takeover [MQTT-3.1.4-3]: the old connection is told and closed.
                effects
                    .sends
                    .push((old.tx.clone(), Outbound::Disconnect(reason::SESSION_TAKEN_OVER), false));
                take_shared_pending(&mut state, &client, self.limits(), now, &mut effects);
            }
        }
        if let Some(existing) = state.sessions.get_mut(&client) {
            // A will still pending from the previous connection: a new connection before the
            // will delay ends cancels it, unless the session itself ends now [MQTT-3.1.3-9].
            if let Some(will) = existing.will.take()
                && (req.clean_start || will.delay_secs == 0)
            {
                effects.publish.push(will.message);
            }
            if req.clean_start {
                remove_session(&mut state, &client, &mut effects);
            } else {
                session_present = true;
            }
        }
        let session = state
            .sessions
            .entry(client.clone())
            .or_insert_with(|| Box::new(Session::new(client.clone(), req.expiry_interval)));
        let was_persistent = session.is_persistent();
        session.expiry_interval = req.expiry_interval;
        session.connection = Some(req.connection);
        session.generation += 1;
        session.disconnected_at_ms = None;
        session.will = req.will.map(Box::new);
        session.claim = req.claim;
        if session.is_persistent() {
            if was_persistent {
                effects.ops.push(StoreOp::PutSession(client.clone(), session.record()));
            } else {
                effects.ops.extend(session.full_record_ops());
            }
        } else if was_persistent {
            // Lives on in memory until this connection ends, but no longer on disk.
            effects.ops.push(StoreOp::DeleteSession(client.clone()));
        }
        session.resume(now, &mut effects);
        let ticket = self.finish(&mut state, effects, Vec::new());
        if let Some(cluster) = self.cluster.get() {
            cluster.ack_held(held_acks, ticket);
            // After `finish`, which announced the session's routes: each node gets the barrier
            // behind them.
            if let Some(order) = barrier
                && !order.waiting.is_empty()
            {
                cluster.order_barrier(&client, &order);
            }
        }
        Some(ConnectOutcome {
            session_present,
            ticket,
        })
    }

    /// Installs a session handed over by another node (replacing a stale local copy).
    fn install_imported(&self, state: &mut State, client: &Arc<str>, export: SessionExport, effects: &mut Effects) {
        remove_session(state, client, effects);
        // A copy of it kept here (as a backup, or our own replica of a dead node's session
        // handed to this connection) ends in the same write that stores the session.
        effects.ops.push(StoreOp::ReplicaDelete(client.clone()));
        let now = now_ms();
        let outgoing: Vec<(u64, OutgoingRecord)> = export.outgoing.into_iter().map(|r| (state.seq(), r)).collect();
        let record = crate::store::records::SessionRecord {
            expiry_interval: export.expiry_interval,
            disconnected_at_ms: Some(now),
            will: None,
        };
        let session = Session::restore(client.clone(), &record, outgoing, export.incoming_qos2, now);
        state.sessions.insert(client.clone(), Box::new(session));
        for (filter, record) in export.subscriptions {
            add_subscription(state, client, filter, record);
        }
        if let Some(session) = state.sessions.get(client)
            && session.is_persistent()
        {
            effects.ops.extend(session.full_record_ops());
        }
    }

    /// The connection `connection_id` of `client` is gone. Ignored if the session has since
    /// been taken over by another connection.
    pub fn disconnect(
        self: &Arc<Self>,
        client: &Arc<str>,
        connection_id: u64,
        departure: Departure,
        new_expiry: Option<u32>,
    ) -> Ticket {
        let now = now_ms();
        let mut state = self.lock();
        let mut effects = Effects::default();
        let mut timers = Vec::new();
        let Some(session) = state.sessions.get_mut(client) else {
            return 0;
        };
        if session.connection.as_ref().map(|c| c.id) != Some(connection_id) {
            return 0;
        }
        session.connection = None;
        session.generation += 1;
        session.disconnected_at_ms = Some(now);
        if let Some(expiry) = new_expiry {
            session.expiry_interval = expiry;
        }
        let generation = session.generation;
        let expiry = session.expiry_interval;
        if departure == Departure::Normal {
            session.will = None;
        }
        take_shared_pending(&mut state, client, self.limits(), now, &mut effects);
        let Some(session) = state.sessions.get_mut(client) else {
            return 0;
        };

        // The will goes out after its delay or when the session ends, whichever is first
        // [MQTT-3.1.3-9].
        if let Some(will) = &session.will {
            if will.delay_secs == 0 || expiry == 0 {
                if let Some(will) = session.will.take() {
                    effects.publish.push(will.message);
                }
            } else {
                let delay = Duration::from_secs(u64::from(will.delay_secs.min(expiry)));
                timers.push(Timer::Will {
                    client: client.clone(),
                    generation,
                    delay,
                });
            }
        }
        if expiry == 0 {
            remove_session(&mut state, client, &mut effects);
        } else {
            effects.ops.push(StoreOp::PutSession(client.clone(), session.record()));
            if expiry != u32::MAX {
                let after = Duration::from_secs(u64::from(expiry));
                timers.push(Timer::Expiry {
                    client: client.clone(),
                    generation,
                    after,
                });
            }
        }
        self.finish(&mut state, effects, timers)
    }

    /// Stops timers from acting; called once the node's connections are closed.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    fn on_timer(self: &Arc<Self>, timer: Timer) {
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        let mut effects = Effects::default();
        match timer {
            Timer::Will { client, generation, .. } => {
                let Some(session) = state.sessions.get_mut(&client) else {
                    return;
                };
                if session.generation != generation || session.connection.is_some() {
                    return;
                }
                if let Some(will) = session.will.take() {
                    effects.publish.push(will.message);
                    if session.is_persistent() {
                        effects.ops.push(StoreOp::PutSession(client.clone(), session.record()));
                    }
                }
            }
            Timer::Expiry { client, generation, .. } => {
                let Some(session) = state.sessions.get_mut(&client) else {
                    return;
                };
                if session.generation != generation || session.connection.is_some() {
                    return;
                }
                tracing::debug!(client = %client, "session expired");
                if let Some(will) = session.will.take() {
                    effects.publish.push(will.message);
                }
                remove_session(&mut state, &client, &mut effects);
            }
        }
        self.finish(&mut state, effects, Vec::new());
    }

    // ----- publish ------------------------------------------------------------------------

    /// A PUBLISH from `client`. `qos2_packet_id` is set for QoS 2 (exactly-once bookkeeping).
    pub fn publish(
        self: &Arc<Self>,
        client: &Arc<str>,
        connection_id: u64,
        message: Message,
        qos2_packet_id: Option<u16>,
    ) -> PublishOutcome {
        let mut state = self.lock();
        let mut effects = Effects::default();
        let mut outcome = PublishOutcome {
            ticket: 0,
            replicated: None,
            matched: false,
            duplicate: false,
        };
        if let Some(pid) = qos2_packet_id {
            let Some(session) = state.sessions.get_mut(client) else {
                return outcome;
            };
            if session.connection.as_ref().map(|c| c.id) != Some(connection_id) {
                return outcome;
            }
            if session.begin_incoming_qos2(pid, &mut effects) {
                outcome.ticket = self.finish(&mut state, effects, Vec::new());
                outcome.matched = true;
                outcome.duplicate = true;
                return outcome;
            }
        }
        outcome.matched = self.route(&mut state, Arc::new(message), Origin::Local, &mut effects);
        outcome.replicated = effects.replicated.take();
        outcome.ticket = self.finish(&mut state, effects, Vec::new());
        outcome
    }

    // ----- cluster ------------------------------------------------------------------------

    /// Joins this broker to a cluster: announces its routes and forwards from now on.
    pub fn attach_cluster(&self, cluster: Arc<Cluster>) {
        self.set_clock_node(hlc::node_tag(cluster.id()));
        // A completion older than this reached every peer that did not find us dead.
        let window = cluster.detection_time() + Duration::from_secs(5);
        self.lock()
            .merge_dedup
            .set_window(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
        let filters: Vec<String> = self.lock().local_filters.keys().cloned().collect();
        cluster.local_routes_changed(filters, Vec::new());
        let _ = self.cluster.set(cluster);
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// The node tag of this node's versions (from its cluster id; 0 for a single node).
    fn set_clock_node(&self, tag: u64) {
        self.lock().clock.set_node(tag);
    }

    /// Publishes a will on behalf of the cluster (its client's node died).
    pub fn publish_will(self: &Arc<Self>, message: Message) {
        let mut state = self.lock();
        let mut effects = Effects {
            publish: vec![message],
            ..Effects::default()
        };
        self.finish(&mut state, std::mem::take(&mut effects), Vec::new());
    }

    /// A message forwarded by another node, for local subscribers only (with `shared_only`,
    /// just for the shared groups named; see [`PeerForward`]).
    ///
    /// Returns the store ticket that backs the message's copies here (and at the backups of
    /// the sessions it was queued for), which the forward's acknowledgement waits for; `None`
    /// when the message is held for a session just handed over here, and acknowledged once
    /// that session has it.
    pub fn publish_from_peer(self: &Arc<Self>, message: Message, forward: PeerForward) -> Option<Ticket> {
        let PeerForward {
            sender,
            shared_groups,
            origin,
            shared_only,
            ack,
            requests,
        } = forward;
        let mut state = self.lock();
        let mut effects = Effects::default();
        let from = Origin::Peer {
            sender,
            groups: shared_groups,
            origin: origin.as_ref(),
            shared_only,
        };
        self.route(&mut state, Arc::new(message), from, &mut effects);
        let held_for = std::mem::take(&mut effects.held_for);
        let ticket = self.finish(&mut state, effects, Vec::new());
        if held_for.is_empty() || ack == 0 {
            return Some(ticket);
        }
        let ack = handover::HeldAck {
            node: sender.clone(),
            seq: ack,
            ticket,
            requests: requests.to_vec(),
        };
        state.order_holds.hold_ack(&held_for, ack);
        None
    }

    /// A message parked by another node while the sessions of a dead node were taken over:
    /// delivered to those of `clients` (the sessions adopted from it) that match. Returns the
    /// ticket backing the copies, like [`Broker::publish_from_peer`].
    pub fn publish_to_clients(self: &Arc<Self>, message: Message, clients: &HashSet<Arc<str>>) -> Ticket {
        let mut state = self.lock();
        let mut effects = Effects::default();
        self.route(&mut state, Arc::new(message), Origin::Heir { clients }, &mut effects);
        self.finish(&mut state, effects, Vec::new())
    }

    /// A shared-group message whose member's node left before settling it: it goes to
    /// another member of each group (here or on another node).
    pub fn redeliver_shared(self: &Arc<Self>, message: Message, groups: Vec<Arc<str>>) {
        let now = now_ms();
        let limits = self.limits();
        let mut state = self.lock();
        let mut effects = Effects::default();
        let message = Arc::new(message);
        let mut local: Vec<Arc<str>> = groups
            .iter()
            .filter(|g| state.shared.contains_key(*g))
            .cloned()
            .collect();
        if let Some(cluster) = self.cluster.get() {
            local = cluster.route(&message, &local, Some(&groups), &mut effects.awaits).1;
        }
        for key in local {
            let seq = state.seq();
            dispatch_shared(
                &mut state,
                &key,
                seq,
                message.clone(),
                None,
                None,
                limits,
                now,
                &mut effects,
            );
        }
        self.finish(&mut state, effects, Vec::new());
    }

    /// A retained message or deletion from another node (`from`, for the log): applied if it
    /// is newer than what this node has for the topic. Returns whether it was.
    pub fn apply_retained(self: &Arc<Self>, from: &str, entry: RetainedEntry) -> bool {
        self.apply_retained_entries(from, vec![entry]).applied > 0
    }

    /// A peer's retained snapshot (on join and merge): every entry is applied by the same
    /// newest-version-wins rule, and the result is logged.
    pub fn apply_retained_snapshot(self: &Arc<Self>, from: &str, entries: Vec<RetainedEntry>) -> RetainedMerge {
        let merge = self.apply_retained_entries(from, entries);
        tracing::info!(
            "Merged retained messages from node {from}: {} newer applied ({} of them deletions), {} already current",
            merge.applied,
            merge.deleted,
            merge.stale
        );
        merge
    }

    fn apply_retained_entries(self: &Arc<Self>, from: &str, entries: Vec<RetainedEntry>) -> RetainedMerge {
        let now = now_ms();
        let mut state = self.lock();
        let mut effects = Effects::default();
        let mut merge = RetainedMerge::default();
        let mut lead = 0;
        for entry in entries {
            lead = lead.max(state.clock.observe(entry.version, now));
            // An empty payload is a deletion whatever the peer called it.
            let message = entry.message.filter(|m| !m.payload.is_empty()).map(Arc::new);
            match state.retained.apply(&entry.topic, entry.version, message) {
                Applied::Stale => merge.stale += 1,
                Applied::Set(message) => {
                    merge.applied += 1;
                    effects.ops.push(StoreOp::PutRetained(message, entry.version));
                }
                Applied::Deleted { .. } => {
                    merge.applied += 1;
                    merge.deleted += 1;
                    effects.ops.push(StoreOp::DeleteRetained(entry.topic, entry.version));
                }
            }
        }
        if lead > CLOCK_LEAD_WARNING_MS && now.saturating_sub(state.clock_warned_ms) > CLOCK_LEAD_WARNING_MS {
            state.clock_warned_ms = now;
            tracing::warn!(
                "the clock of node {from} is {lead} ms ahead of this node's: retained-message versions follow the fastest clock (check NTP)"
            );
        }
        self.finish(&mut state, effects, Vec::new());
        merge
    }

    /// Every retained message and tombstone, for a node that joins or merges.
    pub fn retained_snapshot(&self) -> Vec<RetainedEntry> {
        self.lock().retained.entries()
    }

    /// Drops the tombstones older than [`retained::TOMBSTONE_RETENTION`].
    pub fn expire_tombstones(self: &Arc<Self>, now_ms: u64) {
        let mut state = self.lock();
        let expired = state.retained.expire_tombstones(now_ms);
        if expired.is_empty() {
            return;
        }
        tracing::debug!(count = expired.len(), "dropped expired retained-message tombstones");
        let effects = Effects {
            ops: expired.into_iter().map(StoreOp::DropTombstone).collect(),
            ..Effects::default()
        };
        self.finish(&mut state, effects, Vec::new());
    }

    /// PUBREL from the client: frees the QoS 2 packet id. Returns whether it was known.
    pub fn release(self: &Arc<Self>, client: &Arc<str>, connection_id: u64, packet_id: u16) -> (bool, Ticket) {
        self.with_session(client, connection_id, |s, _, e| s.release_incoming_qos2(packet_id, e))
    }

    /// PUBACK or PUBCOMP from the client.
    pub fn complete(self: &Arc<Self>, client: &Arc<str>, connection_id: u64, packet_id: u16) -> (bool, Ticket) {
        self.with_session(client, connection_id, |s, now, e| s.complete(packet_id, now, e))
    }

    /// PUBREC from the client; the connection answers with PUBREL after the ticket.
    pub fn received(
        self: &Arc<Self>,
        client: &Arc<str>,
        connection_id: u64,
        packet_id: u16,
        reason: u8,
    ) -> (bool, Ticket) {
        self.with_session(client, connection_id, |s, now, e| s.received(packet_id, reason, now, e))
    }

    /// Runs `f` on the session if `connection_id` still holds it.
    fn with_session(
        self: &Arc<Self>,
        client: &Arc<str>,
        connection_id: u64,
        f: impl FnOnce(&mut Session, u64, &mut Effects) -> bool,
    ) -> (bool, Ticket) {
        let now = now_ms();
        let mut state = self.lock();
        let mut effects = Effects::default();
        let Some(session) = state.sessions.get_mut(client) else {
            return (false, 0);
        };
        if session.connection.as_ref().map(|c| c.id) != Some(connection_id) {
            return (false, 0);
        }
        let known = f(session, now, &mut effects);
        (known, self.finish(&mut state, effects, Vec::new()))
    }

    /// Matches a message against every subscription and hands it to the sessions.
    fn route(&self, state: &mut State, message: Arc<Message>, origin: Origin, effects: &mut Effects) -> bool {
        let now = now_ms();
        let limits = self.limits();
        let mut matched = false;
        if origin == Origin::Local && message.retain && self.settings.mqtt.retained_messages_enabled {
            // A new version, newer than everything this node holds (see `State::clock`). An
            // empty payload deletes the retained message [MQTT-3.3.1-6] [MQTT-3.3.1-7]; the
            // deletion is kept as a tombstone so that an old copy elsewhere cannot return.
            let version = state.clock.now(now);
            let value = (!message.payload.is_empty()).then(|| message.clone());
            match state.retained.apply(&message.topic, version, value) {
                Applied::Set(m) => effects.ops.push(StoreOp::PutRetained(m, version)),
                Applied::Deleted { .. } => effects
                    .ops
                    .push(StoreOp::DeleteRetained(message.topic.clone(), version)),
                Applied::Stale => {
                    tracing::error!(topic = %message.topic, "BUG: a local retained write was older than the stored one")
                }
            }
            if let Some(cluster) = self.cluster.get() {
                let entry = RetainedEntry {
                    topic: message.topic.clone(),
                    version,
                    message: (!message.payload.is_empty()).then(|| (*message).clone()),
                };
                effects.replicated = cluster.replicate_retained(&entry);
            }
        }
        // The node a message came from directly (this one for its own).
        let me = self.cluster.get().map(|c| c.id());
        let sender: Option<&Arc<str>> = match origin {
            Origin::Peer { sender, .. } => Some(sender),
            Origin::Local => me,
            Origin::Heir { .. } => None,
        };
        if !state.claims.is_empty() && matches!(origin, Origin::Local | Origin::Peer { shared_only: false, .. }) {
            handover::park_for_claims(state, &message, sender);
        }
        // One delivery per client, with the highest QoS and every subscription identifier of
        // its matching subscriptions [MQTT-3.3.4-2] [MQTT-3.3.4-3].
        let mut direct: HashMap<Arc<str>, (u8, bool, Vec<u32>)> = HashMap::new();
        let mut groups: Vec<Arc<str>> = Vec::new();
        state
            .tree
            .for_each_match(&message.topic, |_, subscriber, sub| match subscriber {
                Subscriber::Client(id) => {
                    if sub.no_local && **id == *message.publisher {
                        return;
                    }
                    let entry = direct.entry(id.clone()).or_insert((0, false, Vec::new()));
                    entry.0 = entry.0.max(sub.qos.min(message.qos));
                    entry.1 |= sub.retain_as_published && message.retain;
                    entry.2.extend(sub.subscription_id);
                }
                Subscriber::Shared(key) => groups.push(key.clone()),
            });
        // Shared groups: one member in the whole cluster gets the message. The publishing node
        // picks which node serves each group; a forwarded message says which groups are ours.
        let mut from_origin = None;
        match (origin, self.cluster.get()) {
            (Origin::Local, Some(cluster)) => {
                let (remote, local_groups) = cluster.route(&message, &groups, None, &mut effects.awaits);
                matched |= remote;
                groups = local_groups;
            }
            (
                Origin::Peer {
                    groups: ours,
                    origin,
                    shared_only,
                    ..
                },
                _,
            ) => {
                groups.retain(|g| ours.iter().any(|o| **o == **g));
                from_origin = origin.cloned();
                if shared_only {
                    direct.clear();
                }
            }
            (Origin::Heir { clients }, _) => {
                direct.retain(|c, _| clients.contains(c));
                groups.clear();
            }
            _ => {}
        }
        matched |= !direct.is_empty() || !groups.is_empty();
        for (client, (qos, retain, subscription_ids)) in direct {
            if let Some(sender) = sender
                && !state.order_holds.is_empty()
                && state.order_holds.hold(&client, sender, &message)
            {
                effects.held_for.push(client);
                continue;
            }
            if qos == 2 && !state.recent_qos2.is_empty() && state.recent_qos2.is_repeat(&client, &message, now) {
                tracing::debug!(%client, topic = %message.topic, "second copy of a QoS 2 message during a handover dropped");
                continue;
            }
            let seq = state.seq();
            let Some(session) = state.sessions.get_mut(&client) else {
                continue;
            };
            tracing::trace!(%client, ?origin, payload = %String::from_utf8_lossy(&message.payload[..message.payload.len().min(16)]), "given to the session");
            let record = OutgoingRecord {
                message: message.clone(),
                qos,
                retain,
                subscription_ids,
                shared: None,
                packet_id: None,
                released: false,
                origin: None,
            };
            session.deliver(seq, record, limits, now, effects);
        }
        for key in groups {
            let seq = state.seq();
            let origin = from_origin.clone();
            if !dispatch_shared(
                state,
                &key,
                seq,
                message.clone(),
                None,
                origin.clone(),
                limits,
                now,
                effects,
            ) && let Some((node, id)) = origin
            {
                // The group has no member here any more: nothing to wait for.
                effects.settled.push((node, id, key));
            }
        }
        if origin == Origin::Local && !effects.held_for.is_empty() {
            // Held for a session just handed over here: its publisher is acknowledged once the
            // session has it (a request of this node's own, answered by the release).
            let held_for = std::mem::take(&mut effects.held_for);
            if message.qos > 0
                && let Some(cluster) = self.cluster.get()
            {
                let seq = cluster.own_request();
                effects.awaits.push(seq);
                let ack = handover::HeldAck {
                    node: cluster.id().clone(),
                    seq,
                    ticket: 0,
                    requests: Vec::new(),
                };
                state.order_holds.hold_ack(&held_for, ack);
            }
        }
        matched
    }

    // ----- subscribe / unsubscribe --------------------------------------------------------

    /// SUBSCRIBE: returns one reason code per filter, in order [MQTT-3.8.4-6], and the ticket
    /// to wait for before the SUBACK. Matching retained messages are sent after it.
    pub fn subscribe(
        self: &Arc<Self>,
        client: &Arc<str>,
        connection_id: u64,
        filters: &[(String, SubscriptionOptions)],
        subscription_id: Option<u32>,
    ) -> (Vec<u8>, Ticket) {
        let now = now_ms();
        let limits = self.limits();
        let mut state = self.lock();
        let mut effects = Effects::default();
        let mut codes = Vec::with_capacity(filters.len());
        match state.sessions.get(client) {
            Some(s) if s.connection.as_ref().map(|c| c.id) == Some(connection_id) => {}
            _ => return (vec![reason::UNSPECIFIED_ERROR; filters.len()], 0),
        }
        for (filter, options) in filters {
            let code = self.check_filter(filter, subscription_id);
            if code != reason::SUCCESS {
                codes.push(code);
                continue;
            }
            let granted = (options.qos as u8).min(self.settings.mqtt.max_qos);
            let record = SubscriptionRecord {
                qos: granted,
                no_local: options.no_local,
                retain_as_published: options.retain_as_published,
                retain_handling: options.retain_handling,
                subscription_id,
            };
            let existed = add_subscription(&mut state, client, filter.clone(), record);
            let Some(session) = state.sessions.get(client) else {
                continue;
            };
            if session.is_persistent() {
                effects
                    .ops
                    .push(StoreOp::PutSubscription(client.clone(), filter.clone(), record));
            }
            codes.push(granted);
            // Retained messages: not for shared subscriptions [MQTT-3.8.4-?], and by Retain
            // Handling: 0 always, 1 only for a new subscription, 2 never [MQTT-3.3.1-9..11].
            let shared = matches!(mqtt::topic::parse_shared(filter), Ok(Some(_)));
            let send_retained = !shared && (options.retain_handling == 0 || (options.retain_handling == 1 && !existed));
            if send_retained {
                let mut matching: Vec<Arc<Message>> = state
                    .retained
                    .messages()
                    .filter(|m| mqtt::topic::matches(filter, &m.topic) && !m.is_expired(now))
                    .cloned()
                    .collect();
                matching.sort_by(|a, b| a.topic.cmp(&b.topic));
                for message in matching {
                    let seq = state.seq();
                    let Some(session) = state.sessions.get_mut(client) else {
                        break;
                    };
                    let record = OutgoingRecord {
                        qos: message.qos.min(granted),
                        message,
                        retain: true, // [MQTT-3.3.1-8]
                        subscription_ids: subscription_id.into_iter().collect(),
                        shared: None,
                        packet_id: None,
                        released: false,
                        origin: None,
                    };
                    session.deliver(seq, record, limits, now, &mut effects);
                }
            }
        }
        let ticket = self.finish(&mut state, effects, Vec::new());
        (codes, ticket)
    }

    /// The reason code a filter gets before any state changes: SUCCESS or why it is refused.
    fn check_filter(&self, filter: &str, subscription_id: Option<u32>) -> u8 {
        let mqtt_cfg = &self.settings.mqtt;
        if filter.len() as u64 > u64::from(self.settings.restrictions.max_topic_length) {
            return reason::TOPIC_FILTER_INVALID;
        }
        let inner = match mqtt::topic::parse_shared(filter) {
            Err(_) => return reason::TOPIC_FILTER_INVALID,
            Ok(Some(shared)) => {
                if !mqtt_cfg.shared_subscriptions_enabled {
                    return reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED;
                }
                shared.filter
            }
            Ok(None) => filter,
        };
        if !mqtt::topic::valid_topic_filter(inner) {
            return reason::TOPIC_FILTER_INVALID;
        }
        if !mqtt_cfg.wildcard_subscriptions_enabled && (inner.contains('+') || inner.contains('#')) {
            return reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED;
        }
        if subscription_id.is_some() && !mqtt_cfg.subscription_identifier_enabled {
            return reason::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED;
        }
        reason::SUCCESS
    }

    /// UNSUBSCRIBE: one reason code per filter.
    pub fn unsubscribe(
        self: &Arc<Self>,
        client: &Arc<str>,
        connection_id: u64,
        filters: &[String],
    ) -> (Vec<u8>, Ticket) {
        let mut state = self.lock();
        let mut effects = Effects::default();
        match state.sessions.get(client) {
            Some(s) if s.connection.as_ref().map(|c| c.id) == Some(connection_id) => {}
            _ => return (vec![reason::UNSPECIFIED_ERROR; filters.len()], 0),
        }
        let mut codes = Vec::with_capacity(filters.len());
        for filter in filters {
            if remove_subscription(&mut state, client, filter) {
                if state.sessions.get(client).is_some_and(|s| s.is_persistent()) {
                    effects
                        .ops
                        .push(StoreOp::DeleteSubscription(client.clone(), filter.clone()));
                }
                codes.push(reason::SUCCESS);
            } else {
                codes.push(reason::NO_SUBSCRIPTION_EXISTED);
            }
        }
        let ticket = self.finish(&mut state, effects, Vec::new());
        (codes, ticket)
    }

    // ----- effects ------------------------------------------------------------------------

    /// Applies an operation's effects in order: internal publishes (wills), store ops (one
    /// ticket), packets to connections, timers.
    fn finish(self: &Arc<Self>, state: &mut State, mut effects: Effects, timers: Vec<Timer>) -> Ticket {
        let mut published = 0;
        while published < effects.publish.len() {
            let message = effects.publish[published].clone();
            published += 1;
            self.route(state, Arc::new(message), Origin::Local, &mut effects);
        }
        if let Some(cluster) = self.cluster.get() {
            let (added, removed) = std::mem::take(&mut state.route_changes);
            cluster.local_routes_changed(added, removed);
            cluster.shared_settled(std::mem::take(&mut effects.settled));
        } else {
            state.route_changes = Default::default();
        }
        if !effects.completed_qos2.is_empty() {
            let now = now_ms();
            for (client, message) in effects.completed_qos2.drain(..) {
                state.merge_dedup.completed(&client, handover::identity(&message), now);
            }
        }
        self.replicate_sessions(state, &mut effects);
        let awaits = std::mem::take(&mut effects.awaits);
        let ticket = self.submit_ops(std::mem::take(&mut effects.ops), !awaits.is_empty());
        if let Some(cluster) = self.cluster.get() {
            cluster.bind(&awaits, ticket);
        }
        for (tx, mut out, wait) in effects.sends {
            if wait && let Outbound::Packet(_, t) = &mut out {
                *t = Some(ticket);
            }
            // A closed channel means the connection is already gone; its session keeps the state.
            let _ = tx.send(out);
        }
        for timer in timers {
            let broker = Arc::clone(self);
            let delay = match &timer {
                Timer::Will { delay, .. } => *delay,
                Timer::Expiry { after, .. } => *after,
            };
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                broker.on_timer(timer);
            });
        }
        ticket
    }

    // ----- inspection (admin, tests) ------------------------------------------------------

    pub fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }

    pub fn retained_count(&self) -> usize {
        self.lock().retained.len()
    }

    /// Retained-message deletions remembered (for tests and the admin API).
    pub fn tombstone_count(&self) -> usize {
        self.lock().retained.tombstone_count()
    }

    pub fn subscription_count(&self) -> usize {
        self.lock().tree.len()
    }

    /// A session's state, if it exists.
    pub fn session_info(&self, client: &str) -> Option<SessionInfo> {
        self.lock().sessions.get(client).map(|s| SessionInfo {
            connected: s.connection.is_some(),
            queued: s.queued_len(),
            inflight: s.inflight_len(),
            subscriptions: s.subscriptions.len(),
        })
    }
}

/// Adds (or replaces) a subscription in the session and the topic tree; returns whether it
/// existed before.
fn add_subscription(state: &mut State, client: &Arc<str>, filter: String, record: SubscriptionRecord) -> bool {
    let Some(session) = state.sessions.get_mut(client) else {
        return false;
    };
    let existed = session.subscriptions.insert(filter.clone(), record).is_some();
    match mqtt::topic::parse_shared(&filter) {
        Ok(Some(shared)) => {
            let key: Arc<str> = Arc::from(filter.as_str());
            let group = state.shared.entry(key.clone()).or_default();
            if !group.members.contains(client) {
                group.members.push(client.clone());
            }
            let inner = shared.filter.to_owned();
            // The tree holds one entry per group; the options live with each member.
            state.tree.insert(&inner, Subscriber::Shared(key), record);
            if !existed {
                state.route_added(&filter);
            }
        }
        _ => {
            state.tree.insert(&filter, Subscriber::Client(client.clone()), record);
            if !existed {
                state.route_added(&filter);
            }
        }
    }
    existed
}

/// Removes a subscription from the session and the topic tree; returns whether it existed.
fn remove_subscription(state: &mut State, client: &Arc<str>, filter: &str) -> bool {
    let Some(session) = state.sessions.get_mut(client) else {
        return false;
    };
    if session.subscriptions.remove(filter).is_none() {
        return false;
    }
    match mqtt::topic::parse_shared(filter) {
        Ok(Some(shared)) => {
            let inner = shared.filter.to_owned();
            if let Some(group) = state.shared.get_mut(filter) {
                group.members.retain(|m| m != client);
                if group.members.is_empty() {
                    state.shared.remove(filter);
                    state.tree.remove(&inner, &Subscriber::Shared(Arc::from(filter)));
                }
            }
            state.route_removed(filter);
        }
        _ => {
            state.tree.remove(filter, &Subscriber::Client(client.clone()));
            state.route_removed(filter);
        }
    }
    true
}

/// Ends a session: its subscriptions leave the tree and its rows leave the disk.
fn remove_session(state: &mut State, client: &Arc<str>, effects: &mut Effects) {
    let filters: Vec<String> = match state.sessions.get(client) {
        Some(s) => s.subscriptions.keys().cloned().collect(),
        None => return,
    };
    for filter in filters {
        remove_subscription(state, client, &filter);
    }
    if let Some(session) = state.sessions.remove(client)
        && session.is_persistent()
    {
        effects.ops.push(StoreOp::DeleteSession(client.clone()));
        if let Some(backups) = session.backups {
            effects.dropped_backups.push((client.clone(), backups));
        }
    }
}

/// A member left: its unacknowledged shared-subscription messages go to other members.
fn take_shared_pending(state: &mut State, client: &Arc<str>, limits: QueueLimits, now: u64, effects: &mut Effects) {
    let Some(session) = state.sessions.get_mut(client) else {
        return;
    };
    let pending = session.take_shared_pending(effects);
    for (seq, record) in pending {
        let Some(key) = record.shared.clone() else { continue };
        if !dispatch_shared(
            state,
            &key,
            seq,
            record.message.clone(),
            Some(client),
            record.origin.clone(),
            limits,
            now,
            effects,
        ) {
            // Nobody else can take it: it stays with this member.
            if let Some(session) = state.sessions.get_mut(client) {
                session.deliver(seq, record, limits, now, effects);
            }
        }
    }
}

/// Sends a message to one member of a shared subscription group: the next connected member
/// with room in its window, else the next connected one, else the next one that can queue.
/// Returns false if no member (other than `exclude`) could take it.
#[allow(clippy::too_many_arguments)]
fn dispatch_shared(
    state: &mut State,
    key: &Arc<str>,
    seq: u64,
    message: Arc<Message>,
    exclude: Option<&Arc<str>>,
    origin: Option<(String, u64)>,
    limits: QueueLimits,
    now: u64,
    effects: &mut Effects,
) -> bool {
    let State { sessions, shared, .. } = state;
    let Some(group) = shared.get_mut(key) else { return false };
    let n = group.members.len();
    let candidates = || {
        (0..n)
            .map(|i| (group.next + i) % n)
            .filter(|&i| Some(&group.members[i]) != exclude)
    };
    let pick =
        |want: fn(&Session) -> bool| candidates().find(|&i| sessions.get(&group.members[i]).is_some_and(|s| want(s)));
    let chosen = pick(|s| s.has_window())
        .or_else(|| pick(|s| s.connection.is_some()))
        .or_else(|| pick(|s| s.is_persistent()));
    let Some(index) = chosen else { return false };
    let member = group.members[index].clone();
    group.next = (index + 1) % n;
    let Some(session) = sessions.get_mut(&member) else {
        return false;
    };
    let Some(sub) = session.subscriptions.get(&**key).copied() else {
        return false;
    };
    let record = OutgoingRecord {
        qos: message.qos.min(sub.qos),
        retain: sub.retain_as_published && message.retain,
        subscription_ids: sub.subscription_id.into_iter().collect(),
        message,
        shared: Some(key.clone()),
        packet_id: None,
        released: false,
        origin,
    };
    session.deliver(seq, record, limits, now, effects);
    true
}

/// `QoS` from a stored byte, for callers outside the codec.
pub fn qos_of(v: u8) -> QoS {
    QoS::from_u8(v).unwrap_or(QoS::AtMostOnce)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(node: &str) -> Arc<Broker> {
        let b = Broker::new(Settings::default(), None, Loaded::default());
        b.set_clock_node(hlc::node_tag(node));
        b
    }

    /// A retained publish (or deletion, with an empty payload) made on this node.
    fn retain(b: &Arc<Broker>, topic: &str, payload: &'static str) {
        b.publish_will(Message::retained_for_test(topic, payload, "t", now_ms()));
    }

    fn retained(b: &Broker) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = b
            .lock()
            .retained
            .messages()
            .map(|m| (m.topic.clone(), String::from_utf8_lossy(&m.payload).into_owned()))
            .collect();
        out.sort();
        out
    }

    /// Waits (a condition, not a guess) until the wall clock is past `ms`.
    fn wall_past(ms: u64) {
        while now_ms() <= ms {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Two nodes that write while apart converge on the newest version of every topic when
    /// they exchange snapshots, deletions included, in either order, any number of times.
    #[tokio::test]
    async fn partitioned_writes_merge_by_newest_version_with_deletions() {
        let (a, b) = (broker("node-a"), broker("node-b"));
        retain(&a, "t/a", "first");
        b.apply_retained_snapshot("node-a", a.retained_snapshot());
        assert_eq!(retained(&b), vec![("t/a".into(), "first".into())]);

        // Apart: B sets C and sets A again; later, A deletes A and sets B.
        retain(&b, "t/c", "on b");
        retain(&b, "t/a", "again on b");
        wall_past(now_ms() + 1);
        retain(&a, "t/a", "");
        retain(&a, "t/b", "on a");
        assert_eq!(a.tombstone_count(), 1);

        // Heal: each side sends what it has.
        let (from_a, from_b) = (a.retained_snapshot(), b.retained_snapshot());
        let at_b = b.apply_retained_snapshot("node-a", from_a.clone());
        let at_a = a.apply_retained_snapshot("node-b", from_b.clone());
        assert_eq!(
            at_b,
            RetainedMerge {
                applied: 2,
                deleted: 1,
                stale: 0
            }
        );
        assert_eq!(
            at_a,
            RetainedMerge {
                applied: 1,
                deleted: 0,
                stale: 1
            }
        );
        let expected = vec![("t/b".into(), "on a".into()), ("t/c".into(), "on b".into())];
        assert_eq!(retained(&a), expected);
        assert_eq!(retained(&b), expected);
        assert_eq!((a.tombstone_count(), b.tombstone_count()), (1, 1));
        // Again, and the stale side's old snapshot once more: nothing changes.
        assert_eq!(b.apply_retained_snapshot("node-a", from_a).applied, 0);
        assert_eq!(a.apply_retained_snapshot("node-b", from_b).applied, 0);
        assert_eq!(retained(&a), expected);

        // A write after seeing the tombstone wins over it, whatever the wall clock says.
        retain(&b, "t/a", "back");
        a.apply_retained_snapshot("node-b", b.retained_snapshot());
        assert!(retained(&a).contains(&("t/a".into(), "back".into())));
    }

    /// A version from a peer whose clock runs ahead is observed: the next local write is newer.
    #[tokio::test]
    async fn local_writes_after_a_fast_peer_are_newer() {
        let a = broker("node-a");
        let ahead = hlc::Timestamp {
            physical_ms: now_ms() + 3_600_000,
            logical: 4,
            node: hlc::node_tag("fast"),
        };
        let entry = RetainedEntry {
            topic: "t".into(),
            version: ahead,
            message: None,
        };
        assert!(a.apply_retained("fast", entry.clone()));
        assert!(!a.apply_retained("fast", entry), "idempotent");
        retain(&a, "t", "local");
        assert_eq!(retained(&a), vec![("t".into(), "local".into())]);
        assert!(a.retained_snapshot()[0].version > ahead);
    }
}
