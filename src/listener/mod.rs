//! Network listeners: each accepts connections and hands every byte stream to
//! [`connection::serve`], which speaks MQTT on it.

pub mod connection;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::broker::Broker;
use crate::config::Listener;

/// A bound listener, ready to accept.
pub struct Bound {
    pub name: String,
    pub listener: TcpListener,
}

impl Bound {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Binds every configured listener, or fails naming the one that cannot bind: the broker does
/// not start with only some of its listeners.
pub async fn bind_all(listeners: &[Listener]) -> anyhow::Result<Vec<Bound>> {
    let mut bound = Vec::new();
    for listener in listeners {
        match listener {
            Listener::Tcp(tcp) => {
                let addr = format!("{}:{}", tcp.bind_address, tcp.port);
                let name = tcp.name.clone().unwrap_or_else(|| format!("tcp-listener-{}", tcp.port));
                let socket = TcpListener::bind(&addr)
                    .await
                    .with_context(|| format!("cannot bind <tcp-listener> {name} on {addr}"))?;
                tracing::info!(
                    "Started TCP Listener on address {} and on port {}",
                    tcp.bind_address,
                    socket.local_addr()?.port()
                );
                bound.push(Bound { name, listener: socket });
            }
            other => {
                anyhow::bail!("listener {other:?} is not supported yet: only <tcp-listener> is served by this build");
            }
        }
    }
    Ok(bound)
}

/// Accepts connections until `shutdown` turns true, then waits for the connections to close.
pub async fn serve(bound: Bound, broker: Arc<Broker>, shutdown: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    let mut stop = shutdown.clone();
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            accepted = bound.listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    let _ = stream.set_nodelay(true);
                    let broker = broker.clone();
                    let shutdown = shutdown.clone();
                    connections.spawn(async move {
                        let admitted = broker.try_admit_connection();
                        connection::serve(stream, peer, broker.clone(), admitted, shutdown).await;
                        if admitted {
                            broker.release_connection();
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait and retry, never give up the port.
                    tracing::warn!(listener = %bound.name, "accept failed: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    while connections.join_next().await.is_some() {}
}
