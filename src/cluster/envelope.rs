//! What travels with a message on NATS besides its topic (the subject):
//! QoS, retain flag, expiry, the v5 properties, the origin node and (QoS
//! 1/2) the publisher's client id.
//!
//! Messages between nodes carry it in front of the payload ([`wrap`],
//! [`read`]): `MOAT`, a format byte, the [`Wrapped`] fields in `postcard`,
//! then the MQTT payload, so a NATS message has no headers (`PUB`, not
//! `HPUB`) unless a QoS 2 message needs JetStream's `Nats-Msg-Id`. The
//! NATS client turns every header section into a hash map of owned
//! strings on both ends, which cost more CPU than the rest of the
//! crossing (BENCHMARKS.md, "Cluster path: CPU per message"); the payload
//! is copied once behind the envelope instead, and the receiver takes it
//! as a slice of what it read, without a copy.
//!
//! The earlier format, in headers ([`MESSAGE_HEADER`] in base64 beside
//! [`NODE_HEADER`] and [`CLIENT_HEADER`]), is still read, as JetStream may
//! hold messages in it, and is what retained messages are written in
//! ([`encode`], [`decode`]). Nodes before the payload format ignore
//! messages in it, so a node sends in headers ([`headers`]) while
//! `cluster.wire_format = "headers"`: a cluster is upgraded node by node
//! with it, then switched (README, Clustering).

use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::codec::{Properties, QoS, TopicName};
use crate::message::{Message, MessageId};

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

/// Version byte in front of the encoded envelope (header format).
const FORMAT: u8 = 1;
/// What a payload carrying an envelope starts with: no MQTT client
/// publishes on Moat's subjects, but a NATS client could.
const MAGIC: &[u8; 4] = b"MOAT";
/// Version byte after [`MAGIC`].
const WRAPPED: u8 = 2;

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

/// What [`wrap`] puts in front of a payload.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Wrapped<'a> {
    /// The origin node's id (peers skip their own messages).
    node: &'a str,
    /// The publisher's client id (QoS 1/2: a kept session's No Local).
    publisher: Option<&'a str>,
    /// Published again because JetStream did not answer in time
    /// (`outbound`): nodes take it from JetStream only.
    retry: bool,
    #[serde(borrow)]
    envelope: Envelope<'a>,
}

/// A message read from NATS, with what it says of where it came from.
#[derive(Debug)]
pub struct Received {
    pub message: Message,
    /// The origin node's id (UTF-8; a slice of what was read).
    pub origin: Bytes,
    /// The publisher's client id, on QoS 1/2 messages.
    pub publisher: Option<Bytes>,
    /// Published again for JetStream's sake ([`RETRY_HEADER`]).
    pub retry: bool,
}

/// The NATS payload for `message` from node `node`: the envelope, then the
/// MQTT payload, written at the end of `block` and split off it (so many
/// messages share one allocation).
pub fn wrap(
    block: &mut BytesMut,
    node: &str,
    message: &Message,
    publisher: Option<&str>,
    retry: bool,
    now: Instant,
) -> Bytes {
    let wrapped = Wrapped { node, publisher, retry, envelope: envelope(message, now) };
    let mut out = std::mem::take(block);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[WRAPPED]);
    // Serializing plain values cannot fail; were it to, the payload would
    // go without its envelope and the receiver ignore it.
    let mut out = postcard::to_extend(&wrapped, out).unwrap_or_default();
    out.extend_from_slice(&message.payload);
    let wire = out.split().freeze();
    *block = out;
    wire
}

/// The message in `nats` (on `topic`'s subject), in either format, or
/// `None` when it is in none this version understands.
pub fn read(topic: TopicName, nats: async_nats::Message, now: Instant) -> Option<Received> {
    let headers = nats.headers.as_ref();
    let id = headers
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map_or(MessageId::NONE, |id| MessageId::from_header(id.as_str()));
    if let Some(header) = headers.and_then(|h| h.get(MESSAGE_HEADER)) {
        let text = |name| headers.and_then(|h| h.get(name)).map(|v| Bytes::copy_from_slice(v.as_str().as_bytes()));
        let mut message = decode(topic, nats.payload, header.as_str(), now)?;
        message.id = id;
        return Some(Received {
            origin: text(NODE_HEADER)?,
            publisher: text(CLIENT_HEADER),
            retry: headers.and_then(|h| h.get(RETRY_HEADER)).is_some(),
            message,
        });
    }
    let payload = nats.payload;
    let rest = payload.strip_prefix(MAGIC)?;
    let (&format, rest) = rest.split_first()?;
    if format != WRAPPED {
        return None;
    }
    let (w, body): (Wrapped<'_>, _) = postcard::take_from_bytes(rest).ok()?;
    let start = payload.len() - body.len();
    let (origin, publisher) =
        (payload.slice_ref(w.node.as_bytes()), w.publisher.map(|p| payload.slice_ref(p.as_bytes())));
    let mut message = open(topic, payload.slice(start..), w.envelope, now)?;
    message.id = id;
    Some(Received { message, origin, publisher, retry: w.retry })
}

/// Makes the expiry of `message`, read from JetStream at `now`, count from
/// `published`, when JetStream stored it, not from when it was read.
pub fn stored_at(message: &mut Message, published: SystemTime, now: Instant) {
    let age = SystemTime::now().duration_since(published).unwrap_or_default();
    message.expires_at = message.expires_at.map(|at| at.checked_sub(age).unwrap_or(now));
}

/// The headers of `message` in the header format (`cluster.wire_format
/// = "headers"`), which nodes before the payload format read.
pub fn headers(
    node: &str,
    message: &Message,
    publisher: Option<&str>,
    retry: bool,
    now: Instant,
) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(NODE_HEADER, node);
    headers.insert(MESSAGE_HEADER, encode(message, now).as_str());
    if let Some(publisher) = publisher {
        headers.insert(CLIENT_HEADER, publisher);
    }
    if retry {
        headers.insert(RETRY_HEADER, "1");
    }
    headers
}

/// The [`MESSAGE_HEADER`] value for `message`.
pub fn encode(message: &Message, now: Instant) -> String {
    // Serializing plain values into a Vec cannot fail; were it to, the
    // receiver would refuse the bare format byte and drop the message.
    let bytes = postcard::to_extend(&envelope(message, now), vec![FORMAT]).unwrap_or_else(|_| vec![FORMAT]);
    STANDARD_NO_PAD.encode(bytes)
}

/// What travels of `message`, sent at `now`.
fn envelope(message: &Message, now: Instant) -> Envelope<'_> {
    let p = &message.properties;
    Envelope {
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
    }
}

/// The message a peer node sent, or `None` when the header is not one this
/// version understands.
pub fn decode(topic: TopicName, payload: Bytes, header: &str, now: Instant) -> Option<Message> {
    let bytes = STANDARD_NO_PAD.decode(header).ok()?;
    let (&format, rest) = bytes.split_first()?;
    if format != FORMAT {
        return None;
    }
    open(topic, payload, postcard::from_bytes(rest).ok()?, now)
}

/// The message an envelope describes, or `None` when it is invalid.
fn open(topic: TopicName, payload: Bytes, e: Envelope<'_>, now: Instant) -> Option<Message> {
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
        // From the `Nats-Msg-Id` header, if any (`read`).
        id: MessageId::NONE,
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

    /// What a node receives when `payload` (and `headers`) arrive on the
    /// subject of `a/b`.
    fn nats(payload: Bytes, headers: Option<async_nats::HeaderMap>) -> async_nats::Message {
        async_nats::Message {
            subject: "moat.t.a.b".into(),
            reply: None,
            length: payload.len(),
            payload,
            headers,
            status: None,
            description: None,
        }
    }

    #[test]
    fn wrapped_round_trip_keeps_message_origin_publisher_and_retry() {
        let props = Properties {
            content_type: Some("text/plain".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("k".into(), "v".into())],
            message_expiry_interval: Some(60),
            ..Properties::default()
        };
        let topic = TopicName::new("a/b").expect("topic");
        // A payload that itself starts like an envelope travels as is.
        let payload = Bytes::from_static(b"MOAT\x02 payload");
        let message = Message::new(topic.clone(), payload.clone(), QoS::ExactlyOnce, true, &props);
        let now = Instant::now();
        let wire = wrap(&mut BytesMut::new(), "node-a", &message, Some("pub-1"), true, now);
        let got = read(topic.clone(), nats(wire, None), now).expect("reads");
        assert_eq!((&got.origin[..], got.publisher.as_deref(), got.retry), (&b"node-a"[..], Some(&b"pub-1"[..]), true));
        let back = got.message;
        assert_eq!((back.qos, back.retain, &back.payload), (QoS::ExactlyOnce, true, &payload));
        assert_eq!(back.properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(back.properties.correlation_data.as_deref(), Some(&b"\x00\x01"[..]));
        assert_eq!(back.properties.user_properties, props.user_properties);
        assert_eq!(back.remaining_expiry(now), Some(60));

        let plain = Message::new(topic.clone(), Bytes::new(), QoS::AtMostOnce, false, &Properties::default());
        let got =
            read(topic, nats(wrap(&mut BytesMut::new(), "b", &plain, None, false, now), None), now).expect("reads");
        assert_eq!((got.publisher, got.retry, got.message.payload.len()), (None, false, 0));
    }

    /// A QoS 2 message's id comes back from its `Nats-Msg-Id`, in either
    /// format; a message without the header has none.
    #[test]
    fn the_message_id_travels_in_its_header() {
        let topic = TopicName::new("a/b").expect("topic");
        let now = Instant::now();
        let message =
            Message::new(topic.clone(), Bytes::from_static(b"x"), QoS::ExactlyOnce, false, &Properties::default());
        assert!(!message.id.is_none(), "a QoS 2 message is made with an id");
        let mut with_id = async_nats::HeaderMap::new();
        with_id.insert(async_nats::header::NATS_MESSAGE_ID, message.id.header().as_str());
        let wrapped = wrap(&mut BytesMut::new(), "a", &message, None, false, now);
        let got = read(topic.clone(), nats(wrapped.clone(), Some(with_id.clone())), now).expect("reads");
        assert_eq!(got.message.id, message.id);
        assert!(read(topic.clone(), nats(wrapped, None), now).expect("reads").message.id.is_none());
        let mut headers = super::headers("a", &message, None, false, now);
        headers.insert(async_nats::header::NATS_MESSAGE_ID, message.id.header().as_str());
        let got = read(topic, nats(message.payload.clone(), Some(headers)), now).expect("reads");
        assert_eq!(got.message.id, message.id);
    }

    #[test]
    fn messages_wrapped_in_one_block_stay_apart() {
        let topic = TopicName::new("a/b").expect("topic");
        let now = Instant::now();
        let mut block = BytesMut::with_capacity(64);
        let wires: Vec<Bytes> = (0..50u8)
            .map(|i| {
                let payload = Bytes::from(vec![i; usize::from(i)]);
                let message = Message::new(topic.clone(), payload, QoS::AtLeastOnce, false, &Properties::default());
                wrap(&mut block, "n", &message, None, false, now)
            })
            .collect();
        for (i, wire) in (0..50u8).zip(wires) {
            let got = read(topic.clone(), nats(wire, None), now).expect("reads");
            assert_eq!(got.message.payload, vec![i; usize::from(i)]);
        }
    }

    #[test]
    fn header_format_is_still_read() {
        let topic = TopicName::new("a/b").expect("topic");
        let message =
            Message::new(topic.clone(), Bytes::from_static(b"hi"), QoS::AtLeastOnce, false, &Properties::default());
        let now = Instant::now();
        // What nodes before the payload format send, and what
        // `wire_format = "headers"` sends.
        let headers = headers("old", &message, Some("pub-1"), true, now);
        let got = read(topic.clone(), nats(message.payload.clone(), Some(headers)), now).expect("reads");
        assert_eq!((&got.origin[..], got.publisher.as_deref(), got.retry), (&b"old"[..], Some(&b"pub-1"[..]), true));
        assert_eq!((got.message.qos, &got.message.payload[..]), (QoS::AtLeastOnce, &b"hi"[..]));
        // Without its node header it is no message of a node.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(MESSAGE_HEADER, encode(&message, now).as_str());
        assert!(read(topic, nats(message.payload.clone(), Some(headers)), now).is_none());
    }

    #[test]
    fn unwrapped_or_damaged_payloads_are_refused() {
        let topic = TopicName::new("a/b").expect("topic");
        let message =
            Message::new(topic.clone(), Bytes::from_static(b"hi"), QoS::AtLeastOnce, false, &Properties::default());
        let now = Instant::now();
        let wire = wrap(&mut BytesMut::new(), "a", &message, None, false, now);
        let mut other_format = wire.to_vec();
        other_format[4] = 3;
        for payload in [Bytes::from_static(b"hello"), Bytes::new(), wire.slice(..6), Bytes::from(other_format)] {
            assert!(read(topic.clone(), nats(payload.clone(), None), now).is_none(), "{payload:?}");
        }
    }

    #[test]
    fn garbage_is_refused() {
        let topic = TopicName::new("a").expect("topic");
        assert!(decode(topic.clone(), Bytes::new(), "not base64!", Instant::now()).is_none());
        assert!(decode(topic.clone(), Bytes::new(), &STANDARD_NO_PAD.encode([9, 0]), Instant::now()).is_none());
        assert!(decode(topic, Bytes::new(), "", Instant::now()).is_none());
    }
}
