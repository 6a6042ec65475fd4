//! Configuration reload: validate the new file whole, apply what can change
//! at run time, name what needs a restart, then reload the plugins.

use std::path::Path;
use std::sync::Arc;

use tracing::{info, warn};

use super::{PluginReport, Reloader, plugin_dir};
use crate::config::{Config, ConfigError, ListenerConfig, TlsConfig};
use crate::rate::TokenBucket;
use crate::transport::{ServerConfigs, TlsAcceptor};

/// Where the running configuration came from, so a reload can read it
/// again (the binary applies its command-line overrides here too).
pub trait ConfigSource: Send + Sync {
    /// Reads and validates the configuration.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, line and key at fault.
    fn load(&self) -> Result<Config, ConfigError>;

    /// The file to watch for changes, if there is one.
    fn path(&self) -> Option<&Path>;
}

/// A configuration reload that was refused as a whole; the running
/// configuration stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration reload refused: {0}")]
pub struct ReloadRefused(pub String);

/// What a configuration reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigReport {
    /// Settings now in force that differ from before (`key = value`).
    pub applied: Vec<String>,
    /// TLS listeners whose certificates, keys, CAs and CRLs were read again.
    pub tls_reloaded: Vec<String>,
    /// Settings that changed in the file but take effect only after a
    /// restart; the running value stays.
    pub needs_restart: Vec<String>,
    /// The plugin reload that followed.
    pub plugins: PluginReport,
}

/// What a reload finds in the listeners: the changes that need a restart,
/// and the TLS files of the listeners that stay, already loaded.
struct ListenerChanges {
    needs_restart: Vec<String>,
    tls: Vec<(String, ServerConfigs)>,
}

/// Appends `section.field = new` for each listed field that differs.
macro_rules! changed_fields {
    ($out:expr, $section:literal, $old:expr, $new:expr, [$($field:ident),* $(,)?]) => {
        $(
            if $old.$field != $new.$field {
                $out.push(format!("{}.{} = {:?}", $section, stringify!($field), $new.$field));
            }
        )*
    };
}

impl Reloader {
    /// Reads the configuration again from its source (the file given at
    /// start-up) and applies it with [`Reloader::reload_config`]; without a
    /// source, applies the running configuration again, which reads the
    /// certificate files and the plugin directory anew. This is what
    /// SIGHUP does.
    ///
    /// # Errors
    /// [`ReloadRefused`] when the file is invalid or a certificate does not
    /// load; nothing changed then.
    pub async fn reload(self: &Arc<Self>) -> Result<ConfigReport, ReloadRefused> {
        let source = self.handles.lock().source.clone();
        let config = match source {
            Some(source) => source.load().map_err(|e| self.refuse(e.to_string()))?,
            None => (*self.broker.config()).clone(),
        };
        self.reload_config(config).await
    }

    /// Applies `new` as far as it can change at run time: limits, the log
    /// filter, the plugin directory, and every TLS listener's files (read
    /// again even when their names did not change, for rotated
    /// certificates). Listener addresses, protocols, anonymous access,
    /// client-certificate policy, the log format and storage need a
    /// restart: they are reported and keep their running values. Then the
    /// plugins are reloaded; a refused plugin set does not undo the rest.
    ///
    /// # Errors
    /// [`ReloadRefused`] when the log filter is invalid or a TLS listener's
    /// files do not load; nothing changed then.
    pub async fn reload_config(self: &Arc<Self>, new: Config) -> Result<ConfigReport, ReloadRefused> {
        let _one_at_a_time = self.running.lock().await;
        let old = self.broker.config();
        if let Some(level) = &new.log.level {
            tracing_subscriber::EnvFilter::try_new(level)
                .map_err(|e| self.refuse(format!("`log.level`: invalid filter {level:?}: {e}")))?;
        }
        let ListenerChanges { mut needs_restart, tls } = self.listener_changes(&old, &new)?;
        needs_restart.extend(restart_only_sections(&old, &new));
        // Everything is valid: apply.
        let applied = applied_changes(&old, &new);
        let tls_reloaded = self.apply_handles(&old, &new, tls);
        let dir = plugin_dir(&new);
        self.dir.send_if_modified(|current| {
            let changed = *current != dir;
            current.clone_from(&dir);
            changed
        });
        self.broker.set_config(effective(&old, new));
        let plugins = self.reload_plugins_locked().await;
        let report = ConfigReport { applied, tls_reloaded, needs_restart, plugins };
        info!(
            applied = ?report.applied,
            tls_reloaded = ?report.tls_reloaded,
            plugins_swapped = report.plugins.swapped(),
            "configuration reloaded"
        );
        if !report.needs_restart.is_empty() {
            warn!(settings = ?report.needs_restart, "configuration changes that need a restart were not applied");
        }
        Ok(report)
    }

    /// What changes in the listeners need a restart (added, removed, and
    /// the settings only a restart changes), and the TLS files of the
    /// listeners that stay, loaded now so a bad file refuses the reload
    /// before anything changed.
    fn listener_changes(&self, old: &Config, new: &Config) -> Result<ListenerChanges, ReloadRefused> {
        let mut needs_restart = Vec::new();
        let mut tls = Vec::new();
        for listener in &old.listeners {
            match new.listeners.iter().find(|l| l.name == listener.name) {
                None => needs_restart.push(format!("listener {:?} removed", listener.name)),
                Some(next) => {
                    needs_restart.extend(restart_only(listener, next));
                    if let (Some(files), true) = (&next.tls, same_tls_policy(&listener.tls, &next.tls)) {
                        let configs = ServerConfigs::load(&next.name, next.protocol, files)
                            .map_err(|e| self.refuse(e.to_string()))?;
                        tls.push((next.name.clone(), configs));
                    }
                }
            }
        }
        for listener in &new.listeners {
            if !old.listeners.iter().any(|l| l.name == listener.name) {
                needs_restart.push(format!("listener {:?} added", listener.name));
            }
        }
        Ok(ListenerChanges { needs_restart, tls })
    }

    /// Logs and builds a refusal.
    fn refuse(&self, reason: String) -> ReloadRefused {
        warn!(reason, "configuration reload refused; the running configuration stays");
        ReloadRefused(reason)
    }

    /// Replaces TLS acceptors, resizes the connection permits and sets the
    /// log filter. Returns the listeners whose TLS files were reloaded.
    /// The client ids of the connections on `listener` whose certificate
    /// the CRLs of `configs` revoke.
    fn revoked_connections(&self, listener: &str, configs: &ServerConfigs) -> Vec<String> {
        let mut revoked = Vec::new();
        for session in self.broker.sessions.all() {
            let state = session.lock();
            let Some(client) = state.client.as_ref().filter(|_| state.online) else { continue };
            if *client.listener == *listener && client.tls.as_ref().is_some_and(|id| configs.revokes(&id.revocation)) {
                revoked.push(client.client_id.to_string());
            }
        }
        revoked
    }

    fn apply_handles(&self, old: &Config, new: &Config, tls: Vec<(String, ServerConfigs)>) -> Vec<String> {
        let mut handles = self.handles.lock();
        let mut reloaded = Vec::new();
        for (name, configs) in tls {
            let acceptor: Option<&Arc<TlsAcceptor>> = handles.tls.iter().find(|(n, _)| *n == name).map(|(_, a)| a);
            if let Some(acceptor) = acceptor {
                let revoked = self.revoked_connections(&name, &configs);
                // New handshakes see the new CRLs before the revoked
                // clients are let go, so they cannot come straight back.
                acceptor.replace(configs);
                for client_id in revoked {
                    if self.broker.kick(&client_id) {
                        info!(
                            client_id = %crate::untrusted::Untrusted(&client_id),
                            listener = name,
                            "client disconnected: a reloaded CRL revokes its certificate"
                        );
                    }
                }
                reloaded.push(name);
            }
        }
        if let Some((permits, count)) = &mut handles.permits {
            let wanted = new.limits.max_connections;
            if wanted > *count {
                permits.add_permits(wanted - *count);
                let limits = crate::open_files::OpenFiles::current();
                let needed = crate::open_files::needed(new);
                if !limits.allows(needed) {
                    warn!(
                        limit = limits.soft,
                        needed,
                        max_connections = wanted,
                        "the open file limit is below limits.max_connections plus what the broker needs \
                         besides connections: clients beyond it are not accepted"
                    );
                }
            } else if wanted < *count {
                // Permits held by open connections come back one by one;
                // take the surplus as they do, so no connection is closed.
                let surplus = u32::try_from(*count - wanted).unwrap_or(u32::MAX);
                let permits = permits.clone();
                tokio::spawn(async move {
                    if let Ok(taken) = permits.acquire_many_owned(surplus).await {
                        taken.forget();
                    }
                });
            }
            *count = wanted;
        }
        if let Some(rate) = &handles.connection_rate {
            TokenBucket::follow(&mut rate.lock(), new.limits.max_connection_rate, std::time::Instant::now());
        }
        if old.log.level != new.log.level
            && let Some(set) = &handles.log_filter
        {
            let level = new.log.level.clone().unwrap_or_else(|| "info".to_owned());
            if let Err(e) = set(&level) {
                warn!(error = e, "the log filter was not changed");
            }
        }
        reloaded
    }
}

/// The sections outside the listeners that changed and need a restart.
fn restart_only_sections(old: &Config, new: &Config) -> Vec<String> {
    let mut needs_restart = Vec::new();
    if old.log.format != new.log.format {
        needs_restart.push(format!("log.format = {:?}", new.log.format));
    }
    if old.storage != new.storage {
        needs_restart.push("storage".to_owned());
    }
    if old.plugins.cache_dir != new.plugins.cache_dir {
        needs_restart.push("plugins.cache_dir".to_owned());
    }
    if old.plugins.cache != new.plugins.cache {
        needs_restart.push("plugins.cache".to_owned());
    }
    if old.admin != new.admin {
        needs_restart.push("admin".to_owned());
    }
    if old.sys != new.sys {
        needs_restart.push("sys".to_owned());
    }
    if old.cluster != new.cluster {
        needs_restart.push("cluster".to_owned());
    }
    needs_restart
}

/// The settings a reload applies that differ, as `key = value` (shipped
/// plugins by name only: a plugin's table may hold secrets, a JWT key).
fn applied_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut applied = Vec::new();
    changed_fields!(
        applied,
        "limits",
        old.limits,
        new.limits,
        [
            max_connections,
            max_connection_rate,
            max_packet_size,
            max_inflight,
            max_queued_messages,
            max_queued_bytes,
            queue_full_wait_ms,
            max_retained_messages,
            max_retained_bytes,
            max_topic_levels,
            max_topic_length,
            max_subscriptions_per_client,
            max_user_properties,
            max_publish_rate,
            connect_timeout_ms,
            max_keepalive_s,
            max_session_expiry_s,
            topic_alias_maximum,
            shutdown_grace_ms,
        ]
    );
    changed_fields!(applied, "log", old.log, new.log, [level]);
    changed_fields!(
        applied,
        "auth",
        old.auth,
        new.auth,
        [failed_login_burst, failed_logins_per_minute, logins_per_address, throttle_loopback, bind_sessions]
    );
    changed_fields!(applied, "plugins", old.plugins, new.plugins, [dir, watch]);
    // Names only: a plugin's table may hold secrets (a JWT key).
    for (name, table) in &new.plugins.shipped {
        match old.plugins.shipped.get(name) {
            None => applied.push(format!("plugins.{name} added")),
            Some(before) if before != table => applied.push(format!("plugins.{name} changed")),
            Some(_) => {}
        }
    }
    for name in old.plugins.shipped.keys().filter(|n| !new.plugins.shipped.contains_key(*n)) {
        applied.push(format!("plugins.{name} removed"));
    }
    applied
}

/// `new` with the running values of what only a restart changes.
fn effective(old: &Config, new: Config) -> Config {
    let effective = Config {
        listeners: old.listeners.clone(),
        storage: old.storage.clone(),
        admin: old.admin.clone(),
        sys: old.sys.clone(),
        cluster: old.cluster.clone(),
        ..new
    };
    let effective = Config { log: crate::config::LogConfig { format: old.log.format, ..effective.log }, ..effective };
    Config {
        plugins: crate::config::PluginsConfig {
            cache_dir: old.plugins.cache_dir.clone(),
            cache: old.plugins.cache,
            ..effective.plugins
        },
        ..effective
    }
}

/// The settings of a listener that only a restart changes, where `new`
/// differs from `old`.
fn restart_only(old: &ListenerConfig, new: &ListenerConfig) -> Vec<String> {
    let mut out = Vec::new();
    let name = &old.name;
    if old.bind != new.bind {
        out.push(format!("listener {name:?}: bind = {}", new.bind));
    }
    if old.protocol != new.protocol {
        out.push(format!("listener {name:?}: protocol = {:?}", new.protocol));
    }
    if old.allow_anonymous != new.allow_anonymous {
        out.push(format!("listener {name:?}: allow_anonymous = {:?}", new.allow_anonymous));
    }
    if old.trust_claimed_username != new.trust_claimed_username {
        out.push(format!("listener {name:?}: trust_claimed_username = {}", new.trust_claimed_username));
    }
    if old.max_connections != new.max_connections {
        out.push(format!("listener {name:?}: max_connections = {:?}", new.max_connections));
    }
    if old.max_connection_rate != new.max_connection_rate {
        out.push(format!("listener {name:?}: max_connection_rate = {}", new.max_connection_rate));
    }
    if old.ws_path != new.ws_path {
        out.push(format!("listener {name:?}: ws_path = {:?}", new.ws_path));
    }
    if !same_tls_policy(&old.tls, &new.tls) {
        out.push(format!("listener {name:?}: tls client_auth / use_identity_as_username / presence of the table"));
    }
    out
}

/// Whether two TLS tables differ at most in their files, which an acceptor
/// can take at run time; the client-certificate policy is also read by the
/// connection code and needs a restart.
fn same_tls_policy(old: &Option<TlsConfig>, new: &Option<TlsConfig>) -> bool {
    match (old, new) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.client_auth == b.client_auth && a.use_identity_as_username == b.use_identity_as_username
        }
        _ => false,
    }
}
