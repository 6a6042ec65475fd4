//! The message type family every layer passes around: the routed
//! application message ([`Message`], one allocation shared by every
//! receiver), one message on its way to one session ([`Delivery`]), its
//! place in the QoS 1/2 handshake ([`Inflight`]), and what a session
//! remembers of its subscriptions and owner. A leaf: the store persists
//! these and the session queues them, without either importing the other.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::{PacketId, Properties, QoS, SubscriptionOptions, TopicFilter, TopicName};

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
    /// kept here.
    pub properties: Properties,
    /// When the message expires (v5 Message Expiry Interval).
    pub expires_at: Option<Instant>,
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
            properties: Properties {
                payload_format_indicator: props.payload_format_indicator,
                content_type: props.content_type.clone(),
                response_topic: props.response_topic.clone(),
                correlation_data: props.correlation_data.clone(),
                user_properties: props.user_properties.clone(),
                ..Properties::default()
            },
        }
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
