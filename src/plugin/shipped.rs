//! The policy plugins shipped inside the broker binary.
//!
//! `build.rs` builds the crates listed in its `SHIPPED` table from
//! `plugins/` for `wasm32-wasip2` and embeds each component with its
//! defaults (`plugins/NAME/shipped.toml`, in sidecar format). None runs
//! unless the broker config enables it with a `[plugins.NAME]` table, whose
//! keys are a sidecar's and override those defaults. Built without the
//! `shipped-plugins` feature, the binary ships none.

use std::path::Path;

use super::{PluginSettings, Sidecar};

/// One embedded plugin.
#[derive(Debug)]
pub struct Shipped {
    /// The name that enables it: `[plugins.NAME]`.
    pub name: &'static str,
    /// The component.
    pub wasm: &'static [u8],
    /// Its defaults, in sidecar format (e.g. the limits a slow password hash
    /// needs).
    pub defaults: &'static str,
}

/// Every shipped plugin, by name.
pub fn all() -> &'static [Shipped] {
    include!(concat!(env!("OUT_DIR"), "/shipped_plugins.rs"))
}

/// The shipped plugin called `name`.
pub fn find(name: &str) -> Option<&'static Shipped> {
    all().iter().find(|s| s.name == name)
}

/// The names of the shipped plugins, for messages: `a, b, c`.
pub fn names() -> String {
    let names: Vec<&str> = all().iter().map(|s| s.name).collect();
    if names.is_empty() { "none (built without the `shipped-plugins` feature)".to_owned() } else { names.join(", ") }
}

impl Shipped {
    /// The plugin's settings: the operator's table over the plugin's own
    /// defaults, with relative grants resolved against `base` (the broker
    /// config file's directory).
    ///
    /// # Errors
    /// A message naming the key at fault (a limit out of range, a granted
    /// directory that does not exist).
    pub fn settings(&self, table: &Sidecar, base: &Path) -> Result<PluginSettings, String> {
        let defaults: Sidecar =
            toml::from_str(self.defaults).map_err(|e| format!("the shipped defaults are invalid: {e}"))?;
        let mut settings = PluginSettings::from_sidecar(table.clone().over(defaults))?;
        settings.grants.resolve(base)?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_defaults_parse() {
        for shipped in all() {
            let settings = shipped.settings(&Sidecar::default(), Path::new(".")).expect("valid defaults");
            assert_eq!(settings.config_json, "{}", "{}: defaults carry no config", shipped.name);
        }
    }

    #[cfg(feature = "shipped-plugins")]
    #[test]
    fn password_file_defaults_give_room_for_argon2() {
        let password_file = find("password-file").expect("password-file is shipped");
        let defaults = password_file.settings(&Sidecar::default(), Path::new(".")).expect("defaults");
        assert_eq!(defaults.limits.memory_bytes, 64 << 20);
        let table: Sidecar = toml::from_str("order = 3\n[limits]\ninstances = 2\n").expect("table");
        let settings = password_file.settings(&table, Path::new(".")).expect("settings");
        assert_eq!((settings.order, settings.limits.instances), (3, Some(2)));
        assert_eq!(settings.limits.memory_bytes, 64 << 20, "unset limits keep the shipped defaults");
        assert!(names().contains("password-file"));
    }
}
