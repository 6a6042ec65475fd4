//! What a hook is asked about: who the client is ([`ClientInfo`]), what
//! it presented ([`Credentials`]), what it wants to do ([`Action`]) and,
//! for transforms, the message ([`PluginMessage`]). The broker's side of
//! the WIT records (`convert` lowers them); `crate::auth` re-exports them
//! as the policy's vocabulary.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use crate::codec::{ProtocolVersion, QoS, TopicName};
use crate::identity::TlsIdentity;

/// Who is asking: what the broker knows about a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// MQTT client identifier: shared with the session's (one copy per
    /// client, issue 25).
    pub client_id: Arc<str>,
    /// The verified user name, the one authorization may trust: the
    /// `username-override` of the authenticator that allowed the client,
    /// else the CONNECT user name that authenticator accepted, else the
    /// certificate's identity (`use_identity_as_username`). `None` for a
    /// client nobody verified (admitted anonymously, or by a certificate
    /// alone), whatever name it claimed, unless its listener sets
    /// `trust_claimed_username`. Shared, like the claimed name: when it is
    /// the name CONNECT carried, one string serves both (issue 25).
    pub username: Option<Arc<str>>,
    /// The user name CONNECT carried, verified or not. Plugins see it as
    /// the attribute [`CLAIMED_USERNAME_ATTRIBUTE`].
    pub claimed_username: Option<Arc<str>>,
    /// Remote address of the connection.
    pub peer_address: SocketAddr,
    /// Name of the listener the client came through: one copy per
    /// listener, shared by its clients, behind a thin pointer (an
    /// `Arc<str>` is 16 bytes; issue 25).
    pub listener: Arc<String>,
    /// Protocol the connection speaks.
    pub protocol: ProtocolVersion,
    /// The verified certificate, for TLS clients that presented one.
    pub tls: Option<Arc<TlsIdentity>>,
    /// Attributes granted at authentication; later hooks see them.
    pub attributes: Attributes,
}

/// The attributes an authenticator granted a client, as key and value
/// pairs: a slice to read, boxed and made only for a client granted some,
/// so 8 bytes in the info of every other client where a `Vec` took 24 (an
/// `Arc<ClientInfo>` in a 144-byte malloc chunk instead of 176, with the
/// user names shared; issue 25).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[expect(clippy::box_collection, reason = "the box is the point: 8 bytes while empty, where a Vec takes 24")]
pub struct Attributes(Option<Box<Vec<(String, String)>>>);

impl std::ops::Deref for Attributes {
    type Target = [(String, String)];

    fn deref(&self) -> &[(String, String)] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl From<Vec<(String, String)>> for Attributes {
    fn from(pairs: Vec<(String, String)>) -> Attributes {
        Attributes((!pairs.is_empty()).then(|| Box::new(pairs)))
    }
}

impl FromIterator<(String, String)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Attributes {
        Attributes::from(pairs.into_iter().collect::<Vec<_>>())
    }
}

impl<const N: usize> PartialEq<[(String, String); N]> for Attributes {
    fn eq(&self, other: &[(String, String); N]) -> bool {
        **self == *other
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connected client holds its info (issue 25): 152 bytes with
    /// owned user names and a `Vec` of attributes, a 176-byte malloc
    /// chunk with the `Arc`'s counts; 120 with shared names and boxed
    /// attributes (136 with the counts: jemalloc's 160-byte class); 112
    /// with the listener's name behind a thin pointer, 128 with the
    /// counts, jemalloc's 128-byte class (glibc's 144-byte chunk either
    /// way).
    #[test]
    fn a_client_info_is_small() {
        let size = std::mem::size_of::<ClientInfo>();
        assert!(size <= 112, "ClientInfo is {size} bytes: its Arc grows past jemalloc's 128-byte class");
    }

    /// Attributes read as the pairs they were made from; none are boxed
    /// when there are none.
    #[test]
    fn attributes_read_as_their_pairs() {
        let none = Attributes::from(Vec::new());
        assert!(none.is_empty() && none == Attributes::default());
        let pairs = vec![("role".to_owned(), "admin".to_owned()), ("org".to_owned(), "x".to_owned())];
        let some: Attributes = pairs.clone().into_iter().collect();
        assert_eq!(&*some, pairs.as_slice());
        assert_eq!(some.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["role", "org"]);
    }
}
