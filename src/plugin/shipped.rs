//! The policy plugins shipped inside the broker binary.
//!
//! `build.rs` builds the crates listed in its `SHIPPED` table from
//! `plugins/` for `wasm32-wasip2` and embeds each component with its
//! defaults (`plugins/NAME/shipped.toml`, in sidecar format). None runs
//! unless the broker config enables it with a `[plugins.NAME]` table, whose
//! keys are a sidecar's and override those defaults. Built without the
//! `shipped-plugins` feature, the binary ships none.
//!
//! The config keys of a shipped plugin that name files ([`FILE_KEYS`]) are
//! resolved like its grants: a relative path against the broker config's
//! directory, and every path to where the plugin will see it (its
//! directory's canonical path, as grants are), then checked to lie in a
//! granted directory, so a plugin never starts unable to read its file.

use std::path::{Path, PathBuf};

use super::{PluginSettings, Sidecar};

/// The keys of each shipped plugin's `config` that name files it reads.
/// `keys[].pem_file` is the `pem_file` of every table in the list `keys`.
pub const FILE_KEYS: &[(&str, &[&str])] = &[
    ("password-file", &["file"]),
    ("acl", &["acl_file"]),
    ("rbac", &["file"]),
    ("cert-identity", &[]),
    ("jwt", &["keys[].pem_file", "keys[].jwks_file"]),
    ("scram", &["file"]),
];

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

/// Why this binary ships no plugin, when it ships none: built without the
/// `shipped-plugins` feature, or without the wasm32-wasip2 target.
pub const ABSENT: &str = include!(concat!(env!("OUT_DIR"), "/shipped_absent.rs"));

/// The names of the shipped plugins, for messages: `a, b, c`.
pub fn names() -> String {
    let names: Vec<&str> = all().iter().map(|s| s.name).collect();
    if names.is_empty() { format!("none ({ABSENT})") } else { names.join(", ") }
}

impl Shipped {
    /// The plugin's settings: the operator's table over the plugin's own
    /// defaults, with relative grants and files ([`FILE_KEYS`]) resolved
    /// against `base` (the broker config file's directory).
    ///
    /// # Errors
    /// A message naming the key at fault (a limit out of range, a granted
    /// directory that does not exist, a file outside every granted
    /// directory, saying which grant to add).
    pub fn settings(&self, table: &Sidecar, base: &Path) -> Result<PluginSettings, String> {
        let defaults: Sidecar =
            toml::from_str(self.defaults).map_err(|e| format!("the shipped defaults are invalid: {e}"))?;
        let mut sidecar = table.clone().over(defaults);
        let files = match &mut sidecar.config {
            Some(config) => resolve_files(self.file_keys(), config, base)?,
            None => Vec::new(),
        };
        let mut settings = PluginSettings::from_sidecar(sidecar)?;
        settings.grants.resolve(base)?;
        for (key, path) in &files {
            readable(key, path, &settings.grants.read)?;
        }
        Ok(settings)
    }

    /// The keys of its `config` that name files ([`FILE_KEYS`]).
    pub fn file_keys(&self) -> &'static [&'static str] {
        FILE_KEYS.iter().find(|(name, _)| *name == self.name).map_or(&[], |(_, keys)| keys)
    }
}

/// Rewrites every path `config` holds under `keys` to where the plugin
/// will find it: against `base` when relative, in its directory's
/// canonical form when that exists (grants are canonical, and a guest sees
/// only paths under them). Returns each `(key, path)` found.
fn resolve_files(keys: &[&str], config: &mut toml::Table, base: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let mut found = Vec::new();
    let mut at = |name: String, value: &mut toml::Value| -> Result<(), String> {
        let toml::Value::String(text) = value else { return Ok(()) };
        let path = plugin_path(base, Path::new(text.as_str()));
        let Some(utf8) = path.to_str() else {
            return Err(format!("config.{name}: {} is not valid UTF-8", path.display()));
        };
        *text = utf8.to_owned();
        found.push((name, path));
        Ok(())
    };
    for key in keys {
        match key.split_once("[].") {
            None => {
                if let Some(value) = config.get_mut(*key) {
                    at((*key).to_owned(), value)?;
                }
            }
            Some((list, field)) => {
                let Some(toml::Value::Array(items)) = config.get_mut(list) else { continue };
                for (i, item) in items.iter_mut().enumerate() {
                    if let Some(value) = item.as_table_mut().and_then(|t| t.get_mut(field)) {
                        at(format!("{list}[{i}].{field}"), value)?;
                    }
                }
            }
        }
    }
    Ok(found)
}

/// `path` made absolute against `base`, with its directory canonical when
/// it exists.
fn plugin_path(base: &Path, path: &Path) -> PathBuf {
    let joined = base.join(path);
    match (joined.parent().and_then(|dir| dir.canonicalize().ok()), joined.file_name()) {
        (Some(dir), Some(name)) => dir.join(name),
        _ => std::path::absolute(&joined).unwrap_or(joined),
    }
}

/// Checks that the file at `path` lies in one of the `granted` directories,
/// else says what to write.
fn readable(key: &str, path: &Path, granted: &[PathBuf]) -> Result<(), String> {
    if granted.iter().any(|dir| path.starts_with(dir)) {
        return Ok(());
    }
    let Some(dir) = path.parent().filter(|d| d.is_dir()) else {
        let dir = path.parent().unwrap_or(path);
        return Err(format!("config.{key}: {}: the directory {} does not exist", path.display(), dir.display()));
    };
    let shown = if granted.is_empty() {
        "none".to_owned()
    } else {
        granted.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    };
    Err(format!(
        "config.{key}: {} is outside the directories the plugin may read (grants.read: {shown}); \
         grant its directory: grants.read = [\"{}\"]",
        path.display(),
        dir.display()
    ))
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

    #[test]
    fn every_shipped_plugin_says_which_keys_name_files() {
        for shipped in all() {
            assert!(FILE_KEYS.iter().any(|(name, _)| *name == shipped.name), "{} is not in FILE_KEYS", shipped.name);
        }
    }

    fn table(text: &str) -> Sidecar {
        toml::from_str(text).expect("table")
    }

    /// The config value at `pointer` as the plugin receives it.
    fn config_value(settings: &PluginSettings, pointer: &str) -> String {
        let json: serde_json::Value = serde_json::from_str(&settings.config_json).expect("JSON");
        json.pointer(pointer).and_then(|v| v.as_str()).expect("a string").to_owned()
    }

    #[test]
    fn relative_files_resolve_against_the_config_like_grants() {
        let base = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(base.path().join("auth")).expect("mkdir");
        let canonical = base.path().canonicalize().expect("canonical").join("auth");
        let shipped = Shipped { name: "jwt", wasm: &[], defaults: "" };
        let t = table(
            "[config]\nkeys = [{ alg = \"RS256\", pem_file = \"auth/key.pem\" }, { jwks_file = \"./auth/../auth/k.json\" }]\n\
             [grants]\nread = [\"auth\"]\n",
        );
        let settings = shipped.settings(&t, base.path()).expect("settings");
        assert_eq!(config_value(&settings, "/keys/0/pem_file"), canonical.join("key.pem").to_str().expect("utf-8"));
        assert_eq!(config_value(&settings, "/keys/1/jwks_file"), canonical.join("k.json").to_str().expect("utf-8"));
        assert_eq!(settings.grants.read, std::slice::from_ref(&canonical));

        let shipped = Shipped { name: "password-file", wasm: &[], defaults: "" };
        let absolute = format!("[config]\nfile = {:?}\n[grants]\nread = [\"auth\"]\n", canonical.join("passwd"));
        let settings = shipped.settings(&table(&absolute), base.path()).expect("an absolute path stays");
        assert_eq!(config_value(&settings, "/file"), canonical.join("passwd").to_str().expect("utf-8"));
    }

    #[test]
    fn a_file_outside_every_grant_is_refused_saying_what_to_write() {
        let base = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(base.path().join("auth")).expect("mkdir");
        let shipped = Shipped { name: "password-file", wasm: &[], defaults: "" };
        let err = shipped.settings(&table("[config]\nfile = \"auth/passwd\"\n"), base.path()).expect_err("no grant");
        let dir = base.path().canonicalize().expect("canonical").join("auth");
        assert!(err.starts_with("config.file: "), "{err}");
        assert!(err.contains(&format!("grants.read = [\"{}\"]", dir.display())), "{err}");
        let err = shipped
            .settings(&table("[config]\nfile = \"missing/passwd\"\n"), base.path())
            .expect_err("no such directory");
        assert!(err.contains("missing") && err.contains("does not exist"), "{err}");
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
