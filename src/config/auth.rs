//! `[auth]`: how hard the broker makes password guessing, and who a
//! session belongs to.
//!
//! ```toml
//! [auth]
//! failed_login_burst = 10        # failed logins in a row per address; 0: no throttling
//! failed_logins_per_minute = 6   # how fast that allowance comes back
//! logins_per_address = 1         # authentications one address runs at once (default: half the slots)
//! throttle_loopback = false      # also throttle loopback addresses
//! bind_sessions = "auto"         # "auto" | true | false
//! ```

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// Login hardening and session ownership (`[auth]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Failed logins one address may have in a row before its CONNECTs are
    /// refused (v5 0x9F Connection rate exceeded, 3.1.1 return code 3)
    /// without asking the authentication plugins; 0 turns the throttle off.
    /// Successful logins do not clear the count: only time does.
    pub failed_login_burst: u32,
    /// How fast a throttled address earns back one attempt, per minute.
    pub failed_logins_per_minute: u32,
    /// Authentications one address may run at once; the others wait their
    /// turn (within `connect_timeout_ms`), so one address never holds more
    /// than its share of the authentication slots. Unset: half the slots
    /// (one per core), at least 1.
    pub logins_per_address: Option<u32>,
    /// Whether loopback addresses are throttled too. Off by default: behind
    /// a local proxy (stunnel, a sidecar) every client would share one
    /// address, and one client's typos would lock out all of them.
    pub throttle_loopback: bool,
    /// Whether a session belongs to the user that created it: another user
    /// connecting with its client id is refused (0x87 Not authorized,
    /// 3.1.1 return code 5) while the session exists.
    pub bind_sessions: BindSessions,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            failed_login_burst: 10,
            failed_logins_per_minute: 6,
            logins_per_address: None,
            throttle_loopback: false,
            bind_sessions: BindSessions::Auto,
        }
    }
}

impl AuthConfig {
    /// Cross-field checks; the key in the error is under `auth.`.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if self.failed_login_burst > 0 && self.failed_logins_per_minute == 0 {
            return Err((
                "auth.failed_logins_per_minute".into(),
                "must be greater than 0 while failed_login_burst is (set failed_login_burst = 0 to turn the throttle off)"
                    .into(),
            ));
        }
        if self.logins_per_address == Some(0) {
            return Err(("auth.logins_per_address".into(), "must be at least 1".into()));
        }
        Ok(())
    }

    /// The time after which a throttled address earns one attempt back.
    pub fn failed_login_interval(&self) -> Duration {
        Duration::from_secs(60) / self.failed_logins_per_minute.max(1)
    }

    /// The login throttle's settings, given the authentication calls the
    /// broker runs at once (`slots`).
    pub fn throttle(&self, slots: usize) -> crate::auth::ThrottleSettings {
        crate::auth::ThrottleSettings {
            burst: self.failed_login_burst,
            interval: self.failed_login_interval(),
            per_address: self.logins_per_address(slots),
            loopback: self.throttle_loopback,
        }
    }

    /// The authentications one address may run at once, with the default
    /// resolved against `slots`, the authentication calls run at once.
    pub fn logins_per_address(&self, slots: usize) -> usize {
        match self.logins_per_address {
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => (slots / 2).max(1),
        }
    }
}

/// Whether sessions are bound to the user that created them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindSessions {
    /// Bound while an authentication plugin is loaded (`"auto"`, the
    /// default): without one, no name is verified anyway.
    #[default]
    Auto,
    /// Always bound (`true`).
    Always,
    /// Never bound (`false`): any client may take over any session by its
    /// client id, as in Mosquitto.
    Never,
}

impl BindSessions {
    /// Whether sessions are bound, given whether a plugin authenticates.
    pub fn applies(self, authenticator_loaded: bool) -> bool {
        match self {
            BindSessions::Auto => authenticator_loaded,
            BindSessions::Always => true,
            BindSessions::Never => false,
        }
    }
}

impl<'de> Deserialize<'de> for BindSessions {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<BindSessions, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = BindSessions;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or \"auto\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<BindSessions, E> {
                Ok(if v { BindSessions::Always } else { BindSessions::Never })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<BindSessions, E> {
                match v {
                    "auto" => Ok(BindSessions::Auto),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
        }
        de.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(text, Path::new("moat.toml"))
    }

    #[test]
    fn defaults_throttle_failed_logins_and_bind_sessions_with_an_authenticator() {
        let auth = parse("").expect("defaults").auth;
        assert_eq!((auth.failed_login_burst, auth.failed_logins_per_minute), (10, 6));
        assert_eq!(auth.failed_login_interval(), Duration::from_secs(10));
        assert_eq!((auth.logins_per_address(2), auth.logins_per_address(16)), (1, 8));
        assert!(!auth.throttle_loopback);
        assert!(auth.bind_sessions.applies(true) && !auth.bind_sessions.applies(false));
    }

    #[test]
    fn every_key_parses_and_bad_values_name_their_line() {
        let text = "[auth]\nfailed_login_burst = 3\nfailed_logins_per_minute = 2\nlogins_per_address = 4\n\
                    throttle_loopback = true\nbind_sessions = false\n";
        let auth = parse(text).expect("valid").auth;
        assert_eq!(auth.failed_login_interval(), Duration::from_secs(30));
        assert_eq!(auth.logins_per_address(2), 4);
        assert_eq!(auth.bind_sessions, BindSessions::Never);
        assert_eq!(parse("[auth]\nbind_sessions = true\n").expect("valid").auth.bind_sessions, BindSessions::Always);
        let err = parse("[auth]\nfailed_logins_per_minute = 0\n").expect_err("never recovers");
        assert!(err.to_string().starts_with("moat.toml:2: `auth.failed_logins_per_minute`"), "{err}");
        assert!(parse("[auth]\nfailed_login_burst = 0\nfailed_logins_per_minute = 0\n").is_ok(), "throttle off");
        let err = parse("[auth]\n\nlogins_per_address = 0\n").expect_err("zero");
        assert!(err.to_string().starts_with("moat.toml:3: `auth.logins_per_address`"), "{err}");
        let err = parse("[auth]\nbind_sessions = \"yes\"\n").expect_err("bad value");
        assert!(err.to_string().contains("auth.bind_sessions"), "{err}");
    }
}
