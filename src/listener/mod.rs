//! Network listeners: each accepts connections, runs the transport's handshake (TLS, WebSocket)
//! and hands the resulting byte stream to [`connection::serve`], which speaks MQTT on it.

pub mod connection;
pub mod keystore;
pub mod outbox;
pub mod throttle;
pub mod tls;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::broker::Broker;
use crate::config::Listener;

/// What runs between accepting a socket and speaking MQTT on it.
#[derive(Clone)]
enum Transport {
    Tcp,
    Tls(tls::Acceptor),
    WebSocket(Arc<websocket::Settings>),
    TlsWebSocket(tls::Acceptor, Arc<websocket::Settings>),
}

/// A bound listener, ready to accept.
pub struct Bound {
    pub name: String,
    pub listener: TcpListener,
    transport: Transport,
}

impl Bound {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// The listener's `name`, or one made from its kind and port.
fn display_name(listener: &Listener) -> String {
    listener
        .name()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{}-{}", listener.element_name(), listener.port()))
}

/// Binds every configured listener, or fails naming the one that cannot bind or whose TLS
/// settings are unusable: the broker does not start with only some of its listeners.
pub async fn bind_all(listeners: &[Listener]) -> anyhow::Result<Vec<Bound>> {
    let mut bound = Vec::new();
    for listener in listeners {
        let name = display_name(listener);
        let kind = listener.element_name();
        let addr = format!("{}:{}", listener.bind_address(), listener.port());
        let tls = |tls| tls::Acceptor::new(tls).with_context(|| format!("<{kind}> {name} on {addr}: TLS"));
        let ws = |path: &str, subprotocols: &[String], allow_extensions: bool| {
            if allow_extensions {
                tracing::info!("<{kind}> {name}: no WebSocket extension is implemented, so none is negotiated");
            }
            Arc::new(websocket::Settings {
                path: path.to_owned(),
                subprotocols: subprotocols.to_vec(),
            })
        };
        let transport = match listener {
            Listener::Tcp(_) => Transport::Tcp,
            Listener::TlsTcp(l) => Transport::Tls(tls(&l.tls)?),
            Listener::WebSocket(l) => Transport::WebSocket(ws(&l.path, &l.subprotocols, l.allow_extensions)),
            Listener::TlsWebSocket(l) => {
                Transport::TlsWebSocket(tls(&l.tls)?, ws(&l.path, &l.subprotocols, l.allow_extensions))
            }
        };
        let socket = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot bind <{kind}> {name} on {addr}"))?;
        let what = match transport {
            Transport::Tcp => "TCP",
            Transport::Tls(_) => "TLS TCP",
            Transport::WebSocket(_) => "Websocket",
            Transport::TlsWebSocket(..) => "TLS Websocket",
        };
        tracing::info!(
            "Started {what} Listener on address {} and on port {}",
            listener.bind_address(),
            socket.local_addr()?.port()
        );
        bound.push(Bound {
            name,
            listener: socket,
            transport,
        });
    }
    Ok(bound)
}

/// Counts a listener's live connection tasks, so that shutdown can wait for them. A counter
/// rather than a `JoinSet`, which keeps an entry (~64 B) per connection.
#[derive(Default)]
struct Tracker {
    live: AtomicUsize,
    none_left: Notify,
}

impl Tracker {
    /// One more connection, counted until the returned guard drops: the connection's task
    /// holds it, so it drops when the task ends, panics or is dropped.
    fn count(self: &Arc<Self>) -> Counted {
        self.live.fetch_add(1, Ordering::AcqRel);
        Counted(self.clone())
    }

    /// Waits until no connection task is left. Connections see the shutdown signal (or its
    /// sender dropped) and close themselves.
    async fn wait_empty(&self) {
        loop {
            let none_left = self.none_left.notified();
            tokio::pin!(none_left);
            none_left.as_mut().enable();
            if self.live.load(Ordering::Acquire) == 0 {
                return;
            }
            none_left.await;
        }
    }
}

/// One live connection of a [`Tracker`].
pub struct Counted(Arc<Tracker>);

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

/// Accepts connections until `shutdown` turns true, then waits for the connections to close.
pub async fn serve(bound: Bound, broker: Arc<Broker>, shutdown: watch::Receiver<bool>) {
    let connections = Arc::new(Tracker::default());
    let mut stop = shutdown.clone();
    let mut backoff = Duration::from_millis(5);
    let name: Arc<str> = Arc::from(bound.name.as_str());
    loop {
        tokio::select! {
            accepted = bound.listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    let _ = stream.set_nodelay(true);
                    // Plain TCP gets its own small task (see `connection::serve_tcp`); the
                    // other transports' tasks hold their handshake and stream types.
                    match &bound.transport {
                        Transport::Tcp => {
                            let count = connections.count();
                            tokio::spawn(connection::serve_tcp(stream, peer, broker.clone(), shutdown.clone(), count));
                        }
                        transport => {
                            tokio::spawn(Box::pin(handle(
                                stream,
                                peer,
                                transport.clone(),
                                name.clone(),
                                broker.clone(),
                                shutdown.clone(),
                                connections.count(),
                            )));
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait and retry, never give up the port.
                    tracing::warn!(listener = %bound.name, "accept failed: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
            _ = stop.changed() => break,
        }
    }
    connections.wait_empty().await;
}

/// One accepted socket: the transport handshake (bounded by its timeout, and cut short by a
/// shutdown), then MQTT.
async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    listener: Arc<str>,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
    count: Counted,
) {
    // The HTTP upgrade is bounded like the wait for CONNECT.
    let upgrade_timeout = Duration::from_millis(broker.settings().restrictions.no_connect_idle_timeout_ms);
    match transport {
        Transport::Tcp => connection::serve_tcp(stream, peer, broker, shutdown, count).await,
        Transport::Tls(acceptor) => {
            let tls = tokio::select! {
                tls = Box::pin(acceptor.accept(stream, peer, &listener)) => tls,
                _ = shutdown.changed() => return,
            };
            if let Some(tls) = tls {
                Box::pin(mqtt(tls, peer, broker, shutdown)).await;
            }
        }
        Transport::WebSocket(settings) => {
            let ws = tokio::select! {
                ws = Box::pin(websocket::accept(stream, settings, peer, &listener, upgrade_timeout)) => ws,
                _ = shutdown.changed() => return,
            };
            if let Some(ws) = ws {
                Box::pin(mqtt(ws, peer, broker, shutdown)).await;
            }
        }
        Transport::TlsWebSocket(acceptor, settings) => {
            let ws = tokio::select! {
                ws = Box::pin(async {
                    let tls = acceptor.accept(stream, peer, &listener).await?;
                    websocket::accept(tls, settings, peer, &listener, upgrade_timeout).await
                }) => ws,
                _ = shutdown.changed() => return,
            };
            if let Some(ws) = ws {
                Box::pin(mqtt(ws, peer, broker, shutdown)).await;
            }
        }
    }
}

/// Speaks MQTT on an established byte stream, counting it against `max-connections`.
async fn mqtt<S>(stream: S, peer: SocketAddr, broker: Arc<Broker>, shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let admitted = broker.try_admit_connection();
    connection::serve(stream, peer, broker.clone(), admitted, shutdown).await;
    if admitted {
        broker.release_connection();
    }
}
