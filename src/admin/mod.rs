//! The admin HTTP listener (`[admin] listen`): Prometheus `/metrics`
//! ([`prometheus`]), `/health`, `/ready` and a small JSON API (see
//! [`api`]); and the `$SYS/broker/...` topics ([`sys`]). Both render what
//! the broker's snapshot says (its `Metrics`, `Broker::gauges`,
//! `Broker::queue_totals`, the policy's plugin stats).
//!
//! A deliberately small HTTP/1.1 server over tokio rather than a framework:
//! one request per connection (`Connection: close`), a request head capped
//! at [`MAX_HEAD`] bytes, bodies capped at [`MAX_BODY`], the whole exchange
//! under [`REQUEST_TIMEOUT`], and at most [`MAX_CONCURRENT`] connections at
//! once. Operators and scrapers make few requests; none of this is on the
//! message path. Who may ask what is [`access`]'s business.

pub mod access;
pub mod api;
pub mod prometheus;
pub mod sys;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

pub use access::{Access, TokenFileError};

use crate::config::AdminConfig;
use crate::reload::Reloader;
use crate::transport::BindError;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest request body accepted (the API's POSTs carry none).
pub const MAX_BODY: usize = 1024;
/// Time allowed for reading a request and writing the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections served at once; more wait in the kernel's backlog.
pub const MAX_CONCURRENT: usize = 16;
/// Headers parsed per request; more is a bad request.
const MAX_HEADERS: usize = 32;

/// The bound admin listener.
#[derive(Debug)]
pub struct AdminListener {
    socket: TcpListener,
    access: Arc<Access>,
}

/// The admin listener could not be started.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Its address could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Its token file is unusable.
    #[error(transparent)]
    TokenFile(#[from] TokenFileError),
}

/// A parsed request: what the API needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`...
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// Whether the request may read: it carried the bearer token, or no
    /// token is in force (which config allows on loopback only).
    pub authorized: bool,
    /// Whether it carried the token in force (never when there is none),
    /// as every state-changing endpoint requires.
    pub token_presented: bool,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Response {
    /// A JSON answer.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response { status, content_type: "application/json", body: value.to_string() }
    }

    /// A JSON `{"error": message}` answer.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": message }))
    }
}

impl AdminListener {
    /// Reads or creates the token file, if one is configured, then binds
    /// the configured address.
    ///
    /// # Errors
    /// [`AdminError`] naming the token file or the `admin` listener.
    pub async fn bind(config: &AdminConfig, addr: SocketAddr) -> Result<AdminListener, AdminError> {
        let access = Arc::new(Access::new(config)?);
        let socket =
            TcpListener::bind(addr).await.map_err(|source| BindError { name: "admin".into(), addr, source })?;
        Ok(AdminListener { socket, access })
    }

    /// The bound address.
    ///
    /// # Errors
    /// When the socket has none (not expected for a bound TCP socket).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Serves requests until the broker shuts down; `reloader`'s broker is
    /// the one served, and `POST /api/reload` reloads it.
    pub async fn run(self, reloader: Arc<Reloader>) {
        let broker = reloader.broker().clone();
        if let Ok(addr) = self.socket.local_addr() {
            info!(%addr, token = self.access.has_token(), "admin API listening");
            if !self.access.has_token() {
                warn!(
                    "admin API has no token: any local user can read it, and kick and reload are refused; \
                     set [admin] token or token_file"
                );
            }
        }
        let permits = Arc::new(Semaphore::new(MAX_CONCURRENT));
        loop {
            let accepted = tokio::select! {
                () = broker.shutdown.cancelled() => return,
                accepted = self.socket.accept() => accepted,
            };
            let Ok((stream, peer)) = accepted else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let permit = tokio::select! {
                () = broker.shutdown.cancelled() => return,
                permit = permits.clone().acquire_owned() => permit,
            };
            let Ok(permit) = permit else { return };
            let (reloader, access) = (reloader.clone(), self.access.clone());
            broker.tasks.clone().spawn(async move {
                let served = tokio::time::timeout(REQUEST_TIMEOUT, serve(stream, &reloader, &access)).await;
                if served.is_err() {
                    debug!(%peer, "admin request timed out");
                }
                drop(permit);
            });
        }
    }
}

/// Reads one request, answers it and closes.
async fn serve(mut stream: TcpStream, reloader: &Arc<Reloader>, access: &Access) {
    let response = match read_request(&mut stream, access).await {
        Ok(request) => api::handle(reloader, &request).await,
        Err(Some(response)) => response,
        Err(None) => return,
    };
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        422 => "Unprocessable Content",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    if response.status == 401 {
        head.push_str("WWW-Authenticate: Bearer realm=\"moat\"\r\n");
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(response.body.as_bytes()).await;
    let _ = stream.shutdown().await;
    // Closing with unread input makes the kernel send a reset, which can
    // destroy the answer before the client reads it (a refused oversized
    // request is exactly that case): read a bounded amount first.
    let mut sink = [0u8; 1024];
    let drain = async {
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// How long, and how many bytes, a connection is read after its answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// Reads and parses the request head (and discards a small body).
/// `Err(None)`: the peer went away; `Err(Some(_))`: answer with this.
async fn read_request(stream: &mut TcpStream, access: &Access) -> Result<Request, Option<Response>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let body_len = content_length(parsed.headers)?;
                let request = access.request(&parsed).map_err(Some)?;
                discard_body(stream, buf.len() - head_len, body_len).await?;
                return Ok(request);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err(Some(Response::error(413, "request head too large"))),
            Err(_) => return Err(Some(Response::error(400, "malformed request"))),
        }
    }
}

fn content_length(headers: &[httparse::Header<'_>]) -> Result<usize, Option<Response>> {
    if headers.iter().any(|h| h.name.eq_ignore_ascii_case("transfer-encoding")) {
        return Err(Some(Response::error(400, "chunked bodies are not accepted")));
    }
    let Some(h) = headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length")) else { return Ok(0) };
    let len = std::str::from_utf8(h.value)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| Some(Response::error(400, "invalid Content-Length")))?;
    if len > MAX_BODY {
        return Err(Some(Response::error(413, "request body too large")));
    }
    Ok(len)
}

/// Reads what remains of a body of `len` bytes, `have` of which arrived
/// with the head. The API reads nothing from bodies.
async fn discard_body(stream: &mut TcpStream, have: usize, len: usize) -> Result<(), Option<Response>> {
    let mut remaining = len.saturating_sub(have);
    let mut chunk = [0u8; 256];
    while remaining > 0 {
        let n = stream.read(&mut chunk).await.map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        remaining = remaining.saturating_sub(n);
    }
    Ok(())
}
