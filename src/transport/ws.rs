//! MQTT over WebSocket: the HTTP upgrade on the configured path, and a
//! byte-stream adapter so the connection task reads and writes MQTT as it
//! does over TCP.
//!
//! MQTT rides in binary messages whose boundaries mean nothing
//! [MQTT-6.0.0-2]; a text message closes the connection [MQTT-6.0.0-1]. The
//! subprotocol is `mqtt`, or `mqttv3.1` for older clients (as Mosquitto
//! accepts); a client that names no subprotocol at all is served anyway.

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

/// Subprotocols we speak, in order of preference.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Headroom over the largest MQTT packet for a WebSocket message, which may
/// carry the tail of one packet and the head of the next.
const MESSAGE_HEADROOM: usize = 64 * 1024;

/// Answers the HTTP upgrade on `path` and returns the MQTT byte stream.
/// Other paths get 404; an offer of only foreign subprotocols gets 400.
/// The caller bounds it with the connect timeout.
///
/// # Errors
/// The WebSocket handshake error (the peer's doing; log it at debug).
pub async fn accept<S>(stream: S, path: &str, max_packet_size: u32) -> Result<WsStream<S>, tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    #[allow(clippy::result_large_err, reason = "the signature tungstenite's Callback requires")]
    let callback = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() != path {
            return Err(refusal(StatusCode::NOT_FOUND));
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
    fn subprotocol_choice() {
        assert_eq!(choose_subprotocol(&offer(&[])), Ok(None));
        assert_eq!(choose_subprotocol(&offer(&["mqtt"])), Ok(Some("mqtt")));
        assert_eq!(choose_subprotocol(&offer(&["mqttv3.1"])), Ok(Some("mqttv3.1")));
        assert_eq!(choose_subprotocol(&offer(&["chat, mqttv3.1", "MQTT"])), Ok(Some("mqtt")));
        assert_eq!(choose_subprotocol(&offer(&["chat"])), Err(()));
    }
}
