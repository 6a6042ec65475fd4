//! `[admin]` (the admin HTTP listener and its token) and `[sys]` (the
//! `$SYS` topics).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// The admin HTTP listener: metrics, health and the JSON API.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address to serve on, e.g. `127.0.0.1:9090`. Unset: no admin listener.
    pub listen: Option<SocketAddr>,
    /// Bearer token required for everything but `/health` and `/ready`.
    /// A token (this or `token_file`) is required when `listen` is not a
    /// loopback address; without one, the state-changing endpoints (kick,
    /// reload) are refused.
    pub token: Option<Secret>,
    /// A file holding the bearer token instead of `token`: read at
    /// start-up, or created with a random token (mode 0600) if it does not
    /// exist. It must not be a symbolic link nor be readable or writable
    /// by group or others.
    pub token_file: Option<PathBuf>,
    /// Host names the admin API answers to besides IP addresses and
    /// `localhost`: a request whose `Host` header names another host is
    /// refused (403), which defeats DNS rebinding.
    pub allowed_hosts: Vec<String>,
}

impl AdminConfig {
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if self.token.as_ref().is_some_and(|t| t.0.trim().is_empty()) {
            return Err(("admin.token".into(), "must not be empty".into()));
        }
        if self.token_file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            return Err(("admin.token_file".into(), "must not be empty".into()));
        }
        if self.token.is_some() && self.token_file.is_some() {
            return Err(("admin.token_file".into(), "set `admin.token` or `admin.token_file`, not both".into()));
        }
        if let Some(addr) = self.listen
            && !addr.ip().is_loopback()
            && self.token.is_none()
            && self.token_file.is_none()
        {
            return Err((
                "admin.token".into(),
                format!("is required (or `admin.token_file`) when admin.listen ({addr}) is not loopback"),
            ));
        }
        for (i, host) in self.allowed_hosts.iter().enumerate() {
            super::net::check_host(host).map_err(|message| (format!("admin.allowed_hosts[{i}]"), message))?;
        }
        Ok(())
    }
}

/// A value that must not appear in logs: `Debug` shows `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for comparing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `$SYS/broker/...` topics.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SysConfig {
    /// Seconds between two publications; 0 disables `$SYS`.
    pub interval_s: u64,
}

impl Default for SysConfig {
    fn default() -> SysConfig {
        SysConfig { interval_s: 10 }
    }
}
