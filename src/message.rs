//! The message type family every layer passes around: the routed
//! application message ([`Message`], one allocation shared by every
//! receiver), one message on its way to one session ([`Delivery`]), its
//! place in the QoS 1/2 handshake ([`Inflight`]), and what a session
//! remembers of its subscriptions and owner. A leaf: the store persists
//! these and the session queues them, without either importing the other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::codec::{
    Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, SubscriptionOptions, TopicFilter, TopicName,
};

/// An application message as the broker routes it. Built once per PUBLISH
/// and shared behind an `Arc` by every subscriber queue, so fan-out never
/// copies the payload.
#[derive(Debug, Clone)]
pub struct Message {
    /// Topic the message was published to (aliases already resolved).
    pub topic: TopicName,
    /// Payload bytes.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// The properties forwarded to receivers: payload format, content type,
    /// response topic, correlation data and user properties. Per-hop
    /// properties (topic alias, subscription identifiers, expiry) are not
    /// kept here. Read through `Deref`; boxed, and absent when none is set.
    pub properties: Forwarded,
    /// When the message expires (v5 Message Expiry Interval).
    pub expires_at: Option<Instant>,
    /// The message as a QoS 0 PUBLISH, encoded by the first receiver that
    /// needs it ([`Message::qos0_packet`]).
    pub encoded: EncodedOnce,
    /// A QoS 2 message's id across nodes and runs ([`MessageId::NONE`] at
    /// QoS 0/1, and for a QoS 2 message a peer sent without one).
    pub id: MessageId,
}

/// A QoS 2 message's id across a cluster's nodes and runs: the
/// `Nats-Msg-Id` it is stored in JetStream under, so that a publish sent
/// again is stored once, and by which a kept session tells a copy of a
/// message it already had (`cluster::queue::Taken`). Made with the message
/// ([`Message::new`]), so the copy this node routes and the one it sends
/// to JetStream carry the same id. Odd (a stream sequence is kept as an
/// even key beside it), and 0 for none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MessageId(u64);

impl MessageId {
    /// No id.
    pub const NONE: MessageId = MessageId(0);

    /// A fresh id: counted up from a random start per process, so no other
    /// node or run repeats it (two processes' ranges would have to meet
    /// within 2^63).
    pub fn next() -> MessageId {
        static START: OnceLock<u64> = OnceLock::new();
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let start = *START.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            // A hasher under the process's random keys, of nothing: 64
            // random bits.
            std::hash::RandomState::new().build_hasher().finish()
        });
        MessageId((start.wrapping_add(COUNT.fetch_add(1, Ordering::Relaxed)) << 1) | 1)
    }

    /// The id a `Nats-Msg-Id` names: the 16 hex digits this version sends
    /// ([`MessageId::header`]), or a hash of any other text (a node before
    /// it counted `{run}.{n}` ids of its own).
    pub fn from_header(text: &str) -> MessageId {
        if text.len() == 16
            && let Ok(id) = u64::from_str_radix(text, 16)
            && id & 1 == 1
        {
            return MessageId(id);
        }
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        text.hash(&mut hasher);
        MessageId(hasher.finish() | 1)
    }

    /// The `Nats-Msg-Id` of this id: 16 hex digits.
    pub fn header(self) -> String {
        format!("{:016x}", self.0)
    }

    /// The id as a number (odd), 0 for none.
    pub fn get(self) -> u64 {
        self.0
    }

    /// Whether this is no id.
    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}

/// The properties a message forwards ([`Message::properties`]), boxed and
/// only when one is set: most messages carry none, and a `Properties` is
/// several hundred bytes that every retained or queued message would
/// otherwise hold (issue 25). Reads as a `Properties` (empty when absent).
#[derive(Clone, Default, PartialEq)]
pub struct Forwarded(Option<Box<Properties>>);

impl Forwarded {
    /// The properties as an owned value, to build a packet from.
    pub fn to_properties(&self) -> Properties {
        self.0.as_deref().cloned().unwrap_or_default()
    }

    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl From<Properties> for Forwarded {
    fn from(properties: Properties) -> Forwarded {
        Forwarded((!properties.is_empty()).then(|| Box::new(properties)))
    }
}

impl std::ops::Deref for Forwarded {
    type Target = Properties;

    fn deref(&self) -> &Properties {
        static EMPTY: std::sync::LazyLock<Properties> = std::sync::LazyLock::new(Properties::default);
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl std::fmt::Debug for Forwarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// A message's QoS 0 PUBLISH, encoded once per protocol version and shared
/// by every receiver of that version: fan-out copies these bytes into each
/// connection's write buffer instead of building and encoding a packet per
/// delivery (issue 25). A clone starts empty, so a message changed after
/// cloning can never send the bytes of the original. Boxed on first use:
/// a message never delivered at QoS 0 (most retained ones) holds 16 bytes
/// for it, not 80.
#[derive(Default)]
pub struct EncodedOnce(OnceLock<Box<[OnceLock<Bytes>; 2]>>);

impl Clone for EncodedOnce {
    fn clone(&self) -> EncodedOnce {
        EncodedOnce::default()
    }
}

impl std::fmt::Debug for EncodedOnce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncodedOnce")
    }
}

impl Message {
    /// Builds a routed message from a PUBLISH's parts, keeping only the
    /// properties that travel with the message [MQTT-3.3.2-*].
    pub fn new(topic: TopicName, payload: Bytes, qos: QoS, retain: bool, props: &Properties) -> Message {
        let now = Instant::now();
        Message {
            topic,
            payload,
            qos,
            retain,
            expires_at: props.message_expiry_interval.map(|s| now + Duration::from_secs(u64::from(s))),
            properties: if forwards_any(props) {
                Properties {
                    payload_format_indicator: props.payload_format_indicator,
                    content_type: props.content_type.clone(),
                    response_topic: props.response_topic.clone(),
                    correlation_data: props.correlation_data.clone(),
                    user_properties: props.user_properties.clone(),
                    ..Properties::default()
                }
                .into()
            } else {
                Forwarded::default()
            },
            encoded: EncodedOnce::default(),
            id: if qos == QoS::ExactlyOnce { MessageId::next() } else { MessageId::NONE },
        }
    }

    /// The message as a QoS 0 PUBLISH for `version`, retain flag clear
    /// (the receiver's flag is bit 0 of the first byte), encoded on first
    /// use. `None` when the packet differs per receiver or moment (v5 with
    /// an expiry, whose remaining interval is sent) or cannot be encoded;
    /// v5 subscription identifiers are the caller's to rule out.
    pub fn qos0_packet(&self, version: ProtocolVersion) -> Option<&Bytes> {
        if version.is_v5() && self.expires_at.is_some() {
            return None;
        }
        let slot = &self.encoded.0.get_or_init(Box::default)[usize::from(version.is_v5())];
        if let Some(bytes) = slot.get() {
            return Some(bytes);
        }
        let bytes = self.encode_qos0(version)?;
        Some(slot.get_or_init(|| bytes))
    }

    /// [`Message::qos0_packet`] for a message that goes to one receiver
    /// now (a retained message sent to a new subscription): the shared
    /// bytes if some receiver already had them encoded, else encoded for
    /// this send and not kept, so that the retained store does not end up
    /// holding a second copy of every message it sent (issue 25).
    pub fn qos0_packet_unshared(&self, version: ProtocolVersion) -> Option<Bytes> {
        if version.is_v5() && self.expires_at.is_some() {
            return None;
        }
        let shared = self.encoded.0.get().and_then(|slots| slots[usize::from(version.is_v5())].get());
        match shared {
            Some(bytes) => Some(bytes.clone()),
            None => self.encode_qos0(version),
        }
    }

    /// The message as a QoS 0 PUBLISH for `version`, retain clear.
    fn encode_qos0(&self, version: ProtocolVersion) -> Option<Bytes> {
        if !version.is_v5() || self.properties.is_empty() {
            // The common case: no properties to carry, no packet to build.
            return crate::codec::encode_qos0(self.topic.as_str(), &self.payload, version).ok();
        }
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: self.topic.clone(),
            packet_id: None,
            properties: if version.is_v5() { self.properties.to_properties() } else { Properties::default() },
            payload: self.payload.clone(),
        };
        let mut buf = BytesMut::new();
        crate::codec::encode(&Packet::Publish(publish), version, &mut buf).ok()?;
        Some(buf.freeze())
    }

    /// Whether the message has outlived its expiry interval.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The expiry interval left, in whole seconds, to forward [MQTT-3.3.2-6].
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            // Round up so a message with time left is never forwarded as 0.
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }
}

/// A message in a set keyed by its topic (the retained store's): the
/// message's own topic is the key, so an entry is one pointer instead of
/// a second `TopicName` beside it (issue 25: bytes per retained message).
/// Replace an entry with `HashSet::replace`: `insert` keeps the old one.
#[derive(Debug, Clone)]
pub struct ByTopic(pub Arc<Message>);

impl std::borrow::Borrow<str> for ByTopic {
    fn borrow(&self) -> &str {
        self.0.topic.as_str()
    }
}

impl std::hash::Hash for ByTopic {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `str` hashes, which `Borrow<str>` requires.
        self.0.topic.as_str().hash(state);
    }
}

impl PartialEq for ByTopic {
    fn eq(&self, other: &ByTopic) -> bool {
        self.0.topic == other.0.topic
    }
}

impl Eq for ByTopic {}

/// Whether `props` sets any property a message forwards.
fn forwards_any(props: &Properties) -> bool {
    props.payload_format_indicator.is_some()
        || props.content_type.is_some()
        || props.response_topic.is_some()
        || props.correlation_data.is_some()
        || !props.user_properties.is_empty()
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub message: Arc<Message>,
    /// QoS for this receiver: the lower of the published and granted QoS.
    pub qos: QoS,
    /// Retain flag as this receiver sees it (Retain As Published, or a
    /// retained message sent because of a new subscription).
    pub retain: bool,
    /// v5 subscription identifiers of every matching subscription.
    pub subscription_ids: Vec<u32>,
    /// The key under which the store keeps this delivery for its session
    /// (a QoS 1/2 message for a session that outlives its connection), so
    /// the acknowledgement that completes it can delete it.
    pub stored: Option<u64>,
    /// In a cluster, for a message JetStream keeps for this session: what
    /// acknowledges it there once the client has it. Boxed: most
    /// deliveries have none, and every queued one carries the field.
    pub jetstream: Option<Box<JetStreamAck>>,
    /// The shared subscription (`$share/{group}/{filter}`) that chose this
    /// session for the message, if one did: should the session end (or
    /// stay away too long) before its client has the message, it goes to
    /// another member of that group instead of being lost. Shared with
    /// the subscription: one pointer per queued message.
    pub share: Option<Arc<TopicFilter>>,
}

impl Delivery {
    /// Whether this is a share group's message that the client has not
    /// yet received (for QoS 2: has not answered with PUBREC), and so
    /// goes to another member if this one leaves. QoS 0 never does.
    pub(crate) fn redispatchable(&self) -> bool {
        self.share.is_some() && self.qos != QoS::AtMostOnce
    }
}

/// How to acknowledge a message to JetStream: the stream sequence it is
/// stored under (a redelivery carries the same) and the reply subject of
/// its latest delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamAck {
    /// Stream sequence.
    pub seq: u64,
    /// Subject an acknowledgement is published on.
    pub reply: Arc<str>,
}

/// Where an outgoing QoS 1/2 message is in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightState {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    AwaitPubAck,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    AwaitPubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitPubComp,
}

/// An outgoing QoS 1/2 message that the client has not finished
/// acknowledging; resent with DUP on session resume.
#[derive(Debug, Clone)]
pub struct Inflight {
    /// Packet identifier it was sent with.
    pub packet_id: PacketId,
    /// The delivery.
    pub delivery: Delivery,
    /// Handshake position.
    pub state: InflightState,
}

/// Whom a session belongs to: the verified user name of the connection
/// that attached it last (`None` inside: an anonymous client). With
/// `[auth] bind_sessions`, another user may not take the session over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner(pub Option<String>);

/// A subscription as the session remembers it, to restore or remove it.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// Options granted (QoS already capped).
    pub options: SubscriptionOptions,
    /// v5 subscription identifier.
    pub id: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(expiry: Option<u32>) -> Message {
        let topic = TopicName::new("a/b").expect("a valid topic");
        let props = Properties {
            message_expiry_interval: expiry,
            content_type: Some("text/plain".into()),
            ..Properties::default()
        };
        Message::new(topic, Bytes::from_static(b"hello"), QoS::AtLeastOnce, true, &props)
    }

    #[test]
    fn the_shared_qos0_packet_decodes_to_the_message() {
        let m = message(None);
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let mut bytes = BytesMut::from(&m.qos0_packet(version).expect("encodable")[..]);
            let Ok(Some(Packet::Publish(p))) = crate::codec::decode(&mut bytes, version, 1 << 20) else {
                panic!("not a PUBLISH")
            };
            assert_eq!((p.qos, p.retain, p.dup, p.packet_id), (QoS::AtMostOnce, false, false, None));
            assert_eq!((p.topic.as_str(), &p.payload[..]), ("a/b", &b"hello"[..]));
            let content_type = version.is_v5().then(|| "text/plain".to_owned());
            assert_eq!(p.properties.content_type, content_type);
        }
        // The same bytes for every receiver, and none for a changed clone.
        let first = m.qos0_packet(ProtocolVersion::V311).expect("encodable").as_ptr();
        assert_eq!(m.qos0_packet(ProtocolVersion::V311).expect("encodable").as_ptr(), first);
        assert!(m.clone().encoded.0.get().is_none());
        let once = message(None);
        let unshared = once.qos0_packet_unshared(ProtocolVersion::V311).expect("encodable");
        assert!(once.encoded.0.get().is_none(), "a retained send keeps no copy");
        assert_eq!(unshared, m.qos0_packet(ProtocolVersion::V311).expect("encodable"));
    }

    #[test]
    fn the_shared_qos0_packet_is_what_the_encoder_writes() {
        let topic = TopicName::new("a/b").expect("a valid topic");
        for (props, payload) in
            [(Properties::default(), &b"x"[..]), (message(None).properties.to_properties(), &[7u8; 300][..])]
        {
            let m = Message::new(topic.clone(), Bytes::copy_from_slice(payload), QoS::AtLeastOnce, true, &props);
            for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
                let publish = Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: false,
                    topic: topic.clone(),
                    packet_id: None,
                    properties: if version.is_v5() { props.clone() } else { Properties::default() },
                    payload: m.payload.clone(),
                };
                let mut expected = BytesMut::new();
                crate::codec::encode(&Packet::Publish(publish), version, &mut expected).expect("encodable");
                assert_eq!(m.qos0_packet(version).expect("encodable")[..], expected[..], "{version:?}");
            }
        }
    }

    /// Ids are odd, never repeat within a process, and read back from the
    /// header they are sent as; an older node's id text is hashed, the
    /// same way each time.
    #[test]
    fn message_ids_are_unique_odd_and_read_back() {
        let ids: std::collections::HashSet<MessageId> = (0..1000).map(|_| MessageId::next()).collect();
        assert_eq!(ids.len(), 1000);
        for id in ids {
            assert!(id.get() & 1 == 1);
            assert_eq!(MessageId::from_header(&id.header()), id);
        }
        let old = MessageId::from_header("moat-0123456789abcdef.17");
        assert!(!old.is_none() && old.get() & 1 == 1);
        assert_eq!(old, MessageId::from_header("moat-0123456789abcdef.17"));
        assert_ne!(old, MessageId::from_header("moat-0123456789abcdef.18"));
        let topic = TopicName::new("t").expect("valid");
        let qos1 = Message::new(topic, Bytes::new(), QoS::AtLeastOnce, false, &Properties::default());
        assert!(qos1.id.is_none(), "only QoS 2 messages carry one");
    }

    #[test]
    fn a_message_stays_small() {
        // Every retained and queued message is one (issue 25: bytes per
        // retained message); a property set costs a box of its own.
        let size = std::mem::size_of::<Message>();
        assert!(size <= 104, "a message takes {size} bytes");
        assert!(message(None).properties.content_type.is_some(), "kept when set");
        let topic = TopicName::new("t").expect("valid");
        let bare = Message::new(topic, Bytes::new(), QoS::AtMostOnce, false, &Properties::default());
        assert!(bare.properties.is_empty() && bare.properties.user_properties.is_empty());
    }

    #[test]
    fn a_v5_message_with_an_expiry_is_encoded_per_delivery() {
        let m = message(Some(60));
        assert!(m.qos0_packet(ProtocolVersion::V5).is_none());
        assert!(m.qos0_packet(ProtocolVersion::V311).is_some());
    }
}
