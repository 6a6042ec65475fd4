//! Per-plugin settings: the optional sidecar `NAME.toml` beside `NAME.wasm`.
//!
//! ```toml
//! order = 10                 # lower runs first; ties break on file name
//! on_error = "pass"          # transform failures: "drop" (default) or "pass"
//! [config]                   # any table; handed to the plugin's init as JSON
//! users = ["alice"]
//! [limits]
//! memory_mb = 32
//! timeout_ms = 10
//! instances = 4             # default: as many as 32 MiB of instances hold, 1 to 4
//! max_answer_bytes = 65536
//! exchanges = 64             # MQTT 5 AUTH exchanges holding an instance at once
//! [output]                   # what the guest prints (stdout, stderr, host.log)
//! level = "info"             # "off" | "error" | "warn" | "info" | "debug" | "trace"
//! lines_per_s = 20
//! bytes_per_s = 8192
//! [grants]
//! read = ["/etc/moat/auth"]  # directories the plugin may read
//! ```
//!
//! A plugin sees no files unless its operator grants a directory: each one
//! in `grants.read` is preopened read-only and appears inside the guest at
//! the same absolute path, so a plugin reads `/etc/moat/auth/passwd` with
//! plain `std::fs`. Relative grants are resolved against the sidecar's
//! directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::LoadError;
use super::output::{OutputLevel, OutputSettings};

/// What happens to a publish when its transform plugin fails (trap,
/// timeout, out of memory, oversized or malformed answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Discard the message: a broken transform must not leak untransformed
    /// data (the default).
    #[default]
    Drop,
    /// Route the message unchanged.
    Pass,
}

/// Resource limits of one plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Cap on each instance's linear memory.
    pub memory_bytes: usize,
    /// Deadline of one call, enforced with epochs.
    pub timeout: Duration,
    /// Warm instances kept for concurrent calls; `None` sizes the pool from
    /// the plugin's memory (see [`Limits::warm_instances`]). A call that
    /// finds none idle gets a fresh instance (never waits); instances beyond
    /// this number are
    /// dropped after their call.
    pub instances: Option<usize>,
    /// Largest answer accepted from one call (strings, lists and messages
    /// summed); a larger one counts as a failure.
    pub max_answer_bytes: usize,
    /// MQTT 5 enhanced-authentication exchanges that may each hold an
    /// instance between their steps at once; beyond it a new exchange is
    /// refused (CONNACK 0x97), not queued.
    pub exchanges: usize,
}

/// Linear memory the warm instances of a plugin whose `instances` is not
/// set may hold together: a few instances of a small plugin, one or two of
/// a CPython one (about 13 MiB each).
const WARM_MEMORY: usize = 32 << 20;

/// Most warm instances of a plugin whose `instances` is not set: enough for
/// the calls that run at once on a small machine.
const MAX_WARM: usize = 4;

impl Limits {
    /// How many instances to keep warm: `instances` when set, else as many
    /// instances of `instance_bytes` (one instance's memory after `init`)
    /// as `WARM_MEMORY` holds, at least one and at most `MAX_WARM`.
    pub fn warm_instances(&self, instance_bytes: usize) -> usize {
        self.instances.unwrap_or_else(|| (WARM_MEMORY / instance_bytes.max(1)).clamp(1, MAX_WARM))
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_bytes: 32 << 20,
            timeout: Duration::from_millis(10),
            instances: None,
            max_answer_bytes: 64 << 10,
            exchanges: 64,
        }
    }
}

/// Everything the host needs to know about a plugin besides its code.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSettings {
    /// Position in the chain: lower runs first.
    pub order: i64,
    /// The `config` table, as the JSON text handed to `init`.
    pub config_json: String,
    /// Resource limits.
    pub limits: Limits,
    /// Transform failure policy.
    pub on_error: OnError,
    /// What the plugin may reach outside its sandbox.
    pub grants: Grants,
    /// How its output reaches the log.
    pub output: OutputSettings,
}

impl Default for PluginSettings {
    fn default() -> PluginSettings {
        PluginSettings {
            order: 0,
            config_json: "{}".into(),
            limits: Limits::default(),
            on_error: OnError::Drop,
            grants: Grants::default(),
            output: OutputSettings::default(),
        }
    }
}

/// Capabilities an operator granted one plugin; none by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Directories the plugin may read (not write), each visible inside the
    /// guest at the same absolute path.
    #[serde(default)]
    pub read: Vec<PathBuf>,
}

impl Grants {
    /// Makes relative grants absolute against `base` and checks that each
    /// names an existing directory, so a typo stops the load instead of
    /// surfacing as a plugin that cannot find its file.
    ///
    /// # Errors
    /// A message naming the grant that is not a readable directory.
    pub fn resolve(&mut self, base: &Path) -> Result<(), String> {
        for dir in &mut self.read {
            let joined = base.join(&*dir);
            let canonical = joined.canonicalize().map_err(|e| format!("grants.read: {}: {e}", joined.display()))?;
            if !canonical.is_dir() {
                return Err(format!("grants.read: {} is not a directory", joined.display()));
            }
            if canonical.to_str().is_none() {
                return Err(format!("grants.read: {} is not valid UTF-8", joined.display()));
            }
            *dir = canonical;
        }
        Ok(())
    }
}

/// A sidecar file as written (also a shipped plugin's `[plugins.NAME]`
/// table in the broker config); every field optional, unknown ones refused.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    /// Chain position.
    pub order: Option<i64>,
    /// Transform failure policy.
    pub on_error: Option<OnError>,
    /// The table handed to `init` as JSON.
    pub config: Option<toml::Table>,
    /// Resource limits, each optional.
    pub limits: Option<SidecarLimits>,
    /// Capabilities granted.
    pub grants: Option<Grants>,
    /// How its output reaches the log.
    pub output: Option<SidecarOutput>,
}

/// The `[output]` table of a sidecar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarOutput {
    /// The level output is logged at.
    pub level: Option<OutputLevel>,
    /// Most lines logged per second.
    pub lines_per_s: Option<u32>,
    /// Most bytes logged per second.
    pub bytes_per_s: Option<u32>,
}

/// The `[limits]` table of a sidecar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarLimits {
    /// Linear memory cap in MiB.
    pub memory_mb: Option<u32>,
    /// Per-call deadline in milliseconds.
    pub timeout_ms: Option<u32>,
    /// Warm instances.
    pub instances: Option<u32>,
    /// Largest answer in bytes.
    pub max_answer_bytes: Option<u32>,
    /// Enhanced-authentication exchanges holding an instance at once.
    pub exchanges: Option<u32>,
}

impl Sidecar {
    /// `self` with every key it leaves unset taken from `defaults` (limits
    /// key by key): how a shipped plugin's own defaults meet the operator's
    /// table.
    pub fn over(self, defaults: Sidecar) -> Sidecar {
        let limits = match (self.limits, defaults.limits) {
            (Some(l), Some(d)) => Some(SidecarLimits {
                memory_mb: l.memory_mb.or(d.memory_mb),
                timeout_ms: l.timeout_ms.or(d.timeout_ms),
                instances: l.instances.or(d.instances),
                max_answer_bytes: l.max_answer_bytes.or(d.max_answer_bytes),
                exchanges: l.exchanges.or(d.exchanges),
            }),
            (l, d) => l.or(d),
        };
        let output = match (self.output, defaults.output) {
            (Some(o), Some(d)) => Some(SidecarOutput {
                level: o.level.or(d.level),
                lines_per_s: o.lines_per_s.or(d.lines_per_s),
                bytes_per_s: o.bytes_per_s.or(d.bytes_per_s),
            }),
            (o, d) => o.or(d),
        };
        Sidecar {
            order: self.order.or(defaults.order),
            on_error: self.on_error.or(defaults.on_error),
            config: self.config.or(defaults.config),
            limits,
            grants: self.grants.or(defaults.grants),
            output,
        }
    }
}

impl PluginSettings {
    /// Reads the sidecar beside `wasm` (same stem, `.toml`), or the defaults
    /// when there is none.
    ///
    /// # Errors
    /// [`LoadError::Sidecar`] naming the file (and the line, for syntax and
    /// type errors) when it cannot be read or is invalid.
    pub fn for_component(wasm: &Path) -> Result<PluginSettings, LoadError> {
        let sidecar = wasm.with_extension("toml");
        match PluginSettings::from_file(&sidecar) {
            Err(LoadError::Sidecar { .. }) if !sidecar.exists() => Ok(PluginSettings::default()),
            other => other,
        }
    }

    /// Reads a sidecar file (a plugin's settings kept elsewhere, as
    /// `moat plugin check --config` does), resolving relative grants against
    /// its directory.
    ///
    /// # Errors
    /// [`LoadError::Sidecar`] naming the file (and the line, for syntax and
    /// type errors) when it cannot be read or is invalid.
    pub fn from_file(sidecar: &Path) -> Result<PluginSettings, LoadError> {
        let text = std::fs::read_to_string(sidecar)
            .map_err(|e| LoadError::Sidecar { path: sidecar.to_owned(), message: e.to_string() })?;
        let base = sidecar.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut settings =
            PluginSettings::parse(&text).map_err(|message| LoadError::Sidecar { path: sidecar.to_owned(), message })?;
        settings.grants.resolve(base).map_err(|message| LoadError::Sidecar { path: sidecar.to_owned(), message })?;
        Ok(settings)
    }

    /// Parses sidecar text. The error is a message for the operator; the
    /// caller adds the file name.
    pub fn parse(text: &str) -> Result<PluginSettings, String> {
        let sidecar: Sidecar = toml::from_str(text).map_err(|e| e.to_string())?;
        PluginSettings::from_sidecar(sidecar)
    }

    /// The settings a parsed sidecar describes, with the defaults for what
    /// it leaves out. Grants are not resolved yet (see [`Grants::resolve`]).
    ///
    /// # Errors
    /// A message naming the key whose value is out of range.
    pub fn from_sidecar(sidecar: Sidecar) -> Result<PluginSettings, String> {
        let defaults = Limits::default();
        let limits = sidecar.limits.unwrap_or_default();
        let limits = Limits {
            memory_bytes: match limits.memory_mb {
                Some(mb) => positive("limits.memory_mb", mb)? << 20,
                None => defaults.memory_bytes,
            },
            timeout: match limits.timeout_ms {
                Some(ms) => {
                    positive("limits.timeout_ms", ms)?;
                    Duration::from_millis(u64::from(ms))
                }
                None => defaults.timeout,
            },
            instances: match limits.instances {
                Some(n) => Some(positive("limits.instances", n)?),
                None => defaults.instances,
            },
            max_answer_bytes: match limits.max_answer_bytes {
                Some(n) => positive("limits.max_answer_bytes", n)?,
                None => defaults.max_answer_bytes,
            },
            exchanges: match limits.exchanges {
                Some(n) => usize::try_from(n).map_err(|_| "limits.exchanges is too large".to_owned())?,
                None => defaults.exchanges,
            },
        };
        let output_defaults = OutputSettings::default();
        let output = sidecar.output.unwrap_or_default();
        let output = OutputSettings {
            level: output.level.unwrap_or(output_defaults.level),
            lines_per_s: match output.lines_per_s {
                Some(n) => positive("output.lines_per_s", n).map(|_| n)?,
                None => output_defaults.lines_per_s,
            },
            bytes_per_s: match output.bytes_per_s {
                Some(n) => positive("output.bytes_per_s", n).map(|_| n)?,
                None => output_defaults.bytes_per_s,
            },
        };
        let config = sidecar.config.unwrap_or_default();
        let config_json = serde_json::to_string(&config).map_err(|e| format!("config: {e}"))?;
        Ok(PluginSettings {
            order: sidecar.order.unwrap_or(0),
            config_json,
            limits,
            on_error: sidecar.on_error.unwrap_or_default(),
            grants: sidecar.grants.unwrap_or_default(),
            output,
        })
    }
}

/// A limit of zero would make the plugin unusable; refuse it up front.
fn positive(name: &str, value: u32) -> Result<usize, String> {
    if value == 0 {
        return Err(format!("{name} must be at least 1"));
    }
    usize::try_from(value).map_err(|_| format!("{name} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_sidecar_is_the_defaults() {
        assert_eq!(PluginSettings::parse(""), Ok(PluginSettings::default()));
    }

    #[test]
    fn reads_every_field() {
        let s = PluginSettings::parse(
            "order = -3\non_error = \"pass\"\n[config]\nusers = [\"a\"]\n[limits]\nmemory_mb = 8\ntimeout_ms = 50\ninstances = 2\nmax_answer_bytes = 100\n",
        )
        .expect("valid sidecar");
        assert_eq!(s.order, -3);
        assert_eq!(s.on_error, OnError::Pass);
        assert_eq!(s.config_json, r#"{"users":["a"]}"#);
        assert_eq!(s.limits.memory_bytes, 8 << 20);
        assert_eq!(s.limits.timeout, Duration::from_millis(50));
        assert_eq!(s.limits.instances, Some(2));
        assert_eq!(s.limits.max_answer_bytes, 100);
    }

    #[test]
    fn warm_instances_follow_memory_unless_set() {
        let l = Limits::default();
        assert_eq!(l.warm_instances(1 << 20), 4, "a small plugin");
        assert_eq!(l.warm_instances(13 << 20), 2, "a CPython plugin");
        assert_eq!(l.warm_instances(40 << 20), 1, "never none");
        assert_eq!(l.warm_instances(0), 4);
        assert_eq!(Limits { instances: Some(3), ..l }.warm_instances(40 << 20), 3, "the operator's number");
    }

    #[test]
    fn grants_resolve_against_the_sidecar_and_must_exist() {
        let base = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(base.path().join("auth")).expect("mkdir");
        let mut s = PluginSettings::parse("[grants]\nread = [\"auth\"]\n").expect("valid sidecar");
        s.grants.resolve(base.path()).expect("existing directory");
        let expected = base.path().join("auth").canonicalize().expect("canonical");
        assert_eq!(s.grants.read, [expected]);

        let mut s = PluginSettings::parse("[grants]\nread = [\"missing\"]\n").expect("valid sidecar");
        let err = s.grants.resolve(base.path()).expect_err("no such directory");
        assert!(err.contains("grants.read") && err.contains("missing"), "{err}");
        assert!(PluginSettings::parse("[grants]\nwrite = [\"/\"]\n").is_err(), "only read grants exist");
    }

    #[test]
    fn errors_carry_the_line() {
        let err = PluginSettings::parse("order = 1\n\non_error = \"explode\"\n").expect_err("bad value");
        assert!(err.contains("line 3"), "{err}");
        let err = PluginSettings::parse("ordre = 1\n").expect_err("unknown field");
        assert!(err.contains("ordre") && err.contains("line 1"), "{err}");
        let err = PluginSettings::parse("[limits]\ninstances = 0\n").expect_err("zero");
        assert!(err.contains("limits.instances"), "{err}");
    }
}
