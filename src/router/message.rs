//! The routed application message: one allocation shared by every receiver.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::{Properties, QoS, TopicName};

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
