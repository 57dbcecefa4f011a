//! A minimal MQTT 5 client on our codec: connect, subscribe, buffered writes, batched reads.
//! It does only what the load generator needs and keeps per-message work small: publishers
//! write pre-encoded templates ([`Template`]) instead of encoding every packet.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::mqtt::{
    self, Connect, Disconnect, Packet, Properties, ProtocolVersion, PubResponse, Publish, QoS, Subscribe,
    SubscriptionOptions,
};

/// Every bench client speaks MQTT 5, so receive maximum is negotiated the same way with every broker.
pub const VERSION: ProtocolVersion = ProtocolVersion::V5;

/// How long a handshake (CONNECT/CONNACK, SUBSCRIBE/SUBACK) may take before the client gives up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const READ_CHUNK: usize = 16 * 1024;

/// Time origin of the timestamps embedded in payloads (one process measures both ends).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since this process's time origin, as embedded in payloads.
pub fn nanos(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// Where client sockets come from: loopback brokers are reached from 127.0.0.1..=127.0.0.N in
/// turn, so tens of thousands of connections (and their TIME_WAIT leftovers) do not run one
/// source address out of ephemeral ports.
#[derive(Debug, Clone, Copy)]
pub struct Sources {
    pub count: u8,
    pub offset: u32,
}

impl Sources {
    fn pick(&self, broker: SocketAddr, n: u64) -> Option<IpAddr> {
        match broker.ip() {
            IpAddr::V4(ip) if ip.is_loopback() && self.count > 1 => {
                let last = 1 + ((n + u64::from(self.offset)) % u64::from(self.count)) as u8;
                Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
            }
            _ => None,
        }
    }
}

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub client_id: String,
    pub clean_start: bool,
    pub keep_alive: u16,
    /// Session expiry interval in seconds (0: the session ends with the connection).
    pub session_expiry: u32,
    /// The receive maximum we announce: how many QoS 1 messages the broker may have in flight to us.
    pub receive_maximum: u16,
}

pub struct Client {
    stream: TcpStream,
    rbuf: BytesMut,
    pub wbuf: BytesMut,
    /// How many QoS 1 PUBLISHes the broker accepts in flight from us (its CONNACK receive maximum).
    pub server_receive_maximum: u16,
}

impl Client {
    /// Opens a TCP connection (from the `n`-th source address) and completes CONNECT/CONNACK.
    pub async fn connect(
        broker: SocketAddr,
        sources: Sources,
        n: u64,
        options: &ConnectOptions,
    ) -> anyhow::Result<Client> {
        let socket = match broker {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(ip) = sources.pick(broker, n) {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("binding a client socket to {ip}"))?;
        }
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, socket.connect(broker))
            .await
            .context("TCP connect timed out")?
            .with_context(|| format!("connecting to {broker}"))?;
        stream.set_nodelay(true)?;
        let mut client = Client {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::new(),
            server_receive_maximum: u16::MAX,
        };
        let mut properties = Properties {
            receive_maximum: Some(options.receive_maximum.max(1)),
            ..Properties::default()
        };
        if options.session_expiry > 0 {
            properties.session_expiry_interval = Some(options.session_expiry);
        }
        client.queue(&Packet::Connect(Connect {
            protocol: VERSION,
            clean_start: options.clean_start,
            keep_alive: options.keep_alive,
            client_id: options.client_id.clone(),
            will: None,
            username: None,
            password: None,
            properties,
        }))?;
        client.flush().await?;
        match client.recv_within(HANDSHAKE_TIMEOUT).await? {
            Packet::ConnAck(ack) if ack.code == 0 => {
                client.server_receive_maximum = ack.properties.receive_maximum.unwrap_or(u16::MAX);
                Ok(client)
            }
            Packet::ConnAck(ack) => bail!("CONNACK refused the connection with reason 0x{:02x}", ack.code),
            other => bail!("expected CONNACK, got {other:?}"),
        }
    }

    /// Subscribes to `filters` and waits for a SUBACK granting every one of them.
    pub async fn subscribe(&mut self, filters: &[String], qos: QoS) -> anyhow::Result<()> {
        let options = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        self.queue(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: filters.iter().map(|f| (f.clone(), options)).collect(),
        }))?;
        self.flush().await?;
        loop {
            match self.recv_within(HANDSHAKE_TIMEOUT).await? {
                Packet::SubAck(ack) if ack.reason_codes.iter().all(|&c| c < 0x80) => return Ok(()),
                Packet::SubAck(ack) => bail!("SUBACK refused: {:?}", ack.reason_codes),
                // Queued messages of a resumed session may arrive before the SUBACK.
                Packet::Publish(p) if p.qos != QoS::AtMostOnce => self.queue_puback(p.packet_id)?,
                _ => {}
            }
        }
    }

    /// Encodes `packet` into the write buffer.
    pub fn queue(&mut self, packet: &Packet) -> anyhow::Result<()> {
        mqtt::encode(packet, VERSION, &mut self.wbuf)?;
        Ok(())
    }

    pub fn queue_puback(&mut self, packet_id: u16) -> anyhow::Result<()> {
        self.queue(&Packet::PubAck(PubResponse {
            packet_id,
            reason: 0,
            properties: Properties::default(),
        }))
    }

    /// Writes out the write buffer.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads once from the socket (cancel safe). `Ok(false)` when the broker closed the connection.
    pub async fn read_some(&mut self) -> std::io::Result<bool> {
        self.rbuf.reserve(READ_CHUNK);
        Ok(self.stream.read_buf(&mut self.rbuf).await? > 0)
    }

    /// The next complete packet already read, if any.
    pub fn next_packet(&mut self) -> anyhow::Result<Option<Packet>> {
        Ok(mqtt::decode(&mut self.rbuf, VERSION, u32::MAX)?)
    }

    async fn recv_within(&mut self, limit: Duration) -> anyhow::Result<Packet> {
        tokio::time::timeout(limit, async {
            loop {
                if let Some(p) = self.next_packet()? {
                    return Ok(p);
                }
                if !self.read_some().await? {
                    bail!("the broker closed the connection");
                }
            }
        })
        .await
        .context("timed out waiting for the broker")?
    }

    /// Sends DISCONNECT (normal, session kept as negotiated) and closes; errors are ignored.
    pub async fn disconnect(mut self) {
        let _ = self.queue(&Packet::Disconnect(Disconnect {
            reason: 0,
            properties: Properties::default(),
        }));
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.flush().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

/// One PUBLISH encoded once with our codec; copies get their packet id and timestamp patched in.
/// The payload starts with an 8-byte big-endian timestamp ([`nanos`]) and is padded with zeros.
#[derive(Debug, Clone)]
pub struct Template {
    bytes: Bytes,
    /// Offset of the packet identifier (QoS 1 only).
    packet_id_at: Option<usize>,
    /// Offset of the payload's timestamp, if the payload is large enough to hold one.
    timestamp_at: Option<usize>,
}

impl Template {
    pub fn new(topic: &str, qos: QoS, payload_len: usize) -> anyhow::Result<Template> {
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.to_owned(),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
            properties: Properties::default(),
            payload: Bytes::from(vec![0u8; payload_len]),
        };
        let mut buf = BytesMut::new();
        mqtt::encode(&Packet::Publish(publish), VERSION, &mut buf)?;
        let header = buf.len() - payload_len;
        // Variable header: topic (2 + len), packet id (2, QoS > 0), properties (1 byte: empty).
        let packet_id_at = (qos != QoS::AtMostOnce).then(|| header - 1 - 2);
        Ok(Template {
            bytes: buf.freeze(),
            packet_id_at,
            timestamp_at: (payload_len >= 8).then_some(header),
        })
    }

    /// Appends a copy to `out` with the given packet id and timestamp.
    pub fn write(&self, out: &mut BytesMut, packet_id: u16, timestamp: u64) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(at) = self.packet_id_at {
            out[start + at..start + at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        if let Some(at) = self.timestamp_at {
            out[start + at..start + at + 8].copy_from_slice(&timestamp.to_be_bytes());
        }
    }
}

/// The timestamp at the start of a payload written from a [`Template`].
pub fn payload_timestamp(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_round_trips_through_the_codec() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let t = Template::new("bench/a/b", qos, 64).unwrap();
            let mut buf = BytesMut::new();
            t.write(&mut buf, 4242, 0x0102_0304_0506_0708);
            t.write(&mut buf, 7, 9);
            let Some(Packet::Publish(first)) = mqtt::decode(&mut buf, VERSION, u32::MAX).unwrap() else {
                panic!("not a PUBLISH");
            };
            assert_eq!(first.topic, "bench/a/b");
            assert_eq!(first.qos, qos);
            assert_eq!(first.payload.len(), 64);
            assert_eq!(payload_timestamp(&first.payload), Some(0x0102_0304_0506_0708));
            let Some(Packet::Publish(second)) = mqtt::decode(&mut buf, VERSION, u32::MAX).unwrap() else {
                panic!("not a PUBLISH");
            };
            assert_eq!(payload_timestamp(&second.payload), Some(9));
            if qos == QoS::AtLeastOnce {
                assert_eq!((first.packet_id, second.packet_id), (4242, 7));
            }
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn loopback_sources_rotate() {
        let s = Sources { count: 4, offset: 1 };
        let b: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        let picked: Vec<_> = (0..5).map(|n| s.pick(b, n).unwrap().to_string()).collect();
        assert_eq!(
            picked,
            ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.1", "127.0.0.2"]
        );
        assert!(s.pick("[::1]:1883".parse().unwrap(), 0).is_none());
    }
}
