//! The byte stream a connection task speaks MQTT over, whatever the
//! listener's transport. One type, so the connection code is compiled once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::ws::WsStream;

/// A client connection after any TLS handshake and WebSocket upgrade.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP (boxed: the TLS state is large).
    Tls(Box<TlsStream<TcpStream>>),
    /// WebSocket over TCP.
    Ws(Box<WsStream<TcpStream>>),
    /// WebSocket over TLS.
    Wss(Box<WsStream<TlsStream<TcpStream>>>),
    /// Plain TCP off the runtime's reactor while its connection is parked
    /// (`connection::Park`): nothing reads or writes it until it is
    /// unparked.
    Parked(std::net::TcpStream),
    /// No socket: the moment between taking a plain TCP stream off the
    /// reactor and parking it, or after that failed.
    Detached,
}

/// A plain TCP stream parks: its socket leaves the reactor for the lot.
impl crate::connection::Park for Stream {
    fn parkable(&self) -> bool {
        matches!(self, Stream::Tcp(_))
    }

    fn park(&mut self) -> Option<io::Result<()>> {
        if !self.parkable() {
            return None;
        }
        let Stream::Tcp(tcp) = std::mem::replace(self, Stream::Detached) else { return None };
        Some(tcp.into_std().map(|std| *self = Stream::Parked(std)))
    }

    fn parked(&mut self) -> Option<&mut std::net::TcpStream> {
        match self {
            Stream::Parked(std) => Some(std),
            _ => None,
        }
    }

    fn unpark(&mut self) -> io::Result<()> {
        match std::mem::replace(self, Stream::Detached) {
            Stream::Parked(std) => *self = Stream::Tcp(TcpStream::from_std(std)?),
            other => *self = other,
        }
        Ok(())
    }
}

/// What reads and writes on a stream without a registered socket get.
fn not_connected<T>() -> Poll<io::Result<T>> {
    Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => $e,
            Stream::Tls($s) => $e,
            Stream::Ws($s) => $e,
            Stream::Wss($s) => $e,
            Stream::Parked(_) | Stream::Detached => not_connected(),
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
