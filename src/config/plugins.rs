//! `[plugins]`: the plugin directory, the compile cache, and the shipped
//! plugins a `[plugins.NAME]` table enables.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use crate::plugin::Sidecar;
use crate::plugin::shipped;

/// Where the policy plugins are, and which shipped plugins are enabled.
///
/// ```toml
/// [plugins]
/// dir = "/etc/moat/plugins"
/// watch = true                     # reload when the directory changes
/// cache_dir = "/var/cache/moat"    # compiled plugins (default: see Config::plugin_cache_dir)
/// cache = true                     # false: compile at every start
/// [plugins.password-file]          # enables the shipped plugin of that name
/// order = 10
/// config = { file = "/etc/moat/passwd" }
/// grants = { read = ["/etc/moat"] }
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PluginsConfig {
    /// Directory of `*.wasm` components and their `NAME.toml` sidecars.
    /// Unset: `./plugins` if that directory exists, else no plugins.
    pub dir: Option<PathBuf>,
    /// Whether a change in `dir` reloads the plugins (default true).
    pub watch: Option<bool>,
    /// Where compiled plugins are kept between runs. Unset: see
    /// [`Config::plugin_cache_dir`](super::Config::plugin_cache_dir).
    pub cache_dir: Option<PathBuf>,
    /// `false` keeps no compiled plugins on disk (default true).
    pub cache: Option<bool>,
    /// Shipped plugins enabled by a `[plugins.NAME]` table, with the keys of
    /// a sidecar (order, on_error, config, limits, grants).
    pub shipped: BTreeMap<String, Sidecar>,
    /// The configuration file's directory: relative grants of shipped
    /// plugins are resolved against it.
    pub base_dir: PathBuf,
}

impl PluginsConfig {
    /// Whether the plugin directory is watched.
    pub fn watch(&self) -> bool {
        self.watch.unwrap_or(true)
    }

    /// Every `[plugins.NAME]` names a shipped plugin.
    pub(super) fn validate_names(&self) -> Result<(), (String, String)> {
        for name in self.shipped.keys() {
            if shipped::find(name).is_none() {
                return Err((
                    format!("plugins.{name}"),
                    format!("no shipped plugin is called {name:?}; shipped plugins: {}", shipped::names()),
                ));
            }
        }
        Ok(())
    }

    /// `cache_dir` is usable and does not contradict `cache`.
    pub(super) fn validate_cache(&self) -> Result<(), (String, String)> {
        if self.cache_dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err(("plugins.cache_dir".into(), "must not be empty".into()));
        }
        if self.cache == Some(false) && self.cache_dir.is_some() {
            return Err(("plugins.cache_dir".into(), "set while `plugins.cache = false`: remove one".into()));
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for PluginsConfig {
    /// `dir`, `watch`, and any other key as a shipped plugin's table; a
    /// hand-written map visitor (not `#[serde(flatten)]`) keeps the TOML
    /// positions, so errors inside a plugin's table still name their line.
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<PluginsConfig, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PluginsConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a table with `dir`, `watch`, `cache_dir`, `cache` and `[plugins.NAME]` tables of shipped plugins",
                )
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<PluginsConfig, A::Error> {
                let mut config = PluginsConfig::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "dir" => config.dir = Some(map.next_value()?),
                        "watch" => config.watch = Some(map.next_value()?),
                        "cache_dir" => config.cache_dir = Some(map.next_value()?),
                        "cache" => config.cache = Some(map.next_value()?),
                        _ => {
                            let table: Sidecar = map.next_value()?;
                            config.shipped.insert(key, table);
                        }
                    }
                }
                Ok(config)
            }
        }
        de.deserialize_map(Visitor)
    }
}
