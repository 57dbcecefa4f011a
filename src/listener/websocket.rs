//! MQTT over WebSocket (MQTT 5.0 §6), with tokio-tungstenite: the HTTP upgrade checks the path
//! and the subprotocol, then [`WsStream`] turns binary messages back into a byte stream, so the
//! MQTT connection handler needs no change. Packets need not line up with messages: one message
//! may carry several packets or part of one.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The WebSocket settings of one listener.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The only path served, e.g. `/mqtt`.
    pub path: String,
    /// Subprotocols accepted, e.g. `mqtt`, `mqttv3.1`.
    pub subprotocols: Vec<String>,
}

/// What the handshake decides for one upgrade request.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Upgrade, answering with this subprotocol.
    Accept(String),
    Refuse(StatusCode, String),
}

/// Checks the request path and picks the first subprotocol the client offers that is configured.
fn judge(settings: &Settings, request: &Request) -> Verdict {
    let path = request.uri().path();
    if path != settings.path {
        return Verdict::Refuse(
            StatusCode::NOT_FOUND,
            format!("path {path:?} is not served; MQTT is on {:?}", settings.path),
        );
    }
    let offered: Vec<&str> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    match offered
        .iter()
        .find(|p| settings.subprotocols.iter().any(|s| s.eq_ignore_ascii_case(p)))
    {
        Some(p) => Verdict::Accept((*p).to_string()),
        None => Verdict::Refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "subprotocol {offered:?} is not supported; expected one of {:?}",
                settings.subprotocols
            ),
        ),
    }
}

/// Runs the HTTP upgrade within `timeout`. A refusal or failure is logged and yields `None`.
pub async fn accept<S>(
    stream: S,
    settings: Arc<Settings>,
    peer: SocketAddr,
    listener: &str,
    timeout: Duration,
) -> Option<WsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The error type is tungstenite's, fixed by its `Callback` trait.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| match judge(&settings, request) {
        Verdict::Accept(protocol) => {
            if let Ok(value) = HeaderValue::from_str(&protocol) {
                response.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, value);
            }
            Ok(response)
        }
        Verdict::Refuse(status, why) => {
            tracing::info!(%peer, listener, "WebSocket upgrade refused ({status}): {why}");
            let mut refusal = ErrorResponse::new(Some(why));
            *refusal.status_mut() = status;
            Err(refusal)
        }
    };
    match tokio::time::timeout(timeout, tokio_tungstenite::accept_hdr_async(stream, callback)).await {
        Ok(Ok(ws)) => Some(WsStream::new(ws)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, listener, "WebSocket handshake failed: {e}");
            None
        }
        Err(_) => {
            tracing::info!(%peer, listener, "WebSocket handshake not done within {} ms", timeout.as_millis());
            None
        }
    }
}

/// A WebSocket connection seen as a byte stream: reads yield the payload of binary messages,
/// each write is sent as one binary message. Works for either side of the connection.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// What is left of the last binary message received.
    pending: Bytes,
}

impl<S> WsStream<S> {
    pub fn new(inner: WebSocketStream<S>) -> Self {
        WsStream {
            inner,
            pending: Bytes::new(),
        }
    }
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match ready!(this.inner.poll_next_unpin(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                // [MQTT-6.0.0-1]: a text frame closes the connection.
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text frame: MQTT over WebSocket uses binary frames",
                    )));
                }
                // End of stream.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                // Pings are answered by tungstenite itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Waits while tungstenite's write buffer is full: the socket's back-pressure reaches the
        // connection handler, which then buffers no more than its own bounds allow.
        ready!(this.inner.poll_ready_unpin(cx)).map_err(io_error)?;
        this.inner
            .start_send_unpin(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().inner.poll_flush_unpin(cx).map_err(io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().inner.poll_close_unpin(cx).map_err(io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            path: "/mqtt".into(),
            subprotocols: vec!["mqttv3.1".into(), "mqtt".into()],
        }
    }

    fn request(path: &str, protocols: Option<&str>) -> Request {
        let mut builder = Request::builder().uri(format!("ws://localhost{path}"));
        if let Some(p) = protocols {
            builder = builder.header(header::SEC_WEBSOCKET_PROTOCOL, p);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn picks_the_first_offered_subprotocol_that_is_configured() {
        assert_eq!(
            judge(&settings(), &request("/mqtt", Some("wamp, mqtt, mqttv3.1"))),
            Verdict::Accept("mqtt".into())
        );
        assert_eq!(
            judge(&settings(), &request("/mqtt?x=1", Some("mqttv3.1"))),
            Verdict::Accept("mqttv3.1".into())
        );
    }

    #[test]
    fn refuses_wrong_path_and_subprotocol() {
        assert!(matches!(
            judge(&settings(), &request("/other", Some("mqtt"))),
            Verdict::Refuse(StatusCode::NOT_FOUND, _)
        ));
        assert!(matches!(
            judge(&settings(), &request("/mqtt", Some("wamp"))),
            Verdict::Refuse(StatusCode::BAD_REQUEST, _)
        ));
        assert!(matches!(
            judge(&settings(), &request("/mqtt", None)),
            Verdict::Refuse(StatusCode::BAD_REQUEST, _)
        ));
    }
}
