//! Broker configuration: TOML in, a validated, immutable [`Config`] out.
//!
//! Unknown keys are errors, and every error names the file, the line and the
//! key, because an operator fixing a typo at 3 a.m. should not have to guess.

use std::path::{Path, PathBuf};

use serde::Deserialize;

mod admin;
mod auth;
mod cluster;
mod limits;
mod listener;
mod log;
mod net;
mod plugins;
mod storage;
#[cfg(test)]
mod tests;

pub use admin::{AdminConfig, Secret, SysConfig};
pub use auth::{AuthConfig, BindSessions};
pub use cluster::{
    ClusterConfig, DEFAULT_NODE_TIMEOUT_S, DEFAULT_REDELIVERY_S, DEFAULT_STORE_TIMEOUT_S, DEFAULT_SUBJECT_PREFIX,
    WireFormat,
};
pub use limits::{DEFAULT_SHARE_HOLD_MS, Limits};
pub use listener::{
    Anonymous, ClientAuth, DEFAULT_WS_PATH, IdentityAsUsername, ListenerConfig, ListenerProtocol, TlsConfig,
};
use listener::{default_listeners, validate_listener};
pub use log::{LogConfig, LogFormat, QUIET_TARGETS, log_filter};
pub use net::IpNet;
pub use plugins::PluginsConfig;
pub use storage::{DurabilityMode, StorageConfig};

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a value has the wrong type or range.
    #[error("{file}:{line}: `{key}`: {message}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line of the offending value (0 when unknown).
        line: usize,
        /// Dotted key path, e.g. `listeners[0].bind`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole broker configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Network listeners; the default is one TCP listener on 127.0.0.1:1883.
    #[serde(default = "default_listeners")]
    pub listeners: Vec<ListenerConfig>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Policy plugins.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// Durable storage (`[storage]`).
    #[serde(default)]
    pub storage: StorageConfig,
    /// The admin HTTP listener (`[admin]`), off unless `listen` is set.
    #[serde(default)]
    pub admin: AdminConfig,
    /// `$SYS` topics (`[sys]`).
    #[serde(default)]
    pub sys: SysConfig,
    /// Clustering over NATS (`[cluster]`); a single node without it.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Login throttling and session ownership (`[auth]`).
    #[serde(default)]
    pub auth: AuthConfig,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listeners: default_listeners(),
            limits: Limits::default(),
            log: LogConfig::default(),
            plugins: PluginsConfig::default(),
            storage: StorageConfig::default(),
            admin: AdminConfig::default(),
            sys: SysConfig::default(),
            cluster: None,
            auth: AuthConfig::default(),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, line and key at fault.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(file).map_err(|source| ConfigError::Read { file: file.to_owned(), source })?;
        Config::parse(&text, file)
    }

    /// Parses and validates configuration text; `file` is used in errors.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the line and key at fault.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let invalid = |line: usize, key: String, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            line,
            key,
            message,
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| invalid(line_of(text, e.span()), String::new(), e.message().to_owned()))?;
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            invalid(line_of(text, inner.span()), key, inner.message().to_owned())
        })?;
        config.validate().map_err(|(key, message)| {
            let line = line_of_key(text, &key);
            invalid(line, key, message)
        })?;
        config.plugins.base_dir = match file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        Ok(config)
    }

    /// Cross-field checks that serde cannot express.
    fn validate(&self) -> Result<(), (String, String)> {
        if self.listeners.is_empty() {
            return Err(("listeners".into(), "at least one listener is needed".into()));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if self.listeners[..i].iter().any(|o| o.name == l.name) {
                return Err((format!("listeners[{i}].name"), format!("duplicate listener name {:?}", l.name)));
            }
        }
        self.plugins.validate_names()?;
        for (i, l) in self.listeners.iter().enumerate() {
            validate_listener(l).map_err(|(key, message)| (format!("listeners[{i}]{key}"), message))?;
        }
        self.limits.validate()?;
        self.plugins.validate_cache()?;
        self.admin.validate()?;
        self.auth.validate()?;
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        self.storage.validate()
    }

    /// Where compiled plugins are kept: nowhere with `[plugins] cache =
    /// false`; else `[plugins] cache_dir`; else `plugin-cache` under
    /// `[storage] dir`; else the user's cache directory
    /// ([`crate::plugin::default_cache_dir`]: `$XDG_CACHE_HOME/moat` or
    /// `~/.cache/moat`); else, with neither variable set, nowhere.
    pub fn plugin_cache_dir(&self) -> Option<PathBuf> {
        if self.plugins.cache == Some(false) {
            return None;
        }
        self.plugins
            .cache_dir
            .clone()
            .or_else(|| Some(self.storage.dir.as_ref()?.join("plugin-cache")))
            .or_else(crate::plugin::default_cache_dir)
    }
}

/// The 1-based line of a byte offset (0 when unknown).
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> usize {
    span.map_or(0, |s| text.as_bytes()[..s.start.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1)
}

/// Best-effort line of the last segment of a dotted key path, for errors
/// found after deserialization. A key under `listeners[i]` is looked for
/// after the i-th `[[listeners]]` header.
fn line_of_key(text: &str, key: &str) -> usize {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    let leaf = leaf.split('[').next().unwrap_or(leaf);
    let skip = key
        .strip_prefix("listeners[")
        .and_then(|rest| rest.split(']').next()?.parse::<usize>().ok())
        .and_then(|i| text.lines().enumerate().filter(|(_, l)| l.trim() == "[[listeners]]").nth(i).map(|(n, _)| n))
        .unwrap_or(0);
    let table_suffix = format!(".{leaf}]");
    text.lines()
        .enumerate()
        .skip(skip)
        .find(|(_, l)| {
            let l = l.trim();
            l.strip_prefix(leaf).is_some_and(|rest| rest.trim_start().starts_with('='))
                || l.trim_start_matches('[').starts_with(leaf)
                || (l.starts_with('[') && l.ends_with(&table_suffix))
        })
        .map_or(0, |(i, _)| i + 1)
}
