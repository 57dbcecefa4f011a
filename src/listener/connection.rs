//! One client connection: reads packets, applies them to the broker, writes the answers and
//! the messages the broker routes to this client.
//!
//! Everything written goes through one ordered queue. An entry may carry a store ticket; it is
//! written only once that ticket is committed, so an acknowledgement never overtakes the disk
//! and the packets after it keep their order. Reading goes on meanwhile, which lets a publisher
//! pipeline and lets the store commit many acknowledgements in one transaction.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::outbox;
use super::throttle::Throttled;
use crate::broker::ClaimStamp;
use crate::broker::message::{self, Message};
use crate::broker::session::{ConnectionHandle, Outbound};
use crate::broker::{Broker, ConnectRequest, Departure};
use crate::cluster::ClaimRefused;
use crate::mqtt::{
    self, ConnAck, Connect, DecodeError, Disconnect, Packet, Properties, ProtocolVersion, PubResponse, Publish, QoS,
    SubAck, Subscribe, UnsubAck, Unsubscribe, reason, v5_connack_to_v3,
};
use crate::store::Ticket;
use crate::store::records::WillRecord;

/// Why a connection ends; decides the DISCONNECT sent (MQTT 5) and whether the will goes out.
#[derive(Debug)]
enum Close {
    /// The client sent DISCONNECT.
    ClientDisconnect { with_will: bool, expiry: Option<u32> },
    /// The socket closed or failed.
    Lost,
    /// We end it: DISCONNECT with this reason (MQTT 5) and the will is published.
    Error(u8, &'static str),
    /// The session was taken over by a new connection [MQTT-3.1.4-3].
    TakenOver,
    /// The broker is shutting down.
    Shutdown,
}

const READ_CHUNK: usize = 8 * 1024;
/// Buffers of a connection quiet for this long are given back: thousands of idle clients
/// should not each hold read and write buffers.
const IDLE_SHRINK: Duration = Duration::from_secs(1);
const READ_IDLE: usize = 256;

/// Serves one network connection until it ends. `admitted` is false when `max-connections`
/// was reached: the CONNECT is answered with "quota exceeded" / "server unavailable".
pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    broker: Arc<Broker>,
    admitted: bool,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let throttle = broker.settings().restrictions.incoming_bandwidth_throttling;
    let (reader, mut writer) = tokio::io::split(stream);
    let mut reader = Throttled::new(reader, throttle);
    let mut rbuf = BytesMut::new();
    let opened = open(
        &mut reader,
        &mut writer,
        &mut rbuf,
        peer,
        broker,
        admitted,
        &mut shutdown,
    )
    .await;
    let Some(mut conn) = opened else { return };
    // Without `park`, `run` returns only to close.
    let close = loop {
        let rbuf = std::mem::take(&mut rbuf);
        if let Some(close) = conn.run(&mut reader, &mut writer, rbuf, &mut shutdown, false).await {
            break close;
        }
    };
    conn.finish(close, &mut writer).await;
}

/// [`serve`] for a plain TCP socket, built to keep idle connections small: the task itself
/// holds only the socket and the [`Connection`] state. The large futures (reading CONNECT,
/// the packet loop with its buffers, closing) are boxed while they run, and the packet loop is
/// dropped again once the connection has been quiet for [`IDLE_SHRINK`]; until the socket,
/// the broker, the keep alive or a shutdown wakes it, the connection is parked.
///
/// Counts the connection against `max-connections` itself, and holds `count`, its place in
/// the listener's count of connections. Not an `async fn`: an async block uses the captured
/// arguments in place, where an `async fn` would hold a second copy.
#[expect(clippy::manual_async_fn, reason = "an async fn would hold its arguments twice")]
pub fn serve_tcp(
    mut stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    count: super::Counted,
) -> impl Future<Output = ()> + Send {
    async move {
        // Captured (by reference, so not copied), so that the listener counts this connection
        // until the task ends.
        let _count = &count;
        let admitted = broker.try_admit_connection();
        let _release = admitted.then(|| ReleaseOnDrop(broker.clone()));
        if broker.settings().restrictions.incoming_bandwidth_throttling > 0 {
            // The token bucket lives in the reader; such connections take the general path.
            return Box::pin(serve(stream, peer, broker, admitted, shutdown)).await;
        }
        let mut rbuf = BytesMut::new();
        let mut opened = Box::pin(async {
            let (mut reader, mut writer) = stream.split();
            open(
                &mut reader,
                &mut writer,
                &mut rbuf,
                peer,
                broker,
                admitted,
                &mut shutdown,
            )
            .await
        })
        .await;
        // Used in place: moving it out would keep a second copy in this future.
        let Some(conn) = opened.as_mut() else { return };
        let close = loop {
            // Nothing read and not handled yet: wait for work without the packet loop. Most
            // clients send nothing right after CONNECT, so they park at once.
            if rbuf.is_empty() {
                rbuf = BytesMut::new();
                if let Some(close) = conn.park(&stream, &mut shutdown).await {
                    break close;
                }
            }
            let rbuf = std::mem::take(&mut rbuf);
            let ran = Box::pin(async {
                let (mut reader, mut writer) = stream.split();
                conn.run(&mut reader, &mut writer, rbuf, &mut shutdown, true).await
            })
            .await;
            if let Some(close) = ran {
                break close;
            }
        };
        if let Some(conn) = opened {
            Box::pin(conn.finish(close, &mut stream)).await;
        }
    }
}

/// Gives the `max-connections` slot back when the connection's task ends, however it ends.
struct ReleaseOnDrop(Arc<Broker>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release_connection();
    }
}

/// Reads and answers the CONNECT: the [`Connection`] if the client is in, with any bytes
/// read beyond the CONNECT left in `rbuf`.
async fn open<R, W>(
    reader: &mut R,
    writer: &mut W,
    rbuf: &mut BytesMut,
    peer: SocketAddr,
    broker: Arc<Broker>,
    admitted: bool,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Connection>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let settings = broker.settings();
    let idle = Duration::from_millis(settings.restrictions.no_connect_idle_timeout_ms);

    // The first packet must be CONNECT [MQTT-3.1.0-1], within the idle timeout. A shutdown
    // does not wait for it.
    let first = tokio::time::timeout(idle, read_connect(reader, rbuf, settings.mqtt.max_packet_size));
    let first = tokio::select! {
        first = first => first,
        _ = shutdown.changed() => return None,
    };
    let connect = match first {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "closing before CONNECT: {e}");
            if let DecodeError::UnsupportedProtocolVersion(_) = e {
                // Answered in 3.1.1 form, which every client can read [MQTT-3.1.2-2].
                let refusal = connack(
                    mqtt::v3_connack::UNACCEPTABLE_PROTOCOL_VERSION,
                    false,
                    Properties::default(),
                );
                let _ = write_packet(writer, &refusal, ProtocolVersion::V311).await;
            }
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within {} ms, closing", idle.as_millis());
            return None;
        }
    };
    if !admitted {
        tracing::warn!(%peer, "connection refused: max-connections reached");
        let code = match connect.protocol {
            ProtocolVersion::V5 => reason::QUOTA_EXCEEDED,
            _ => mqtt::v3_connack::SERVER_UNAVAILABLE,
        };
        let _ = write_packet(writer, &connack(code, false, Properties::default()), connect.protocol).await;
        return None;
    }
    Connection::accept(connect, peer, broker, writer).await
}

async fn read_connect<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max: u32,
) -> Result<Option<Connect>, DecodeError> {
    loop {
        match mqtt::decode(buf, ProtocolVersion::V5, max)? {
            Some(Packet::Connect(c)) => return Ok(Some(c)),
            Some(_) => return Ok(None),
            None => {}
        }
        buf.reserve(READ_IDLE);
        match reader.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

async fn write_packet<W: AsyncWrite + Unpin>(
    writer: &mut W,
    packet: &Packet,
    version: ProtocolVersion,
) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    mqtt::encode(packet, version, &mut buf).map_err(std::io::Error::other)?;
    writer.write_all(&buf).await?;
    writer.flush().await
}

fn connack(code: u8, session_present: bool, properties: Properties) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present,
        code,
        properties,
    })
}

fn pub_response(packet_id: u16, reason: u8) -> PubResponse {
    PubResponse {
        packet_id,
        reason,
        properties: Properties::default(),
    }
}

/// A packet waiting to be written: after its store ticket is committed and, for the PUBACK of
/// a retained message in a cluster, after every node has it.
struct Pending {
    packet: Packet,
    ticket: Option<Ticket>,
    replicated: Option<oneshot::Receiver<()>>,
}

impl Pending {
    fn new(packet: Packet, ticket: Option<Ticket>) -> Pending {
        Pending {
            packet,
            ticket,
            replicated: None,
        }
    }
}

/// Topic aliases [MQTT-3.3.2-12], made when a client first uses them.
#[derive(Default)]
struct Aliases {
    /// Client → server.
    incoming: HashMap<u16, String>,
    /// Server → client; at most `alias_out_max`.
    outgoing: HashMap<String, u16>,
}

struct Connection {
    broker: Arc<Broker>,
    client_id: Arc<str>,
    id: u64,
    version: ProtocolVersion,
    /// Seconds; 0 = no keep alive.
    keep_alive: u16,
    /// No packet from the client by then ends the connection (1.5 times the keep alive)
    /// [MQTT-3.1.2-24].
    deadline: Instant,
    /// Session expiry asked for at CONNECT; a DISCONNECT may not raise it from 0 [MQTT-3.14.2-2].
    connect_expiry: u32,
    /// Whether reason strings and user properties may be sent on acks [MQTT-3.1.2-29].
    problem_information: bool,
    rx: outbox::Receiver<Outbound>,
    qos0_pending: Arc<AtomicUsize>,
    /// Packets waiting to be written, in order, each after its ticket.
    out: VecDeque<Pending>,
    aliases: Option<Box<Aliases>>,
    /// How many server → client topic aliases the client allows.
    alias_out_max: u16,
    /// QoS 1/2 PUBLISHes received and not yet acknowledged (PUBACK / PUBCOMP), against our
    /// Receive Maximum [MQTT-3.3.4-9].
    incoming_unacked: u32,
    /// QoS 1/2 PUBLISHes whose PUBACK / PUBREC is not yet written (waiting for the disk).
    /// Reading pauses while there are `server-receive-maximum` of them: back-pressure that also
    /// holds for MQTT 3 clients, which know no receive maximum.
    acks_pending: u32,
}

impl Connection {
    /// Validates the CONNECT, registers the session with the broker and writes the CONNACK.
    async fn accept<W: AsyncWrite + Unpin>(
        connect: Connect,
        peer: SocketAddr,
        broker: Arc<Broker>,
        writer: &mut W,
    ) -> Option<Connection> {
        let settings = broker.settings().clone();
        let version = connect.protocol;
        let refuse = |code: u8| {
            let code = if version == ProtocolVersion::V5 {
                code
            } else {
                v5_connack_to_v3(code)
            };
            connack(code, false, Properties::default())
        };
        let props = &connect.properties;

        let mut client_id = connect.client_id.clone();
        let mut assigned = None;
        if client_id.is_empty() {
            // 3.1.1 allows an empty id only with a clean session [MQTT-3.1.3-7] [MQTT-3.1.3-8];
            // 3.1 not at all.
            let allowed = settings.security.allow_empty_client_id
                && match version {
                    ProtocolVersion::V5 => true,
                    ProtocolVersion::V311 => connect.clean_start,
                    ProtocolVersion::V31 => false,
                };
            if !allowed {
                let _ = write_packet(writer, &refuse(reason::CLIENT_IDENTIFIER_NOT_VALID), version).await;
                return None;
            }
            client_id = format!("apiary-{:016x}", rand::random::<u64>());
            assigned = Some(client_id.clone());
        }
        let strict = settings.security.utf8_validation;
        let refusal = if client_id.len() as u64 > u64::from(settings.restrictions.max_client_id_length)
            || (strict && !mqtt::topic::is_strict_utf8_clean(&client_id))
        {
            Some(reason::CLIENT_IDENTIFIER_NOT_VALID)
        } else if props.authentication_method.is_some() {
            // Enhanced authentication is not offered [MQTT-4.12.0-1].
            Some(reason::BAD_AUTHENTICATION_METHOD)
        } else if let Some(will) = &connect.will {
            if !mqtt::topic::valid_topic_name(&will.topic)
                || will.topic.len() as u64 > u64::from(settings.restrictions.max_topic_length)
                || (strict && !mqtt::topic::is_strict_utf8_clean(&will.topic))
            {
                Some(reason::TOPIC_NAME_INVALID)
            } else if will.qos as u8 > settings.mqtt.max_qos {
                Some(reason::QOS_NOT_SUPPORTED) // [MQTT-3.2.2-12]
            } else if will.retain && !settings.mqtt.retained_messages_enabled {
                Some(reason::RETAIN_NOT_SUPPORTED) // [MQTT-3.2.2-13]
            } else {
                None
            }
        } else {
            None
        };
        if let Some(code) = refusal {
            tracing::info!(%peer, client = %client_id, "connection refused: reason 0x{code:02x}");
            let _ = write_packet(writer, &refuse(code), version).await;
            return None;
        }

        // Session expiry: MQTT 5 asks for it; 3.x maps clean session to 0 / forever.
        let requested = match version {
            ProtocolVersion::V5 => props.session_expiry_interval.unwrap_or(0),
            _ if connect.clean_start => 0,
            _ => u32::MAX,
        };
        let expiry = u64::from(requested)
            .min(settings.mqtt.session_expiry_max_interval)
            .min(u64::from(u32::MAX)) as u32;

        // Keep alive: the server may lower it and says so [MQTT-3.2.2-21].
        let max_ka = settings.mqtt.max_keep_alive;
        let keep_alive = match connect.keep_alive {
            0 if settings.mqtt.allow_unlimited_keep_alive => 0,
            0 => max_ka,
            ka => ka.min(max_ka),
        };

        let (tx, rx) = outbox::channel();
        let qos0_pending = Arc::new(AtomicUsize::new(0));
        let id = broker.next_connection_id();
        let handle = ConnectionHandle {
            id,
            tx,
            version,
            receive_maximum: props.receive_maximum.unwrap_or(u16::MAX),
            max_packet_size: props.maximum_packet_size.unwrap_or(u32::MAX),
            qos0_pending: qos0_pending.clone(),
        };
        let will = connect.will.as_ref().map(|w| {
            let publish = Publish {
                dup: false,
                qos: w.qos,
                retain: w.retain,
                topic: w.topic.clone(),
                packet_id: 0,
                properties: w.properties.clone(),
                payload: w.payload.clone(),
            };
            WillRecord {
                message: Message::from_publish(&publish, &client_id, settings.mqtt.message_expiry_max_interval),
                delay_secs: w.properties.will_delay_interval.unwrap_or(0),
            }
        });
        let client_id: Arc<str> = Arc::from(client_id);
        // In a cluster the client id is unique across nodes: whoever holds the session hands
        // it over; of two connections racing, the newer wins [MQTT-3.1.4-3].
        let (imported, claim, order) = match broker.cluster() {
            Some(cluster) => {
                let stamp: ClaimStamp = (message::now_ms(), cluster.id().to_string());
                broker.begin_claim(&client_id, stamp.clone());
                match cluster.claim_session(&client_id, &stamp, connect.clean_start).await {
                    Ok(claimed) => {
                        let order = claimed
                            .from
                            .as_ref()
                            .and_then(|from| cluster.hold_order(&client_id, from));
                        (claimed.export, Some(stamp), order)
                    }
                    Err(ClaimRefused) => (None, None, None),
                }
            }
            None => (None, None, None),
        };
        let superseded = broker.cluster().is_some() && claim.is_none();
        let outcome = if superseded {
            None
        } else {
            broker.connect(ConnectRequest {
                client_id: client_id.clone(),
                clean_start: connect.clean_start,
                expiry_interval: expiry,
                will: will.clone(),
                connection: handle,
                imported,
                claim,
                order,
            })
        };
        let Some(outcome) = outcome else {
            tracing::info!(%peer, client = %client_id, "a newer connection of this client id is on another node");
            broker.end_claim(&client_id);
            let _ = write_packet(writer, &refuse(reason::SERVER_BUSY), version).await;
            return None;
        };
        // The other nodes keep the will, to publish it if this node dies.
        if let (Some(cluster), Some(will)) = (broker.cluster(), will) {
            cluster.local_will(&client_id, Some(will));
        }
        if let Err(e) = broker.wait(outcome.ticket).await {
            tracing::error!(client = %client_id, "cannot accept the session: {e}");
            let _ = write_packet(writer, &refuse(reason::SERVER_UNAVAILABLE), version).await;
            broker.disconnect(&client_id, id, Departure::WithWill, None);
            return None;
        }

        let mut properties = Properties::default();
        if version == ProtocolVersion::V5 {
            let m = &settings.mqtt;
            properties.assigned_client_identifier = assigned;
            if u64::from(requested) != u64::from(expiry) {
                properties.session_expiry_interval = Some(expiry);
            }
            if keep_alive != connect.keep_alive {
                properties.server_keep_alive = Some(keep_alive);
            }
            if m.server_receive_maximum != u16::MAX {
                properties.receive_maximum = Some(m.server_receive_maximum);
            }
            if m.max_qos < 2 {
                properties.maximum_qos = Some(m.max_qos);
            }
            if !m.retained_messages_enabled {
                properties.retain_available = Some(0);
            }
            // Only a real limit is announced: HiveMQ's default (268435460) is above what MQTT
            // can encode (268435455), and some clients (paho) refuse such a CONNACK.
            if m.max_packet_size < 268_435_455 {
                properties.maximum_packet_size = Some(m.max_packet_size);
            }
            properties.topic_alias_maximum = Some(if m.topic_alias_enabled {
                m.topic_alias_max_per_client
            } else {
                0
            });
            if !m.wildcard_subscriptions_enabled {
                properties.wildcard_subscription_available = Some(0);
            }
            if !m.subscription_identifier_enabled {
                properties.subscription_identifier_available = Some(0);
            }
            if !m.shared_subscriptions_enabled {
                properties.shared_subscription_available = Some(0);
            }
        }
        if write_packet(
            writer,
            &connack(reason::SUCCESS, outcome.session_present, properties),
            version,
        )
        .await
        .is_err()
        {
            broker.disconnect(&client_id, id, Departure::WithWill, None);
            return None;
        }
        tracing::debug!(%peer, client = %client_id, ?version, session_present = outcome.session_present, "client connected");
        Some(Connection {
            client_id,
            id,
            version,
            keep_alive,
            deadline: Instant::now() + grace(keep_alive),
            connect_expiry: expiry,
            problem_information: settings.security.allow_request_problem_information
                && props.request_problem_information.unwrap_or(1) == 1,
            rx,
            qos0_pending,
            out: VecDeque::new(),
            aliases: None,
            alias_out_max: props.topic_alias_maximum.unwrap_or(0),
            incoming_unacked: 0,
            acks_pending: 0,
            broker,
        })
    }

    /// Reads, handles and writes packets. Returns why to close; or, with `park`, `None` once
    /// the connection has been quiet for [`IDLE_SHRINK`] with nothing buffered or queued (the
    /// caller then drops this future and its buffers, and waits in [`Connection::park`]).
    /// Without `park` a quiet connection only gives its buffers back.
    async fn run<R, W>(
        &mut self,
        reader: &mut R,
        writer: &mut W,
        mut rbuf: BytesMut,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
        park: bool,
    ) -> Option<Close>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let max_packet_size = self.broker.settings().mqtt.max_packet_size;
        let receive_maximum = u32::from(self.broker.settings().mqtt.server_receive_maximum);
        let mut wbuf = BytesMut::new();
        // Small reads until the client sends more than a small buffer holds.
        let mut idle = true;
        let grace = grace(self.keep_alive);
        // One timer serves the keep alive and the quiet period. Traffic moves both times later
        // without touching it: it then fires early, finds nothing due and is set again. Setting
        // a timer (or dropping one) on every packet cost more than the rest of a PUBLISH's way
        // through the loop (callgrind, scenario 3 paced).
        let timer = tokio::time::sleep_until(self.deadline);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        let mut quiet_since = Instant::now();
        loop {
            // Handle every complete packet already buffered.
            loop {
                match mqtt::decode(&mut rbuf, self.version, max_packet_size) {
                    Ok(Some(packet)) => {
                        self.deadline = Instant::now() + grace;
                        if let Some(close) = self.handle(packet) {
                            self.flush(writer, &mut wbuf).await;
                            return Some(close);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(client = %self.client_id, "bad packet: {e}");
                        self.flush(writer, &mut wbuf).await;
                        return Some(Close::Error(e.reason_code(), "malformed or invalid packet"));
                    }
                }
            }
            // Take in whatever the broker sent meanwhile.
            while let Some(item) = self.rx.try_recv() {
                if let Some(close) = self.take_outbound(item) {
                    self.flush(writer, &mut wbuf).await;
                    return Some(close);
                }
            }
            if !self.flush(writer, &mut wbuf).await {
                return Some(Close::Lost);
            }
            let blocked_on = self.out.front().and_then(|p| p.ticket);
            // Taken out of the queue while we wait on it; put back if still pending.
            let mut replication = self.out.front_mut().and_then(|p| p.replicated.take());
            let may_read = self.acks_pending < receive_maximum;
            let quiet = rbuf.is_empty() && self.out.is_empty();
            rbuf.reserve(if idle { READ_IDLE } else { READ_CHUNK });
            let room = rbuf.capacity() - rbuf.len();
            let can_shrink = quiet && (park || !idle);
            let keep_alive = (self.keep_alive != 0).then_some(self.deadline);
            let shrink_at = can_shrink.then(|| quiet_since + IDLE_SHRINK);
            let due = match (keep_alive, shrink_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(due) = due
                && armed.is_none_or(|at| due < at)
            {
                timer.as_mut().reset(due);
                armed = Some(due);
            }
            let mut woke = true;
            tokio::select! {
                read = reader.read_buf(&mut rbuf), if may_read => match read {
                    Ok(0) | Err(_) => return Some(Close::Lost),
                    // A full small read means traffic: read in large chunks from now on.
                    Ok(n) => idle &= n < room,
                },
                _ = &mut timer, if armed.is_some() => {
                    armed = None;
                    woke = false;
                    let now = Instant::now();
                    if keep_alive.is_some_and(|at| now >= at) {
                        tracing::debug!(client = %self.client_id, "keep alive timeout");
                        return Some(Close::Error(reason::KEEP_ALIVE_TIMEOUT, "keep alive timeout"));
                    }
                    if shrink_at.is_some_and(|at| now >= at) {
                        if park {
                            return None;
                        }
                        idle = true;
                        rbuf = BytesMut::new();
                        wbuf = BytesMut::new();
                    }
                },
                item = self.rx.recv() => match item {
                    Some(item) => if let Some(close) = self.take_outbound(item) {
                        self.flush(writer, &mut wbuf).await;
                        return Some(close);
                    },
                    None => return Some(Close::Lost),
                },
                _ = wait_replication(&mut replication) => replication = None,
                committed = wait_ticket(&self.broker, blocked_on) => {
                    if let Err(e) = committed {
                        tracing::error!(client = %self.client_id, "{e}");
                        return Some(Close::Error(reason::UNSPECIFIED_ERROR, "persistence failed"));
                    }
                },
                _ = shutdown.changed() => return Some(Close::Shutdown),
            }
            if woke {
                quiet_since = Instant::now();
            }
            if let (Some(r), Some(front)) = (replication, self.out.front_mut()) {
                front.replicated = Some(r);
            }
        }
    }

    /// Waits, holding nothing but this state, until the socket is readable (or closed), the
    /// broker queued something, the keep alive ran out or the broker shuts down. `None`:
    /// there is work for [`Connection::run`].
    async fn park(&mut self, stream: &TcpStream, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> Option<Close> {
        // Whatever a burst left behind.
        self.out = VecDeque::new();
        self.rx.shrink();
        let rx = &mut self.rx;
        tokio::select! {
            _ = std::future::poll_fn(|cx| stream.poll_read_ready(cx)) => None,
            _ = std::future::poll_fn(|cx| rx.poll_ready(cx)) => None,
            _ = tokio::time::sleep_until(self.deadline), if self.keep_alive != 0 => {
                tracing::debug!(client = %self.client_id, "keep alive timeout");
                Some(Close::Error(reason::KEEP_ALIVE_TIMEOUT, "keep alive timeout"))
            },
            _ = shutdown.changed() => Some(Close::Shutdown),
        }
    }

    /// Queues an item from the broker; returns a reason to close if it says so.
    fn take_outbound(&mut self, item: Outbound) -> Option<Close> {
        match item {
            Outbound::Packet(packet, ticket) => {
                self.out.push_back(Pending::new(*packet, ticket));
                None
            }
            Outbound::Disconnect(code) if code == reason::SESSION_TAKEN_OVER => Some(Close::TakenOver),
            Outbound::Disconnect(code) => Some(Close::Error(code, "disconnected by the broker")),
        }
    }

    /// Writes every queued packet whose ticket is committed. Returns false if the socket failed.
    async fn flush<W: AsyncWrite + Unpin>(&mut self, writer: &mut W, wbuf: &mut BytesMut) -> bool {
        while let Some(front) = self.out.front_mut() {
            if let Some(t) = front.ticket
                && !self.broker.is_committed(t)
            {
                break;
            }
            if let Some(r) = &mut front.replicated {
                match r.try_recv() {
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    // Done, or the cluster gave up on it (node down): write the ack.
                    _ => front.replicated = None,
                }
            }
            let Some(Pending { packet, .. }) = self.out.pop_front() else {
                break;
            };
            let packet = self.prepare_outgoing(packet);
            if let Err(e) = mqtt::encode(&packet, self.version, wbuf) {
                tracing::warn!(client = %self.client_id, "cannot encode {packet:?}: {e}");
            }
            if wbuf.len() >= 64 * 1024 {
                if writer.write_all(wbuf).await.is_err() {
                    return false;
                }
                wbuf.clear();
            }
        }
        if !wbuf.is_empty() {
            if writer.write_all(wbuf).await.is_err() || writer.flush().await.is_err() {
                return false;
            }
            wbuf.clear();
        }
        true
    }

    /// Last touches before a packet is written: acks leave the unacked count, QoS 0 leaves the
    /// slow-consumer bound, and PUBLISH topics may be replaced by an alias.
    fn prepare_outgoing(&mut self, packet: Packet) -> Packet {
        match packet {
            Packet::PubAck(_) => {
                self.incoming_unacked = self.incoming_unacked.saturating_sub(1);
                self.acks_pending = self.acks_pending.saturating_sub(1);
                packet
            }
            Packet::PubRec(_) => {
                self.acks_pending = self.acks_pending.saturating_sub(1);
                packet
            }
            Packet::PubComp(_) => {
                self.incoming_unacked = self.incoming_unacked.saturating_sub(1);
                packet
            }
            Packet::Publish(mut p) => {
                if p.qos == QoS::AtMostOnce {
                    self.qos0_pending.fetch_sub(1, Ordering::Relaxed);
                }
                if self.version == ProtocolVersion::V5 && self.alias_out_max > 0 {
                    let out = &mut self.aliases.get_or_insert_default().outgoing;
                    if let Some(alias) = out.get(&p.topic) {
                        p.properties.topic_alias = Some(*alias);
                        p.topic = String::new();
                    } else if out.len() < usize::from(self.alias_out_max) {
                        let alias = out.len() as u16 + 1;
                        out.insert(p.topic.clone(), alias);
                        p.properties.topic_alias = Some(alias);
                    }
                }
                Packet::Publish(p)
            }
            other => other,
        }
    }

    fn send(&mut self, packet: Packet, ticket: Ticket) {
        let ticket = (ticket > 0).then_some(ticket);
        self.out.push_back(Pending::new(packet, ticket));
    }

    /// Applies one packet from the client. Returns why to close, if it must.
    fn handle(&mut self, packet: Packet) -> Option<Close> {
        let broker = self.broker.clone();
        let client = self.client_id.clone();
        match packet {
            Packet::Publish(publish) => return self.handle_publish(publish),
            Packet::PubAck(ack) | Packet::PubComp(ack) => {
                broker.complete(&client, self.id, ack.packet_id);
            }
            Packet::PubRec(rec) => {
                let (known, ticket) = broker.received(&client, self.id, rec.packet_id, rec.reason);
                if rec.reason < 0x80 {
                    let code = if known {
                        reason::SUCCESS
                    } else {
                        reason::PACKET_IDENTIFIER_NOT_FOUND
                    };
                    self.send(Packet::PubRel(pub_response(rec.packet_id, code)), ticket);
                }
            }
            Packet::PubRel(rel) => {
                let (known, ticket) = broker.release(&client, self.id, rel.packet_id);
                let code = if known {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                if !known {
                    // Not counted as unacked; balance the decrement done when PUBCOMP is written.
                    self.incoming_unacked = self.incoming_unacked.saturating_add(1);
                }
                self.send(Packet::PubComp(pub_response(rel.packet_id, code)), ticket);
            }
            Packet::Subscribe(subscribe) => return self.handle_subscribe(subscribe),
            Packet::Unsubscribe(Unsubscribe { packet_id, filters, .. }) => {
                let (codes, ticket) = broker.unsubscribe(&client, self.id, &filters);
                let ack = UnsubAck {
                    packet_id,
                    properties: Properties::default(),
                    reason_codes: codes,
                };
                self.send(Packet::UnsubAck(ack), ticket);
            }
            Packet::PingReq => self.send(Packet::PingResp, 0),
            Packet::Disconnect(Disconnect {
                reason: code,
                properties,
            }) => {
                if let Some(expiry) = properties.session_expiry_interval
                    && self.connect_expiry == 0
                    && expiry != 0
                {
                    return Some(Close::Error(reason::PROTOCOL_ERROR, "session expiry raised from 0"));
                }
                let max = broker.settings().mqtt.session_expiry_max_interval;
                let expiry = properties.session_expiry_interval.map(|e| u64::from(e).min(max) as u32);
                return Some(Close::ClientDisconnect {
                    with_will: code == reason::DISCONNECT_WITH_WILL,
                    expiry,
                });
            }
            Packet::Connect(_) => return Some(Close::Error(reason::PROTOCOL_ERROR, "second CONNECT")), // [MQTT-3.1.0-2]
            Packet::Auth(_) => {
                return Some(Close::Error(
                    reason::PROTOCOL_ERROR,
                    "AUTH without an authentication method",
                ));
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return Some(Close::Error(reason::PROTOCOL_ERROR, "server-only packet from a client"));
            }
        }
        None
    }

    fn handle_publish(&mut self, mut publish: Publish) -> Option<Close> {
        let settings = self.broker.settings();
        if publish.qos as u8 > settings.mqtt.max_qos {
            return Some(Close::Error(reason::QOS_NOT_SUPPORTED, "QoS above maximum")); // [MQTT-3.2.2-11]
        }
        if publish.retain && !settings.mqtt.retained_messages_enabled {
            return Some(Close::Error(reason::RETAIN_NOT_SUPPORTED, "retain not supported")); // [MQTT-3.3.1-15]
        }
        // Topic alias: set or use a mapping [MQTT-3.3.2-12..-14].
        if let Some(alias) = publish.properties.topic_alias.take() {
            let max = if settings.mqtt.topic_alias_enabled {
                settings.mqtt.topic_alias_max_per_client
            } else {
                0
            };
            if alias == 0 || alias > max {
                return Some(Close::Error(reason::TOPIC_ALIAS_INVALID, "topic alias out of range"));
            }
            let incoming = &mut self.aliases.get_or_insert_default().incoming;
            if publish.topic.is_empty() {
                match incoming.get(&alias) {
                    Some(topic) => publish.topic = topic.clone(),
                    None => return Some(Close::Error(reason::PROTOCOL_ERROR, "unknown topic alias")),
                }
            } else {
                incoming.insert(alias, publish.topic.clone());
            }
        }
        if !mqtt::topic::valid_topic_name(&publish.topic)
            || publish.topic.len() as u64 > u64::from(settings.restrictions.max_topic_length)
            || (settings.security.utf8_validation && !mqtt::topic::is_strict_utf8_clean(&publish.topic))
        {
            return Some(Close::Error(reason::TOPIC_NAME_INVALID, "invalid topic name"));
        }
        if publish.qos != QoS::AtMostOnce {
            self.incoming_unacked = self.incoming_unacked.saturating_add(1);
            self.acks_pending += 1;
            // MQTT 3 has no receive maximum: those clients are slowed down by reading less
            // (see `run`) instead of being disconnected.
            let limit = u32::from(settings.mqtt.server_receive_maximum);
            if self.version == ProtocolVersion::V5 && self.incoming_unacked > limit {
                return Some(Close::Error(
                    reason::RECEIVE_MAXIMUM_EXCEEDED,
                    "receive maximum exceeded",
                )); // [MQTT-3.3.4-9]
            }
        }
        // Payload format indicator 1 promises UTF-8; checked when the operator asks [MQTT-3.3.2-4].
        let bad_payload = settings.security.payload_format_validation
            && publish.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&publish.payload).is_err();
        if bad_payload {
            match publish.qos {
                QoS::AtMostOnce => return Some(Close::Error(reason::PAYLOAD_FORMAT_INVALID, "payload is not UTF-8")),
                QoS::AtLeastOnce => self.send(
                    Packet::PubAck(pub_response(publish.packet_id, reason::PAYLOAD_FORMAT_INVALID)),
                    0,
                ),
                QoS::ExactlyOnce => self.send(
                    Packet::PubRec(pub_response(publish.packet_id, reason::PAYLOAD_FORMAT_INVALID)),
                    0,
                ),
            }
            return None;
        }
        let message = Message::from_publish(&publish, &self.client_id, settings.mqtt.message_expiry_max_interval);
        let qos2_id = (publish.qos == QoS::ExactlyOnce).then_some(publish.packet_id);
        let outcome = self.broker.publish(&self.client_id, self.id, message, qos2_id);
        let code = if outcome.matched {
            reason::SUCCESS
        } else {
            reason::NO_MATCHING_SUBSCRIBERS
        };
        let ack = match publish.qos {
            QoS::AtMostOnce => return None,
            QoS::AtLeastOnce => Packet::PubAck(pub_response(publish.packet_id, code)),
            QoS::ExactlyOnce => {
                // A resend of a packet id already received is not counted twice.
                if outcome.duplicate {
                    self.incoming_unacked = self.incoming_unacked.saturating_sub(1);
                }
                Packet::PubRec(pub_response(publish.packet_id, code))
            }
        };
        let ticket = (outcome.ticket > 0).then_some(outcome.ticket);
        self.out.push_back(Pending {
            packet: ack,
            ticket,
            replicated: outcome.replicated,
        });
        None
    }

    fn handle_subscribe(&mut self, subscribe: Subscribe) -> Option<Close> {
        let Subscribe {
            packet_id,
            properties,
            filters,
        } = subscribe;
        // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4].
        if filters
            .iter()
            .any(|(f, o)| o.no_local && matches!(mqtt::topic::parse_shared(f), Ok(Some(_))))
        {
            return Some(Close::Error(
                reason::PROTOCOL_ERROR,
                "no local on a shared subscription",
            ));
        }
        let subscription_id = properties.subscription_identifiers.first().copied();
        let (codes, ticket) = self
            .broker
            .subscribe(&self.client_id, self.id, &filters, subscription_id);
        let ack = SubAck {
            packet_id,
            properties: Properties::default(),
            reason_codes: codes,
        };
        // SUBACK first; retained messages the broker queued arrive through the channel after it.
        self.send(Packet::SubAck(ack), ticket);
        None
    }

    /// Ends the connection: tells the client why (MQTT 5) and the broker how.
    async fn finish<W: AsyncWrite + Unpin>(mut self, close: Close, writer: &mut W) {
        let (departure, expiry, disconnect_reason) = match &close {
            Close::ClientDisconnect { with_will, expiry } => (
                if *with_will {
                    Departure::WithWill
                } else {
                    Departure::Normal
                },
                *expiry,
                None,
            ),
            Close::Lost => (Departure::WithWill, None, None),
            Close::Error(code, why) => {
                tracing::debug!(client = %self.client_id, "closing: {why} (0x{code:02x})");
                (Departure::WithWill, None, Some(*code))
            }
            Close::TakenOver => (Departure::WithWill, None, Some(reason::SESSION_TAKEN_OVER)),
            Close::Shutdown => (Departure::WithWill, None, Some(reason::SERVER_SHUTTING_DOWN)),
        };
        // The server sends DISCONNECT only in MQTT 5, and only with an error reason [MQTT-3.14.0-1].
        if let (Some(code), ProtocolVersion::V5) = (disconnect_reason, self.version) {
            let mut properties = Properties::default();
            if self.problem_information
                && let Close::Error(_, why) = &close
            {
                properties.reason_string = Some((*why).to_owned());
            }
            let packet = Packet::Disconnect(Disconnect {
                reason: code,
                properties,
            });
            let _ = tokio::time::timeout(Duration::from_secs(1), write_packet(writer, &packet, self.version)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
        if !matches!(close, Close::TakenOver) {
            self.broker.disconnect(&self.client_id, self.id, departure, expiry);
            // This node settled the will (published, scheduled or dropped it).
            if let Some(cluster) = self.broker.cluster() {
                cluster.local_will(&self.client_id, None);
            }
        }
        self.rx.close();
        tracing::debug!(client = %self.client_id, ?close, "client disconnected");
    }
}

/// How long a client may stay silent: 1.5 times its keep alive [MQTT-3.1.2-24].
fn grace(keep_alive: u16) -> Duration {
    Duration::from_millis(u64::from(keep_alive) * 1500)
}

async fn wait_replication(replication: &mut Option<oneshot::Receiver<()>>) {
    match replication {
        Some(r) => {
            let _ = r.await;
        }
        None => std::future::pending().await,
    }
}

async fn wait_ticket(broker: &Broker, ticket: Option<Ticket>) -> Result<(), crate::store::StoreError> {
    match ticket {
        Some(t) => broker.wait(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future a function returns, without calling it.
    fn future_size<A, F: std::future::Future>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Prints what an idle connection holds (`cargo test --release --lib sizes -- --nocapture`).
    #[test]
    fn sizes() {
        use tokio::net::TcpStream;
        type Args = (
            TcpStream,
            SocketAddr,
            Arc<Broker>,
            bool,
            tokio::sync::watch::Receiver<bool>,
            super::super::Counted,
        );
        let general = future_size(|(s, p, b, a, w, _): Args| serve(s, p, b, a, w));
        println!("serve::<TcpStream> future: {general} B");
        let tcp = future_size(|(s, p, b, _, w, c): Args| serve_tcp(s, p, b, w, c));
        println!("serve_tcp future: {tcp} B");
        type ParkArgs = (
            &'static mut Connection,
            &'static TcpStream,
            &'static mut tokio::sync::watch::Receiver<bool>,
        );
        let park = future_size(|(c, s, w): ParkArgs| c.park(s, w));
        println!("park future: {park} B");
        println!("Connection: {} B", std::mem::size_of::<Connection>());
        println!("Session: {} B", std::mem::size_of::<crate::broker::session::Session>());
        println!("ConnectionHandle: {} B", std::mem::size_of::<ConnectionHandle>());
        println!("Outbound: {} B", std::mem::size_of::<Outbound>());
        println!("Packet: {} B", std::mem::size_of::<Packet>());
        println!("Pending: {} B", std::mem::size_of::<Pending>());
        println!("TcpStream: {} B", std::mem::size_of::<TcpStream>());
        println!("Sleep: {} B", std::mem::size_of::<tokio::time::Sleep>());
        println!("SocketAddr: {} B", std::mem::size_of::<SocketAddr>());
    }
}
