//! Conversions between the broker's types (`super::request`) and the generated
//! WIT types, and the checks on what a plugin answers: size and validity.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::bindings::{authn, authz, transform, types};
use super::request::{
    AUTH_DATA_ATTRIBUTE, Action, CLAIMED_USERNAME_ATTRIBUTE, ClientInfo, Credentials, PluginMessage,
    RESERVED_ATTRIBUTE_PREFIX,
};
use super::{CallFailure, Decision};
use crate::codec::{QoS, TopicName};

/// An authenticator's valid answer.
#[derive(Debug)]
pub(crate) enum AuthnAnswer {
    Allow { attributes: Vec<(String, String)>, username_override: Option<String>, auth_data: Option<Bytes> },
    Deny(String),
    Ignore,
    Continue(Vec<u8>),
}

/// An authorizer's valid answer.
#[derive(Debug)]
pub(crate) enum AuthzAnswer {
    Allow(Option<Duration>),
    Deny(String),
    Ignore,
}

/// A transformer's valid answer.
#[derive(Debug)]
pub(crate) enum TransformAnswer {
    Pass,
    Replace(PluginMessage),
    Drop(String),
}

impl AuthnAnswer {
    /// How the call ended, as counted.
    pub(crate) fn decision(&self) -> Decision {
        match self {
            AuthnAnswer::Allow { .. } => Decision::Allow,
            AuthnAnswer::Deny(_) => Decision::Deny,
            AuthnAnswer::Ignore => Decision::Ignore,
            AuthnAnswer::Continue(_) => Decision::Continue,
        }
    }
}

impl AuthzAnswer {
    /// How the call ended, as counted.
    pub(crate) fn decision(&self) -> Decision {
        match self {
            AuthzAnswer::Allow(_) => Decision::Allow,
            AuthzAnswer::Deny(_) => Decision::Deny,
            AuthzAnswer::Ignore => Decision::Ignore,
        }
    }
}

impl TransformAnswer {
    /// How the call ended, as counted.
    pub(crate) fn decision(&self) -> Decision {
        match self {
            TransformAnswer::Pass => Decision::Pass,
            TransformAnswer::Replace(_) => Decision::Replace,
            TransformAnswer::Drop(_) => Decision::Drop,
        }
    }
}

/// The WIT record of the last client an instance was called for, refreshed
/// in place before each call: `clone_from` reuses the strings' buffers, and
/// the peer address is formatted again only when it changed, so a warm call
/// copies a few bytes instead of allocating and formatting every field.
pub(crate) struct ClientScratch {
    record: types::ClientInfo,
    peer: Option<SocketAddr>,
}

impl Default for ClientScratch {
    fn default() -> Self {
        let record = types::ClientInfo {
            client_id: String::new(),
            username: None,
            peer_address: String::new(),
            listener: String::new(),
            protocol_version: 0,
            tls: None,
            attributes: Vec::new(),
        };
        ClientScratch { record, peer: None }
    }
}

impl ClientScratch {
    /// Makes the record describe `c`, and returns it.
    pub(crate) fn fill(&mut self, c: &ClientInfo) -> &types::ClientInfo {
        let r = &mut self.record;
        r.client_id.clear();
        r.client_id.push_str(&c.client_id);
        // Refilled in place, as `clone_from` would: no allocation when
        // the record held a name as long.
        match (&mut r.username, c.username.as_deref()) {
            (Some(to), Some(from)) => {
                to.clear();
                to.push_str(from);
            }
            (to, from) => *to = from.map(str::to_owned),
        }
        if self.peer != Some(c.peer_address) {
            r.peer_address.clear();
            // Formatting into a `String` cannot fail.
            let _ = write!(r.peer_address, "{}", c.peer_address);
            self.peer = Some(c.peer_address);
        }
        r.listener.clear();
        r.listener.push_str(&c.listener);
        r.protocol_version = c.protocol.level();
        match (&mut r.tls, c.tls.as_deref()) {
            (Some(to), Some(from)) => {
                to.subject.clone_from(&from.subject);
                to.sans.clone_from(&from.sans);
                to.sha256_fingerprint.clone_from(&from.sha256_fingerprint);
            }
            (to, from) => {
                *to = from.map(|t| types::TlsIdentity {
                    subject: t.subject.clone(),
                    sans: t.sans.clone(),
                    sha256_fingerprint: t.sha256_fingerprint.clone(),
                });
            }
        }
        let claimed = c.claimed_username.as_deref().map(|name| (CLAIMED_USERNAME_ATTRIBUTE, name));
        let pairs = c.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(claimed);
        fill_pairs(&mut r.attributes, pairs);
        &self.record
    }
}

/// Makes `to` hold `from`, reusing its strings' buffers.
fn fill_pairs<'a>(to: &mut Vec<(String, String)>, from: impl Iterator<Item = (&'a str, &'a str)>) {
    let mut len = 0;
    for (k, v) in from {
        match to.get_mut(len) {
            Some((tk, tv)) => {
                tk.clear();
                tk.push_str(k);
                tv.clear();
                tv.push_str(v);
            }
            None => to.push((k.to_owned(), v.to_owned())),
        }
        len += 1;
    }
    to.truncate(len);
}

pub(crate) fn credentials(c: &Credentials) -> authn::Credentials {
    authn::Credentials {
        username: c.username.clone(),
        password: c.password.as_ref().map(|p| p.to_vec()),
        auth_method: c.auth_method.clone(),
        auth_data: c.auth_data.as_ref().map(|d| d.to_vec()),
    }
}

pub(crate) fn action(a: Action) -> types::Action {
    match a {
        Action::Publish => types::Action::Publish,
        Action::Subscribe => types::Action::Subscribe,
        Action::Receive => types::Action::Receive,
        Action::Retained => types::Action::Retained,
        Action::Will => types::Action::Will,
    }
}

pub(crate) fn qos(q: QoS) -> types::Qos {
    match q {
        QoS::AtMostOnce => types::Qos::AtMostOnce,
        QoS::AtLeastOnce => types::Qos::AtLeastOnce,
        QoS::ExactlyOnce => types::Qos::ExactlyOnce,
    }
}

fn qos_from(q: types::Qos) -> QoS {
    match q {
        types::Qos::AtMostOnce => QoS::AtMostOnce,
        types::Qos::AtLeastOnce => QoS::AtLeastOnce,
        types::Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// Payload buffers up to this size stay with the instance for the next
/// call; a larger one is freed after its call, so one big publish does not
/// pin its size in every warm instance.
const KEPT_PAYLOAD_BYTES: usize = 64 * 1024;

/// The WIT record of the last message an instance transformed, refreshed in
/// place like [`ClientScratch`].
pub(crate) struct MessageScratch {
    record: types::Message,
}

impl Default for MessageScratch {
    fn default() -> Self {
        let record = types::Message {
            topic: String::new(),
            payload: Vec::new(),
            qos: types::Qos::AtMostOnce,
            retain: false,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
            message_expiry: None,
        };
        MessageScratch { record }
    }
}

impl MessageScratch {
    /// Makes the record describe `m`, and returns it.
    pub(crate) fn fill(&mut self, m: &PluginMessage) -> &types::Message {
        let r = &mut self.record;
        r.topic.clear();
        r.topic.push_str(m.topic.as_str());
        r.payload.clear();
        r.payload.extend_from_slice(&m.payload);
        r.qos = qos(m.qos);
        r.retain = m.retain;
        r.content_type.clone_from(&m.content_type);
        r.response_topic.clone_from(&m.response_topic);
        match (&mut r.correlation_data, &m.correlation_data) {
            (Some(to), Some(from)) => {
                to.clear();
                to.extend_from_slice(from);
            }
            (to, from) => *to = from.as_ref().map(|d| d.to_vec()),
        }
        r.user_properties.clone_from(&m.user_properties);
        r.message_expiry = m.message_expiry;
        &self.record
    }

    /// Frees a payload buffer too large to keep between calls.
    pub(crate) fn release_large(&mut self) {
        if self.record.payload.capacity() > KEPT_PAYLOAD_BYTES {
            self.record.payload = Vec::new();
        }
    }
}

/// Refuses an answer larger than the plugin's limit.
fn check_size(bytes: usize, limit: usize) -> Result<(), CallFailure> {
    if bytes > limit {
        return Err(CallFailure::Oversized { bytes, limit });
    }
    Ok(())
}

fn pairs_len(pairs: &[(String, String)]) -> usize {
    pairs.iter().map(|(k, v)| k.len() + v.len()).sum()
}

pub(crate) fn authn_answer(o: authn::AuthOutcome, limit: usize) -> Result<AuthnAnswer, CallFailure> {
    Ok(match o {
        authn::AuthOutcome::Allow(grant) => {
            let size = pairs_len(&grant.attributes) + grant.username_override.as_ref().map_or(0, String::len);
            check_size(size, limit)?;
            let (attributes, auth_data) = split_auth_data(grant.attributes)?;
            AuthnAnswer::Allow { attributes, username_override: grant.username_override, auth_data }
        }
        authn::AuthOutcome::Deny(reason) => {
            check_size(reason.len(), limit)?;
            AuthnAnswer::Deny(reason)
        }
        authn::AuthOutcome::Ignore => AuthnAnswer::Ignore,
        authn::AuthOutcome::Continue(data) => {
            check_size(data.len(), limit)?;
            AuthnAnswer::Continue(data)
        }
    })
}

/// A grant's attributes.
type Attributes = Vec<(String, String)>;

/// Takes the [`AUTH_DATA_ATTRIBUTE`] out of a grant's attributes: later
/// hooks never see it, and its hex value becomes the Authentication Data of
/// the CONNACK (or AUTH) that ends the exchange. Other `moat.*` attributes
/// are the broker's to set (e.g. [`CLAIMED_USERNAME_ATTRIBUTE`]), so a
/// grant's are dropped.
fn split_auth_data(attributes: Attributes) -> Result<(Attributes, Option<Bytes>), CallFailure> {
    let (reserved, rest): (Vec<_>, Vec<_>) =
        attributes.into_iter().partition(|(k, _)| k.starts_with(RESERVED_ATTRIBUTE_PREFIX));
    let data: Vec<_> = reserved.into_iter().filter(|(k, _)| k == AUTH_DATA_ATTRIBUTE).collect();
    let Some((_, hex)) = data.last() else { return Ok((rest, None)) };
    let malformed = || CallFailure::Malformed(format!("`{AUTH_DATA_ATTRIBUTE}` is not lowercase hex"));
    if hex.len() % 2 != 0 {
        return Err(malformed());
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let bytes = hex
        .as_bytes()
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(malformed)?;
    Ok((rest, Some(Bytes::from(bytes))))
}

pub(crate) fn authz_answer(d: authz::Decision, limit: usize) -> Result<AuthzAnswer, CallFailure> {
    Ok(match d {
        authz::Decision::Allow(ttl) => AuthzAnswer::Allow(ttl.map(|ms| Duration::from_millis(u64::from(ms)))),
        authz::Decision::Deny(reason) => {
            check_size(reason.len(), limit)?;
            AuthzAnswer::Deny(reason)
        }
        authz::Decision::Ignore => AuthzAnswer::Ignore,
    })
}

pub(crate) fn transform_answer(o: transform::TransformOutcome, limit: usize) -> Result<TransformAnswer, CallFailure> {
    Ok(match o {
        transform::TransformOutcome::Pass => TransformAnswer::Pass,
        transform::TransformOutcome::Drop(reason) => {
            check_size(reason.len(), limit)?;
            TransformAnswer::Drop(reason)
        }
        transform::TransformOutcome::Replace(m) => {
            let size = m.topic.len()
                + m.payload.len()
                + m.content_type.as_ref().map_or(0, String::len)
                + m.response_topic.as_ref().map_or(0, String::len)
                + m.correlation_data.as_ref().map_or(0, Vec::len)
                + pairs_len(&m.user_properties);
            check_size(size, limit)?;
            TransformAnswer::Replace(message_from(m)?)
        }
    })
}

/// A replaced message must still be routable: its topic is validated like a
/// client's, and a response topic may not hold wildcards either.
fn message_from(m: types::Message) -> Result<PluginMessage, CallFailure> {
    let topic =
        TopicName::new(&m.topic).map_err(|e| CallFailure::Malformed(format!("replacement topic is invalid: {e}")))?;
    if let Some(response) = &m.response_topic {
        TopicName::new(response)
            .map_err(|e| CallFailure::Malformed(format!("replacement response topic is invalid: {e}")))?;
    }
    Ok(PluginMessage {
        topic,
        payload: Bytes::from(m.payload),
        qos: qos_from(m.qos),
        retain: m.retain,
        content_type: m.content_type,
        response_topic: m.response_topic,
        correlation_data: m.correlation_data.map(Bytes::from),
        user_properties: m.user_properties,
        message_expiry: m.message_expiry,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::codec::ProtocolVersion;
    use crate::identity::TlsIdentity;

    fn alice() -> ClientInfo {
        ClientInfo {
            client_id: "alice-sensor".into(),
            username: Some("alice".into()),
            peer_address: "192.0.2.7:40000".parse().expect("address"),
            listener: Arc::new("tls".to_owned()),
            protocol: ProtocolVersion::V5,
            tls: Some(Arc::new(TlsIdentity {
                subject: "CN=alice".into(),
                common_name: Some("alice".into()),
                sans: vec!["DNS:alice.example".into()],
                sha256_fingerprint: "ab".repeat(32),
                revocation: Default::default(),
            })),
            attributes: vec![("role".into(), "admin".into())].into(),
            claimed_username: Some("alice".into()),
        }
    }

    fn bob() -> ClientInfo {
        ClientInfo {
            client_id: "b".into(),
            username: None,
            claimed_username: None,
            peer_address: "[2001:db8::1]:1883".parse().expect("address"),
            listener: Arc::new("tcp".to_owned()),
            protocol: ProtocolVersion::V311,
            tls: None,
            attributes: Default::default(),
        }
    }

    /// What a fresh record of `c` holds, as text to compare.
    fn fresh(c: &ClientInfo) -> String {
        format!("{:?}", ClientScratch::default().fill(c))
    }

    #[test]
    fn a_reused_client_record_holds_only_the_new_client() {
        let mut scratch = ClientScratch::default();
        for client in [alice(), bob(), alice(), alice(), bob()] {
            assert_eq!(format!("{:?}", scratch.fill(&client)), fresh(&client));
        }
        let record = scratch.fill(&alice());
        assert_eq!(record.peer_address, "192.0.2.7:40000");
        assert_eq!(record.tls.as_ref().map(|t| t.subject.as_str()), Some("CN=alice"));
        let record = scratch.fill(&bob());
        assert_eq!(record.peer_address, "[2001:db8::1]:1883");
        assert!(record.tls.is_none() && record.attributes.is_empty() && record.username.is_none());
    }

    #[test]
    fn a_claimed_name_reaches_plugins_as_an_attribute_not_as_the_user_name() {
        let impostor = ClientInfo { username: None, claimed_username: Some("admin".into()), ..bob() };
        let record = ClientScratch::default().fill(&impostor).clone();
        assert_eq!(record.username, None);
        assert_eq!(record.attributes, [(CLAIMED_USERNAME_ATTRIBUTE.to_owned(), "admin".to_owned())]);
        let record = ClientScratch::default().fill(&alice()).clone();
        assert_eq!(record.username.as_deref(), Some("alice"));
        assert_eq!(record.attributes.last().map(|(k, _)| k.as_str()), Some(CLAIMED_USERNAME_ATTRIBUTE));
    }

    #[test]
    fn a_grant_cannot_set_reserved_attributes() {
        let grant = authn::AuthOutcome::Allow(authn::Grant {
            attributes: vec![
                (CLAIMED_USERNAME_ATTRIBUTE.into(), "root".into()),
                ("moat.other".into(), "x".into()),
                ("role".into(), "r".into()),
                (AUTH_DATA_ATTRIBUTE.into(), "6869".into()),
            ],
            username_override: None,
        });
        match authn_answer(grant, 1024) {
            Ok(AuthnAnswer::Allow { attributes, auth_data, .. }) => {
                assert_eq!(attributes, [("role".to_owned(), "r".to_owned())]);
                assert_eq!(auth_data.as_deref(), Some(&b"hi"[..]));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_reused_message_record_holds_only_the_new_message() {
        let topic = |t: &str| TopicName::new(t).expect("topic");
        let mut rich = PluginMessage::new(topic("a/b"), Bytes::from_static(b"hello"), QoS::ExactlyOnce, true);
        rich.content_type = Some("text/plain".into());
        rich.response_topic = Some("reply/here".into());
        rich.correlation_data = Some(Bytes::from_static(b"id-1"));
        rich.user_properties = vec![("k".into(), "v".into())];
        rich.message_expiry = Some(30);
        let plain = PluginMessage::new(topic("c"), Bytes::new(), QoS::AtMostOnce, false);
        let fresh = |m: &PluginMessage| format!("{:?}", MessageScratch::default().fill(m));
        let mut scratch = MessageScratch::default();
        for message in [&rich, &plain, &rich, &rich, &plain] {
            assert_eq!(format!("{:?}", scratch.fill(message)), fresh(message));
        }
        let record = scratch.fill(&rich);
        assert_eq!((record.topic.as_str(), record.payload.as_slice()), ("a/b", &b"hello"[..]));
        assert_eq!(record.correlation_data.as_deref(), Some(&b"id-1"[..]));
    }

    #[test]
    fn a_large_payload_buffer_is_not_kept() {
        let big = PluginMessage::new(
            TopicName::new("big").expect("topic"),
            Bytes::from(vec![0; KEPT_PAYLOAD_BYTES + 1]),
            QoS::AtMostOnce,
            false,
        );
        let mut scratch = MessageScratch::default();
        scratch.fill(&big);
        scratch.release_large();
        assert_eq!(scratch.record.payload.capacity(), 0);
    }
}
