//! Listeners: bind, accept, and hand each socket to a connection task.
//!
//! The accept loop only accepts, takes a connection permit and spawns; the
//! TLS handshake and the WebSocket upgrade happen inside the connection
//! task under the connect timeout, so a slow client never stalls the loop.
//!
//! - [`tls`]: the rustls configuration of a listener, built once, swappable.
//! - [`ws`]: the WebSocket upgrade and its byte-stream adapter.
//! - [`identity`]: the verified client certificate as a [`TlsIdentity`].
//! - [`stream`]: [`Stream`], the one stream type connection tasks see.

pub mod identity;
pub mod stream;
pub mod tls;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

pub use identity::{Peer, TlsIdentity};
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
        let socket = TcpListener::bind(config.bind).await.map_err(|source| BindError {
            name: config.name.clone(),
            addr: config.bind,
            source,
        })?;
        Ok(Listener { config: Arc::new(config), socket, tls })
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
    /// A connection over the listener's rate, its own `max_connections` or
    /// the global one (`permits`) is closed at once, before a byte is read
    /// or a task spawned, and counted.
    pub async fn run(self, broker: Arc<Broker>, permits: Arc<Semaphore>) {
        let own_permits = self.config.max_connections.map(|n| Arc::new(Semaphore::new(n)));
        // The loop is the bucket's only user: plain integers, no lock.
        let mut rate = TokenBucket::per_second(self.config.max_connection_rate, Instant::now());
        loop {
            let accepted = tokio::select! {
                () = broker.shutdown.cancelled() => return,
                accepted = self.socket.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE; back off instead of spinning.
                    warn!(listener = %self.config.name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Some(bucket) = &mut rate
                && !bucket.try_take(Instant::now())
            {
                debug!(%peer, listener = %self.config.name, "connection refused: max_connection_rate exceeded");
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
            let _ = stream.set_nodelay(true);
            let broker = broker.clone();
            let config = self.config.clone();
            let tls = self.tls.clone();
            broker.tasks.clone().spawn(async move {
                if let Some((stream, peer)) = establish(&broker, stream, peer, &config, tls.as_deref()).await {
                    crate::connection::serve(broker, stream, peer, config).await;
                }
                drop(permit);
                drop(own_permit);
            });
        }
    }
}

/// Counts a connection refused at accept; the caller drops the socket,
/// which closes it unread.
fn refuse(broker: &Broker, reason: Refusal, limit: Limit) {
    broker.metrics.refused(reason);
    broker.metrics.limit_hit(limit);
}

/// Runs the TLS handshake and the WebSocket upgrade the listener calls for,
/// under the connect timeout. Failures are the peer's doing: logged at
/// debug, and the connection dropped.
async fn establish(
    broker: &Broker,
    tcp: TcpStream,
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
        let stream = match (listener.protocol, tls) {
            (ListenerProtocol::Tcp, _) => Stream::Tcp(tcp),
            (ListenerProtocol::Ws, _) => Stream::Ws(Box::new(
                ws::accept(tcp, listener.ws_path(), limits.max_packet_size)
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
                    Stream::Wss(Box::new(
                        ws::accept(stream, listener.ws_path(), limits.max_packet_size).await.map_err(
                            |e| debug!(%addr, listener = %listener.name, error = %e, "WebSocket upgrade failed"),
                        )?,
                    ))
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
