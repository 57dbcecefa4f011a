//! Clustering: several nodes acting as one logical broker.
//!
//! - [`wire`]: the versioned protocol between nodes, validated as untrusted input.
//! - [`membership`]: who is in the cluster; failure detection by heartbeat and TCP health check.
//! - [`routes`]: which node has subscribers for which filters, so a publish is forwarded once
//!   per interested node.
//! - [`transport`]: TCP connections between nodes (one dialer per address, one outbox per node).
//! - [`node_id`]: the node's id, kept in the data folder.
//! - [`hlc`]: the hybrid logical clock that versions replicated writes (newest version wins).
//! - [`placement`]: which nodes keep the copies of a persistent session (rendezvous hashing).
//! - [`replication`]: session ops, the copies kept for other nodes, and acknowledgement waits.
//! - [`takeover`]: messages parked while a dead node's sessions are taken over by their heirs.
//! - [`handed`]: sessions just handed to another node's connection, whose messages follow them.
//!
//! One core task owns the membership and applies every event in order; the broker talks to the
//! cluster through [`Cluster`]'s methods, which never block.

pub mod handed;
pub mod hlc;
pub mod membership;
pub mod merge_acks;
pub mod merge_holds;
pub mod node_id;
pub mod placement;
pub mod replication;
pub mod routes;
pub mod takeover;
pub mod transport;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, oneshot, watch};

use crate::broker::message::Message;
use crate::broker::retained::RetainedEntry;
use crate::broker::{
    Broker, ClaimAnswer, ClaimStamp, HandBack, HandedDelivery, HeldAck, HoldOrder, ORDER_HOLD_LIMIT, PeerForward,
    SessionExport,
};
use crate::config::{ClusterConfig, ClusterTransport, Discovery};
use crate::store::records::WillRecord;
use crate::store::{StoreOp, Ticket};
use membership::{Change, FailureDetection, Membership};
use replication::{Kind, Replica, Replicas, SessionOp, Waits};
use routes::RemoteRoutes;
use takeover::{Outcome, Takeovers, takeover_id};
use transport::Outbox;

/// A node's cluster id.
pub type NodeId = Arc<str>;

/// How long a node that went down counts as gone in claims sent to peers that may not have
/// noticed yet (a few heartbeat timeouts).
const RECENTLY_DOWN: Duration = Duration::from_secs(30);

/// QoS 0 forwards to a peer are shed beyond this many queued bytes; QoS 1/2 never are.
const MAX_QUEUED_QOS0_BYTES: usize = 64 * 1024 * 1024;

/// What the cluster layer needs from config.xml, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: String,
    /// The address peers use to reach us (`external-address:external-port` behind NAT).
    pub advertised: String,
    /// Addresses to try from discovery.
    pub seeds: Vec<String>,
    pub heartbeat_interval: Duration,
    pub detection: FailureDetection,
    /// `<replication><replica-count>`: copies of every persistent session, the home included.
    pub replica_count: usize,
}

impl Settings {
    pub fn from_config(config: &ClusterConfig) -> anyhow::Result<Settings> {
        let tcp = match &config.transport {
            ClusterTransport::Tcp(tcp) => tcp,
            ClusterTransport::Udp(_) => {
                anyhow::bail!("<cluster><transport><udp> is not supported yet: use <tcp> (see README, Clustering)")
            }
        };
        anyhow::ensure!(tcp.tls.is_none(), "<cluster><transport><tcp><tls> is not supported yet");
        let seeds = match &config.discovery {
            Discovery::Static(nodes) => nodes.iter().map(|n| format!("{}:{}", n.host, n.port)).collect(),
            // Addresses arrive at runtime from discovery extensions, through `discovered`.
            Discovery::Extension { .. } => Vec::new(),
            other => anyhow::bail!("<cluster><discovery> {other:?} is not supported yet: use <static> or <extension>"),
        };
        let bind_address = tcp.bind_address.clone().unwrap_or_else(|| "0.0.0.0".into());
        let advertised_host = tcp.external_address.clone().unwrap_or_else(|| bind_address.clone());
        let advertised_port = tcp.external_port.unwrap_or(tcp.bind_port);
        let hb = &config.failure_detection.heartbeat;
        Ok(Settings {
            bind: format!("{bind_address}:{}", tcp.bind_port),
            advertised: format!("{advertised_host}:{advertised_port}"),
            seeds,
            heartbeat_interval: Duration::from_millis(hb.interval_ms.max(10)),
            detection: FailureDetection {
                heartbeat_timeout: hb.enabled.then(|| Duration::from_millis(hb.timeout_ms)),
                health_check: config.failure_detection.tcp_health_check.enabled,
            },
            replica_count: config.replica_count.max(1) as usize,
        })
    }
}

/// What the core task reacts to.
#[derive(Debug)]
pub(crate) enum CoreEvent {
    /// Our dialer completed a handshake with `node` at `address`.
    Connected {
        node: NodeId,
        address: String,
    },
    /// A peer dialed us; we make sure to dial it back.
    Inbound {
        node: NodeId,
        address: String,
    },
    /// Discovery extensions found these addresses.
    Discovered(Vec<String>),
    /// A first (or later) connection attempt to a discovery address finished.
    AttemptDone {
        address: String,
    },
    Message {
        node: NodeId,
        message: wire::Message,
    },
    ConnectionLost {
        node: NodeId,
    },
    LocalRoutes {
        added: Vec<String>,
        removed: Vec<String>,
    },
    /// A local client's will is set (`Some`) or no longer ours to keep (`None`).
    LocalWill {
        client: String,
        will: Option<WillRecord>,
    },
    /// The delay of a dead node's client's will is over.
    DeadWillDue {
        client: String,
        generation: u64,
    },
    /// We leave the cluster: `Leave` to every node, answered once it is in their queues.
    Leave(oneshot::Sender<()>),
    /// A session handed over here was installed: its order barrier goes to every node.
    OrderBarrier {
        client: String,
        token: u64,
        via: NodeId,
    },
    Tick,
}

/// Pending retained replications: seq → peers still to acknowledge, and who waits.
type PendingAcks = HashMap<u64, (HashSet<NodeId>, oneshot::Sender<()>)>;

type PendingShared = HashMap<NodeId, HashMap<u64, (Message, HashSet<Arc<str>>)>>;

/// Node → the sessions it handed to our connections, with when.
type ClaimedFrom = HashMap<NodeId, Vec<(Instant, Arc<str>)>>;

/// A claim on a client id waiting for the other nodes' answers.
struct PendingClaim {
    waiting: HashSet<NodeId>,
    found: Option<SessionExport>,
    /// The live node that handed `found` over (`None`: our own copy, or nothing).
    from: Option<NodeId>,
    /// Nodes that went away before they answered.
    gone: Vec<NodeId>,
    refused: bool,
    done: Option<oneshot::Sender<Result<Claimed, ClaimRefused>>>,
}

impl PendingClaim {
    fn claimed(&mut self) -> Claimed {
        Claimed {
            export: self.found.take(),
            from: self.from.take(),
            gone: std::mem::take(&mut self.gone),
        }
    }
}

/// What a claim got: the session, and the live node that handed it over.
#[derive(Debug, Default)]
pub struct Claimed {
    pub export: Option<SessionExport>,
    pub from: Option<NodeId>,
    /// Nodes that went away before they answered.
    pub gone: Vec<NodeId>,
}

/// Another node has a newer connection of the client id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimRefused;

pub struct Cluster {
    pub(crate) me: NodeId,
    pub(crate) settings: Settings,
    broker: Arc<Broker>,
    core_tx: mpsc::UnboundedSender<CoreEvent>,
    routes: RwLock<RemoteRoutes>,
    /// The peers currently in the cluster (a copy of the membership's view, for the broker).
    alive: RwLock<Vec<NodeId>>,
    outboxes: Mutex<HashMap<NodeId, Arc<Outbox>>>,
    retained_seq: AtomicU64,
    pending_acks: Mutex<PendingAcks>,
    claims: Mutex<HashMap<u64, PendingClaim>>,
    /// Round-robin position per shared subscription group, across the nodes with members.
    shared_turns: Mutex<HashMap<Arc<str>, usize>>,
    /// QoS 1/2 messages sent to another node for its shared-group members, not yet settled
    /// there: node → forward id → (message, groups still open).
    pending_shared: Mutex<PendingShared>,
    next_forward: AtomicU64,
    next_claim: AtomicU64,
    next_order: AtomicU64,
    /// Bytes of session ops sent to backups so far (copies and changes), for the rebalancing log.
    session_op_bytes: AtomicU64,
    /// The protocol version of our connection to each peer (what it can read).
    peer_versions: RwLock<HashMap<NodeId, u16>>,
    /// Sequence numbers of `SessionOps` and `ForwardAcked` requests.
    next_request: AtomicU64,
    /// Acknowledgements the store tickets of client acks wait for; bumped on every change.
    waits: Mutex<Waits>,
    waits_changed: watch::Sender<u64>,
    /// Copies of other nodes' persistent sessions.
    replicas: Mutex<Replicas>,
    /// Takeovers of dead nodes' sessions in progress (lock order: `routes`, then this, then
    /// `waits`).
    takeovers: Mutex<Takeovers>,
    /// The sessions this node adopted from each dead node, for its `TakeoverForward`s.
    adopted_from: Mutex<HashMap<NodeId, HashSet<Arc<str>>>>,
    /// The sessions this node took over, by the node that was their home: if that node comes
    /// back (a partition healed), it kept its own copies, and the two are merged.
    taken_from: Mutex<HashMap<NodeId, HashSet<Arc<str>>>>,
    /// Sessions handed to other nodes' connections moments ago (lock order: after `routes`).
    handed: Mutex<handed::Handed>,
    /// Sessions other nodes handed to our connections, by that node, with when: if it goes
    /// away within [`handed::WINDOW`], the forwards it never acknowledged (see `takeover`) are
    /// theirs too.
    claimed_from: Mutex<ClaimedFrom>,
    /// Session copies handed back after a partition and not yet merged for good (lock order:
    /// after the broker's).
    merge_acks: Mutex<merge_acks::MergeAcks>,
    /// When nodes went down (or left), for claims (see [`Cluster::claim_session`]).
    down_at: Mutex<HashMap<NodeId, Instant>>,
    /// Fault injection for tests (`APIARY_FAULT_IGNORE_SESSION_MERGE`): session copies handed
    /// back to this node are dropped, as if it died before it merged them.
    ignore_merges: bool,
    /// Fault injection for tests (`APIARY_FAULT_DROP_HAND_BACK=<client id>`): that client's
    /// session copy is not sent when handed back, as if this node died before it left.
    drop_hand_back: Option<String>,
    stopping: AtomicBool,
    /// Held by the rebalance pass in progress.
    rebalancing: tokio::sync::Mutex<()>,
    /// Turns true when the node leaves: the listener, dialers and core stop.
    pub(crate) stop: watch::Sender<bool>,
    /// True once the join process finished: the node may serve clients.
    joined: watch::Sender<bool>,
}

impl Cluster {
    /// Binds the cluster port and starts joining. Returns once the join process finished (or
    /// nobody else could be reached).
    pub async fn start(settings: Settings, me: NodeId, broker: Arc<Broker>) -> anyhow::Result<Arc<Cluster>> {
        let listener = tokio::net::TcpListener::bind(&settings.bind)
            .await
            .with_context(|| format!("cannot bind the cluster transport on {}", settings.bind))?;
        tracing::info!(
            "Cluster transport on {} (advertised as {}), cluster id {me}",
            settings.bind,
            settings.advertised
        );
        let (core_tx, core_rx) = mpsc::unbounded_channel();
        let (joined, mut joined_rx) = watch::channel(false);
        let cluster = Arc::new(Cluster {
            me: me.clone(),
            settings: settings.clone(),
            broker: broker.clone(),
            core_tx,
            routes: RwLock::new(RemoteRoutes::default()),
            alive: RwLock::new(Vec::new()),
            outboxes: Mutex::new(HashMap::new()),
            retained_seq: AtomicU64::new(0),
            pending_acks: Mutex::new(HashMap::new()),
            claims: Mutex::new(HashMap::new()),
            shared_turns: Mutex::new(HashMap::new()),
            pending_shared: Mutex::new(HashMap::new()),
            next_forward: AtomicU64::new(0),
            next_claim: AtomicU64::new(0),
            next_order: AtomicU64::new(0),
            session_op_bytes: AtomicU64::new(0),
            peer_versions: RwLock::new(HashMap::new()),
            next_request: AtomicU64::new(0),
            waits: Mutex::new(Waits::default()),
            waits_changed: watch::channel(0).0,
            replicas: Mutex::new(Replicas::default()),
            takeovers: Mutex::new(Takeovers::default()),
            adopted_from: Mutex::new(HashMap::new()),
            taken_from: Mutex::new(HashMap::new()),
            handed: Mutex::new(handed::Handed::default()),
            claimed_from: Mutex::new(HashMap::new()),
            merge_acks: Mutex::new(merge_acks::MergeAcks::default()),
            down_at: Mutex::new(HashMap::new()),
            ignore_merges: std::env::var_os("APIARY_FAULT_IGNORE_SESSION_MERGE").is_some(),
            drop_hand_back: std::env::var("APIARY_FAULT_DROP_HAND_BACK").ok(),
            stopping: AtomicBool::new(false),
            rebalancing: tokio::sync::Mutex::new(()),
            stop: watch::channel(false).0,
            joined,
        });
        broker.attach_cluster(cluster.clone());
        tokio::spawn(transport::listen(cluster.clone(), listener));
        let core = Core::new(cluster.clone(), settings.seeds.iter().cloned().collect());
        tokio::spawn(core.run(core_rx));
        let ticker = cluster.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ticker.settings.heartbeat_interval / 2);
            while !ticker.is_stopping() {
                tick.tick().await;
                ticker.core(CoreEvent::Tick);
            }
        });
        for seed in &settings.seeds {
            tokio::spawn(transport::dial(cluster.clone(), seed.clone()));
        }
        let _ = joined_rx.wait_for(|j| *j).await;
        Ok(cluster)
    }

    pub fn id(&self) -> &NodeId {
        &self.me
    }

    /// Addresses found by discovery extensions: each is dialled (from now on, like a seed).
    pub fn discovered(&self, addresses: Vec<String>) {
        self.core(CoreEvent::Discovered(addresses));
    }

    pub(crate) fn core(&self, event: CoreEvent) {
        let _ = self.core_tx.send(event);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    pub(crate) fn outbox(&self, node: &NodeId) -> Arc<Outbox> {
        let mut boxes = self.outboxes.lock().unwrap_or_else(|e| e.into_inner());
        boxes.entry(node.clone()).or_default().clone()
    }

    fn send(&self, node: &NodeId, message: &wire::Message) {
        self.outbox(node).push(Arc::new(wire::frame(message)));
    }

    fn broadcast(&self, message: &wire::Message) {
        let frame = Arc::new(wire::frame(message));
        for node in self.alive_peers() {
            self.outbox(&node).push(frame.clone());
        }
    }

    /// How many remote routes this node knows (for tests and the admin API).
    pub fn routes_len(&self) -> usize {
        read(&self.routes).len()
    }

    pub fn alive_peers(&self) -> Vec<NodeId> {
        self.alive.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Nodes in the cluster, this one included.
    pub fn size(&self) -> usize {
        1 + self.alive_peers().len()
    }

    // ----- called by the broker (under its lock: never block) ------------------------------

    /// Local subscriptions for these filters started or ended.
    pub fn local_routes_changed(&self, added: Vec<String>, removed: Vec<String>) {
        if !added.is_empty() || !removed.is_empty() {
            self.core(CoreEvent::LocalRoutes { added, removed });
        }
    }

    /// Routes a locally published message in the cluster: forwarded once to every other node
    /// with matching subscribers, and each matching shared subscription group served by one
    /// node (round robin over the nodes with members; `local_groups` are the groups with
    /// members here). Returns whether another node got it, and the groups this node serves.
    ///
    /// With `only_groups`, just those shared groups are served (a redelivery): no plain
    /// subscriber gets the message again.
    ///
    /// A QoS 1/2 message to a peer that speaks protocol 3 asks it to confirm it stored the
    /// message; the request's sequence number is added to `acks`, for the caller to tie to the
    /// store ticket the publisher's acknowledgement waits for ([`Cluster::bind`]).
    pub fn route(
        &self,
        message: &Message,
        local_groups: &[Arc<str>],
        only_groups: Option<&[Arc<str>]>,
        acks: &mut Vec<u64>,
    ) -> (bool, Vec<Arc<str>>) {
        // Held to the end: a takeover report changes routes and flushes parked messages
        // under the write lock, so a message is either parked before it or routed after it.
        let routes = read(&self.routes);
        let (direct, mut remote_groups) = (routes.nodes_for(&message.topic), routes.shared_for(&message.topic));
        let shared_only = only_groups.is_some();
        if let Some(only) = only_groups {
            remote_groups.retain(|(g, _)| only.contains(g));
        }
        let mut per_node: HashMap<NodeId, Vec<String>> = match shared_only {
            true => HashMap::new(),
            false => direct.into_iter().map(|n| (n, Vec::new())).collect(),
        };
        let mut local = Vec::new();
        if !remote_groups.is_empty() {
            // Candidates per group: `None` is this node.
            let mut candidates: std::collections::BTreeMap<Arc<str>, Vec<Option<NodeId>>> = Default::default();
            for g in local_groups {
                candidates.entry(g.clone()).or_default().push(None);
            }
            for (g, node) in remote_groups {
                candidates.entry(g).or_default().push(Some(node));
            }
            let mut turns = self.shared_turns.lock().unwrap_or_else(|e| e.into_inner());
            for (group, mut nodes) in candidates {
                nodes.sort();
                let turn = turns.entry(group.clone()).or_insert(0);
                let chosen = nodes[*turn % nodes.len()].clone();
                *turn = turn.wrapping_add(1);
                match chosen {
                    None => local.push(group),
                    Some(node) => per_node.entry(node).or_default().push(group.to_string()),
                }
            }
        } else {
            local = local_groups.to_vec();
        }
        let forwarded = !per_node.is_empty();
        let mut takeovers = lock(&self.takeovers);
        for (node, shared_groups) in per_node {
            if takeovers.is_takeover_id(&node) {
                // A dead node's routes: the message waits for its sessions' heirs.
                if message.qos > 0 && takeovers.parking(&node).is_some() {
                    let seq = self.next_seq();
                    lock(&self.waits).open(seq, Kind::Forward, std::iter::once(node.clone()));
                    if takeovers.park(&node, seq, message.clone()) {
                        acks.push(seq);
                    }
                }
                continue;
            }
            let outbox = self.outbox(&node);
            if message.qos == 0 && outbox.queued_bytes.load(Ordering::Relaxed) > MAX_QUEUED_QOS0_BYTES {
                tracing::debug!(%node, "peer is slow: QoS 0 forward dropped");
                continue;
            }
            // A QoS 1/2 message for a shared group is kept until the member has it, so that
            // it can go to another member if that node dies first.
            let forward_id = if message.qos > 0 && !shared_groups.is_empty() {
                let id = self.next_forward.fetch_add(1, Ordering::Relaxed) + 1;
                let groups = shared_groups.iter().map(|g| Arc::from(g.as_str())).collect();
                lock(&self.pending_shared)
                    .entry(node.clone())
                    .or_default()
                    .insert(id, (message.clone(), groups));
                id
            } else {
                0
            };
            let forward = if message.qos > 0 && self.peer_version(&node) >= 3 {
                let seq = self.request(Kind::Forward, std::iter::once(node.clone()));
                acks.push(seq);
                takeovers.track(seq, node.clone(), message.clone());
                wire::Message::ForwardAcked {
                    seq,
                    message: message.clone(),
                    shared_groups,
                    forward_id,
                    shared_only,
                }
            } else {
                wire::Message::Forward {
                    message: message.clone(),
                    shared_groups,
                    forward_id,
                    shared_only,
                }
            };
            outbox.push(Arc::new(wire::frame(&forward)));
        }
        drop(takeovers);
        drop(routes);
        if !shared_only {
            acks.extend(self.redirect_handed(message, &self.me));
        }
        (forwarded, local)
    }

    /// A message `node` redirected to us for `client`'s session, which we took over from it
    /// moments ago: delivered (or parked until the session is installed), then acknowledged.
    /// If the session moved on again meanwhile, the message follows it.
    fn handed_forward(self: &Arc<Self>, node: NodeId, seq: u64, client: String, message: Message) {
        let (ticket, onward) = match self.broker.deliver_handed(&client, message) {
            HandedDelivery::Delivered(ticket) => (ticket, Vec::new()),
            HandedDelivery::Parked => (0, Vec::new()),
            HandedDelivery::NoSession(message) => {
                let next = lock(&self.handed).holder(&client);
                match next {
                    Some(next) if next != node => (0, self.redirect_to(&client, &next, &message)),
                    _ => {
                        tracing::debug!(%client, %node, "a redirected message found no session here");
                        (0, Vec::new())
                    }
                }
            }
        };
        if seq != 0 {
            self.send_after_requests(
                node,
                ticket,
                Some(Kind::Session),
                onward,
                wire::Message::ForwardAck { seq },
            );
        }
    }

    /// A message matching sessions handed to other nodes moments ago goes to each new holder
    /// as well, for that session only (see [`handed`]). Returns the requests to wait for.
    fn redirect_handed(&self, message: &Message, origin: &NodeId) -> Vec<u64> {
        self.redirect_matching(message, Some(origin), None)
    }

    /// [`Cluster::redirect_handed`] for these sessions only, of a message a dead node's
    /// forwards left behind (its sender's order marker does not cover it).
    fn redirect_handed_among(&self, message: &Message, clients: &HashSet<Arc<str>>) -> Vec<u64> {
        self.redirect_matching(message, None, Some(clients))
    }

    /// Redirects `message` to the new holders of the handed sessions it matches (of `only`, if
    /// given); `origin`: the node it came from, whose order marker may already cover it.
    fn redirect_matching(
        &self,
        message: &Message,
        origin: Option<&NodeId>,
        only: Option<&HashSet<Arc<str>>>,
    ) -> Vec<u64> {
        let targets = {
            let handed = lock(&self.handed);
            if handed.is_empty() || only.is_some_and(|o| o.is_empty()) {
                return Vec::new();
            }
            handed.matching(&message.topic, origin.map(|o| &**o))
        };
        targets
            .into_iter()
            .filter(|(client, _)| only.is_none_or(|o| o.contains(client)))
            .flat_map(|(client, node)| self.redirect_to(&client, &node, message))
            .collect()
    }

    /// Sends `message` to `node` for `client`'s session; the request to wait for, if any.
    fn redirect_to(&self, client: &str, node: &NodeId, message: &Message) -> Vec<u64> {
        if self.peer_version(node) < 6 {
            return Vec::new();
        }
        let seq = match message.qos {
            0 => 0,
            _ => self.request(Kind::Forward, std::iter::once(node.clone())),
        };
        tracing::trace!(%client, %node, topic = %message.topic, "redirecting a message for a handed-over session");
        self.send(
            node,
            &wire::Message::HandedForward {
                seq,
                client: client.to_owned(),
                message: message.clone(),
            },
        );
        match seq {
            0 => Vec::new(),
            seq => vec![seq],
        }
    }

    /// `from` handed `client`'s session to us (a claim, or a merge): if it dies within
    /// [`handed::WINDOW`], the forwards it never acknowledged are for that session too.
    fn handed_here(&self, client: &Arc<str>, from: &NodeId) {
        let now = Instant::now();
        let mut claimed = lock(&self.claimed_from);
        claimed.retain(|_, sessions| {
            sessions.retain(|(at, _)| now.duration_since(*at) < handed::WINDOW);
            !sessions.is_empty()
        });
        claimed.entry(from.clone()).or_default().push((now, client.clone()));
    }

    /// How long a peer may take to find this node dead (without a heartbeat timeout, the TCP
    /// health check finds it at once; 10 s is assumed).
    pub fn detection_time(&self) -> Duration {
        self.settings
            .detection
            .heartbeat_timeout
            .unwrap_or(Duration::from_secs(10))
    }

    /// What a session that `from` handed over here waits for before it takes messages that
    /// other nodes send here directly (see `broker::handover`); `None` if nothing.
    pub fn hold_order(&self, client: &Arc<str>, from: &NodeId) -> Option<HoldOrder> {
        self.handed_here(client, from);
        if self.peer_version(from) < 7 {
            return None;
        }
        // This node too: what it sent the old holder comes back redirected.
        let waiting: Vec<NodeId> = self
            .alive_peers()
            .into_iter()
            .filter(|n| n != from && self.peer_version(n) >= 7)
            .chain(std::iter::once(self.me.clone()))
            .collect();
        Some(HoldOrder {
            token: self.next_order.fetch_add(1, Ordering::Relaxed) + 1,
            via: from.clone(),
            waiting,
        })
    }

    /// `client`'s session, handed over here, is installed: the barrier for `order` goes out
    /// (through the core, behind the session's routes).
    pub fn order_barrier(&self, client: &str, order: &HoldOrder) {
        self.core(CoreEvent::OrderBarrier {
            client: client.to_owned(),
            token: order.token,
            via: order.via.clone(),
        });
    }

    /// Acknowledges forwards that were held for a session handed over here, once the
    /// session's copies (`ticket`) and their other copies are stored.
    pub fn ack_held(self: &Arc<Self>, acks: Vec<HeldAck>, ticket: Ticket) {
        if acks.is_empty() {
            return;
        }
        let cluster = self.clone();
        // One task for the lot: they were released together.
        tokio::spawn(async move {
            if !cluster.stored_everywhere(ticket).await {
                return;
            }
            for ack in acks {
                if !cluster.stored_everywhere(ack.ticket).await {
                    continue;
                }
                cluster.wait_requests(&ack.requests).await;
                match ack.node == cluster.me {
                    true => cluster.acked(&ack.node, Some(ack.seq)),
                    false => cluster.send(&ack.node, &wire::Message::ForwardAck { seq: ack.seq }),
                }
            }
        });
    }

    /// Waits until `ticket` is committed here and at our sessions' backups (0: nothing to wait
    /// for); false if it could not be stored.
    async fn stored_everywhere(&self, ticket: Ticket) -> bool {
        if ticket == 0 {
            return true;
        }
        if let Some(store) = self.broker.store()
            && let Err(e) = store.wait(ticket).await
        {
            tracing::error!("a held message was not stored: {e}");
            return false;
        }
        self.wait_replicated(ticket, Kind::Session).await;
        true
    }

    /// The shared-group messages a node settled (its member acknowledged or dropped them).
    pub fn shared_settled(&self, settled: Vec<(String, u64, Arc<str>)>) {
        for (node, forward_id, group) in settled {
            let node: NodeId = Arc::from(node.as_str());
            self.send(
                &node,
                &wire::Message::SharedSettled {
                    forward_id,
                    group: group.to_string(),
                },
            );
        }
    }

    fn settle_pending(&self, node: &NodeId, forward_id: u64, group: &str) {
        let mut pending = lock(&self.pending_shared);
        if let Some(by_id) = pending.get_mut(node)
            && let Some((_, groups)) = by_id.get_mut(&forward_id)
        {
            groups.retain(|g| &**g != group);
            if groups.is_empty() {
                by_id.remove(&forward_id);
            }
        }
    }

    /// A node is gone: the shared-group messages it had not settled go to other members.
    fn redeliver_shared_of(&self, node: &NodeId) {
        let pending = lock(&self.pending_shared).remove(node).unwrap_or_default();
        if !pending.is_empty() {
            tracing::info!(%node, count = pending.len(), "redelivering shared subscription messages of a departed node");
        }
        for (_, (message, groups)) in pending {
            self.broker.redeliver_shared(message, groups.into_iter().collect());
        }
    }

    // ----- session replication --------------------------------------------------------------

    pub(crate) fn set_peer_version(&self, node: &NodeId, version: u16) {
        write(&self.peer_versions).insert(node.clone(), version);
    }

    /// The protocol version of our link to `node` (0 if never connected).
    pub fn peer_version(&self, node: &NodeId) -> u16 {
        read(&self.peer_versions).get(node).copied().unwrap_or(0)
    }

    /// The configured replica count.
    pub fn replica_count(&self) -> usize {
        self.settings.replica_count
    }

    /// The backups a session living here gets now: by placement among the live peers that
    /// speak protocol 3 (older ones cannot keep copies).
    pub fn backups_for(&self, client: &str) -> Vec<NodeId> {
        let candidates: Vec<NodeId> = self
            .alive_peers()
            .into_iter()
            .filter(|n| self.peer_version(n) >= 3)
            .collect();
        placement::backups(client, &self.me, &candidates, self.settings.replica_count)
    }

    /// Opens a request that `nodes` (those still alive) must acknowledge; returns its number.
    fn request(&self, kind: Kind, nodes: impl Iterator<Item = NodeId>) -> u64 {
        let seq = self.next_seq();
        let alive: HashSet<NodeId> = self.alive_peers().into_iter().collect();
        lock(&self.waits).open(seq, kind, nodes.filter(|n| alive.contains(n)));
        seq
    }

    /// A request that this node answers itself ([`Cluster::ack_held`]): an acknowledgement
    /// waiting for it waits until then.
    pub fn own_request(&self) -> u64 {
        let seq = self.next_seq();
        lock(&self.waits).open(seq, Kind::Forward, std::iter::once(self.me.clone()));
        seq
    }

    /// A new request number (`SessionOps`, `ForwardAcked`, `TakeoverForward`).
    fn next_seq(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Sends session ops for `client` to `backups`; returns the request to bind to a ticket.
    pub fn send_session_ops(&self, client: &str, backups: &[NodeId], ops: Vec<SessionOp>) -> Option<u64> {
        if backups.is_empty() || ops.is_empty() {
            return None;
        }
        let seq = self.request(Kind::Session, backups.iter().cloned());
        let frame = Arc::new(wire::frame(&wire::Message::SessionOps {
            seq,
            client: client.to_owned(),
            ops,
        }));
        let bytes = frame.len() as u64 * backups.len() as u64;
        self.session_op_bytes.fetch_add(bytes, Ordering::Relaxed);
        for node in backups {
            self.outbox(node).push(frame.clone());
        }
        Some(seq)
    }

    /// Bytes of session ops sent to backups so far.
    pub fn session_op_bytes(&self) -> u64 {
        self.session_op_bytes.load(Ordering::Relaxed)
    }

    /// Ties requests to the store ticket of the operation that made them.
    pub fn bind(&self, seqs: &[u64], ticket: Ticket) {
        if seqs.is_empty() {
            return;
        }
        let mut waits = lock(&self.waits);
        for seq in seqs {
            waits.bind(*seq, ticket);
        }
    }

    /// Whether every acknowledgement that `ticket` (and those before it) waits for arrived.
    pub fn replicated(&self, ticket: Ticket) -> bool {
        lock(&self.waits).done(ticket, Kind::Forward)
    }

    /// Waits until the requests up to `ticket` are acknowledged: of `Session` kind only, or
    /// (`Forward`) all of them. Bounded by failure detection: a node that does not answer is
    /// declared down, and nothing waits for a node that is down.
    pub async fn wait_replicated(&self, ticket: Ticket, kind: Kind) {
        let mut changed = self.waits_changed.subscribe();
        while !lock(&self.waits).done(ticket, kind) {
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until each of `seqs` is acknowledged by every node it went to (or they are gone).
    pub async fn wait_requests(&self, seqs: &[u64]) {
        let mut changed = self.waits_changed.subscribe();
        while seqs.iter().any(|s| lock(&self.waits).is_open(*s)) {
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    fn acked(&self, node: &NodeId, seq: Option<u64>) {
        let changed = match seq {
            Some(seq) => lock(&self.waits).ack(node, seq),
            None => lock(&self.waits).drop_node(node),
        };
        if changed {
            self.waits_changed.send_modify(|n| *n += 1);
        }
    }

    /// Sends `message` to `node` once everything up to `ticket` is committed here (and, with
    /// `Some(Kind::Session)`, at this node's own sessions' backups).
    fn send_after(self: &Arc<Self>, node: NodeId, ticket: Ticket, after: Option<Kind>, message: wire::Message) {
        self.send_after_requests(node, ticket, after, Vec::new(), message);
    }

    /// [`Cluster::send_after`], once `requests` are acknowledged as well.
    fn send_after_requests(
        self: &Arc<Self>,
        node: NodeId,
        ticket: Ticket,
        after: Option<Kind>,
        requests: Vec<u64>,
        message: wire::Message,
    ) {
        let cluster = self.clone();
        tokio::spawn(async move {
            let stored = match cluster.broker.store() {
                Some(store) if ticket > 0 => store.wait(ticket).await,
                _ => Ok(()),
            };
            if let Some(kind) = after {
                cluster.wait_replicated(ticket, kind).await;
            }
            cluster.wait_requests(&requests).await;
            match stored {
                Ok(()) => cluster.send(&node, &message),
                // Not stored: no acknowledgement; the sender stops waiting when it gives up on us.
                Err(e) => tracing::error!("a replicated change was not stored: {e}"),
            }
        });
    }

    /// Session ops from a session's home: applied to our copy, committed, acknowledged.
    fn apply_session_ops(self: &Arc<Self>, node: NodeId, seq: u64, client: String, ops: Vec<SessionOp>) {
        let client: Arc<str> = Arc::from(client);
        let store_ops = lock(&self.replicas).apply(&node, &client, ops);
        let ticket = self.broker.submit(store_ops);
        self.send_after(node, ticket, None, wire::Message::SessionOpsAck { seq });
    }

    /// How many copies of other nodes' sessions this node keeps.
    pub fn replica_len(&self) -> usize {
        lock(&self.replicas).len()
    }

    /// The live node set as the core sees it, this node included.
    fn alive_set(&self) -> HashSet<NodeId> {
        let mut alive: HashSet<NodeId> = self.alive_peers().into_iter().collect();
        alive.insert(self.me.clone());
        alive
    }

    /// Takes our copy of `client`'s session if its home is gone and we are its heir: for a
    /// client that connects before the copy was promoted. The copy stays on disk until the
    /// caller stores what replaces it, in the same write (a SIGKILL in between loses nothing).
    fn take_orphan(&self, client: &str) -> Option<Replica> {
        self.take_orphan_after(client, &[])
    }

    /// [`Cluster::take_orphan`], counting `gone` as gone already.
    fn take_orphan_after(&self, client: &str, gone: &[NodeId]) -> Option<Replica> {
        let mut alive = self.alive_set();
        for node in gone {
            alive.remove(node);
        }
        let mut replicas = lock(&self.replicas);
        // A copy its home was handing back: the session lives on where it went.
        if !replicas.is_heir(client, &self.me, &alive) || replicas.is_handed_back(client) {
            return None;
        }
        replicas.take(client)
    }

    /// A node is gone: its routes stay, under its takeover id, until every live peer that
    /// speaks protocol 4 (in `peers`, this node included) reported its takeover; forwards to it
    /// that it never acknowledged are parked for its heirs (see [`takeover`]).
    fn begin_takeover(&self, gone: &NodeId, peers: HashSet<NodeId>) {
        let id = takeover_id(gone);
        let mut routes = write(&self.routes);
        let filters = routes.plain_filters_of(gone);
        routes.drop_node(gone);
        routes.drop_node(&id);
        routes.add(&id, filters);
        let mut takeovers = lock(&self.takeovers);
        let (moved, out) = takeovers.begin(gone, peers, Instant::now(), &mut || self.next_seq());
        if !moved.is_empty() {
            tracing::info!(node = %gone, count = moved.len(), "forwards the node never acknowledged wait for its sessions' heirs");
        }
        {
            let mut waits = lock(&self.waits);
            for seq in moved {
                waits.retarget(seq, gone, id.clone());
            }
        }
        drop(takeovers);
        self.settle(out);
        drop(routes);
    }

    /// Carries out a takeover outcome: parked messages to the heirs that adopted sessions
    /// (this node's own are delivered by [`Cluster::promote_orphans`]), and the publishers'
    /// acknowledgements that waited for them.
    fn settle(&self, out: Outcome) {
        for flush in out.flush {
            if flush.to == self.me {
                continue;
            }
            let forward = wire::Message::TakeoverForward {
                seq: flush.child,
                gone: flush.gone.to_string(),
                message: flush.message,
            };
            self.send(&flush.to, &forward);
        }
        if !out.release.is_empty() {
            let mut changed = false;
            {
                let mut waits = lock(&self.waits);
                for (id, seq) in out.release {
                    changed |= waits.ack(&id, seq);
                }
            }
            if changed {
                self.waits_changed.send_modify(|n| *n += 1);
            }
        }
    }

    /// A home node is gone: the copies we are heir to become sessions here (and get new
    /// backups from the broker), the messages parked for them here meanwhile are delivered to
    /// them, and every peer is told (`TakeoverDone`, with the routes of the adopted sessions).
    /// Returns the new local route filters.
    fn promote_orphans(self: &Arc<Self>, gone: &NodeId) -> Vec<String> {
        let started = Instant::now();
        if tracing::enabled!(tracing::Level::DEBUG) {
            for (client, backups, whole) in lock(&self.replicas).copies_of(gone) {
                tracing::debug!(%client, ?backups, whole, "a copy of a session of the node that went");
            }
        }
        let clients = lock(&self.replicas).orphans(&self.me, &self.alive_set());
        let (handed_back, clients): (Vec<Arc<str>>, Vec<Arc<str>>) = {
            let replicas = lock(&self.replicas);
            clients.into_iter().partition(|c| replicas.is_handed_back(c))
        };
        for client in handed_back {
            self.keep_handed_back_copy(client);
        }
        let aside = lock(&self.replicas).take_aside_of(gone);
        for (client, replica) in aside {
            self.keep_copy_for_merge(client, replica);
        }
        let replicas: Vec<(Arc<str>, Replica)> = clients
            .into_iter()
            .filter_map(|c| self.take_orphan(&c).map(|r| (c, r)))
            .collect();
        let homes: Vec<(Arc<str>, NodeId)> = replicas.iter().map(|(c, r)| (c.clone(), r.home.clone())).collect();
        let mut local = Vec::new();
        // Each peer sends us the forwards `gone` never acknowledged when it gets our takeover
        // report; what it sends the adopted sessions directly waits for its marker behind them.
        let markers_from: Vec<NodeId> = self
            .alive_peers()
            .into_iter()
            .filter(|n| n != gone && self.peer_version(n) >= 7)
            .collect();
        // Sessions of `gone` that are here without this takeover: taken from their copies by our
        // connections (or other nodes' ones, through us) already, or handed to us by `gone`
        // itself moments ago (a claim or a merge; it may have died before it redirected what
        // it got for them). The forwards it never acknowledged are for them too.
        let mut claimed: HashSet<Arc<str>> = lock(&self.adopted_from).get(gone).cloned().unwrap_or_default();
        if let Some(handed) = lock(&self.claimed_from).remove(gone) {
            claimed.extend(handed.into_iter().map(|(_, client)| client));
        }
        let claimed_here = !claimed.is_empty();
        let mut flushed: Vec<Message> = Vec::new();
        let mut holds: Vec<(Arc<str>, u64)> = Vec::new();
        let hold = |client: &Arc<str>| {
            if markers_from.is_empty() {
                return None;
            }
            let token = self.next_order.fetch_add(1, Ordering::Relaxed) + 1;
            holds.push((client.clone(), token));
            Some(HoldOrder {
                token,
                via: self.me.clone(),
                waiting: markers_from.clone(),
            })
        };
        let (adopted, filters, ticket) = self.broker.adopt_replicas(
            replicas,
            |adopted| {
                // A session we handed back to its home after an earlier partition is ours again:
                // what reaches us for it is no longer redirected there (it overtook the merge).
                {
                    let mut handed = lock(&self.handed);
                    for client in adopted {
                        handed.forget(client);
                    }
                }
                // Under the broker lock, then the route table's: no publish in between.
                let routes = write(&self.routes);
                let adopted_any = !adopted.is_empty() || claimed_here;
                let out = lock(&self.takeovers).reported(gone, &self.me, adopted_any, &mut || self.next_seq());
                let mut messages = Vec::new();
                for flush in &out.flush {
                    if flush.to == self.me {
                        local.push(flush.child);
                        messages.push(flush.message.clone());
                    }
                }
                self.settle(out);
                drop(routes);
                if claimed_here {
                    flushed.clone_from(&messages);
                }
                messages
            },
            hold,
        );
        // The sessions our connections (or other nodes' ones, through us) took from their
        // copies here before this takeover get those messages too, where they are now.
        let mut tickets = vec![ticket];
        let mut redirected = Vec::new();
        for message in flushed {
            redirected.extend(self.redirect_handed_among(&message, &claimed));
            tickets.push(self.broker.publish_to_clients(message, &claimed));
        }
        if !local.is_empty() {
            // Released once stored here and at the adopted sessions' backups.
            let cluster = self.clone();
            tokio::spawn(async move {
                for ticket in tickets {
                    if let Some(store) = cluster.broker.store()
                        && ticket > 0
                        && let Err(e) = store.wait(ticket).await
                    {
                        tracing::error!("parked messages for adopted sessions were not stored: {e}");
                        return;
                    }
                    cluster.wait_replicated(ticket, Kind::Session).await;
                }
                cluster.wait_requests(&redirected).await;
                for child in local {
                    let out = lock(&cluster.takeovers).acked(child);
                    cluster.settle(out);
                }
            });
        }
        let sessions = adopted.len();
        {
            let mut taken_from = lock(&self.taken_from);
            for (client, home) in homes {
                if adopted.contains(&client) {
                    taken_from.entry(home).or_default().insert(client);
                }
            }
        }
        // The forwards `gone` never acknowledged go to those sessions as well (see `claimed`).
        let mut heirs = adopted;
        heirs.extend(claimed);
        lock(&self.adopted_from).entry(gone.clone()).or_default().extend(heirs);
        let reported = sessions + usize::from(claimed_here);
        self.broadcast(&wire::Message::TakeoverDone {
            gone: gone.to_string(),
            filters: filters.clone(),
            sessions: u32::try_from(reported).unwrap_or(u32::MAX),
        });
        // Behind the report: each peer's marker comes back behind its takeover forwards.
        for (client, token) in holds {
            self.order_barrier(
                &client,
                &HoldOrder {
                    token,
                    via: self.me.clone(),
                    waiting: Vec::new(),
                },
            );
        }
        if sessions > 0 {
            tracing::info!(
                "took over {sessions} persistent session(s) of node {gone} from their replicas in {}ms",
                started.elapsed().as_millis()
            );
        }
        filters
    }

    /// Our copy of a session that its dead home was handing back to another node after a
    /// partition: not adopted (the session lives on where it went), but kept in memory and
    /// merged there once the takeover of the dead node is over (see [`merge_acks`]).
    fn keep_handed_back_copy(&self, client: Arc<str>) {
        let Some(replica) = lock(&self.replicas).take(&client) else {
            return;
        };
        self.broker.submit(vec![StoreOp::ReplicaDelete(client.clone())]);
        self.keep_copy_for_merge(client, replica);
    }

    /// See [`Cluster::keep_handed_back_copy`] (also for a copy set aside, see `Replicas`).
    fn keep_copy_for_merge(&self, client: Arc<str>, replica: Replica) {
        tracing::info!(%client, node = %replica.home, "the copy of a session its node was handing back when it died: merged where the session went once the takeover is over");
        let export = replica_export(&replica);
        lock(&self.merge_acks).orphaned(client, replica.home, export, Instant::now());
    }

    /// A peer reported its takeover of `gone`'s sessions: its routes for them go in, and the
    /// messages parked for it go out, under the route table's write lock (see [`takeover`]).
    fn takeover_reported(&self, node: &NodeId, gone: &str, filters: Vec<String>, sessions: u32) {
        let gone: NodeId = Arc::from(gone);
        let mut routes = write(&self.routes);
        routes.add(node, filters);
        let out = lock(&self.takeovers).reported(&gone, node, sessions > 0, &mut || self.next_seq());
        self.settle(out);
        drop(routes);
    }

    /// Every tick: takeovers whose reports never came are given up (their parked messages
    /// released), and the routes of finished ones dropped.
    fn takeover_tick(&self) {
        let limit = self
            .settings
            .detection
            .heartbeat_timeout
            .unwrap_or(Duration::from_secs(10))
            + Duration::from_secs(5);
        let mut routes = write(&self.routes);
        let mut takeovers = lock(&self.takeovers);
        let (given_up, out) = takeovers.expire(Instant::now(), limit);
        for gone in given_up {
            tracing::warn!(node = %gone, "not every node reported its takeover of the sessions of a dead node within {}ms; parked messages are released", limit.as_millis());
        }
        let ended = takeovers.take_ended();
        for id in &ended {
            routes.drop_node(id);
        }
        drop(takeovers);
        self.settle(out);
        drop(routes);
        for id in ended {
            if let Some(gone) = id.strip_suffix(takeover::TAKEOVER_SUFFIX) {
                self.offer_kept_merges(Some(&Arc::from(gone)));
            }
        }
        self.offer_kept_merges(None);
    }

    /// Session copies kept for a node that died before it merged them (see [`merge_acks`]):
    /// once its takeover is over (`gone`), or their deadline passed, each is merged into the
    /// session here if we hold it, else offered to every node.
    fn offer_kept_merges(&self, gone: Option<&NodeId>) {
        if lock(&self.merge_acks).is_empty() {
            return;
        }
        let peers: Vec<NodeId> = self
            .alive_peers()
            .into_iter()
            .filter(|n| self.peer_version(n) >= 10)
            .collect();
        let due = lock(&self.merge_acks).takeover_over(gone, Instant::now(), &peers);
        for (client, next) in due {
            let merge_acks::Next::Offer(nodes) = next else {
                self.kept_merge(&client, next);
                continue;
            };
            let Some(export) = lock(&self.merge_acks).export(&client).cloned() else {
                continue;
            };
            if self.broker.merge_session_if_held(&client, export.clone()).is_some() {
                tracing::info!(%client, "merged a session copy whose other node died before it merged it (here)");
                let backups = lock(&self.merge_acks).merged_here(&client);
                self.forget_handed_back_copies(&client, backups);
                continue;
            }
            let offer = Arc::new(wire::frame(&wire::Message::SessionMergeIfHeld {
                client: client.to_string(),
                export,
            }));
            for node in nodes {
                self.outbox(&node).push(offer.clone());
            }
        }
    }

    /// A kept session copy is merged for good: our backups' copies go; or nobody else holds
    /// the session: it becomes the session here.
    fn kept_merge(&self, client: &str, next: merge_acks::Next) {
        match next {
            merge_acks::Next::Merged(backups) => self.forget_handed_back_copies(client, backups),
            merge_acks::Next::Adopt(export, backups) => {
                tracing::info!(%client, "no node holds the session whose copy was handed back: it lives here again");
                // Before the new copies go out, on the same links.
                self.forget_handed_back_copies(client, backups);
                self.broker.merge_session(client, export);
            }
            merge_acks::Next::Nothing | merge_acks::Next::Offer(_) => {}
        }
    }

    /// The copies our backups kept of a session we handed back go, but on the nodes that are
    /// the backups of the session here again (its client came back meanwhile).
    fn forget_handed_back_copies(&self, client: &str, backups: Vec<NodeId>) {
        let current = self.broker.session_backups(client).unwrap_or_default();
        let old: Vec<NodeId> = backups.into_iter().filter(|b| !current.contains(b)).collect();
        self.send_session_ops(client, &old, vec![SessionOp::DeleteSession]);
    }

    /// Tells `node` that its copy of `client`'s session is merged here (`ticket`: once that is
    /// stored on the backups) or that we hold no such session (`None`).
    fn ack_merge(self: &Arc<Self>, node: &NodeId, client: &str, ticket: Option<Ticket>) {
        let ack = |merged| wire::Message::SessionMergeAck {
            client: client.to_owned(),
            merged,
        };
        match ticket {
            None => self.send(node, &ack(false)),
            Some(ticket) => {
                let cluster = self.clone();
                let node = node.clone();
                let ack = ack(true);
                tokio::spawn(async move {
                    if cluster.broker.wait(ticket).await.is_ok() {
                        cluster.send(&node, &ack);
                    }
                });
            }
        }
    }

    /// Membership changed: the broker moves its sessions' copies to their new backups, from
    /// a task, in bounded batches (client traffic goes on meanwhile). When `joined` is a node
    /// that just came up, it is told once the pass is over (`CopiesSent`): its join waits for
    /// that, so that it reports ready only holding every copy it is to hold.
    fn rebalance(self: &Arc<Self>, joined: Option<NodeId>) {
        let cluster = self.clone();
        tokio::spawn(async move {
            // Let a burst of membership changes settle into one pass.
            tokio::time::sleep(Duration::from_millis(50)).await;
            // One pass at a time; a pass that waited finds the membership as it is by then
            // (the node that joined included).
            let _one = cluster.rebalancing.lock().await;
            cluster.broker.rebalance().await;
            if let Some(node) = joined
                && cluster.alive_peers().contains(&node)
            {
                cluster.send(&node, &wire::Message::CopiesSent);
            }
        });
    }

    /// Replicates a retained message (or its deletion) to every node; the receiver completes
    /// once all of them applied it, so a subscriber anywhere reads what was acknowledged here.
    pub fn replicate_retained(&self, entry: &RetainedEntry) -> Option<oneshot::Receiver<()>> {
        let peers = self.alive_peers();
        if peers.is_empty() {
            return None;
        }
        let seq = self.retained_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.pending_acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq, (peers.iter().cloned().collect(), tx));
        let frame = Arc::new(wire::frame(&wire::Message::RetainedPut {
            seq,
            entry: entry.clone(),
        }));
        for node in peers {
            self.outbox(&node).push(frame.clone());
        }
        Some(rx)
    }

    fn ack_retained(&self, node: &NodeId, seq: Option<u64>) {
        let mut pending = self.pending_acks.lock().unwrap_or_else(|e| e.into_inner());
        let done: Vec<u64> = pending
            .iter_mut()
            .filter(|(s, _)| seq.is_none_or(|q| q == **s))
            .filter_map(|(s, (waiting, _))| {
                waiting.remove(node);
                waiting.is_empty().then_some(*s)
            })
            .collect();
        for s in done {
            if let Some((_, tx)) = pending.remove(&s) {
                let _ = tx.send(());
            }
        }
    }

    /// A client connected here: asks every node for its session. Returns the handed-over
    /// session (if one existed), or `ClaimRefused` if a newer connection of the id is
    /// elsewhere. Waits at most the heartbeat timeout for a silent node.
    pub async fn claim_session(
        &self,
        client: &str,
        stamp: &ClaimStamp,
        clean_start: bool,
    ) -> Result<Claimed, ClaimRefused> {
        // The session comes back here if we handed it away moments ago: no more redirects.
        lock(&self.handed).forget(client);
        // Nodes we saw go lately count as gone for the peers too, in case they have not noticed
        // yet: the heir of a dead node's session hands over its copy even so.
        let mut gone = self.recently_down();
        let first = self.claim_round(client, stamp, clean_start, &gone).await?;
        if first.export.is_some() || first.gone.is_empty() {
            return Ok(first);
        }
        // A node went away before it answered (it was leaving, or died): its sessions' heirs
        // are asked again, told so, in case they have not noticed yet.
        tracing::debug!(%client, gone = ?first.gone, "asking for the session again");
        gone.extend(first.gone);
        self.claim_round(client, stamp, clean_start, &gone).await
    }

    /// Nodes that went down (or left) within [`RECENTLY_DOWN`] and are not back.
    fn recently_down(&self) -> Vec<NodeId> {
        let mut down = lock(&self.down_at);
        down.retain(|_, at| at.elapsed() < RECENTLY_DOWN);
        down.keys().cloned().collect()
    }

    /// One round of [`Cluster::claim_session`]: every live peer is asked; `gone` are nodes to
    /// count as gone whether or not the peers noticed yet.
    async fn claim_round(
        &self,
        client: &str,
        stamp: &ClaimStamp,
        clean_start: bool,
        gone: &[NodeId],
    ) -> Result<Claimed, ClaimRefused> {
        // Our own copy, if its home is gone and we are its heir (not yet promoted).
        let local = self.take_orphan_after(client, gone).map(|r| {
            // Taken before our takeover of its home: what the home's forwards left behind
            // reaches it as the rest of that takeover's adopted sessions (see `promote_orphans`).
            lock(&self.adopted_from)
                .entry(r.home.clone())
                .or_default()
                .insert(Arc::from(client));
            replica_export(&r)
        });
        let peers = self.alive_peers();
        if peers.is_empty() {
            return Ok(Claimed {
                export: local,
                ..Claimed::default()
            });
        }
        let request = self.next_claim.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        let claim = PendingClaim {
            waiting: peers.iter().cloned().collect(),
            found: local,
            from: None,
            gone: Vec::new(),
            refused: false,
            done: Some(tx),
        };
        self.claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request, claim);
        let message = match gone.is_empty() {
            true => wire::Message::SessionClaim {
                request,
                client: client.to_owned(),
                stamp: stamp.clone(),
                clean_start,
            },
            false => wire::Message::SessionClaimAfter {
                request,
                client: client.to_owned(),
                stamp: stamp.clone(),
                clean_start,
                gone: gone.iter().map(|n| n.to_string()).collect(),
            },
        };
        let frame = Arc::new(wire::frame(&message));
        for node in peers {
            self.outbox(&node).push(frame.clone());
        }
        let limit = self
            .settings
            .detection
            .heartbeat_timeout
            .unwrap_or(Duration::from_secs(10));
        let result = tokio::time::timeout(limit, rx).await;
        let leftover = self.claims.lock().unwrap_or_else(|e| e.into_inner()).remove(&request);
        match result {
            Ok(Ok(answer)) => answer,
            // Timed out: take what arrived (a node that did not answer in time holds nothing
            // we could wait for any longer).
            _ => match leftover {
                Some(c) if c.refused => Err(ClaimRefused),
                Some(mut c) => Ok(c.claimed()),
                None => Ok(Claimed::default()),
            },
        }
    }

    /// A node answered a claim (`None`: it went down, which counts as "nothing there").
    fn claim_answered(&self, node: &NodeId, request: Option<u64>, answer: Option<ClaimAnswer>) {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<u64> = match request {
            Some(r) => vec![r],
            None => claims.keys().copied().collect(),
        };
        for key in keys {
            let Some(claim) = claims.get_mut(&key) else { continue };
            if !claim.waiting.remove(node) {
                continue;
            }
            match &answer {
                None => claim.gone.push(node.clone()),
                Some(ClaimAnswer::Refused) => claim.refused = true,
                Some(ClaimAnswer::Handover(Some(export))) => {
                    claim.found = Some(export.clone());
                    claim.from = Some(node.clone());
                }
                _ => {}
            }
            if claim.waiting.is_empty()
                && let Some(done) = claim.done.take()
            {
                let result = if claim.refused {
                    Err(ClaimRefused)
                } else {
                    Ok(claim.claimed())
                };
                let _ = done.send(result);
            }
        }
    }
    /// After a partition: the session of `client` here goes to `node` to be merged there,
    /// unless its client is connected here: then, with `ask`, `node` is asked for its copy
    /// instead (without, the client is connected on both sides, and both copies live on).
    fn hand_back(&self, node: &NodeId, client: &str, ask: bool) {
        // Under the broker lock, once the session is gone here: from now on `node` gets what
        // matches it (until its route snapshot arrives), and the copy goes out first, ahead of
        // those messages on the same link, so the session's messages keep their order.
        let moved = |export: SessionExport, backups: Vec<NodeId>| {
            let filters: Vec<String> = export.subscriptions.iter().map(|(f, _)| f.clone()).collect();
            write(&self.routes).add(node, filters.iter().cloned());
            // What reaches us for it meanwhile follows it (see `handed`).
            lock(&self.handed).handed(Arc::from(client), node.clone(), filters, Instant::now());
            // Kept, here and on the backups, until merged for good (see `merge_acks`).
            let kept = self.peer_version(node) >= 10;
            let (keeping, forgetting): (Vec<NodeId>, Vec<NodeId>) =
                backups.into_iter().partition(|b| kept && self.peer_version(b) >= 10);
            for backup in &keeping {
                let marker = wire::Message::SessionHandedBack {
                    client: client.to_owned(),
                    to: node.to_string(),
                };
                self.send(backup, &marker);
            }
            self.send_session_ops(client, &forgetting, vec![SessionOp::DeleteSession]);
            if kept {
                lock(&self.merge_acks).sent(Arc::from(client), node.clone(), export.clone(), keeping);
            }
            let merge = wire::Message::SessionMerge {
                client: client.to_owned(),
                export: Some(export),
            };
            if self.drop_hand_back.as_deref() == Some(client) {
                tracing::warn!(%client, %node, "fault injection: the session copy handed back is not sent");
                return;
            }
            self.send(node, &merge);
        };
        match self.broker.hand_back(client, moved) {
            HandBack::Nothing => {}
            HandBack::Moved => {
                tracing::info!(%client, "merging a session kept on both sides of a partition (the copy goes to its other node)");
            }
            HandBack::Connected if ask => {
                tracing::info!(%client, "merging a session kept on both sides of a partition (the copy goes here)");
                let merge = wire::Message::SessionMerge {
                    client: client.to_owned(),
                    export: None,
                };
                self.send(node, &merge);
            }
            HandBack::Connected => {
                tracing::warn!(%client, "a client is connected on both sides of a healed partition; both sessions stay");
            }
        }
    }

    /// A local client connected with a will (`Some`), or its will is settled here (`None`):
    /// the other nodes keep a copy to publish if this node dies.
    pub fn local_will(&self, client: &str, will: Option<WillRecord>) {
        self.core(CoreEvent::LocalWill {
            client: client.to_owned(),
            will,
        });
    }

    /// Tells the peers we leave, so they drop us at once.
    ///
    /// First every local persistent session's copies are made current (the acknowledgements
    /// of every change sent to the backups are in): on `Leave`, each session's first backup
    /// promotes its copy and replicates it on, so the replica count is kept.
    pub async fn leave(&self) {
        let started = Instant::now();
        // Copies still owed to the current membership first (a pass may not have started yet
        // when a node stops right after another one left): the waits below then cover them.
        {
            let _one = self.rebalancing.lock().await;
            self.broker.rebalance().await;
        }
        let sessions = self.broker.persistent_session_count();
        if sessions > 0 && !self.alive_peers().is_empty() {
            tracing::info!(
                "Starting cluster replication process. This may take a while. Please do not shut down HiveMQ."
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut last_report = Instant::now();
            loop {
                let open = lock(&self.waits).open_requests();
                if open == 0 {
                    break;
                }
                if Instant::now() > deadline {
                    tracing::warn!("{open} replication request(s) still unacknowledged; leaving anyway");
                    break;
                }
                if last_report.elapsed() > Duration::from_secs(5) {
                    tracing::info!("Replication is still in progress. Please do not shut down HiveMQ.");
                    last_report = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Through the core, which answers claims: a session handed over before it reaches the
        // claiming node ahead of our `Leave` (after it, the answer would be dropped there and the
        // session lost), and none is handed over after it.
        let (said, left) = oneshot::channel();
        self.core(CoreEvent::Leave(said));
        if tokio::time::timeout(Duration::from_secs(5), left).await.is_err() {
            self.stopping.store(true, Ordering::Relaxed);
            self.broadcast(&wire::Message::Leave);
        }
        // Give the outboxes a moment to write it; peers also notice the closed connections.
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            let busy = self
                .outboxes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .any(|o| o.queued_bytes.load(Ordering::Relaxed) > 0);
            if !busy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if sessions > 0 {
            tracing::info!(
                "Finished cluster replication successfully in {}ms.",
                started.elapsed().as_millis()
            );
        }
        let _ = self.stop.send(true);
    }
}

/// The core task's state: membership and the join/merge bookkeeping.
struct Core {
    cluster: Arc<Cluster>,
    membership: Membership,
    local_filters: HashSet<String>,
    /// Addresses we dial (discovery plus learned ones).
    dialing: HashSet<String>,
    /// Discovery addresses not yet tried once: the join waits for them.
    untried: HashSet<String>,
    /// Peers whose state we have not fully received yet (join or merge in progress), with
    /// whether it is a merge.
    syncing: HashMap<NodeId, bool>,
    /// Peers whose `SyncDone` arrived before our own link to them was up.
    synced_early: HashSet<NodeId>,
    /// While joining: peers that are still sending us the copies of their sessions that the
    /// new membership gives us (until their `CopiesSent`), and those whose `CopiesSent` came
    /// before our link to them was up.
    awaiting_copies: HashSet<NodeId>,
    copies_early: HashSet<NodeId>,
    joined: bool,
    ticks: u64,
    /// Wills of our own connected clients, sent to every node that joins.
    local_wills: HashMap<String, WillRecord>,
    /// Wills of other nodes' clients, by node: published if that node dies.
    remote_wills: HashMap<NodeId, HashMap<String, WillRecord>>,
    /// Wills of dead nodes' clients waiting for their delay, with a generation so that a
    /// client reconnecting meanwhile cancels it.
    due_wills: HashMap<String, (u64, WillRecord)>,
    next_generation: u64,
    /// When nodes left recently (disaster detection), and whether that burst was warned about.
    recent_departures: std::collections::VecDeque<Instant>,
    disaster_warned: bool,
    /// The cluster size for which a reduced replica count was last logged.
    reduced_logged: Option<usize>,
    /// Order holds of sessions handed over here, by token: the client, the node the markers
    /// come through, and when the hold ends if they do not all come.
    order_holds: HashMap<u64, (String, NodeId, Instant)>,
    /// Our sessions holding what returning nodes send them directly after a partition, until
    /// the copies taken over on their side are merged (see [`merge_holds`]).
    merge_holds: merge_holds::MergeHolds,
}

impl Core {
    fn new(cluster: Arc<Cluster>, seeds: HashSet<String>) -> Core {
        let membership = Membership::new(cluster.me.clone(), cluster.settings.detection);
        Core {
            membership,
            local_filters: HashSet::new(),
            dialing: seeds.clone(),
            untried: seeds,
            syncing: HashMap::new(),
            synced_early: HashSet::new(),
            awaiting_copies: HashSet::new(),
            copies_early: HashSet::new(),
            joined: false,
            ticks: 0,
            local_wills: HashMap::new(),
            remote_wills: HashMap::new(),
            due_wills: HashMap::new(),
            next_generation: 0,
            recent_departures: Default::default(),
            disaster_warned: false,
            reduced_logged: None,
            order_holds: HashMap::new(),
            merge_holds: Default::default(),
            cluster,
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<CoreEvent>) {
        if self.untried.is_empty() {
            self.finish_join();
        } else {
            tracing::info!("Starting cluster join process. This may take a while. Please do not shut down HiveMQ.");
        }
        let mut stop = self.cluster.stop.subscribe();
        loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Some(event) => self.handle(event),
                    None => return,
                },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    fn handle(&mut self, event: CoreEvent) {
        let now = Instant::now();
        match event {
            CoreEvent::Connected { node, address } => {
                if let Some(change) = self.membership.connected(&node, &address, now) {
                    self.apply(change);
                }
            }
            CoreEvent::Inbound { node, address } => {
                self.membership.heard(&node, now);
                self.dial(address);
            }
            CoreEvent::Discovered(addresses) => {
                for a in addresses {
                    self.dial(a);
                }
            }
            CoreEvent::AttemptDone { address } => {
                self.untried.remove(&address);
                self.check_joined();
            }
            CoreEvent::ConnectionLost { node } => {
                if let Some(change) = self.membership.connection_lost(&node) {
                    self.apply(change);
                }
            }
            CoreEvent::Message { node, message } => {
                self.membership.heard(&node, now);
                self.on_message(node, message);
            }
            CoreEvent::LocalRoutes { added, mut removed } => {
                let mut handed = lock(&self.cluster.handed);
                for f in &added {
                    self.local_filters.insert(f.clone());
                    handed.route_back(f);
                }
                // A handed-over session's filters stay announced a little longer (see `handed`).
                removed.retain(|f| !handed.linger(f, now));
                drop(handed);
                for f in &removed {
                    self.local_filters.remove(f);
                }
                if !added.is_empty() {
                    self.cluster.broadcast(&wire::Message::RoutesAdded(added));
                }
                if !removed.is_empty() {
                    self.cluster.broadcast(&wire::Message::RoutesRemoved(removed));
                }
            }
            CoreEvent::LocalWill { client, will } => {
                // A client connecting here cancels a dead node's pending will for it.
                self.due_wills.remove(&client);
                let message = match will {
                    Some(will) => {
                        self.local_wills.insert(client.clone(), will.clone());
                        wire::Message::WillRegistered { client, will }
                    }
                    None => {
                        if self.local_wills.remove(&client).is_none() {
                            return;
                        }
                        wire::Message::WillCleared { client }
                    }
                };
                self.cluster.broadcast(&message);
            }
            CoreEvent::DeadWillDue { client, generation } => {
                if let Some((g, _)) = self.due_wills.get(&client)
                    && *g == generation
                    && let Some((_, will)) = self.due_wills.remove(&client)
                {
                    tracing::info!(%client, "publishing the will of a client whose node died");
                    self.cluster.broker.publish_will(will.message);
                }
            }
            CoreEvent::Leave(said) => {
                self.cluster.stopping.store(true, Ordering::Relaxed);
                self.cluster.broadcast(&wire::Message::Leave);
                let _ = said.send(());
            }
            CoreEvent::OrderBarrier { client, token, via } => self.send_order_barrier(client, token, via, now),
            CoreEvent::Tick => {
                while let Some(change) = self.membership.tick(now) {
                    self.apply(change);
                }
                let over: Vec<u64> = self
                    .order_holds
                    .iter()
                    .filter(|(_, (_, _, until))| *until <= now)
                    .map(|(token, _)| *token)
                    .collect();
                for token in over {
                    self.order_holds.remove(&token);
                    self.cluster.broker.order_passed(token, None);
                }
                let ended = self.merge_holds.expired(now);
                self.end_merge_holds(ended);
                self.cluster.takeover_tick();
                let withdrawn: Vec<String> = lock(&self.cluster.handed)
                    .expire(now)
                    .into_iter()
                    .filter(|f| self.local_filters.remove(f))
                    .collect();
                if !withdrawn.is_empty() {
                    self.cluster.broadcast(&wire::Message::RoutesRemoved(withdrawn));
                }
                self.ticks += 1;
                // Anti-entropy every ~10 heartbeat intervals.
                if self.ticks.is_multiple_of(20) {
                    let count = self.local_filters.len() as u64;
                    let hash = wire::filter_set_hash(self.local_filters.iter().map(String::as_str));
                    self.cluster.broadcast(&wire::Message::RouteDigest { count, hash });
                    self.cluster
                        .broadcast(&wire::Message::Members(self.membership.alive_addresses()));
                }
            }
        }
    }

    fn dial(&mut self, address: String) {
        if address != self.cluster.settings.advertised && self.dialing.insert(address.clone()) {
            tokio::spawn(transport::dial(self.cluster.clone(), address));
        }
    }

    fn on_message(&mut self, node: NodeId, message: wire::Message) {
        if !self.membership.is_alive(&node) && !matches!(message, wire::Message::Heartbeat | wire::Message::Leave) {
            // Our own dialer to it has not completed yet: state is exchanged once it has.
            tracing::trace!(%node, "message from a node not (yet) in the cluster");
        }
        let cluster = &self.cluster;
        match message {
            wire::Message::Heartbeat => {}
            wire::Message::Members(addresses) => {
                for a in addresses {
                    self.dial(a);
                }
            }
            wire::Message::RoutesAdded(filters) => write(&cluster.routes).add(&node, filters),
            wire::Message::RoutesRemoved(filters) => write(&cluster.routes).remove(&node, filters),
            wire::Message::RouteDigest { count, hash } => {
                if read(&cluster.routes).digest_of(&node) != (count, hash) {
                    cluster.send(&node, &wire::Message::RouteSnapshotRequest);
                }
            }
            wire::Message::RouteSnapshotRequest => {
                cluster.send(
                    &node,
                    &wire::Message::RouteSnapshot(self.local_filters.iter().cloned().collect()),
                );
            }
            wire::Message::RouteSnapshot(filters) => write(&cluster.routes).replace(&node, filters),
            wire::Message::Forward {
                message,
                shared_groups,
                forward_id,
                shared_only,
            } => {
                let origin = (forward_id != 0).then(|| (node.to_string(), forward_id));
                if !shared_only {
                    cluster.redirect_handed(&message, &node);
                }
                let forward = PeerForward {
                    sender: &node,
                    shared_groups: &shared_groups,
                    origin,
                    shared_only,
                    ack: 0,
                    requests: &[],
                };
                cluster.broker.publish_from_peer(message, forward);
            }
            wire::Message::ForwardAcked {
                seq,
                message,
                shared_groups,
                forward_id,
                shared_only,
            } => {
                let origin = (forward_id != 0).then(|| (node.to_string(), forward_id));
                let redirected = match shared_only {
                    true => Vec::new(),
                    false => cluster.redirect_handed(&message, &node),
                };
                let forward = PeerForward {
                    sender: &node,
                    shared_groups: &shared_groups,
                    origin,
                    shared_only,
                    ack: seq,
                    requests: &redirected,
                };
                let delivered = cluster.broker.publish_from_peer(message, forward);
                // (`None`: held for a session just handed over here; acknowledged when it has it.)
                if let Some(ticket) = delivered {
                    let ack = wire::Message::ForwardAck { seq };
                    cluster.send_after_requests(node, ticket, Some(Kind::Session), redirected, ack);
                }
            }
            wire::Message::HandedForward { seq, client, message } => cluster.handed_forward(node, seq, client, message),
            // (Our own messages for the session are redirected throughout: they travel on the
            // same link as our direct ones, so they keep their order anyway.)
            wire::Message::OrderBarrier { client, token, via } if *via != *cluster.me => {
                let via: NodeId = Arc::from(via.as_str());
                let marker = wire::Message::OrderMarker {
                    client,
                    token,
                    to: node.to_string(),
                };
                cluster.send(&via, &marker);
            }
            wire::Message::OrderBarrier { .. } => {}
            // Our own barrier, after the old holder went away (see `Change::Down`).
            wire::Message::OrderMarker { token, to, .. } if *to == *cluster.me => {
                cluster.broker.order_passed(token, Some(&node));
            }
            wire::Message::OrderMarker { client, token, to } => {
                // Everything `node` sent us before this was redirected: the rest it sends there.
                lock(&cluster.handed).passed(&client, node.clone());
                let to: NodeId = Arc::from(to.as_str());
                let origin = node.to_string();
                cluster.send(&to, &wire::Message::OrderPassed { token, origin });
            }
            wire::Message::OrderPassed { token, origin } => cluster.broker.order_passed(token, Some(&origin)),
            wire::Message::SessionOpsAck { seq } => cluster.acked(&node, Some(seq)),
            wire::Message::ForwardAck { seq } => {
                cluster.acked(&node, Some(seq));
                let out = lock(&cluster.takeovers).acked(seq);
                cluster.settle(out);
            }
            wire::Message::TakeoverDone {
                gone,
                filters,
                sessions,
            } => {
                for f in &filters {
                    tracing::trace!(%node, filter = %f, "route of a session taken over");
                }
                cluster.takeover_reported(&node, &gone, filters, sessions);
            }
            wire::Message::TakeoverForward { seq, gone, message } => {
                let clients = lock(&cluster.adopted_from)
                    .get(gone.as_str())
                    .cloned()
                    .unwrap_or_default();
                // Those sessions that we handed on meanwhile get it where they are now, behind
                // what else we redirected to them (it is older than what the sender sends us
                // after it).
                let redirected = cluster.redirect_handed_among(&message, &clients);
                let ticket = cluster.broker.publish_to_clients(message, &clients);
                let ack = wire::Message::ForwardAck { seq };
                cluster.send_after_requests(node, ticket, Some(Kind::Session), redirected, ack);
            }
            wire::Message::SessionOps { seq, client, ops } => cluster.apply_session_ops(node, seq, client, ops),
            wire::Message::SharedSettled { forward_id, group } => cluster.settle_pending(&node, forward_id, &group),
            wire::Message::RetainedPut { seq, entry } => {
                cluster.broker.apply_retained(&node, entry);
                cluster.send(&node, &wire::Message::RetainedAck { seq });
            }
            wire::Message::LegacyRetainedPut { seq, message } => {
                cluster
                    .broker
                    .apply_retained(&node, RetainedEntry::from_legacy(message));
                cluster.send(&node, &wire::Message::RetainedAck { seq });
            }
            wire::Message::RetainedAck { seq } => cluster.ack_retained(&node, Some(seq)),
            wire::Message::RetainedSnapshot(entries) => {
                cluster.broker.apply_retained_snapshot(&node, entries);
            }
            wire::Message::LegacyRetainedSnapshot(messages) => {
                let entries = messages.into_iter().map(RetainedEntry::from_legacy).collect();
                cluster.broker.apply_retained_snapshot(&node, entries);
            }
            wire::Message::CopiesSent => {
                if self.awaiting_copies.remove(&node) {
                    tracing::debug!(%node, "the node sent us every session copy we are to hold");
                    self.check_joined();
                } else if !self.joined {
                    self.copies_early.insert(node);
                }
            }
            wire::Message::SyncDone => match self.syncing.remove(&node) {
                Some(merge) => self.synced(merge),
                None => {
                    self.synced_early.insert(node);
                }
            },
            wire::Message::Leave => {
                if let Some(change) = self.membership.left(&node, Instant::now()) {
                    self.apply(change);
                }
            }
            // After our `Leave`, a handover would reach the claiming node after it (and be
            // dropped): the session stays with its copies, and their heir takes it over.
            wire::Message::SessionClaim { client, .. } | wire::Message::SessionClaimAfter { client, .. }
                if cluster.is_stopping() =>
            {
                tracing::debug!(%client, %node, "a claim after we said we leave, not answered");
            }
            wire::Message::SessionClaim {
                request,
                client,
                stamp,
                clean_start,
            } => cluster.answer_claim(&node, request, client, stamp, clean_start, &[]),
            wire::Message::SessionClaimAfter {
                request,
                client,
                stamp,
                clean_start,
                gone,
            } => {
                let gone: Vec<NodeId> = gone.iter().map(|n| Arc::from(n.as_str())).collect();
                cluster.answer_claim(&node, request, client, stamp, clean_start, &gone);
            }
            wire::Message::SessionMerge {
                export: Some(_),
                client,
            } if cluster.ignore_merges => {
                tracing::warn!(%client, %node, "fault injection: a session copy handed back here is dropped");
            }
            wire::Message::SessionMerge { client, export } => match export {
                Some(export) => {
                    let ticket = cluster.broker.merge_session(&client, export);
                    cluster.handed_here(&Arc::from(client.as_str()), &node);
                    cluster.ack_merge(&node, &client, Some(ticket));
                    // Ours again, if we had handed it away: no more redirects for it.
                    lock(&cluster.handed).forget(&client);
                    if let Some(token) = self.merge_holds.merged(&client, &node, now_instant()) {
                        // What the adopter sent directly follows its copy (one link); the
                        // others' messages wait for their markers, which come through it.
                        cluster.broker.order_passed(token, Some(&node));
                        if cluster.broker.order_hold_on(token) {
                            self.send_order_barrier(client, token, node.clone(), now_instant());
                        }
                    }
                }
                None => {
                    // The copy goes to `node`: with what was held for it.
                    if let Some(token) = self.merge_holds.handed_away(&client) {
                        cluster.broker.order_passed(token, None);
                    }
                    cluster.hand_back(&node, &client, false);
                }
            },
            wire::Message::SessionMergeIfHeld { client, export } => {
                let merged = cluster.broker.merge_session_if_held(&client, export);
                if merged.is_some() {
                    tracing::info!(%client, %node, "merged a session copy whose other node died before it merged it");
                }
                cluster.ack_merge(&node, &client, merged);
            }
            wire::Message::SessionMergeAck { client, merged } => {
                let next = lock(&cluster.merge_acks).answered(&client, &node, merged);
                cluster.kept_merge(&client, next);
            }
            wire::Message::SessionHandedBack { client, to } => {
                if lock(&cluster.replicas).mark_handed_back(&node, &client, Arc::from(to.as_str())) {
                    tracing::info!(%client, home = %node, %to, "keeping the copy of a session handed back until it is merged");
                }
            }
            wire::Message::HandBacksDone => {
                let ended = self.merge_holds.handed_back(&node, now_instant());
                self.end_merge_holds(ended);
            }
            wire::Message::SessionHandover { request, answer } => {
                cluster.claim_answered(&node, Some(request), Some(answer));
            }
            wire::Message::WillRegistered { client, will } => {
                self.due_wills.remove(&client);
                self.remote_wills.entry(node).or_default().insert(client, will);
            }
            wire::Message::WillCleared { client } => {
                self.due_wills.remove(&client);
                if let Some(wills) = self.remote_wills.get_mut(&node) {
                    wills.remove(&client);
                }
            }
        }
    }
}

impl Cluster {
    /// `node`'s connection of `client` claims the session (`gone`: nodes to count as gone).
    fn answer_claim(
        &self,
        node: &NodeId,
        request: u64,
        client: String,
        stamp: ClaimStamp,
        clean_start: bool,
        gone: &[NodeId],
    ) {
        let mut answer = self.broker.answer_claim(&client, &stamp, clean_start);
        if let ClaimAnswer::Handover(Some(export)) = &answer {
            let filters = export.subscriptions.iter().map(|(f, _)| f.clone()).collect();
            lock(&self.handed).handed(Arc::from(client.as_str()), node.clone(), filters, Instant::now());
        }
        // A session whose home is gone and not yet promoted: our copy, if we are heir.
        if answer == ClaimAnswer::Handover(None)
            && let Some(replica) = self.take_orphan_after(&client, gone)
        {
            tracing::info!(%client, "handing over the replica of a session whose node is gone");
            let key: Arc<str> = Arc::from(client.as_str());
            self.broker.submit(vec![StoreOp::ReplicaDelete(key.clone())]);
            // What its home's forwards left behind reaches us as its heir: it follows the session.
            let filters = replica.subscriptions.keys().cloned().collect();
            lock(&self.handed).handed(key.clone(), node.clone(), filters, Instant::now());
            lock(&self.adopted_from)
                .entry(replica.home.clone())
                .or_default()
                .insert(key);
            answer = ClaimAnswer::Handover((!clean_start).then(|| replica_export(&replica)));
        }
        self.send(node, &wire::Message::SessionHandover { request, answer });
    }
}

impl Core {
    fn apply(&mut self, change: Change) {
        if self.cluster.is_stopping() {
            // We said we are leaving: peers closing their links to us, or dialling us again,
            // is not a failure or a return. Nothing is taken over or merged any more.
            tracing::debug!(?change, "membership change while leaving, ignored");
            if let Change::Down { node, .. } = &change {
                self.cluster.acked(node, None);
                self.cluster.ack_retained(node, None);
                self.cluster.claim_answered(node, None, None);
            }
            return;
        }
        match change {
            Change::Up { node, merge } => {
                if merge {
                    tracing::info!(
                        "Starting cluster merge process. This may take a while. Please do not shut down HiveMQ."
                    );
                }
                tracing::info!(%node, "node joined the cluster ({})", self.membership.address_of(&node).unwrap_or("?"));
                lock(&self.cluster.down_at).remove(&node);
                lock(&self.cluster.adopted_from).remove(&node);
                let adopted = lock(&self.cluster.taken_from).remove(&node);
                self.publish_alive();
                if merge && self.cluster.peer_version(&node) >= 9 {
                    // Before our routes reach it: nothing it sends our sessions directly escapes.
                    self.hold_for_merge(&node, adopted.as_ref(), now_instant());
                }
                // Our state for the peer, then the marker that it is complete.
                let cluster = &self.cluster;
                cluster.send(
                    &node,
                    &wire::Message::RouteSnapshot(self.local_filters.iter().cloned().collect()),
                );
                cluster.send(
                    &node,
                    &wire::Message::RetainedSnapshot(cluster.broker.retained_snapshot()),
                );
                cluster.send(&node, &wire::Message::Members(self.membership.alive_addresses()));
                for (client, will) in &self.local_wills {
                    let message = wire::Message::WillRegistered {
                        client: client.clone(),
                        will: will.clone(),
                    };
                    cluster.send(&node, &message);
                }
                cluster.send(&node, &wire::Message::SyncDone);
                // Sessions we took over from it while it seemed gone: it kept its own copies.
                if merge && cluster.peer_version(&node) >= 5 {
                    for client in adopted.unwrap_or_default() {
                        cluster.hand_back(&node, &client, true);
                    }
                }
                if cluster.peer_version(&node) >= 9 {
                    cluster.send(&node, &wire::Message::HandBacksDone);
                }
                cluster.rebalance(Some(node.clone()));
                if !self.joined && cluster.peer_version(&node) >= 8 && !self.copies_early.remove(&node) {
                    self.awaiting_copies.insert(node.clone());
                }
                if self.synced_early.remove(&node) {
                    self.synced(merge);
                } else {
                    self.syncing.insert(node, merge);
                }
            }
            Change::Down { node, why } => {
                tracing::warn!(%node, "node left the cluster: {why}");
                lock(&self.cluster.down_at).insert(node.clone(), now_instant());
                let outbox = self.cluster.outbox(&node);
                outbox.reset.send_modify(|g| *g += 1);
                if why != membership::LEFT {
                    // What we queued for it is not for it when it comes back (see `Outbox`).
                    outbox.epoch.fetch_add(1, Ordering::Relaxed);
                    outbox.close_inbound.send_modify(|g| *g += 1);
                }
                let mut peers: HashSet<NodeId> = self
                    .membership
                    .alive()
                    .filter(|n| **n != node && self.cluster.peer_version(n) >= 4)
                    .cloned()
                    .collect();
                peers.insert(self.cluster.me.clone());
                self.cluster.begin_takeover(&node, peers);
                self.syncing.remove(&node);
                self.synced_early.remove(&node);
                self.awaiting_copies.remove(&node);
                self.copies_early.remove(&node);
                self.publish_alive();
                self.cluster.ack_retained(&node, None);
                self.cluster.acked(&node, None);
                let out = lock(&self.cluster.takeovers).node_gone(&node, &mut || self.cluster.next_seq());
                self.cluster.settle(out);
                self.detect_disaster(now_instant());
                let filters = self.cluster.promote_orphans(&node);
                self.local_filters.extend(filters);
                self.order_holds_after_departure(&node, now_instant());
                // What it sent our sessions directly is no longer held for its marker.
                for token in self.merge_holds.tokens() {
                    self.cluster.broker.order_passed(token, Some(&node));
                }
                match why == membership::LEFT {
                    true => {
                        let ended = self.merge_holds.left(&node);
                        self.end_merge_holds(ended);
                    }
                    false => {
                        self.merge_holds.lost(&node, now_instant());
                        self.cluster.broker.note_for_merge();
                    }
                }
                self.cluster.rebalance(None);
                self.cluster.claim_answered(&node, None, None);
                lock(&self.cluster.merge_acks).node_gone(&node, now_instant());
                self.take_over_wills(&node, why);
                self.cluster.redeliver_shared_of(&node);
                self.check_joined();
            }
        }
    }
    /// A session handed over (or merged) here from `via` waits for every node's order marker
    /// through `via`: the barrier goes out, with our own marker, behind what we sent `via`.
    fn send_order_barrier(&mut self, client: String, token: u64, via: NodeId, now: Instant) {
        self.cluster.broadcast(&wire::Message::OrderBarrier {
            client: client.clone(),
            token,
            via: via.to_string(),
        });
        if via != self.cluster.me {
            let marker = wire::Message::OrderMarker {
                client: client.clone(),
                token,
                to: self.cluster.me.to_string(),
            };
            self.cluster.send(&via, &marker);
        }
        self.order_holds.insert(token, (client, via, now + ORDER_HOLD_LIMIT));
    }

    /// `node` is back after a partition: our persistent sessions (but those we took over from
    /// it, which go back to it) hold what it sends them directly until their copies from the
    /// other side are merged or every returning node handed back (see [`merge_holds`]).
    fn hold_for_merge(&mut self, node: &NodeId, taken_from_it: Option<&HashSet<Arc<str>>>, now: Instant) {
        self.merge_holds.returned(node, now);
        let none = HashSet::new();
        let holds = &self.merge_holds;
        let cluster = self.cluster.clone();
        let covered = cluster.broker.hold_for_merge(
            node,
            |client| holds.token(client),
            taken_from_it.unwrap_or(&none),
            || cluster.next_order.fetch_add(1, Ordering::Relaxed) + 1,
        );
        if !covered.is_empty() {
            tracing::debug!(%node, sessions = covered.len(), "holding what a returning node sends our sessions directly until they are merged");
        }
        for (client, token) in covered {
            match self.merge_holds.holding(client.clone(), token, node) {
                merge_holds::OnReturn::Hold => {}
                merge_holds::OnReturn::Pass => cluster.broker.order_passed(token, Some(node)),
                merge_holds::OnReturn::Barrier(via) => self.send_order_barrier(client.to_string(), token, via, now),
            }
        }
        // Its hand-backs may have come before we saw it return.
        let ended = self.merge_holds.ended();
        self.end_merge_holds(ended);
    }

    /// Merge holds that are over: what they held goes to the sessions.
    fn end_merge_holds(&mut self, tokens: Vec<u64>) {
        for token in tokens {
            self.cluster.broker.order_passed(token, None);
        }
    }

    /// `node` is gone. Its markers will not come: order holds stop waiting for them. Holds
    /// whose markers were to come through it wait instead for each node's marker sent straight
    /// here, behind the takeover report we just broadcast: each node sends the forwards `node`
    /// never acknowledged (for the sessions it handed us too, see `promote_orphans`) before it.
    fn order_holds_after_departure(&mut self, node: &NodeId, now: Instant) {
        for (token, (client, via, until)) in self.order_holds.iter_mut() {
            self.cluster.broker.order_passed(*token, Some(node));
            if via == node {
                // What we sent it and it did not acknowledge went to our sessions' copies
                // already (`promote_orphans`).
                self.cluster.broker.order_passed(*token, Some(&self.cluster.me));
                *via = self.cluster.me.clone();
                *until = now + ORDER_HOLD_LIMIT;
                self.cluster.broadcast(&wire::Message::OrderBarrier {
                    client: client.clone(),
                    token: *token,
                    via: self.cluster.me.to_string(),
                });
            }
        }
    }

    /// A node failed: its clients' wills go out after their delay, published by one node —
    /// the alive node with the smallest id, so that it happens once. A node that left on
    /// purpose published its clients' wills itself.
    fn take_over_wills(&mut self, node: &NodeId, why: &str) {
        let Some(wills) = self.remote_wills.remove(node) else {
            return;
        };
        if why == membership::LEFT {
            return;
        }
        let responsible = self
            .membership
            .alive()
            .chain(std::iter::once(&self.cluster.me))
            .min()
            .cloned();
        if responsible.as_ref() != Some(&self.cluster.me) {
            return;
        }
        for (client, will) in wills {
            self.next_generation += 1;
            let generation = self.next_generation;
            let delay = Duration::from_secs(u64::from(will.delay_secs));
            self.due_wills.insert(client.clone(), (generation, will));
            let cluster = self.cluster.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                cluster.core(CoreEvent::DeadWillDue { client, generation });
            });
        }
    }

    /// Disaster detection: more nodes than `replica-count − 1` left within the failure
    /// detection window of each other, so some data may have lost every copy.
    fn detect_disaster(&mut self, now: Instant) {
        let window = self
            .cluster
            .settings
            .detection
            .heartbeat_timeout
            .unwrap_or(Duration::from_secs(10))
            .max(Duration::from_secs(5));
        let recent = &mut self.recent_departures;
        while recent.front().is_some_and(|t| now.duration_since(*t) > window) {
            recent.pop_front();
        }
        if recent.is_empty() {
            self.disaster_warned = false;
        }
        recent.push_back(now);
        let replica_count = self.cluster.settings.replica_count;
        if recent.len() >= replica_count && !self.disaster_warned {
            self.disaster_warned = true;
            tracing::warn!(
                "Cluster disaster detected at {} (local time): {} nodes left the cluster within {}ms, \
                 not fewer than the configured replica count {replica_count}; not all replicas of persistent \
                 data may be reachable.",
                utc_time(crate::broker::message::now_ms()),
                recent.len(),
                window.as_millis()
            );
        }
    }

    /// We hold a peer's full state.
    fn synced(&mut self, merge: bool) {
        if merge {
            tracing::info!("Finished cluster merge process successfully.");
        }
        self.check_joined();
    }

    fn publish_alive(&mut self) {
        *write(&self.cluster.alive) = self.membership.alive().cloned().collect();
        let size = self.membership.size();
        tracing::info!("Cluster size = {size}");
        let configured = self.cluster.settings.replica_count;
        if configured > size && self.reduced_logged != Some(size) {
            self.reduced_logged = Some(size);
            tracing::info!("replica-count {configured} is above the cluster size {size}; using {size}");
        } else if configured <= size {
            self.reduced_logged = None;
        }
    }

    /// The join is over once every discovery address was tried, every peer found sent its
    /// state, and the copies of its sessions that the new membership puts here.
    fn check_joined(&mut self) {
        if !self.joined && self.untried.is_empty() && self.syncing.is_empty() && self.awaiting_copies.is_empty() {
            self.finish_join();
        }
    }

    fn finish_join(&mut self) {
        self.joined = true;
        self.copies_early.clear();
        if self.membership.size() > 1 || !self.cluster.settings.seeds.is_empty() {
            tracing::info!("Finished cluster join process successfully.");
        }
        tracing::info!("Cluster size = {}", self.membership.size());
        let _ = self.cluster.joined.send(true);
    }
}

fn now_instant() -> Instant {
    Instant::now()
}

/// A replica as a session handed over to a connecting client.
fn replica_export(replica: &Replica) -> SessionExport {
    SessionExport {
        expiry_interval: replica.record.as_ref().map_or(u32::MAX, |r| r.expiry_interval),
        subscriptions: replica.subscriptions.iter().map(|(f, r)| (f.clone(), *r)).collect(),
        outgoing: replica.outgoing.values().cloned().collect(),
        incoming_qos2: replica.incoming_qos2.iter().copied().collect(),
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS.mmm UTC`.
fn utc_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_time_formats_civil_dates() {
        assert_eq!(super::utc_time(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(super::utc_time(951_782_400_123), "2000-02-29 00:00:00.123 UTC");
        assert_eq!(super::utc_time(1_735_689_599_000), "2024-12-31 23:59:59.000 UTC");
    }
}
