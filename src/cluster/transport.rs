//! Cluster TCP transport: the listener for peers' connections and one dialer per known
//! address. Each node sends over the connection it dialed and receives over the ones it
//! accepted; messages for a peer wait in that peer's outbox while its connection is down, so
//! a reconnect does not lose them.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::wire::{self, Hello};
use super::{Cluster, CoreEvent, NodeId};

/// How long a handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> anyhow::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    reader.read_exact(&mut header).await?;
    let len = wire::frame_len(header)?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(body)
}

fn our_hello(cluster: &Cluster, chosen_version: u16, refusal: Option<String>) -> Hello {
    Hello {
        magic: wire::MAGIC,
        min_version: wire::MIN_VERSION,
        max_version: wire::MAX_VERSION,
        node: cluster.me.to_string(),
        address: cluster.settings.advertised.clone(),
        chosen_version,
        refusal,
    }
}

/// Accepts peers' connections until the cluster stops.
pub async fn listen(cluster: Arc<Cluster>, listener: TcpListener) {
    let mut stop = cluster.stop.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let cluster = cluster.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_inbound(&cluster, stream).await {
                        tracing::debug!(%peer, "cluster connection ended: {e:#}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("cluster accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// An accepted connection: answer the hello, then pass every message to the core.
async fn serve_inbound(cluster: &Arc<Cluster>, mut stream: TcpStream) -> anyhow::Result<()> {
    let body = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut stream)).await??;
    let hello = wire::decode_hello(&body)?;
    let Some(version) = wire::negotiate(hello.min_version, hello.max_version) else {
        let why = format!(
            "node {} at {} speaks cluster protocol versions {}..={}, this node speaks {}..={}: connection refused",
            hello.node,
            hello.address,
            hello.min_version,
            hello.max_version,
            wire::MIN_VERSION,
            wire::MAX_VERSION
        );
        tracing::warn!("{why}");
        stream
            .write_all(&wire::encode(&our_hello(cluster, 0, Some(why))))
            .await?;
        return Ok(());
    };
    stream
        .write_all(&wire::encode(&our_hello(cluster, version, None)))
        .await?;
    let node = NodeId::from(hello.node.as_str());
    if node == cluster.me {
        return Ok(()); // our own address in the discovery list
    }
    // Subscribed before the core hears of this connection: a close from then on is for it.
    let mut close = cluster.outbox(&node).close_inbound.subscribe();
    let generation = *close.borrow_and_update();
    cluster.core(CoreEvent::Inbound {
        node: node.clone(),
        address: hello.address.clone(),
    });
    let mut stop = cluster.stop.subscribe();
    let result = tokio::select! {
        result = read_messages(cluster, &node, &mut stream) => result,
        // The node was found dead (not: it left): this connection is closed here too. Left
        // open, what the peer wrote before it saw us go (given up on by both sides) would
        // arrive after a heal, and its end, seconds later, would declare the node down again
        // (TCP health check) just after the merge: a second takeover of sessions just handed
        // back. A node that left keeps talking while it shuts down (redirects, markers).
        _ = close.wait_for(|g| *g != generation) => {
            tracing::debug!(%node, "inbound cluster connection closed: the node was found dead");
            return Ok(());
        }
        _ = stop.wait_for(|s| *s) => Ok(()),
    };
    cluster.core(CoreEvent::ConnectionLost { node });
    result
}

async fn read_messages(cluster: &Arc<Cluster>, node: &NodeId, stream: &mut TcpStream) -> anyhow::Result<()> {
    loop {
        let body = read_frame(stream).await?;
        match wire::decode_message(&body) {
            Ok(message) => cluster.core(CoreEvent::Message {
                node: node.clone(),
                message,
            }),
            Err(e) => {
                // A peer that sends junk is cut off; it reconnects and resyncs.
                anyhow::bail!("invalid message from {node}: {e}");
            }
        }
    }
}

/// Connects to one address for as long as the cluster runs, sending the outbox of the node
/// found there and a heartbeat when idle.
pub async fn dial(cluster: Arc<Cluster>, address: String) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match connect(&cluster, &address).await {
            Ok(Dialed::Myself) => {
                tracing::debug!(%address, "this address is our own");
                cluster.core(CoreEvent::AttemptDone {
                    address: address.clone(),
                });
                return;
            }
            Ok(Dialed::Peer(node, stream, version)) => {
                backoff = Duration::from_millis(100);
                cluster.set_peer_version(&node, version);
                cluster.core(CoreEvent::Connected {
                    node: node.clone(),
                    address: address.clone(),
                });
                cluster.core(CoreEvent::AttemptDone {
                    address: address.clone(),
                });
                let outbox = cluster.outbox(&node);
                let mut stop = cluster.stop.subscribe();
                let mut reset = outbox.reset.subscribe();
                let generation = *reset.borrow_and_update();
                tokio::select! {
                    e = send_loop(&cluster, &outbox, stream, version) => {
                        tracing::debug!(%node, %address, "cluster link down: {e:#}");
                        cluster.core(CoreEvent::ConnectionLost { node });
                    }
                    // Declared down already: a new connection is dialled below.
                    _ = reset.wait_for(|g| *g != generation) => {
                        tracing::debug!(%node, %address, "cluster link reset: the node was declared down");
                    }
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            Err(e) => {
                tracing::debug!(%address, "cannot reach cluster node: {e:#}");
                cluster.core(CoreEvent::AttemptDone {
                    address: address.clone(),
                });
            }
        }
        if *cluster.stop.borrow() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

enum Dialed {
    Myself,
    /// A peer, on a connection that negotiated this protocol version.
    Peer(NodeId, TcpStream, u16),
}

async fn connect(cluster: &Arc<Cluster>, address: &str) -> anyhow::Result<Dialed> {
    let mut stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(address)).await??;
    let _ = stream.set_nodelay(true);
    stream.write_all(&wire::encode(&our_hello(cluster, 0, None))).await?;
    let body = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut stream)).await??;
    let answer = wire::decode_hello(&body)?;
    if let Some(why) = answer.refusal {
        anyhow::bail!("refused by {}: {why}", answer.node);
    }
    let node = NodeId::from(answer.node.as_str());
    if node == cluster.me {
        return Ok(Dialed::Myself);
    }
    anyhow::ensure!(
        (wire::MIN_VERSION..=wire::MAX_VERSION).contains(&answer.chosen_version),
        "{} chose protocol version {}, which this node does not speak",
        answer.node,
        answer.chosen_version
    );
    Ok(Dialed::Peer(node, stream, answer.chosen_version))
}

/// An encoded frame (in each protocol version's form), shared when the same one goes to
/// several nodes.
type Frame = Arc<wire::Frame>;

/// Messages queued for one node. Survives its connections.
pub struct Outbox {
    tx: mpsc::UnboundedSender<(u64, Frame)>,
    /// The queue, and a frame whose write failed, to be sent first on the next connection;
    /// each with the epoch it was queued in.
    #[allow(clippy::type_complexity)]
    rx: tokio::sync::Mutex<(mpsc::UnboundedReceiver<(u64, Frame)>, Option<(u64, Frame)>)>,
    /// Bumped when the node is declared down: what was queued before is dropped, not sent
    /// when it comes back (a session copy made then would overwrite the one it holds now; the
    /// rest is resent or taken over anyway).
    pub epoch: std::sync::atomic::AtomicU64,
    /// Bytes queued and not yet written, to shed QoS 0 forwards to a slow peer.
    pub queued_bytes: std::sync::atomic::AtomicUsize,
    /// Bumped when the node is declared down: the connection in use is dropped and dialled
    /// again, because a silent (black-holed) TCP connection would otherwise linger for minutes.
    pub reset: tokio::sync::watch::Sender<u64>,
    /// Bumped when the node is found dead (not when it leaves): its connections to us close.
    pub close_inbound: tokio::sync::watch::Sender<u64>,
}

impl Outbox {
    pub fn new() -> Outbox {
        let (tx, rx) = mpsc::unbounded_channel();
        Outbox {
            tx,
            rx: tokio::sync::Mutex::new((rx, None)),
            queued_bytes: Default::default(),
            epoch: Default::default(),
            reset: tokio::sync::watch::channel(0).0,
            close_inbound: tokio::sync::watch::channel(0).0,
        }
    }

    pub fn push(&self, frame: Frame) {
        self.queued_bytes
            .fetch_add(frame.len(), std::sync::atomic::Ordering::Relaxed);
        let epoch = self.epoch.load(std::sync::atomic::Ordering::Relaxed);
        let _ = self.tx.send((epoch, frame));
    }
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::new()
    }
}

/// Writes the outbox to a connection that negotiated protocol `version`.
async fn send_loop<W: AsyncWrite + Unpin>(
    cluster: &Arc<Cluster>,
    outbox: &Outbox,
    mut stream: W,
    version: u16,
) -> anyhow::Error {
    // One connection at a time drains a node's outbox; a second dialer to the same node waits.
    let mut guard = outbox.rx.lock().await;
    let mut heartbeat = tokio::time::interval(cluster.settings.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let beat = Arc::new(wire::frame(&wire::Message::Heartbeat));
    loop {
        let (rx, retry) = &mut *guard;
        let (epoch, frame) = match retry.take() {
            Some(f) => f,
            None => tokio::select! {
                f = rx.recv() => match f {
                    Some(f) => f,
                    None => return anyhow::anyhow!("outbox closed"),
                },
                _ = heartbeat.tick() => (u64::MAX, beat.clone()),
            },
        };
        // Queued before the node was declared down: not for the node that comes back.
        let stale = epoch < outbox.epoch.load(std::sync::atomic::Ordering::Relaxed);
        // A message this peer's version does not know is not sent (see `wire::Downgrade`).
        if !stale
            && let Some(bytes) = frame.bytes(version)
            && let Err(e) = stream.write_all(bytes).await
        {
            // Kept for the next connection.
            *retry = Some((epoch, frame));
            return e.into();
        }
        if !Arc::ptr_eq(&frame, &beat) {
            outbox
                .queued_bytes
                .fetch_sub(frame.len(), std::sync::atomic::Ordering::Relaxed);
        }
    }
}
