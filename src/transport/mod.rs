//! Listeners: bind, accept, and hand each socket to a connection task.
//!
//! The accept loop only accepts, takes a connection permit and spawns; the
//! TLS handshake and the WebSocket upgrade happen inside the connection
//! task under the connect timeout, so a slow client never stalls the loop.
//!
//! - [`tls`]: the rustls configuration of a listener, built once, swappable.
//! - [`ws`]: the WebSocket upgrade and its byte-stream adapter.
//! - [`stream`]: [`Stream`], the one stream type connection tasks see.
//! - [`proxy`]: the PROXY protocol header, read first on listeners with
//!   `proxy_protocol`, whose client address then stands for the peer.
//! - `failures`: failed accepts, logged once per interval with a count.

mod failures;
pub mod proxy;
pub mod stream;
pub mod tls;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

pub use crate::identity::{Peer, RevocationId, TlsIdentity};
use failures::{AcceptFailures, Report};
pub use stream::Stream;
pub use tls::{ServerConfigs, TlsAcceptor, TlsSetupError};

use crate::broker::Broker;
use crate::config::{ListenerConfig, ListenerProtocol};
use crate::metrics::{Limit, Refusal};
use crate::rate::TokenBucket;

/// A bound listener, ready to accept.
#[derive(Debug)]
pub struct Listener {
    config: Arc<ListenerConfig>,
    /// The listener's name, shared by its clients' `ClientInfo`.
    name: Arc<String>,
    socket: TcpListener,
    /// For `tls` and `wss` listeners.
    tls: Option<Arc<TlsAcceptor>>,
}

/// A listener could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Its certificate, key, CA or CRL files are unusable.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// Its address could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("listener {name:?}: cannot bind {addr}: {source}")]
pub struct BindError {
    /// Listener name.
    pub name: String,
    /// Address it tried.
    pub addr: SocketAddr,
    /// The I/O error.
    pub source: std::io::Error,
}

impl Listener {
    /// Loads the listener's TLS files, if any, then binds its address.
    ///
    /// # Errors
    /// [`ListenerError`] naming the listener and the file or address.
    pub async fn bind(config: ListenerConfig) -> Result<Listener, ListenerError> {
        let tls = match &config.tls {
            Some(tls) if config.protocol.is_tls() => {
                Some(Arc::new(TlsAcceptor::new(ServerConfigs::load(&config.name, config.protocol, tls)?)))
            }
            _ => None,
        };
        let socket =
            listen(config.bind).map_err(|source| BindError { name: config.name.clone(), addr: config.bind, source })?;
        Ok(Listener { name: Arc::new(config.name.clone()), config: Arc::new(config), socket, tls })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The listener's configuration.
    pub fn config(&self) -> &ListenerConfig {
        &self.config
    }

    /// The TLS acceptor of a `tls` or `wss` listener, whose certificates
    /// can be replaced while it runs.
    pub fn tls(&self) -> Option<&Arc<TlsAcceptor>> {
        self.tls.as_ref()
    }

    /// Accepts until shutdown, spawning one task per connection.
    ///
    /// A connection over the listener's rate, the global rate (`rate`,
    /// shared by all listeners), its own `max_connections` or the global
    /// one (`permits`) is closed at once, before a byte is read or a task
    /// spawned, and counted.
    pub async fn run(
        self,
        broker: Arc<Broker>,
        permits: Arc<Semaphore>,
        rate: Arc<parking_lot::Mutex<Option<TokenBucket>>>,
    ) {
        let own_permits = self.config.max_connections.map(|n| Arc::new(Semaphore::new(n)));
        // The loop is the bucket's only user: plain integers, no lock.
        let mut own_rate = TokenBucket::per_second(self.config.max_connection_rate, Instant::now());
        let mut failures = AcceptFailures::default();
        loop {
            let accepted = tokio::select! {
                () = broker.shutdown.cancelled() => return,
                accepted = self.socket.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    self.accept_failed(&broker, &mut failures, &e);
                    // Usually EMFILE, which lasts until a connection
                    // closes: back off instead of spinning.
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            if let Some(ended) = failures.accepted(Instant::now()) {
                self.log_accept_failures(ended, None);
            }
            if let Some(bucket) = &mut own_rate
                && !bucket.try_take(Instant::now())
            {
                debug!(%peer, listener = %self.config.name, "connection refused: listener max_connection_rate exceeded");
                refuse(&broker, Refusal::ConnectionRate, Limit::ConnectionRate);
                continue;
            }
            if let Some(bucket) = &mut *rate.lock()
                && !bucket.try_take(Instant::now())
            {
                debug!(%peer, "connection refused: limits.max_connection_rate exceeded");
                refuse(&broker, Refusal::ConnectionRate, Limit::ConnectionRate);
                continue;
            }
            let own_permit = match &own_permits {
                Some(own) => match own.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        debug!(%peer, listener = %self.config.name, "connection refused: listener max_connections");
                        refuse(&broker, Refusal::ListenerMaxConnections, Limit::ListenerMaxConnections);
                        continue;
                    }
                },
                None => None,
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                debug!(%peer, "connection refused: max_connections reached");
                refuse(&broker, Refusal::MaxConnections, Limit::MaxConnections);
                continue;
            };
            if !NODELAY_INHERITED {
                let _ = stream.set_nodelay(true);
            }
            let task = connection_task(
                broker.clone(),
                stream,
                peer,
                (self.config.clone(), self.name.clone()),
                self.tls.clone(),
                crate::connection::Permits {
                    global: permit.into(),
                    listener: own_permit.map(Into::into),
                    task: broker.tasks.token(),
                },
            );
            // Tracked by the token in its permits.
            tokio::spawn(task);
        }
    }
}

/// Whether accepted sockets get TCP_NODELAY from their listening socket,
/// set in [`listen`]: Linux copies it, saving a system call per connect
/// (issue 25); elsewhere each accepted socket gets its own.
const NODELAY_INHERITED: bool = cfg!(target_os = "linux");

/// Binds `addr` and listens (the backlog `TcpListener::bind` uses), with
/// `SO_REUSEADDR` as it sets it, and TCP_NODELAY for the accepted sockets
/// to inherit ([`NODELAY_INHERITED`]): every MQTT packet is written whole,
/// once per batch, so Nagle would only delay it.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The pause after a failed accept. The clients it leaves waiting stay in
/// the kernel's backlog and are accepted once descriptors free up.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

impl Listener {
    /// Counts a failed accept (a hit limit when descriptors ran out) and
    /// logs it as its run of failures calls for.
    fn accept_failed(&self, broker: &Broker, failures: &mut AcceptFailures, error: &std::io::Error) {
        if failures::out_of_descriptors(error) {
            broker.metrics.limit_hit(Limit::OpenFiles);
        }
        if let Some(report) = failures.failed(Instant::now()) {
            self.log_accept_failures(report, Some(error));
        }
    }

    fn log_accept_failures(&self, report: Report, error: Option<&std::io::Error>) {
        let listener = &self.config.name;
        let every_s = failures::REPORT_EVERY.as_secs();
        let error = error.map(tracing::field::display);
        match report {
            Report::Started => warn!(
                %listener,
                error,
                "accept failed; clients wait in the backlog, and failures are counted and logged every {every_s} s \
                 until an accept succeeds"
            ),
            Report::Continuing { failures, over } => {
                warn!(%listener, error, failures, over_ms = over.as_millis() as u64, "accept still failing")
            }
            Report::Ended { failures, lasted } => {
                warn!(%listener, failures, lasted_ms = lasted.as_millis() as u64, "accepting again after failures")
            }
        }
    }
}

/// One accepted connection from its first byte to its end: the transport
/// handshakes, then MQTT. It holds its places in the connection limits
/// and the task tracker (`permits`) until it ends (the connection holds
/// them once it has one).
///
/// Staged rather than an `async fn`, like [`crate::connection::serve`]:
/// the transport setup is boxed and gone once done, and the task's future
/// is, for the client's life, `serve`'s last stage.
fn connection_task(
    broker: Arc<Broker>,
    tcp: TcpStream,
    addr: SocketAddr,
    (config, name): (Arc<ListenerConfig>, Arc<String>),
    tls: Option<Arc<TlsAcceptor>>,
    permits: crate::connection::Permits,
) -> impl Future<Output = ()> + Send {
    use futures_util::FutureExt;
    use futures_util::future::Either;
    if config.protocol == ListenerProtocol::Tcp && !config.proxy_protocol {
        // Nothing to set up. The common case skips the setup's future: it
        // holds the TLS and WebSocket handshakes (10 KiB), which every
        // CONNECT would allocate and copy (issue 25).
        return Either::Left(crate::connection::serve(
            broker,
            Stream::Tcp(tcp),
            Peer::plain(addr),
            (config, name),
            permits,
        ));
    }
    // The setup's box gives back all `serve` needs, so the second stage
    // holds `serve`'s future alone: the task's future is no larger than
    // the plain one's (its cell's size class, issue 25).
    let setup = Box::pin(async move {
        let (stream, peer) = establish(&broker, tcp, addr, &config, tls.as_deref()).await?;
        Some((broker, stream, peer, (config, name), permits))
    });
    Either::Right(setup.then(|established| match established {
        Some((broker, stream, peer, listener, permits)) => {
            Either::Left(crate::connection::serve(broker, stream, peer, listener, permits))
        }
        None => Either::Right(std::future::ready(())),
    }))
}

/// Counts a connection refused at accept; the caller drops the socket,
/// which closes it unread.
fn refuse(broker: &Broker, reason: Refusal, limit: Limit) {
    broker.metrics.refused(reason);
    broker.metrics.limit_hit(limit);
}

/// Reads the PROXY header the listener calls for, then runs the TLS
/// handshake and the WebSocket upgrade it calls for, all under the connect
/// timeout. Failures are the peer's doing: logged at debug, and the
/// connection dropped.
async fn establish(
    broker: &Broker,
    mut tcp: TcpStream,
    addr: SocketAddr,
    listener: &ListenerConfig,
    tls: Option<&TlsAcceptor>,
) -> Option<(Stream, Peer)> {
    let running = broker.config();
    let limits = &running.limits;
    let deadline = tokio::time::Instant::now() + limits.connect_timeout();
    let setup = async {
        let mut peer = Peer::plain(addr);
        peer.connect_deadline = Some(deadline);
        if listener.proxy_protocol {
            peer.addr = proxied_peer(&mut tcp, addr, listener).await?;
        }
        let stream = match (listener.protocol, tls) {
            (ListenerProtocol::Tcp, _) => Stream::Tcp(tcp),
            (ListenerProtocol::Ws, _) => Stream::Ws(Box::new(
                ws::accept(tcp, listener, limits.max_packet_size)
                    .await
                    .map_err(|e| debug!(%addr, listener = %listener.name, error = %e, "WebSocket upgrade failed"))?,
            )),
            (ListenerProtocol::Tls | ListenerProtocol::Wss, Some(tls)) => {
                let (stream, identity) = tls
                    .accept(tcp)
                    .await
                    .map_err(|e| debug!(%addr, listener = %listener.name, error = %e, "TLS handshake failed"))?;
                peer.tls = identity.map(Arc::new);
                if listener.protocol == ListenerProtocol::Tls {
                    Stream::Tls(Box::new(stream))
                } else {
                    Stream::Wss(Box::new(ws::accept(stream, listener, limits.max_packet_size).await.map_err(
                        |e| debug!(%addr, listener = %listener.name, error = %e, "WebSocket upgrade failed"),
                    )?))
                }
            }
            (ListenerProtocol::Tls | ListenerProtocol::Wss, None) => {
                // Listener::bind builds an acceptor for every TLS listener.
                warn!(listener = %listener.name, "TLS listener without TLS settings");
                return Err(());
            }
        };
        Ok::<_, ()>((stream, peer))
    };
    let established = match tokio::time::timeout_at(deadline, setup).await {
        Ok(established) => established.ok(),
        Err(_) => {
            debug!(%addr, listener = %listener.name, "transport handshake timed out");
            None
        }
    };
    if established.is_none() {
        broker.metrics.refused(Refusal::Transport);
    }
    established
}

/// The client's address from the PROXY header on `tcp`, read to its last
/// byte and no further, from a proxy the listener trusts. A header saying
/// the proxy speaks for itself (`LOCAL`, `UNKNOWN`) leaves `addr`.
async fn proxied_peer(tcp: &mut TcpStream, addr: SocketAddr, listener: &ListenerConfig) -> Result<SocketAddr, ()> {
    if !listener.trusts_proxy(addr.ip()) {
        debug!(%addr, listener = %listener.name, "connection refused: not from a trusted proxy (trusted_proxies)");
        return Err(());
    }
    let mut buf = Vec::with_capacity(proxy::V1_MAX);
    loop {
        match proxy::parse(&buf) {
            Ok(proxy::Parsed::Complete { header, len }) if len == buf.len() => {
                let peer = match header {
                    proxy::Header::Proxied { source, .. } => source,
                    proxy::Header::Local => addr,
                };
                debug!(proxy = %addr, %peer, listener = %listener.name, "PROXY header");
                return Ok(peer);
            }
            Ok(proxy::Parsed::Incomplete { more }) => {
                let start = buf.len();
                buf.resize(start + more, 0);
                tcp.read_exact(&mut buf[start..]).await.map_err(|_| ())?;
            }
            Ok(proxy::Parsed::Complete { .. }) => {
                // `parse` asks only for bytes of the header; a header
                // shorter than what was read would be a bug in it.
                warn!(%addr, listener = %listener.name, "PROXY header read past its end");
                return Err(());
            }
            Err(e) => {
                debug!(%addr, listener = %listener.name, error = %e, "PROXY header refused");
                return Err(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Policy;
    use crate::config::Config;
    use crate::store::MemoryStore;

    /// Accepted sockets write without Nagle's delay: on Linux they inherit
    /// TCP_NODELAY from the listening socket, with no call of their own.
    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let listener = listen("127.0.0.1:0".parse().expect("an address")).expect("listen");
        let _client = TcpStream::connect(listener.local_addr().expect("address")).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        if NODELAY_INHERITED {
            assert!(accepted.nodelay().expect("TCP_NODELAY readable"), "TCP_NODELAY was not inherited");
        }
    }

    /// Every idle client holds its boxed `Connection` (issue 25): what
    /// only some clients use (topic aliases, the authorization cache, a
    /// will's cluster registration, ...) is boxed on first use, so this
    /// catches a field that makes every connection pay for it. 472 bytes
    /// before that, 384 after (permits included, moved there from the
    /// task, and since the task tracker's token too), 376 with a 16-bit
    /// send window and the client's maximum packet size in 4 bytes; 248
    /// with the store's and the cluster's barriers and a held publish in
    /// one box made on first use, no `last_read` instant (the deadline in
    /// the session is it), the permits in 8 bytes each, the
    /// re-authentication exchange in `Rare` and bytes counted in 32 bits.
    /// The bound is glibc's chunk class: 233 to 248 bytes take a 256-byte
    /// chunk, one byte more a 272-byte one.
    #[test]
    fn a_connection_is_small() {
        let size = crate::connection::size_of_connection::<Stream>();
        eprintln!("connection: {size} bytes");
        assert!(size <= 248, "Connection is {size} bytes: its heap chunk grows past 256 bytes");
    }

    /// A parked connection lives in its slot (an `Arc`, 16 bytes more),
    /// in jemalloc's 320-byte class with the sessions: not in the 256-byte
    /// class of the task cells and socket registrations parking frees,
    /// whose pages it would keep from going back, and not past 320.
    #[test]
    fn a_parked_connection_keeps_to_its_size_class() {
        let size = crate::connection::size_of_slot::<Stream>() + 16;
        eprintln!("parked connection's slot: {size} bytes");
        assert!((257..=320).contains(&size), "a parked connection's slot is {size} bytes, outside the 320-byte class");
    }

    /// Every connection's task holds its future for the connection's life,
    /// so its size is memory per idle connection (issue 25). Large,
    /// short-lived states (TLS and WebSocket handshakes, CONNECT and
    /// authentication, the goodbye) are boxed and do not count here; this
    /// catches one that is not. The bound is a size class: tokio's task
    /// cell is 128-byte aligned and adds 104 bytes (header, scheduler,
    /// task id, stage tag, trailer), so a future of at most 152 bytes
    /// makes a 256-byte cell, and one byte more a 384-byte one. Was 272
    /// (384) with a keep-alive timer in the future and the task tracker's
    /// 8 bytes around it; heaptrack: 512-byte cells at 296.
    #[tokio::test]
    async fn a_connection_task_is_small() {
        let broker =
            Broker::new(Config::default(), Arc::new(MemoryStore::default()), Default::default(), Policy::none());
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(socket.local_addr().expect("address")).await.expect("connect");
        let (tcp, addr) = socket.accept().await.expect("accept");
        let config = Arc::new(ListenerConfig::tcp("test", addr));
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().expect("a free permit");
        let permits = crate::connection::Permits { global: permit.into(), listener: None, task: broker.tasks.token() };
        let task = connection_task(broker, tcp, addr, (config, Arc::new("test".to_owned())), None, permits);
        let size = std::mem::size_of_val(&task);
        eprintln!("connection task future: {size} bytes");
        assert!(size <= 152, "the connection task's future is {size} bytes: its tokio task cell grows to 384 bytes");
        drop(client);
    }
}
