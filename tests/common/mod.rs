//! Shared test helpers: an in-process broker on a free loopback port, a raw MQTT client built on
//! our codec (byte-exact checks), and rumqttc clients (a real client crate) for v3.1.1 and v5.
#![allow(dead_code)]

pub mod logs;
pub mod pki;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use apiary::config::{Config, Listener, PersistenceMode, TcpListenerConfig};
use apiary::mqtt::{self, Connect, Packet, Properties, ProtocolVersion};
use apiary::server::{self, Options, Running};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn test_config(persistence: PersistenceMode) -> Config {
    Config {
        listeners: vec![Listener::Tcp(TcpListenerConfig {
            port: 0,
            bind_address: "127.0.0.1".into(),
            name: None,
        })],
        persistence,
        ..Config::default()
    }
}

pub struct TestBroker {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

impl TestBroker {
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestBroker {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(PersistenceMode::File);
        tweak(&mut config);
        Self::start_in(dir, config).await
    }

    pub async fn start_in(dir: tempfile::TempDir, config: Config) -> TestBroker {
        let running = server::start(Options {
            config: config.clone(),
            data_dir: dir.path().join("data"),
            extensions_dir: dir.path().join("extensions"),
            extension_cache_dir: None,
            extension_policy: Default::default(),
            recovery: false,
        })
        .await
        .expect("broker starts");
        let addr = running.local_addrs()[0];
        TestBroker {
            running: Some(running),
            addr,
            dir,
            config,
        }
    }

    /// Stops and starts again on the same data folder (and a new port).
    pub async fn restart(mut self) -> TestBroker {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        Self::start_in(self.dir, self.config).await
    }

    /// The address of every listener, in configuration order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.running.as_ref().expect("running").local_addrs().to_vec()
    }

    pub fn broker(&self) -> &std::sync::Arc<apiary::broker::Broker> {
        self.running.as_ref().expect("running").broker()
    }

    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        self.dir
    }
}

/// Polls `f` until it returns true, failing the test after [`WAIT`].
pub async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Any byte stream a client can speak MQTT on: TCP, TLS, WebSocket.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// A PUBLISH packet for raw-client tests.
pub fn publish_packet(topic: &str, qos: apiary::mqtt::QoS, packet_id: u16, retain: bool, payload: &str) -> Packet {
    Packet::Publish(apiary::mqtt::Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id,
        properties: Properties::default(),
        payload: bytes::Bytes::from(payload.to_owned()),
    })
}

/// A SUBSCRIBE packet for raw-client tests: one filter, default options but for the QoS.
pub fn subscribe_packet(packet_id: u16, filter: &str, qos: apiary::mqtt::QoS) -> Packet {
    Packet::Subscribe(apiary::mqtt::Subscribe {
        packet_id,
        properties: Properties::default(),
        filters: vec![(
            filter.into(),
            apiary::mqtt::SubscriptionOptions {
                qos,
                ..Default::default()
            },
        )],
    })
}

/// A client that writes and reads MQTT packets with our codec: exact control over the bytes.
pub struct RawClient {
    pub stream: Box<dyn Duplex>,
    buf: BytesMut,
    pub version: ProtocolVersion,
}

pub fn connect_packet(version: ProtocolVersion, client_id: &str, clean_start: bool) -> Connect {
    Connect {
        protocol: version,
        clean_start,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

impl RawClient {
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        RawClient::over(stream, version)
    }

    /// A client on an already established stream (TLS, WebSocket).
    pub fn over(stream: impl Duplex + 'static, version: ProtocolVersion) -> RawClient {
        RawClient {
            stream: Box::new(stream),
            buf: BytesMut::new(),
            version,
        }
    }

    /// Completes CONNECT/CONNACK on an established stream; returns the CONNACK.
    pub async fn connect_over(stream: impl Duplex + 'static, connect: Connect) -> (RawClient, mqtt::ConnAck) {
        let mut c = RawClient::over(stream, connect.protocol);
        c.send(&Packet::Connect(connect)).await;
        match c.recv().await {
            Some(Packet::ConnAck(ack)) => (c, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Opens a connection and completes CONNECT/CONNACK; returns the CONNACK.
    pub async fn connect(addr: SocketAddr, connect: Connect) -> (RawClient, mqtt::ConnAck) {
        let mut c = RawClient::open(addr, connect.protocol).await;
        c.send(&Packet::Connect(connect)).await;
        match c.recv().await {
            Some(Packet::ConnAck(ack)) => (c, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// [`RawClient::connect`] that gives up (`None`) instead of panicking when the node does
    /// not accept the connection or closes it.
    pub async fn try_connect(addr: SocketAddr, connect: Connect) -> Option<(RawClient, mqtt::ConnAck)> {
        let stream = TcpStream::connect(addr).await.ok()?;
        let mut c = RawClient::over(stream, connect.protocol);
        if !c.try_send(&Packet::Connect(connect)).await {
            return None;
        }
        match c.recv_within(WAIT).await {
            Ok(Some(Packet::ConnAck(ack))) => Some((c, ack)),
            _ => None,
        }
    }

    /// Sends a packet; false if the connection is gone.
    pub async fn try_send(&mut self, packet: &Packet) -> bool {
        let mut out = BytesMut::new();
        mqtt::encode(packet, self.version, &mut out).expect("encode");
        self.stream.write_all(&out).await.is_ok() && self.stream.flush().await.is_ok()
    }

    pub async fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        mqtt::encode(packet, self.version, &mut out).expect("encode");
        self.stream.write_all(&out).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    /// The next packet, or None when the server closed the connection. Fails after [`WAIT`].
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, self.recv_inner())
            .await
            .expect("timed out waiting for a packet")
    }

    /// The next packet if one arrives within `d`.
    pub async fn recv_within(&mut self, d: Duration) -> Result<Option<Packet>, tokio::time::error::Elapsed> {
        tokio::time::timeout(d, self.recv_inner()).await
    }

    async fn recv_inner(&mut self) -> Option<Packet> {
        loop {
            match mqtt::decode(&mut self.buf, self.version, u32::MAX) {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {}
                Err(e) => panic!("server sent an undecodable packet: {e}"),
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads until the server closes; returns the packets it sent before closing.
    pub async fn until_closed(&mut self) -> Vec<Packet> {
        let mut seen = Vec::new();
        while let Some(p) = self.recv().await {
            seen.push(p);
        }
        seen
    }
}

/// Events from a rumqttc v5 client, polled in the background.
pub struct V5Client {
    pub client: rumqttc::v5::AsyncClient,
    events: mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl V5Client {
    pub async fn connect(
        addr: SocketAddr,
        id: &str,
        tweak: impl FnOnce(&mut rumqttc::v5::MqttOptions),
    ) -> (V5Client, rumqttc::v5::mqttbytes::v5::ConnAck) {
        let mut options = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        tweak(&mut options);
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 100);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(ev) => {
                        if tx.send(Ok(ev)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let mut c = V5Client { client, events, task };
        let ack = loop {
            match c.next_event().await {
                Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(ack))) => break ack,
                Ok(_) => continue,
                Err(e) => panic!("connect failed: {e}"),
            }
        };
        (c, ack)
    }

    pub async fn next_event(&mut self) -> Result<rumqttc::v5::Event, String> {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("timed out waiting for a client event")
            .unwrap_or_else(|| Err("event loop ended".into()))
    }

    /// The next event if one arrives within `d`.
    pub async fn next_event_within(&mut self, d: Duration) -> Option<Result<rumqttc::v5::Event, String>> {
        match tokio::time::timeout(d, self.events.recv()).await {
            Ok(event) => Some(event.unwrap_or_else(|| Err("event loop ended".into()))),
            Err(_) => None,
        }
    }

    /// The next incoming PUBLISH.
    pub async fn next_publish(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        loop {
            match self.next_event().await {
                Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(p))) => return p,
                Ok(_) => continue,
                Err(e) => panic!("connection failed while waiting for a PUBLISH: {e}"),
            }
        }
    }

    /// Waits for an incoming packet matching `f`.
    pub async fn wait_for(&mut self, what: &str, mut f: impl FnMut(&rumqttc::v5::mqttbytes::v5::Packet) -> bool) {
        loop {
            match self.next_event().await {
                Ok(rumqttc::v5::Event::Incoming(p)) if f(&p) => return,
                Ok(_) => continue,
                Err(e) => panic!("connection failed while waiting for {what}: {e}"),
            }
        }
    }

    /// Drops the connection without DISCONNECT (as a crash would).
    pub fn kill(self) {
        self.task.abort();
    }
}

/// Events from a rumqttc v3.1.1 client, polled in the background.
pub struct V4Client {
    pub client: rumqttc::AsyncClient,
    events: mpsc::UnboundedReceiver<Result<rumqttc::Event, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl V4Client {
    pub async fn connect(
        addr: SocketAddr,
        id: &str,
        tweak: impl FnOnce(&mut rumqttc::MqttOptions),
    ) -> (V4Client, rumqttc::ConnAck) {
        let mut options = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        tweak(&mut options);
        Self::connect_with(options).await
    }

    /// Connects with options made by the caller (a WebSocket URL as the broker address, say).
    pub async fn connect_with(options: rumqttc::MqttOptions) -> (V4Client, rumqttc::ConnAck) {
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(ev) => {
                        if tx.send(Ok(ev)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let mut c = V4Client { client, events, task };
        let ack = loop {
            match c.next_event().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => break ack,
                Ok(_) => continue,
                Err(e) => panic!("connect failed: {e}"),
            }
        };
        (c, ack)
    }

    pub async fn next_event(&mut self) -> Result<rumqttc::Event, String> {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("timed out waiting for a client event")
            .unwrap_or_else(|| Err("event loop ended".into()))
    }

    pub async fn next_publish(&mut self) -> rumqttc::Publish {
        loop {
            match self.next_event().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => return p,
                Ok(_) => continue,
                Err(e) => panic!("connection failed while waiting for a PUBLISH: {e}"),
            }
        }
    }

    pub async fn wait_for(&mut self, what: &str, mut f: impl FnMut(&rumqttc::Packet) -> bool) {
        loop {
            match self.next_event().await {
                Ok(rumqttc::Event::Incoming(p)) if f(&p) => return,
                Ok(_) => continue,
                Err(e) => panic!("connection failed while waiting for {what}: {e}"),
            }
        }
    }

    pub fn kill(self) {
        self.task.abort();
    }
}

/// Path to the built `apiary` binary (for tests that run it as a real process).
pub fn apiary_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_apiary"))
}
