//! What travels beside the payload on NATS: QoS, retain flag, expiry and
//! the v5 properties of a message, in one header value.
//!
//! The payload is the NATS payload as is (a `Bytes` handed over, never
//! copied) and the topic is the subject; everything else is `postcard`
//! behind a format byte, in base64 because header values are text lines.

use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec::{Properties, QoS, TopicName};
use crate::message::Message;

/// The header carrying the origin node's id.
pub const NODE_HEADER: &str = "Moat-Node";
/// The header carrying the publisher's client id, on QoS 1/2 messages
/// only: a kept session's No Local needs it (`queue`).
pub const CLIENT_HEADER: &str = "Moat-Client";
/// The header carrying the [`Envelope`].
pub const MESSAGE_HEADER: &str = "Moat-Msg";
/// The header marking a QoS 1/2 message published again because JetStream
/// did not answer for it in time (`outbound`): nodes take it from
/// JetStream only.
pub const RETRY_HEADER: &str = "Moat-Retry";

/// Version byte in front of the encoded envelope.
const FORMAT: u8 = 1;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Envelope<'a> {
    qos: u8,
    retain: bool,
    /// Expiry left when sent, in milliseconds.
    expiry_ms: Option<u64>,
    payload_format_indicator: Option<u8>,
    content_type: Option<&'a str>,
    response_topic: Option<&'a str>,
    correlation_data: Option<&'a [u8]>,
    #[serde(borrow)]
    user_properties: Vec<(&'a str, &'a str)>,
}

/// Makes the expiry of `message`, read from JetStream at `now`, count from
/// `published`, when JetStream stored it, not from when it was read.
pub fn stored_at(message: &mut Message, published: SystemTime, now: Instant) {
    let age = SystemTime::now().duration_since(published).unwrap_or_default();
    message.expires_at = message.expires_at.map(|at| at.checked_sub(age).unwrap_or(now));
}

/// The [`MESSAGE_HEADER`] value for `message`.
pub fn encode(message: &Message, now: Instant) -> String {
    let p = &message.properties;
    let envelope = Envelope {
        qos: message.qos as u8,
        retain: message.retain,
        expiry_ms: message
            .expires_at
            .map(|at| u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)),
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type.as_deref(),
        response_topic: p.response_topic.as_ref().map(TopicName::as_str),
        correlation_data: p.correlation_data.as_deref(),
        user_properties: p.user_properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
    };
    // Serializing plain values into a Vec cannot fail; were it to, the
    // receiver would refuse the bare format byte and drop the message.
    let bytes = postcard::to_extend(&envelope, vec![FORMAT]).unwrap_or_else(|_| vec![FORMAT]);
    STANDARD_NO_PAD.encode(bytes)
}

/// The message a peer node sent, or `None` when the header is not one this
/// version understands.
pub fn decode(topic: TopicName, payload: Bytes, header: &str, now: Instant) -> Option<Message> {
    let bytes = STANDARD_NO_PAD.decode(header).ok()?;
    let (&format, rest) = bytes.split_first()?;
    if format != FORMAT {
        return None;
    }
    let e: Envelope<'_> = postcard::from_bytes(rest).ok()?;
    let qos = match e.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return None,
    };
    let response_topic = match e.response_topic {
        Some(t) => Some(TopicName::new(t).ok()?),
        None => None,
    };
    Some(Message {
        topic,
        payload,
        qos,
        retain: e.retain,
        properties: Properties {
            payload_format_indicator: e.payload_format_indicator,
            content_type: e.content_type.map(str::to_owned),
            response_topic,
            correlation_data: e.correlation_data.map(Bytes::copy_from_slice),
            user_properties: e.user_properties.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            ..Properties::default()
        }
        .into(),
        expires_at: e.expiry_ms.map(|ms| now + Duration::from_millis(ms)),
        encoded: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_what_travels_with_a_message() {
        let props = Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            content_type: Some("text/plain".into()),
            response_topic: Some(TopicName::new("reply/here").expect("topic")),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("k".into(), "v\nwith newline".into())],
            ..Properties::default()
        };
        let topic = TopicName::new("a/b").expect("topic");
        let message = Message::new(topic.clone(), Bytes::from_static(b"hi"), QoS::AtLeastOnce, true, &props);
        // Read after the message's own clock reading, so time spent between
        // the two on a loaded machine shortens the expiry (which rounds up
        // to 60 again) rather than lengthening it past 60.
        let now = Instant::now();
        let header = encode(&message, now);
        assert!(!header.contains(['\r', '\n', ' ']), "a valid header value: {header}");
        let back = decode(topic, message.payload.clone(), &header, now).expect("decodes");
        assert_eq!((back.qos, back.retain, &back.payload[..]), (QoS::AtLeastOnce, true, &b"hi"[..]));
        assert_eq!(back.properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(back.properties.response_topic.as_ref().map(TopicName::as_str), Some("reply/here"));
        assert_eq!(back.properties.correlation_data.as_deref(), Some(&b"\x00\x01"[..]));
        assert_eq!(back.properties.user_properties, props.user_properties);
        assert_eq!(back.properties.payload_format_indicator, Some(1));
        assert_eq!(back.remaining_expiry(now), Some(60));
    }

    #[test]
    fn garbage_is_refused() {
        let topic = TopicName::new("a").expect("topic");
        assert!(decode(topic.clone(), Bytes::new(), "not base64!", Instant::now()).is_none());
        assert!(decode(topic.clone(), Bytes::new(), &STANDARD_NO_PAD.encode([9, 0]), Instant::now()).is_none());
        assert!(decode(topic, Bytes::new(), "", Instant::now()).is_none());
    }
}
