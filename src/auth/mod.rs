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

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::codec::{ProtocolVersion, QoS, TopicName};

mod cache;
mod denials;
mod policy;
mod throttle;

pub use cache::AuthzCache;
pub use denials::DenialLog;
pub use policy::{AuthExchange, Policy};
pub use throttle::{LoginThrottle, LoginTicket, MAX_ADDRESSES, ThrottleSettings, Throttled};

pub use crate::transport::TlsIdentity;

/// Who is asking: what the broker knows about a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// MQTT client identifier.
    pub client_id: String,
    /// The verified user name, the one authorization may trust: the
    /// `username-override` of the authenticator that allowed the client,
    /// else the CONNECT user name that authenticator accepted, else the
    /// certificate's identity (`use_identity_as_username`). `None` for a
    /// client nobody verified (admitted anonymously, or by a certificate
    /// alone), whatever name it claimed, unless its listener sets
    /// `trust_claimed_username`.
    pub username: Option<String>,
    /// The user name CONNECT carried, verified or not. Plugins see it as
    /// the attribute [`CLAIMED_USERNAME_ATTRIBUTE`].
    pub claimed_username: Option<String>,
    /// Remote address of the connection.
    pub peer_address: SocketAddr,
    /// Name of the listener the client came through.
    pub listener: String,
    /// Protocol the connection speaks.
    pub protocol: ProtocolVersion,
    /// The verified certificate, for TLS clients that presented one.
    pub tls: Option<Arc<TlsIdentity>>,
    /// Attributes granted at authentication; later hooks see them.
    pub attributes: Vec<(String, String)>,
}

impl ClientInfo {
    /// Applies an authenticator's grant: its attributes and user name
    /// override become part of what later hooks see. The attributes replace
    /// those of an earlier grant: after MQTT 5 re-authentication only the
    /// new credentials' grant counts (a renewed token with fewer rights must
    /// not keep the old token's). An `allow` without an override vouches
    /// for the credentials it was shown, so the claimed user name becomes
    /// the verified one (unless a certificate already named the client).
    pub fn apply_grant(&mut self, grant: &Grant) {
        self.attributes.clone_from(&grant.attributes);
        if let Some(name) = &grant.username_override {
            self.username = Some(name.clone());
        } else if self.username.is_none() {
            self.username.clone_from(&self.claimed_username);
        }
    }
}

/// What a client presented to authenticate. `Debug` never shows the
/// password or the authentication data.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// User name from CONNECT.
    pub username: Option<String>,
    /// Password from CONNECT.
    pub password: Option<Bytes>,
    /// MQTT 5 Authentication Method.
    pub auth_method: Option<String>,
    /// MQTT 5 Authentication Data of this step.
    pub auth_data: Option<Bytes>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("auth_method", &self.auth_method)
            .field("auth_data", &self.auth_data.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Publish to a topic name.
    Publish,
    /// Subscribe to a topic filter.
    Subscribe,
    /// Receive a message from a subscription or an offline queue.
    Receive,
    /// Receive a retained message when subscribing.
    Retained,
    /// Register a will message.
    Will,
}

impl Action {
    /// The action's name as plugins and operators see it (the WIT enum's
    /// case): `publish`, `subscribe`, `receive`, `retained`, `will`.
    pub fn name(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Receive => "receive",
            Action::Retained => "retained",
            Action::Will => "will",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An application message as a transform plugin sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginMessage {
    /// Topic the message is published to.
    pub topic: TopicName,
    /// Application payload.
    pub payload: Bytes,
    /// Quality of service.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5 Content Type.
    pub content_type: Option<String>,
    /// MQTT 5 Response Topic.
    pub response_topic: Option<String>,
    /// MQTT 5 Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// MQTT 5 User Properties, in order.
    pub user_properties: Vec<(String, String)>,
    /// MQTT 5 Message Expiry Interval, in seconds.
    pub message_expiry: Option<u32>,
}

impl PluginMessage {
    /// A message with no MQTT 5 properties.
    pub fn new(topic: TopicName, payload: Bytes, qos: QoS, retain: bool) -> PluginMessage {
        PluginMessage {
            topic,
            payload,
            qos,
            retain,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
            message_expiry: None,
        }
    }
}

/// The grant attribute by which an authenticator sends Authentication Data
/// with its final `allow` (SCRAM's server-final message, for instance): the
/// WIT `grant` has no field for it. Its value is the data in lowercase hex;
/// the broker removes the attribute, so later hooks never see it, and sends
/// the data in the CONNACK (or the AUTH success of a re-authentication).
pub const AUTH_DATA_ATTRIBUTE: &str = "moat.auth-data";

/// The attribute by which plugins see the user name a client claimed in
/// CONNECT (`ClientInfo::claimed_username`), present whenever CONNECT
/// carried one, verified or not: `client-info.username` holds only a
/// verified name, so a plugin that wants the claim (to log it, or to
/// compare it) reads it here. Attributes named `moat.*` are the broker's:
/// it removes them from every grant, so no authenticator can forge this one.
pub const CLAIMED_USERNAME_ATTRIBUTE: &str = "moat.claimed-username";

/// The prefix of attribute names the broker reserves for itself.
pub const RESERVED_ATTRIBUTE_PREFIX: &str = "moat.";

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
