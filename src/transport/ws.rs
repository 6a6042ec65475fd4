//! MQTT over WebSocket: the HTTP upgrade on the configured path, and a
//! byte-stream adapter so the connection task reads and writes MQTT as it
//! does over TCP.
//!
//! MQTT rides in binary messages whose boundaries mean nothing
//! [MQTT-6.0.0-2]; a text message closes the connection [MQTT-6.0.0-1]. The
//! subprotocol is `mqtt`, or `mqttv3.1` for older clients (as Mosquitto
//! accepts); a client that names no subprotocol at all is served anyway.
//!
//! A page in a browser may open a WebSocket to any address the browser can
//! reach, and says where it comes from in `Origin`. Where that page could
//! be admitted without presenting a secret, only the origins the listener
//! lists may upgrade (see [`origin_allowed`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::config::{Anonymous, ClientAuth, ListenerConfig};

/// Subprotocols we speak, in order of preference.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Headroom over the largest MQTT packet for a WebSocket message, which may
/// carry the tail of one packet and the head of the next.
const MESSAGE_HEADROOM: usize = 64 * 1024;

/// Answers the HTTP upgrade on the listener's `ws_path` and returns the
/// MQTT byte stream. Other paths get 404; a browser origin the listener
/// does not allow gets 403; an offer of only foreign subprotocols gets 400.
/// The caller bounds it with the connect timeout.
///
/// # Errors
/// The WebSocket handshake error (the peer's doing; log it at debug).
pub async fn accept<S>(
    stream: S,
    listener: &ListenerConfig,
    max_packet_size: u32,
) -> Result<WsStream<S>, tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let path = listener.ws_path();
    #[allow(clippy::result_large_err, reason = "the signature tungstenite's Callback requires")]
    let callback = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() != path {
            return Err(refusal(StatusCode::NOT_FOUND));
        }
        let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok());
        let origins = request.headers().get_all(header::ORIGIN);
        if let Some(refused) = origins.iter().find(|o| !o.to_str().is_ok_and(|o| origin_allowed(listener, o, host))) {
            tracing::debug!(origin = ?refused, "WebSocket upgrade refused: origin not allowed");
            return Err(refusal(StatusCode::FORBIDDEN));
        }
        match choose_subprotocol(request) {
            Ok(Some(protocol)) => {
                response.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
            }
            Ok(None) => {}
            Err(()) => return Err(refusal(StatusCode::BAD_REQUEST)),
        }
        Ok(response)
    };
    let max_message = usize::try_from(max_packet_size).unwrap_or(usize::MAX).saturating_add(MESSAGE_HEADROOM);
    let config = WebSocketConfig::default().max_message_size(Some(max_message)).max_frame_size(Some(max_message));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await?;
    Ok(WsStream { inner: ws, read: Bytes::new() })
}

/// Whether a request with `Origin: origin` (and `Host: host`) may upgrade
/// on `listener`: one of its `allowed_origins` (`"*"`: any), compared
/// without regard to case. Unset, browsers are refused where a client may
/// be admitted without presenting a secret (anonymous clients, client
/// certificates, which a browser may send on its own), and allowed where
/// an authenticator must check one, as Mosquitto, EMQX and HiveMQ do by
/// default. Always allowed: the listener's own origin when addressed by IP
/// address or `localhost`, which no page can have (the broker serves none,
/// and such a name cannot be rebound), but which non-browser clients such
/// as paho-mqtt send.
pub fn origin_allowed(listener: &ListenerConfig, origin: &str, host: Option<&str>) -> bool {
    if host.is_some_and(|host| is_own_origin(origin, host)) {
        return true;
    }
    match &listener.allowed_origins {
        Some(list) => list.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(origin)),
        None => {
            let certificates = listener.tls.as_ref().is_some_and(|t| t.client_auth != ClientAuth::None);
            listener.allow_anonymous == Anonymous::Never && !certificates
        }
    }
}

/// Whether `origin` is `http(s)://` + `host`, and `host` an IP address or
/// `localhost` (with or without a port).
fn is_own_origin(origin: &str, host: &str) -> bool {
    let authority = ["http://", "https://"].iter().find_map(|scheme| {
        let head = origin.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme).then(|| &origin[scheme.len()..])
    });
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host)) && is_unrebindable(host_name(host))
}

/// The name in a `Host` header: `host[:port]` or `[v6]:port` without the
/// port.
pub(crate) fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Whether a host name (from [`host_name`]) is an IP address or
/// `localhost`: names no web page can point at another address (DNS
/// rebinding), since the browser does not look them up.
pub(crate) fn is_unrebindable(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    let literal = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
    literal.parse::<std::net::IpAddr>().is_ok() || name.eq_ignore_ascii_case("localhost")
}

fn refusal(status: StatusCode) -> ErrorResponse {
    let mut response = ErrorResponse::new(None);
    *response.status_mut() = status;
    response
}

/// The subprotocol to answer: ours if offered, `None` if the client offered
/// none, an error if it offered only others.
fn choose_subprotocol(request: &Request) -> Result<Option<&'static str>, ()> {
    let offered: Vec<&str> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(str::trim))
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(None);
    }
    SUBPROTOCOLS.into_iter().find(|ours| offered.iter().any(|p| p.eq_ignore_ascii_case(ours))).map(Some).ok_or(())
}

/// A WebSocket connection as a byte stream: reads concatenate binary
/// messages; each write is sent as one binary message.
#[derive(Debug)]
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// The unread rest of the current message.
    read: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.read.is_empty() {
                let n = self.read.len().min(buf.remaining());
                buf.put_slice(&self.read[..n]);
                self.read.advance(n);
                return Poll::Ready(Ok(()));
            }
            // Pings are answered by tungstenite; a close ends the stream.
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.read = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "text frame")));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(ws_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut inner = Pin::new(&mut self.inner);
        ready!(inner.as_mut().poll_ready(cx)).map_err(ws_error)?;
        inner.start_send(Message::Binary(Bytes::copy_from_slice(buf))).map_err(ws_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(ws_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx).map_err(ws_error)
    }
}

fn ws_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(protocols: &[&str]) -> Request {
        let mut request = Request::new(());
        for p in protocols {
            request.headers_mut().append(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(p).expect("header"));
        }
        request
    }

    #[test]
    fn origins_by_listener() {
        let mut listener = ListenerConfig::tcp("ws", "127.0.0.1:8080".parse().expect("address"));
        listener.protocol = crate::config::ListenerProtocol::Ws;
        for anonymous in [Anonymous::Loopback, Anonymous::Always] {
            listener.allow_anonymous = anonymous;
            assert!(!origin_allowed(&listener, "https://app.example.com", None), "{anonymous:?}");
        }
        listener.allow_anonymous = Anonymous::Never;
        assert!(origin_allowed(&listener, "https://app.example.com", None));
        listener.tls = Some(crate::config::TlsConfig {
            cert_file: "c".into(),
            key_file: "k".into(),
            client_auth: ClientAuth::Optional,
            ca_file: Some("ca".into()),
            crl_files: Vec::new(),
            use_identity_as_username: crate::config::IdentityAsUsername::Off,
        });
        assert!(!origin_allowed(&listener, "https://app.example.com", None), "a browser may send a certificate");
        // Its own origin, as paho-mqtt sends it; not under a name that can be rebound.
        assert!(origin_allowed(&listener, "https://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(origin_allowed(&listener, "http://[::1]:8080", Some("[::1]:8080")));
        assert!(origin_allowed(&listener, "http://LOCALHOST:8080", Some("localhost:8080")));
        assert!(!origin_allowed(&listener, "http://127.0.0.1:8081", Some("127.0.0.1:8080")));
        assert!(!origin_allowed(&listener, "http://evil.example:8080", Some("evil.example:8080")));
        listener.allowed_origins = Some(vec!["https://App.Example.com".into()]);
        assert!(origin_allowed(&listener, "https://app.example.COM", None));
        assert!(!origin_allowed(&listener, "https://app.example.com:8443", None));
        listener.allowed_origins = Some(vec!["*".into()]);
        assert!(origin_allowed(&listener, "null", None));
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name("localhost:9090"), "localhost");
        assert_eq!(host_name("[::1]:9090"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        assert_eq!(host_name("moat.example"), "moat.example");
        for name in ["localhost", "LOCALHOST.", "127.0.0.1", "[::1]", "10.0.0.5"] {
            assert!(is_unrebindable(name), "{name}");
        }
        for name in ["", "evil.example", "localhost.evil.example", "[evil]"] {
            assert!(!is_unrebindable(name), "{name}");
        }
    }

    #[test]
    fn subprotocol_choice() {
        assert_eq!(choose_subprotocol(&offer(&[])), Ok(None));
        assert_eq!(choose_subprotocol(&offer(&["mqtt"])), Ok(Some("mqtt")));
        assert_eq!(choose_subprotocol(&offer(&["mqttv3.1"])), Ok(Some("mqttv3.1")));
        assert_eq!(choose_subprotocol(&offer(&["chat, mqttv3.1", "MQTT"])), Ok(Some("mqtt")));
        assert_eq!(choose_subprotocol(&offer(&["chat"])), Err(()));
    }
}
