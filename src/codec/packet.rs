//! The packets of MQTT 3.1.1 and 5.0 as plain data.
//!
//! One set of types serves both versions: fields that only exist in v5
//! (properties, reason codes) are simply left at their defaults for v3.1.1,
//! and the encoder leaves them out.

use bytes::Bytes;

use super::topic::{TopicFilter, TopicName};
use super::types::{PacketId, ProtocolVersion, QoS, ReasonCode};

/// Any MQTT control packet.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// Client request to connect.
    Connect(Box<Connect>),
    /// Connect acknowledgement.
    ConnAck(ConnAck),
    /// Application message.
    Publish(Publish),
    /// QoS 1 acknowledgement.
    PubAck(PubResp),
    /// QoS 2 part 1: publish received.
    PubRec(PubResp),
    /// QoS 2 part 2: publish release.
    PubRel(PubResp),
    /// QoS 2 part 3: publish complete.
    PubComp(PubResp),
    /// Subscribe request.
    Subscribe(Subscribe),
    /// Subscribe acknowledgement.
    SubAck(SubAck),
    /// Unsubscribe request.
    Unsubscribe(Unsubscribe),
    /// Unsubscribe acknowledgement.
    UnsubAck(UnsubAck),
    /// Keepalive request.
    PingReq,
    /// Keepalive response.
    PingResp,
    /// Disconnect notification (either direction in v5).
    Disconnect(Disconnect),
    /// v5 enhanced authentication exchange.
    Auth(Auth),
}

/// The CONNECT packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    /// Protocol version requested by the client.
    pub protocol: ProtocolVersion,
    /// Clean Session (3.1.1) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// The client identifier; may be empty (the server then assigns one).
    pub client_id: String,
    /// The will message, if the will flag was set.
    pub will: Option<Will>,
    /// User name, if the flag was set.
    pub username: Option<String>,
    /// Password, if the flag was set. Never logged.
    pub password: Option<Bytes>,
    /// CONNECT properties (v5).
    pub properties: Properties,
}

/// A will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq)]
pub struct Will {
    /// Topic the will is published to.
    pub topic: TopicName,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain flag.
    pub retain: bool,
    /// Will properties (v5): delay interval, expiry, content type, ...
    pub properties: Properties,
}

/// The CONNACK packet.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnAck {
    /// Whether the server resumed a stored session.
    pub session_present: bool,
    /// Reason code; mapped to a 3.1.1 return code by the encoder.
    pub reason: ReasonCode,
    /// CONNACK properties (v5).
    pub properties: Properties,
}

/// The PUBLISH packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// Redelivery flag.
    pub dup: bool,
    /// Delivery QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Topic name; empty only when a v5 topic alias stands in for it.
    pub topic: TopicName,
    /// Present exactly when `qos > 0`.
    pub packet_id: Option<PacketId>,
    /// PUBLISH properties (v5).
    pub properties: Properties,
    /// Application payload, shared and never copied on fan-out.
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Debug, Clone, PartialEq)]
pub struct PubResp {
    /// The packet being acknowledged.
    pub packet_id: PacketId,
    /// Reason code (v5); success for 3.1.1.
    pub reason: ReasonCode,
    /// Properties (v5): reason string and user properties only.
    pub properties: Properties,
}

impl PubResp {
    /// A successful acknowledgement without properties.
    pub fn success(packet_id: PacketId) -> PubResp {
        PubResp { packet_id, reason: ReasonCode::SUCCESS, properties: Properties::default() }
    }
}

/// What to do with retained messages when a subscription is made (v5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// Send them only if the subscription did not exist before.
    SendIfNew = 1,
    /// Never send retained messages for this subscription.
    DoNotSend = 2,
}

/// Per-filter subscription options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS the subscriber accepts.
    pub qos: QoS,
    /// v5: do not forward messages published by this same client.
    pub no_local: bool,
    /// v5: keep the retain flag as published instead of clearing it.
    pub retain_as_published: bool,
    /// v5: retained message handling.
    pub retain_handling: RetainHandling,
}

/// The SUBSCRIBE packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Properties (v5): subscription identifier and user properties.
    pub properties: Properties,
    /// At least one filter with its options [MQTT-3.8.3-3].
    pub filters: Vec<(TopicFilter, SubscriptionOptions)>,
}

/// The SUBACK packet.
#[derive(Debug, Clone, PartialEq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: PacketId,
    /// Properties (v5).
    pub properties: Properties,
    /// One reason code per filter; granted QoS 0..2 or a failure (>= 0x80).
    pub reasons: Vec<ReasonCode>,
}

/// The UNSUBSCRIBE packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Properties (v5): user properties.
    pub properties: Properties,
    /// At least one filter [MQTT-3.10.3-2].
    pub filters: Vec<TopicFilter>,
}

/// The UNSUBACK packet.
#[derive(Debug, Clone, PartialEq)]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE.
    pub packet_id: PacketId,
    /// Properties (v5).
    pub properties: Properties,
    /// One reason code per filter (v5 only; empty for 3.1.1).
    pub reasons: Vec<ReasonCode>,
}

/// The DISCONNECT packet.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Disconnect {
    /// Reason code (v5).
    pub reason: ReasonCode,
    /// Properties (v5): session expiry, reason string, server reference.
    pub properties: Properties,
}

/// The AUTH packet (v5 only).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Auth {
    /// 0x00 success, 0x18 continue authentication, 0x19 re-authenticate.
    pub reason: ReasonCode,
    /// Authentication method and data, reason string, user properties.
    pub properties: Properties,
}

/// Every MQTT 5 property. Which ones a packet may carry is checked by the
/// decoder; the encoder writes whichever are set.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Properties {
    /// 0x01 Payload Format Indicator.
    pub payload_format_indicator: Option<u8>,
    /// 0x02 Message Expiry Interval, seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03 Content Type.
    pub content_type: Option<String>,
    /// 0x08 Response Topic.
    pub response_topic: Option<TopicName>,
    /// 0x09 Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// 0x0B Subscription Identifier(s): several on an outgoing PUBLISH, at
    /// most one on SUBSCRIBE; never 0.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11 Session Expiry Interval, seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12 Assigned Client Identifier.
    pub assigned_client_identifier: Option<String>,
    /// 0x13 Server Keep Alive, seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15 Authentication Method.
    pub authentication_method: Option<String>,
    /// 0x16 Authentication Data.
    pub authentication_data: Option<Bytes>,
    /// 0x17 Request Problem Information (0 or 1).
    pub request_problem_information: Option<u8>,
    /// 0x18 Will Delay Interval, seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19 Request Response Information (0 or 1).
    pub request_response_information: Option<u8>,
    /// 0x1A Response Information.
    pub response_information: Option<String>,
    /// 0x1C Server Reference.
    pub server_reference: Option<String>,
    /// 0x1F Reason String.
    pub reason_string: Option<String>,
    /// 0x21 Receive Maximum (never 0).
    pub receive_maximum: Option<u16>,
    /// 0x22 Topic Alias Maximum.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23 Topic Alias (never 0).
    pub topic_alias: Option<u16>,
    /// 0x24 Maximum QoS (0 or 1).
    pub maximum_qos: Option<u8>,
    /// 0x25 Retain Available (0 or 1).
    pub retain_available: Option<u8>,
    /// 0x26 User Properties, in order, duplicates allowed.
    pub user_properties: Vec<(String, String)>,
    /// 0x27 Maximum Packet Size (never 0).
    pub maximum_packet_size: Option<u32>,
    /// 0x28 Wildcard Subscription Available (0 or 1).
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29 Subscription Identifiers Available (0 or 1).
    pub subscription_identifiers_available: Option<u8>,
    /// 0x2A Shared Subscription Available (0 or 1).
    pub shared_subscription_available: Option<u8>,
}

impl Properties {
    /// Whether no property is set. Field by field (the destructuring
    /// makes a new field a compile error here): comparing with a fresh
    /// `Properties::default()` cost several percent of a broker's CPU
    /// per message, as every PUBACK and every forwarded message asks.
    pub fn is_empty(&self) -> bool {
        let Properties {
            payload_format_indicator,
            message_expiry_interval,
            content_type,
            response_topic,
            correlation_data,
            subscription_identifiers,
            session_expiry_interval,
            assigned_client_identifier,
            server_keep_alive,
            authentication_method,
            authentication_data,
            request_problem_information,
            will_delay_interval,
            request_response_information,
            response_information,
            server_reference,
            reason_string,
            receive_maximum,
            topic_alias_maximum,
            topic_alias,
            maximum_qos,
            retain_available,
            user_properties,
            maximum_packet_size,
            wildcard_subscription_available,
            subscription_identifiers_available,
            shared_subscription_available,
        } = self;
        payload_format_indicator.is_none()
            && message_expiry_interval.is_none()
            && content_type.is_none()
            && response_topic.is_none()
            && correlation_data.is_none()
            && subscription_identifiers.is_empty()
            && session_expiry_interval.is_none()
            && assigned_client_identifier.is_none()
            && server_keep_alive.is_none()
            && authentication_method.is_none()
            && authentication_data.is_none()
            && request_problem_information.is_none()
            && will_delay_interval.is_none()
            && request_response_information.is_none()
            && response_information.is_none()
            && server_reference.is_none()
            && reason_string.is_none()
            && receive_maximum.is_none()
            && topic_alias_maximum.is_none()
            && topic_alias.is_none()
            && maximum_qos.is_none()
            && retain_available.is_none()
            && user_properties.is_empty()
            && maximum_packet_size.is_none()
            && wildcard_subscription_available.is_none()
            && subscription_identifiers_available.is_none()
            && shared_subscription_available.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_are_empty_until_one_is_set() {
        assert!(Properties::default().is_empty());
        let set = [
            Properties { subscription_identifiers: vec![1], ..Properties::default() },
            Properties { user_properties: vec![("k".into(), "v".into())], ..Properties::default() },
            Properties { shared_subscription_available: Some(0), ..Properties::default() },
            Properties { payload_format_indicator: Some(0), ..Properties::default() },
            Properties { correlation_data: Some(Bytes::new()), ..Properties::default() },
        ];
        for p in set {
            assert!(!p.is_empty(), "{p:?}");
        }
    }
}
