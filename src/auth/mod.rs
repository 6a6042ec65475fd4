//! The policy pipeline the broker asks before it lets a client connect, act
//! on a topic, or routes a message: a chain of plugins behind a small,
//! wasmtime-free API.
//!
//! - [`Policy`] runs the chain with the semantics of the design: plugins in
//!   order, the first `allow`/`deny` wins, `ignore` passes on, every failure
//!   of a plugin (trap, timeout, out of memory, oversized or malformed answer)
//!   denies for authentication and authorization and follows the plugin's
//!   `on_error` for transforms.
//! - [`AuthzCache`] is a connection's memory of verdicts, so a publish that
//!   was already authorized never re-enters WebAssembly until its lifetime
//!   ends or the plugin set changes.
//! - [`LoginThrottle`] counts failed logins and logins in progress per
//!   client address, before the chain runs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

mod cache;
mod denials;
mod policy;
mod throttle;

pub use cache::AuthzCache;
pub use denials::DenialLog;
pub use policy::{AuthExchange, InForce, Policy};
pub use throttle::{LoginThrottle, LoginTicket, MAX_ADDRESSES, ThrottleSettings, Throttled};

pub use crate::identity::TlsIdentity;
pub use crate::plugin::{
    AUTH_DATA_ATTRIBUTE, Action, Attributes, CLAIMED_USERNAME_ATTRIBUTE, ClientInfo, Credentials, PluginMessage,
    RESERVED_ATTRIBUTE_PREFIX,
};

// Beside `Grant`: what a grant means for later hooks is the policy's rule.
impl ClientInfo {
    /// Applies an authenticator's grant: its attributes and user name
    /// override become part of what later hooks see. The attributes replace
    /// those of an earlier grant: after MQTT 5 re-authentication only the
    /// new credentials' grant counts (a renewed token with fewer rights must
    /// not keep the old token's). An `allow` without an override vouches
    /// for the credentials it was shown, so the claimed user name becomes
    /// the verified one (unless a certificate already named the client).
    pub fn apply_grant(&mut self, grant: &Grant) {
        self.attributes = Attributes::from(grant.attributes.clone());
        if let Some(name) = &grant.username_override {
            self.username = Some(Arc::from(name.as_str()));
        } else if self.username.is_none() {
            self.username.clone_from(&self.claimed_username);
        }
    }
}

/// What an authenticator granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The plugin that allowed the client.
    pub plugin: Arc<str>,
    /// Attributes later hooks see in the client's info.
    pub attributes: Vec<(String, String)>,
    /// Replaces the user name later hooks see.
    pub username_override: Option<String>,
    /// Authentication Data for the packet that ends an MQTT 5 exchange
    /// (from [`AUTH_DATA_ATTRIBUTE`]).
    pub auth_data: Option<Bytes>,
}

/// The authentication chain's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthnOutcome {
    /// A plugin allowed the client.
    Allow(Grant),
    /// A plugin denied the client, or failed (which denies).
    Deny {
        /// The plugin that decided.
        plugin: Arc<str>,
        /// Why, for the broker's log (never sent to the client).
        reason: String,
    },
    /// No plugin decided (all ignored, or none authenticates): the broker
    /// applies the listener's `allow_anonymous`.
    NoDecision,
    /// MQTT 5 enhanced authentication: send `data` to the client in an AUTH
    /// packet and authenticate again with its answer.
    Continue {
        /// The plugin conducting the exchange.
        plugin: Arc<str>,
        /// Authentication Data for the AUTH packet.
        data: Vec<u8>,
    },
    /// The plugin would continue an exchange but holds as many as its
    /// `limits.exchanges` allows: refuse the client with Quota Exceeded
    /// (0x97) rather than queue it.
    Busy {
        /// The plugin that is full.
        plugin: Arc<str>,
    },
}

/// The authorization chain's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the action is permitted.
    pub allowed: bool,
    /// How long a connection may reuse this verdict; `None`: do not cache.
    pub cache_ttl: Option<Duration>,
    /// Who refused and why, for a refusal the chain decided (boxed: an
    /// allow, the common answer, carries nothing).
    pub denial: Option<Box<Denial>>,
}

impl Verdict {
    /// Allowed, reusable for `cache_ttl`.
    pub fn allow(cache_ttl: Option<Duration>) -> Verdict {
        Verdict { allowed: true, cache_ttl, denial: None }
    }

    /// Refused, never cached.
    pub fn deny(denial: Denial) -> Verdict {
        Verdict { allowed: false, cache_ttl: None, denial: Some(Box::new(denial)) }
    }
}

/// Why the authorization chain refused an action: what a connection's
/// [`DenialLog`] line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// A plugin answered `deny`.
    Denied {
        /// The plugin that decided.
        plugin: Arc<str>,
        /// The reason it gave (for the log; never sent to the client).
        reason: String,
    },
    /// A plugin's call failed, which denies: trap, timeout, out of memory,
    /// or an answer the broker refused.
    Failed {
        /// The plugin whose call failed.
        plugin: Arc<str>,
        /// How it failed.
        failure: crate::plugin::CallFailure,
    },
    /// Every authorizing plugin ignored the question.
    Unanswered,
}

/// The transform chain's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransformOutcome {
    /// Route the message unchanged.
    Pass,
    /// Route this message instead.
    Replace(PluginMessage),
    /// Discard the message.
    Drop {
        /// The plugin that dropped it.
        plugin: Arc<str>,
        /// Why, for the broker's log.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(username_override: Option<&str>, attributes: &[(&str, &str)]) -> Grant {
        Grant {
            plugin: "p".into(),
            attributes: attributes.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect(),
            username_override: username_override.map(str::to_owned),
            auth_data: None,
        }
    }

    /// An allow without an override verifies the claimed name, sharing
    /// its string; an override replaces it; each grant's attributes
    /// replace the last one's.
    #[test]
    fn a_grant_verifies_the_claimed_name_or_overrides_it() {
        let mut client = ClientInfo {
            client_id: "c".into(),
            username: None,
            claimed_username: Some("alice".into()),
            peer_address: "127.0.0.1:1".parse().expect("address"),
            listener: Arc::new("tcp".to_owned()),
            protocol: crate::codec::ProtocolVersion::V5,
            tls: None,
            attributes: Attributes::default(),
        };
        client.apply_grant(&grant(None, &[("role", "admin")]));
        let (verified, claimed) = (client.username.as_ref(), client.claimed_username.as_ref());
        assert!(verified.zip(claimed).is_some_and(|(v, c)| Arc::ptr_eq(v, c)), "one string for both");
        assert_eq!(client.attributes, [("role".to_owned(), "admin".to_owned())]);
        client.apply_grant(&grant(Some("bob"), &[]));
        assert_eq!((client.username.as_deref(), client.claimed_username.as_deref()), (Some("bob"), Some("alice")));
        assert!(client.attributes.is_empty(), "a new grant's attributes replace the old");
    }
}
