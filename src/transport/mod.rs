//! Listeners: bind, accept, and hand each socket to a connection task.
//!
//! The accept loop only accepts, takes a connection permit and spawns; any
//! handshake happens inside the connection task under its timeout, so a
//! slow client never stalls the loop.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::broker::Broker;
use crate::config::ListenerConfig;

/// A bound listener, ready to accept.
#[derive(Debug)]
pub struct Listener {
    config: Arc<ListenerConfig>,
    socket: TcpListener,
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
    /// Binds the listener's address.
    ///
    /// # Errors
    /// [`BindError`] naming the listener and address.
    pub async fn bind(config: ListenerConfig) -> Result<Listener, BindError> {
        let socket = TcpListener::bind(config.bind).await.map_err(|source| BindError {
            name: config.name.clone(),
            addr: config.bind,
            source,
        })?;
        Ok(Listener { config: Arc::new(config), socket })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The listener's configuration.
    pub fn config(&self) -> &ListenerConfig {
        &self.config
    }

    /// Accepts until shutdown, spawning one task per connection.
    pub async fn run(self, broker: Arc<Broker>, permits: Arc<Semaphore>) {
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
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                debug!(%peer, "connection refused: max_connections reached");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let broker = broker.clone();
            let config = self.config.clone();
            broker.tasks.clone().spawn(async move {
                crate::connection::serve(broker, stream, peer, config).await;
                drop(permit);
            });
        }
    }
}
