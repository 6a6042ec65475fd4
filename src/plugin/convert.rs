//! Conversions between the broker's types (`crate::auth`) and the generated
//! WIT types, and the checks on what a plugin answers: size and validity.

use std::time::Duration;

use bytes::Bytes;

use super::CallFailure;
use super::bindings::{authn, authz, transform, types};
use crate::auth::{AUTH_DATA_ATTRIBUTE, Action, ClientInfo, Credentials, PluginMessage};
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

pub(crate) fn client(c: &ClientInfo) -> types::ClientInfo {
    types::ClientInfo {
        client_id: c.client_id.clone(),
        username: c.username.clone(),
        peer_address: c.peer_address.to_string(),
        listener: c.listener.clone(),
        protocol_version: c.protocol.level(),
        tls: c.tls.as_ref().map(|t| types::TlsIdentity {
            subject: t.subject.clone(),
            sans: t.sans.clone(),
            sha256_fingerprint: t.sha256_fingerprint.clone(),
        }),
        attributes: c.attributes.clone(),
    }
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

pub(crate) fn message(m: &PluginMessage) -> types::Message {
    types::Message {
        topic: m.topic.as_str().to_owned(),
        payload: m.payload.to_vec(),
        qos: qos(m.qos),
        retain: m.retain,
        content_type: m.content_type.clone(),
        response_topic: m.response_topic.clone(),
        correlation_data: m.correlation_data.as_ref().map(|d| d.to_vec()),
        user_properties: m.user_properties.clone(),
        message_expiry: m.message_expiry,
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
/// the CONNACK (or AUTH) that ends the exchange.
fn split_auth_data(attributes: Attributes) -> Result<(Attributes, Option<Bytes>), CallFailure> {
    let (data, rest): (Vec<_>, Vec<_>) = attributes.into_iter().partition(|(k, _)| k == AUTH_DATA_ATTRIBUTE);
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
