//! Binding listeners and running the broker until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::admin::AdminListener;
use crate::auth::Policy;
use crate::broker::Broker;
use crate::config::Config;
use crate::plugin::{LoadError, PluginHost, PluginSettings, Source, shipped};
use crate::store::{MemoryStore, Store, StoreError};
use crate::transport::{BindError, Listener, ListenerError, TlsAcceptor, TlsSetupError};

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A TLS listener's certificate, key, CA or CRL files are unusable: a
    /// configuration error.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// The store could not be recovered.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A plugin could not be loaded: the broker never runs with part of
    /// its policy missing.
    #[error("plugin refused: {0}")]
    Plugin(#[from] LoadError),
}

/// A broker with its listeners bound, not yet accepting.
#[derive(Debug)]
pub struct Server {
    broker: Arc<Broker>,
    listeners: Vec<Listener>,
    admin: Option<AdminListener>,
}

/// Loads the configured plugin directory (default `./plugins` when it
/// exists) and the shipped plugins the config enables, as one chain. With
/// neither, no WebAssembly engine is started at all.
fn load_policy(config: &Config) -> Result<Policy, LoadError> {
    let dir = match &config.plugins.dir {
        Some(dir) => Some(dir.clone()),
        None if Path::new("plugins").is_dir() => Some(PathBuf::from("plugins")),
        None => None,
    };
    let mut specs = Vec::new();
    if let Some(dir) = &dir {
        let entries =
            std::fs::read_dir(dir).map_err(|e| LoadError::Io { path: dir.clone(), message: e.to_string() })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "wasm") && path.is_file() {
                let settings = PluginSettings::for_component(&path)?;
                specs.push((Source::File(path), settings));
            }
        }
    }
    for (name, table) in &config.plugins.shipped {
        // Config validation already refused unknown names.
        let Some(shipped) = shipped::find(name) else { continue };
        let settings = shipped
            .settings(table, &config.plugins.base_dir)
            .map_err(|message| LoadError::Sidecar { path: PathBuf::from(format!("[plugins.{name}]")), message })?;
        specs.push((Source::Shipped(shipped), settings));
    }
    if specs.is_empty() {
        return Ok(Policy::none());
    }
    let set = PluginHost::new()?.load_sources(specs)?;
    for plugin in set.plugins() {
        info!(plugin = &**plugin.name(), path = %plugin.path().display(), "plugin loaded");
    }
    Ok(Policy::new(set))
}

impl From<ListenerError> for ServerError {
    fn from(e: ListenerError) -> ServerError {
        match e {
            ListenerError::Tls(e) => ServerError::Tls(e),
            ListenerError::Bind(e) => ServerError::Bind(e),
        }
    }
}

impl Server {
    /// Binds every configured listener, with an in-memory store.
    ///
    /// # Errors
    /// [`ServerError`] for the first listener that cannot be set up.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        Server::bind_with_store(config, Arc::new(MemoryStore::default())).await
    }

    /// Binds every configured listener and recovers state from `store`.
    ///
    /// # Errors
    /// [`ServerError`] when the store cannot be read or a listener bound.
    pub async fn bind_with_store(config: Config, store: Arc<dyn Store>) -> Result<Server, ServerError> {
        let policy = load_policy(&config)?;
        let recovered = store.recover()?;
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            listeners.push(Listener::bind(l.clone()).await?);
        }
        let admin = match config.admin.listen {
            Some(addr) => Some(AdminListener::bind(&config.admin, addr).await?),
            None => None,
        };
        Ok(Server { broker: Broker::new(config, store, recovered, policy), listeners, admin })
    }

    /// The bound address of each listener, by name.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners.iter().filter_map(|l| Some((l.config().name.clone(), l.local_addr().ok()?))).collect()
    }

    /// The bound address of the admin listener, if one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref()?.local_addr().ok()
    }

    /// The TLS acceptor of each `tls` and `wss` listener, by name. Build new
    /// [`ServerConfigs`](crate::transport::ServerConfigs) from the files and
    /// [`TlsAcceptor::replace`] them to change certificates while running;
    /// when loading fails, the acceptor keeps serving the old ones.
    pub fn tls_acceptors(&self) -> Vec<(String, Arc<TlsAcceptor>)> {
        self.listeners.iter().filter_map(|l| Some((l.config().name.clone(), l.tls()?.clone()))).collect()
    }

    /// The shared broker state (for embedding and tests).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Accepts clients until `shutdown` resolves, then stops accepting,
    /// tells v5 clients the server is shutting down (0x8B), and waits for
    /// connections to close for at most the configured grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let broker = self.broker;
        let permits = Arc::new(Semaphore::new(broker.config.limits.max_connections));
        let mut accept_loops = tokio::task::JoinSet::new();
        for listener in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                info!(listener = %listener.config().name, %addr, "listening");
            }
            accept_loops.spawn(listener.run(broker.clone(), permits.clone()));
        }
        if let Some(admin) = self.admin {
            accept_loops.spawn(admin.run(broker.clone()));
        }
        if broker.config.sys.interval_s > 0 {
            let interval = Duration::from_secs(broker.config.sys.interval_s);
            broker.tasks.spawn(crate::metrics::sys::run(broker.clone(), interval));
        }
        // Listeners are bound and plugins loaded (both in `bind`).
        broker.metrics.set_ready(true);
        shutdown.await;
        info!("shutting down");
        broker.metrics.set_ready(false);
        broker.shutdown.cancel();
        while accept_loops.join_next().await.is_some() {}
        broker.tasks.close();
        let grace = Duration::from_millis(broker.config.limits.shutdown_grace_ms);
        if tokio::time::timeout(grace, broker.tasks.wait()).await.is_err() {
            warn!(remaining = broker.tasks.len(), "grace period over; closing remaining connections");
        }
        broker.persist_sessions();
    }
}
