//! Binding listeners and running the broker until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::admin::{AdminError, AdminListener, TokenFileError};
use crate::broker::Broker;
use crate::config::Config;
use crate::plugin::LoadError;
use crate::reload::Reloader;
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
    Plugin(LoadError),
    /// The admin token file is unusable: a configuration error.
    #[error(transparent)]
    AdminToken(#[from] TokenFileError),
}

impl From<AdminError> for ServerError {
    fn from(e: AdminError) -> ServerError {
        match e {
            AdminError::Bind(e) => ServerError::Bind(e),
            AdminError::TokenFile(e) => ServerError::AdminToken(e),
        }
    }
}

// By hand rather than `#[from]`, which would also make the `LoadError` the
// error's source: the message already includes it, and the binary prints
// the whole chain, so it said everything twice.
impl From<LoadError> for ServerError {
    fn from(e: LoadError) -> ServerError {
        ServerError::Plugin(e)
    }
}

/// The replication the configuration asks for: the cluster, with the
/// `cluster` feature and a `[cluster]` section. The one place the feature
/// decides what the broker is plugged into.
#[cfg(feature = "cluster")]
fn plug(config: &Config) -> Option<crate::broker::Plug> {
    let (cluster, interest) = crate::cluster::Cluster::new(config.cluster.as_ref()?);
    Some(crate::broker::Plug { replication: Arc::new(cluster), interest })
}

/// Without the `cluster` feature nothing plugs in: one node.
#[cfg(not(feature = "cluster"))]
fn plug(_config: &Config) -> Option<crate::broker::Plug> {
    None
}

/// A broker with its listeners bound, not yet accepting.
#[derive(Debug)]
pub struct Server {
    broker: Arc<Broker>,
    /// Hot reload: the server owns it, and it holds the broker.
    reloader: Arc<Reloader>,
    listeners: Vec<Listener>,
    admin: Option<AdminListener>,
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
        // Loads the configured plugin directory. A directory without
        // components means no plugins, and then no WebAssembly engine is
        // started until a reload finds some.
        let mut host = None;
        let policy =
            crate::reload::load_policy(crate::reload::plugin_dir(&config).as_deref(), &config.plugins, || {
                let made = crate::reload::new_host(&config)?;
                host = Some(made.clone());
                Ok(made)
            })?;
        if let Some(host) = &host {
            let counts = host.compile_counts();
            tracing::info!(
                compiled = counts.compiled,
                from_disk_cache = counts.disk,
                refused_from_disk_cache = counts.refused,
                cache_dir = host.cache_dir().map(|d| d.display().to_string()),
                "plugins compiled"
            );
        }
        let recovered = store.recover()?;
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            if l.trust_claimed_username {
                tracing::warn!(
                    listener = %l.name,
                    "trust_claimed_username = true: a client that no authentication plugin verifies \
                     gets the rights of whatever user name it claims"
                );
            }
            listeners.push(Listener::bind(l.clone()).await?);
        }
        let admin = match config.admin.listen {
            Some(addr) => Some(AdminListener::bind(&config.admin, addr).await?),
            None => None,
        };
        let plug = plug(&config);
        let broker = Broker::plugged(config, store, recovered, policy, plug);
        let reloader = Reloader::new(broker.clone(), host);
        let tls = listeners.iter().filter_map(|l| Some((l.config().name.clone(), l.tls()?.clone()))).collect();
        reloader.with_handles(|handles| handles.tls = tls);
        Ok(Server { broker, reloader, listeners, admin })
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

    /// See [`Reloader::set_hooks`]. Call before [`Server::run`], so the
    /// config file is watched.
    pub fn set_reload_hooks(
        &self,
        source: Option<Arc<dyn crate::reload::ConfigSource>>,
        log_filter: Option<crate::reload::LogFilterHook>,
    ) {
        self.reloader.set_hooks(source, log_filter);
    }

    /// Hot reload of this server's broker (SIGHUP, embedders, tests).
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// The shared broker state (for embedding and tests).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Accepts clients until `shutdown` resolves, then stops accepting,
    /// tells v5 clients the server is shutting down (0x8B), and waits for
    /// connections to close for at most the configured grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (broker, reloader) = (self.broker, self.reloader);
        // Asked now, not at the first CONNECT: finding the core count reads
        // cgroup files, and a descriptor taken for that in the middle of a
        // connect storm at the open-file limit is one a client could not get.
        crate::plugin::authn_concurrency();
        let max_connections = broker.config().limits.max_connections;
        let permits = Arc::new(Semaphore::new(max_connections));
        let rate = Arc::new(parking_lot::Mutex::new(crate::rate::TokenBucket::per_second(
            broker.config().limits.max_connection_rate,
            std::time::Instant::now(),
        )));
        let config_file = reloader.with_handles(|handles| {
            handles.permits = Some((permits.clone(), max_connections));
            handles.connection_rate = Some(rate.clone());
            handles.source.as_ref().and_then(|s| s.path().map(Path::to_owned))
        });
        let swept = broker.clone();
        broker.tasks.spawn(async move {
            let park_after = || swept.config().limits.park_after_s;
            crate::session::keep_alive::sweep(&swept.sessions, &swept.shutdown, park_after).await;
        });
        broker.tasks.spawn(crate::reload::watch::plugins(reloader.clone()));
        broker.tasks.spawn(crate::reload::watch::granted(reloader.clone()));
        if let Some(path) = config_file {
            broker.tasks.spawn(crate::reload::watch::config_file(reloader.clone(), path));
        }
        if let Some(replication) = broker.replication() {
            replication.start(broker.node());
        }
        let mut accept_loops = tokio::task::JoinSet::new();
        for listener in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                info!(listener = %listener.config().name, %addr, "listening");
            }
            accept_loops.spawn(listener.run(broker.clone(), permits.clone(), rate.clone()));
        }
        if let Some(admin) = self.admin {
            accept_loops.spawn(admin.run(reloader.clone()));
        }
        if broker.config().sys.interval_s > 0 {
            let interval = Duration::from_secs(broker.config().sys.interval_s);
            broker.tasks.spawn(crate::admin::sys::run(broker.clone(), interval));
        }
        // Listeners are bound and plugins loaded (both in `bind`).
        broker.metrics.set_ready(true);
        shutdown.await;
        info!("shutting down");
        broker.metrics.set_ready(false);
        broker.shutdown.cancel();
        // Connections watch their session, not the token (one waiter
        // less per idle connection); one that attaches after this sweep
        // sees the token cancelled when it starts.
        for session in broker.sessions.all() {
            session.signal(crate::session::signal::SHUTDOWN);
        }
        while accept_loops.join_next().await.is_some() {}
        broker.tasks.close();
        let grace = Duration::from_millis(broker.config().limits.shutdown_grace_ms);
        if tokio::time::timeout(grace, broker.tasks.wait()).await.is_err() {
            warn!(remaining = broker.tasks.len(), "grace period over; closing remaining connections");
        }
        broker.persist_sessions();
    }
}
