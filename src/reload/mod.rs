//! Hot reload: plugins, configuration and certificates change while clients
//! stay connected.
//!
//! Every trigger — the plugin directory watcher ([`watch`]), a change of the
//! config file, SIGHUP, an embedder — ends in one of two entry points:
//! [`Broker::reload_plugins`] (load the plugin directory again) and
//! [`Broker::reload_config`] (apply a new configuration, then reload the
//! plugins). Both run one at a time and report what they did.
//!
//! A plugin set is compiled and initialised on a blocking thread, off the
//! message path, and only a set that loaded completely is swapped in: the
//! swap replaces the broker's [`Policy`] (calls in flight finish on the old
//! one; per-connection authorization caches notice the new generation),
//! then re-authorizes every subscription of every session and removes those
//! the new policy forbids. Queued messages are re-checked when delivered,
//! because delivery asks the policy in force for `receive`. A set that fails
//! to load is refused with the reason and the old one keeps serving: a
//! failed reload never weakens policy.

mod config;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tracing::{info, warn};

pub use config::{ConfigReport, ConfigSource, ReloadRefused};

use crate::auth::{Action, Policy};
use crate::broker::Broker;
use crate::config::{Config, PluginsConfig};
use crate::plugin::{CompileCounts, LoadError, PluginHost, Source, components_in, shipped};
use crate::rate::TokenBucket;
use crate::transport::TlsAcceptor;

/// Changes the log filter at run time (installed by the binary, which owns
/// the tracing subscriber).
pub type LogFilterHook = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The outcome of one plugin reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginReport {
    /// The new set is in force.
    Swapped {
        /// Generation of the new policy ([`Policy::generation`]).
        generation: u64,
        /// Plugins in the new set that were not in the old one.
        added: Vec<String>,
        /// Plugins of the old set that are gone.
        removed: Vec<String>,
        /// Plugins in both sets (loaded again from their current files).
        reloaded: Vec<String>,
        /// Subscriptions the new policy forbids, removed from their sessions.
        subscriptions_removed: usize,
        /// Components compiled for this set; the others were unchanged and
        /// came compiled from memory or from the disk cache.
        compiled: u64,
        /// From the start of loading to the end of the swap.
        took: Duration,
    },
    /// The new set did not load; the old one keeps serving.
    Refused {
        /// Why, naming the plugin file.
        reason: String,
    },
}

impl PluginReport {
    /// Whether the new set is in force.
    pub fn swapped(&self) -> bool {
        matches!(self, PluginReport::Swapped { .. })
    }
}

/// The state hot reload keeps in the broker.
pub(crate) struct Reloader {
    /// One reload at a time, in the order they were asked for.
    running: tokio::sync::Mutex<()>,
    /// The plugin host (one wasmtime engine per broker), made on first use.
    host: Mutex<Option<PluginHost>>,
    /// The plugin directory in force; the watcher follows its changes.
    dir: tokio::sync::watch::Sender<Option<PathBuf>>,
    /// The outcome of the last plugin reload, for whoever waits on one.
    last: tokio::sync::watch::Sender<Option<PluginReport>>,
    /// Set once the server runs: what a config reload can change in place.
    pub(crate) handles: Mutex<RunHandles>,
}

/// Handles on what a config reload changes in running parts.
#[derive(Default)]
pub(crate) struct RunHandles {
    /// TLS acceptors by listener name.
    pub(crate) tls: Vec<(String, Arc<TlsAcceptor>)>,
    /// The connection permits and how many there are.
    pub(crate) permits: Option<(Arc<Semaphore>, usize)>,
    /// The connection-rate bucket shared by all listeners.
    pub(crate) connection_rate: Option<Arc<Mutex<Option<TokenBucket>>>>,
    /// Where the configuration comes from, to read it again.
    pub(crate) source: Option<Arc<dyn ConfigSource>>,
    /// Applies a new log filter.
    pub(crate) log_filter: Option<LogFilterHook>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").field("dir", &*self.dir.borrow()).finish_non_exhaustive()
    }
}

impl Reloader {
    pub(crate) fn new(dir: Option<PathBuf>) -> Reloader {
        Reloader {
            running: tokio::sync::Mutex::new(()),
            host: Mutex::new(None),
            dir: tokio::sync::watch::Sender::new(dir),
            last: tokio::sync::watch::Sender::new(None),
            handles: Mutex::new(RunHandles::default()),
        }
    }

    /// The host, made now for `config` if no plugin was loaded before.
    fn host(&self, config: &Config) -> Result<PluginHost, LoadError> {
        let mut host = self.host.lock();
        if let Some(host) = &*host {
            return Ok(host.clone());
        }
        let made = new_host(config)?;
        *host = Some(made.clone());
        Ok(made)
    }
}

/// A plugin host with the disk cache `config` asks for
/// ([`Config::plugin_cache_dir`]).
pub(crate) fn new_host(config: &Config) -> Result<PluginHost, LoadError> {
    match config.plugin_cache_dir() {
        Some(dir) => PluginHost::with_disk_cache(&dir),
        None => PluginHost::new(),
    }
}

/// The plugin directory a configuration names: `[plugins] dir`, else
/// `./plugins` when it exists, else none.
pub(crate) fn plugin_dir(config: &Config) -> Option<PathBuf> {
    match &config.plugins.dir {
        Some(dir) => Some(dir.clone()),
        None if Path::new("plugins").is_dir() => Some(PathBuf::from("plugins")),
        None => None,
    }
}

/// Loads the plugins of `dir` and the shipped plugins `plugins` enables,
/// as one chain, through `host` (made on demand: with no plugin at all, no
/// WebAssembly engine is started). A configured directory that cannot be
/// read is an error.
pub(crate) fn load_policy(
    dir: Option<&Path>,
    plugins: &PluginsConfig,
    host: impl FnOnce() -> Result<PluginHost, LoadError>,
) -> Result<Policy, LoadError> {
    let mut specs = match dir {
        Some(dir) => components_in(dir)?,
        None => Vec::new(),
    };
    for (name, table) in &plugins.shipped {
        // Config validation already refused unknown names.
        let Some(shipped) = shipped::find(name) else { continue };
        let settings = shipped
            .settings(table, &plugins.base_dir)
            .map_err(|message| LoadError::Sidecar { path: PathBuf::from(format!("[plugins.{name}]")), message })?;
        specs.push((Source::Shipped(shipped), settings));
    }
    if specs.is_empty() {
        return Ok(Policy::none());
    }
    let set = host()?.load_sources(specs)?;
    for plugin in set.plugins() {
        info!(plugin = &**plugin.name(), path = %plugin.path().display(), "plugin loaded");
    }
    Ok(Policy::new(set))
}

impl Broker {
    /// Keeps the plugin host that loaded the start-up policy, so reloads use
    /// the same engine (and its cache of compiled components).
    pub(crate) fn keep_plugin_host(&self, host: Option<PluginHost>) {
        if let Some(host) = host {
            *self.reload.host.lock() = Some(host);
        }
    }

    /// Lets [`Broker::reload`] (SIGHUP) and the config file watcher read the
    /// configuration again from `source`, and [`Broker::reload_config`]
    /// change the log filter through `log_filter`.
    pub fn set_reload_hooks(&self, source: Option<Arc<dyn ConfigSource>>, log_filter: Option<LogFilterHook>) {
        let mut handles = self.reload.handles.lock();
        handles.source = source;
        handles.log_filter = log_filter;
    }

    /// How the plugin host compiled or found compiled the components it
    /// loaded since start-up; `None` before any plugin was loaded.
    pub fn plugin_compile_counts(&self) -> Option<CompileCounts> {
        Some(self.reload.host.lock().as_ref()?.compile_counts())
    }

    /// The plugin directory in force.
    pub fn plugin_dir(&self) -> Option<PathBuf> {
        self.reload.dir.borrow().clone()
    }

    /// Follows the outcome of plugin reloads: the receiver sees the last
    /// report and is told of each new one.
    pub fn plugin_reloads(&self) -> tokio::sync::watch::Receiver<Option<PluginReport>> {
        self.reload.last.subscribe()
    }

    /// Loads the plugin directory again and, if every plugin loads, puts the
    /// new set in force; see the [module documentation](self). The outcome
    /// is logged and also returned.
    pub async fn reload_plugins(self: &Arc<Self>) -> PluginReport {
        let _one_at_a_time = self.reload.running.lock().await;
        self.reload_plugins_locked().await
    }

    async fn reload_plugins_locked(self: &Arc<Self>) -> PluginReport {
        let started = Instant::now();
        let dir = self.plugin_dir();
        let config = self.config();
        let broker = self.clone();
        let before = self.plugin_compile_counts().unwrap_or_default();
        let loading = tokio::task::spawn_blocking(move || {
            load_policy(dir.as_deref(), &config.plugins, || broker.reload.host(&config))
        });
        let report = match loading.await {
            Ok(Ok(policy)) => {
                let compiled = self.plugin_compile_counts().unwrap_or_default().compiled - before.compiled;
                self.swap(policy, compiled, started).await
            }
            Ok(Err(e)) => PluginReport::Refused { reason: e.to_string() },
            Err(e) => PluginReport::Refused { reason: format!("loading stopped: {e}") },
        };
        match &report {
            PluginReport::Swapped { generation, added, removed, reloaded, subscriptions_removed, compiled, took } => {
                info!(
                    generation,
                    ?added,
                    ?removed,
                    ?reloaded,
                    subscriptions_removed,
                    compiled,
                    took_ms = took.as_millis(),
                    "plugins reloaded"
                )
            }
            PluginReport::Refused { reason } => {
                warn!(reason, "plugin reload refused; the previous plugins keep serving");
            }
        }
        self.metrics.reloaded(report.swapped());
        self.reload.last.send_replace(Some(report.clone()));
        report
    }

    /// Puts `policy` in force and applies it to existing subscriptions.
    async fn swap(self: &Arc<Self>, policy: Policy, compiled: u64, started: Instant) -> PluginReport {
        let names = |p: &Policy| p.plugins().plugins().iter().map(|p| p.name().to_string()).collect::<Vec<_>>();
        let generation = policy.generation();
        let previous = self.set_policy(policy.clone());
        if let Some(host) = &*self.reload.host.lock() {
            host.retain_compiled(policy.plugins());
        }
        let (old, new) = (names(&previous), names(&policy));
        if new.is_empty() && !old.is_empty() {
            warn!("no plugins left: clients are authenticated by the listeners' settings and every action is allowed");
        }
        let broker = self.clone();
        let sweep = tokio::task::spawn_blocking(move || {
            drop(previous);
            broker.reauthorize(&policy)
        });
        let subscriptions_removed = sweep.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "re-authorizing subscriptions stopped");
            0
        });
        PluginReport::Swapped {
            generation,
            added: new.iter().filter(|n| !old.contains(n)).cloned().collect(),
            removed: old.iter().filter(|n| !new.contains(n)).cloned().collect(),
            reloaded: new.iter().filter(|n| old.contains(n)).cloned().collect(),
            subscriptions_removed,
            compiled,
            took: started.elapsed(),
        }
    }

    /// Asks `policy` about every subscription of every session that has a
    /// known client, and removes those it does not allow. Returns how many
    /// were removed. MQTT has no server-side unsubscribe, so the client is
    /// not told; it simply receives nothing more on that filter.
    fn reauthorize(&self, policy: &Policy) -> usize {
        if !policy.authorizes() {
            return 0;
        }
        let mut removed = 0;
        for session in self.sessions.all() {
            let (client, subscriptions) = {
                let state = session.lock();
                let subscriptions: Vec<_> =
                    state.subscriptions.iter().map(|(f, s)| (f.clone(), s.options.qos)).collect();
                (state.client.clone(), subscriptions)
            };
            let Some(client) = client else { continue };
            for (filter, qos) in subscriptions {
                let verdict =
                    crate::plugin::block_on(policy.authorize(&client, Action::Subscribe, filter.as_str(), qos, false));
                if verdict.allowed {
                    continue;
                }
                if session.lock().subscriptions.remove(&filter).is_none() {
                    continue;
                }
                self.router.unsubscribe(&session, &filter);
                self.store.unsubscribed(session.client_id(), &filter);
                removed += 1;
                let (plugin, reason) = match verdict.denial.as_deref() {
                    Some(crate::auth::Denial::Denied { plugin, reason }) => (Some(&**plugin), reason.clone()),
                    Some(crate::auth::Denial::Failed { plugin, failure }) => {
                        (Some(&**plugin), format!("the plugin's call failed: {failure}"))
                    }
                    Some(crate::auth::Denial::Unanswered) | None => (None, "no plugin allowed it".to_owned()),
                };
                info!(
                    client_id = %crate::untrusted::Untrusted(session.client_id()),
                    filter = %crate::untrusted::Untrusted(filter.as_str()),
                    plugin,
                    reason = %crate::untrusted::Untrusted(&reason),
                    "subscription removed: the reloaded policy forbids it"
                );
            }
        }
        removed
    }
}
