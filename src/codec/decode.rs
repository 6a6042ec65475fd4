//! Packet decoding: the fixed header, the size limit, and the dispatch to
//! the per-packet decoders in [`super::decode_body`].

use bytes::{Buf, BytesMut};

use super::decode_body;
use super::packet::Packet;
use super::types::{ProtocolVersion, ReasonCode};
use super::wire::{Reader, VarInt, parse_varint};

/// Why a packet could not be decoded.
///
/// Each variant is specific enough to pick the v5 reason code for the
/// CONNACK or DISCONNECT that the connection sends before closing (see
/// [`DecodeError::reason_code`]). After any error the buffer's position is
/// unspecified: the connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The fixed header's remaining length runs past four bytes or is not
    /// minimally encoded [MQTT-1.5.5-1]. (0x81)
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    /// A variable byte integer inside the body (property length, property
    /// identifier, subscription identifier) is too long or not minimal. (0x81)
    #[error("malformed variable byte integer")]
    MalformedVariableInteger,
    /// The whole packet would exceed the caller's maximum packet size;
    /// reported from the fixed header alone. (0x95)
    #[error("packet exceeds the maximum packet size")]
    PacketTooLarge,
    /// Packet type 0, or 15 (AUTH) on a 3.1.1 connection. (0x81)
    #[error("unknown packet type")]
    UnknownPacketType,
    /// Reserved bits set: fixed header flags [MQTT-2.1.3-1], the CONNECT
    /// reserved flag [MQTT-3.1.2-3] or CONNACK's reserved flags. (0x81)
    #[error("reserved flags are set")]
    ReservedFlags,
    /// A QoS field holds 3 (PUBLISH, will QoS, subscription options). (0x81)
    #[error("invalid QoS")]
    InvalidQoS,
    /// DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]. (0x81)
    #[error("DUP flag set on a QoS 0 publish")]
    DupOnQoS0,
    /// CONNECT names a protocol other than MQTT (or MQTT 3.1's `MQIsdp`).
    /// The peer may not speak MQTT at all, so close without a CONNACK.
    /// (0x81)
    #[error("invalid protocol name")]
    InvalidProtocolName,
    /// CONNECT asks for a protocol level other than 4 or 5 (MQTT 3.1's
    /// `MQIsdp` level 3 included); carries the level. Answer with CONNACK
    /// 0x84, which the 3.1.1 encoder turns into return code 1. (0x84)
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// Inconsistent CONNECT flags: will QoS or retain without the will flag
    /// [MQTT-3.1.2-11], [MQTT-3.1.2-15], or a password without a user name
    /// in 3.1.1 [MQTT-3.1.2-22]. (0x81)
    #[error("invalid connect flags")]
    InvalidConnectFlags,
    /// A string is not valid UTF-8 or contains U+0000 [MQTT-1.5.4-1],
    /// [MQTT-1.5.4-2]. (0x81)
    #[error("invalid UTF-8 string")]
    InvalidUtf8,
    /// The packet's fields need more bytes than its remaining length. (0x81)
    #[error("packet shorter than its contents")]
    Truncated,
    /// Bytes left over after the packet's last field. (0x81)
    #[error("trailing bytes after the packet contents")]
    TrailingBytes,
    /// A packet identifier of 0 [MQTT-2.2.1-3]. (0x81)
    #[error("packet identifier is zero")]
    ZeroPacketId,
    /// Reserved bits set in subscription options [MQTT-3.8.3-5], or any bit
    /// beyond QoS in 3.1.1 [MQTT-3.8.3-4] (3.1.1). (0x81)
    #[error("invalid subscription options")]
    InvalidSubscriptionOptions,
    /// Retain handling 3, a protocol error in v5 section 3.8.3.1. (0x82)
    #[error("invalid retain handling")]
    InvalidRetainHandling,
    /// No Local on a shared subscription [MQTT-3.8.3-4]. (0x82)
    #[error("no local on a shared subscription")]
    NoLocalOnSharedSubscription,
    /// SUBSCRIBE or UNSUBSCRIBE without a filter [MQTT-3.8.3-3],
    /// [MQTT-3.10.3-2], or SUBACK/UNSUBACK without a reason code. (0x82)
    #[error("empty payload")]
    EmptyPayload,
    /// A reason or return code not defined for this packet type. (0x81)
    #[error("invalid reason code")]
    InvalidReasonCode,
    /// A property identifier the specification does not define. (0x81)
    #[error("unknown property")]
    UnknownProperty,
    /// A property not valid for this packet type; section 2.2.2.2 makes
    /// that a malformed packet. (0x81)
    #[error("property not allowed in this packet")]
    PropertyNotAllowed,
    /// A property that may appear once appears twice. (0x82)
    #[error("duplicate property")]
    DuplicateProperty,
    /// A property value out of range: 0 for receive maximum, maximum packet
    /// size, topic alias or subscription identifier; above 1 for a flag.
    /// (0x82)
    #[error("invalid property value")]
    InvalidPropertyValue,
    /// A PUBLISH, will or response topic with wildcards, or an empty will
    /// or response topic. (0x90)
    #[error("invalid topic name")]
    InvalidTopicName,
    /// A PUBLISH with an empty topic name and no topic alias: always in
    /// 3.1.1 [MQTT-4.7.3-1]; in v5 a protocol error (section 3.3.2.3.4).
    /// (0x82)
    #[error("empty topic name without a topic alias")]
    EmptyTopicWithoutAlias,
    /// A SUBSCRIBE or UNSUBSCRIBE filter refused by `TopicFilter::new`.
    /// (0x8F)
    #[error("invalid topic filter")]
    InvalidTopicFilter,
    /// More user properties in one property list than the caller's
    /// `max_user_properties`; found before the surplus is decoded. (0x95)
    #[error("too many user properties")]
    TooManyUserProperties,
}

impl DecodeError {
    /// The reason code a v5 CONNACK or DISCONNECT carries for this error.
    pub fn reason_code(self) -> ReasonCode {
        use DecodeError as E;
        match self {
            // 0x95 rather than 0x97 Quota exceeded, which a client may read
            // as "try again later" (it names limits over time in the spec's
            // examples): the user properties count towards what one packet
            // may carry, and this packet will never be accepted, which is
            // what Packet too large says. 0x99 Payload format invalid is
            // about the payload format indicator, not the properties.
            E::PacketTooLarge | E::TooManyUserProperties => ReasonCode::PACKET_TOO_LARGE,
            E::UnsupportedProtocolVersion(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            E::InvalidTopicName => ReasonCode::TOPIC_NAME_INVALID,
            E::InvalidTopicFilter => ReasonCode::TOPIC_FILTER_INVALID,
            E::InvalidRetainHandling
            | E::NoLocalOnSharedSubscription
            | E::EmptyPayload
            | E::DuplicateProperty
            | E::InvalidPropertyValue
            | E::EmptyTopicWithoutAlias => ReasonCode::PROTOCOL_ERROR,
            E::MalformedRemainingLength
            | E::MalformedVariableInteger
            | E::UnknownPacketType
            | E::ReservedFlags
            | E::InvalidQoS
            | E::DupOnQoS0
            | E::InvalidProtocolName
            | E::InvalidConnectFlags
            | E::InvalidUtf8
            | E::Truncated
            | E::TrailingBytes
            | E::ZeroPacketId
            | E::InvalidSubscriptionOptions
            | E::InvalidReasonCode
            | E::UnknownProperty
            | E::PropertyNotAllowed => ReasonCode::MALFORMED_PACKET,
        }
    }
}

/// What a connection accepts in one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest packet, fixed header included (`u32::MAX`: no limit).
    pub max_packet_size: u32,
    /// User properties in one property list (`usize::MAX`: no limit).
    pub max_user_properties: usize,
}

/// Decodes one packet from the front of `buf`, with no limit on user
/// properties; see [`decode_with`].
///
/// # Errors
/// [`DecodeError`] when the bytes are not a valid packet.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    decode_with(buf, version, DecodeLimits { max_packet_size, max_user_properties: usize::MAX })
}

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)`, leaving `buf` untouched, while the packet is not
/// complete. The fixed header is checked as soon as it is buffered: an
/// unknown type, bad flags, a malformed remaining length or a total size
/// above `max_packet_size` (pass `u32::MAX` for no limit) fail before the
/// body arrives. `version` is the connection's version; CONNECT ignores it
/// and reports its own in [`super::Connect::protocol`]. Payloads and binary
/// fields are zero-copy slices of `buf`.
///
/// # Errors
/// [`DecodeError`] when the bytes are not a valid packet.
pub fn decode_with(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    limits: DecodeLimits,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    check_fixed_flags(packet_type, flags, version)?;
    let (remaining, len_len) = match parse_varint(buf.get(1..).unwrap_or_default()) {
        VarInt::Value(value, len) => (value, len),
        VarInt::Incomplete => return Ok(None),
        VarInt::Invalid => return Err(DecodeError::MalformedRemainingLength),
    };
    let total = u64::from(remaining) + 1 + len_len as u64;
    if total > u64::from(limits.max_packet_size) {
        return Err(DecodeError::PacketTooLarge);
    }
    let remaining = remaining as usize;
    if buf.len() - 1 - len_len < remaining {
        return Ok(None);
    }
    buf.advance(1 + len_len);
    let mut body = Reader::new(buf.split_to(remaining).freeze());
    body.max_user_properties = limits.max_user_properties;
    decode_body::decode_body(packet_type, flags, body, version).map(Some)
}

/// The protocol version of a CONNECT at the front of `buf`, read without
/// decoding or consuming anything.
///
/// A CONNECT that fails to decode still deserves a CONNACK in its own
/// version (a v5 one with the error's reason code, or a 3.1.1 return code),
/// but by then the error no longer says which version that is. Call this on
/// the first packet before [`decode`]. `None` when the bytes are not (yet)
/// a CONNECT naming "MQTT" level 4 or 5.
pub fn connect_version(buf: &[u8]) -> Option<ProtocolVersion> {
    if buf.first() != Some(&0x10) {
        return None;
    }
    let VarInt::Value(_, len_len) = parse_varint(buf.get(1..)?) else {
        return None;
    };
    match buf.get(1 + len_len..1 + len_len + 7)? {
        [0, 4, b'M', b'Q', b'T', b'T', 4] => Some(ProtocolVersion::V311),
        [0, 4, b'M', b'Q', b'T', b'T', 5] => Some(ProtocolVersion::V5),
        _ => None,
    }
}

/// Checks the packet type and its fixed header flags [MQTT-2.1.3-1].
fn check_fixed_flags(packet_type: u8, flags: u8, version: ProtocolVersion) -> Result<(), DecodeError> {
    match packet_type {
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::InvalidQoS);
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(DecodeError::DupOnQoS0);
            }
            Ok(())
        }
        6 | 8 | 10 if flags == 0b0010 => Ok(()),
        6 | 8 | 10 => Err(DecodeError::ReservedFlags),
        0 => Err(DecodeError::UnknownPacketType),
        15 if !version.is_v5() => Err(DecodeError::UnknownPacketType),
        _ if flags == 0 => Ok(()),
        _ => Err(DecodeError::ReservedFlags),
    }
}

/// Whether `code` is a reason code the v5 specification defines for
/// `packet_type` (CONNACK 2, PUBACK..PUBCOMP 4..7, SUBACK 9, UNSUBACK 11,
/// DISCONNECT 14, AUTH 15).
pub(crate) fn is_valid_reason(packet_type: u8, code: u8) -> bool {
    match packet_type {
        2 => matches!(code, 0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F),
        4 | 5 => matches!(code, 0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99),
        6 | 7 => matches!(code, 0x00 | 0x92),
        9 => matches!(code, 0x00..=0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2),
        11 => matches!(code, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91),
        14 => {
            matches!(code, 0x00 | 0x04 | 0x80..=0x83 | 0x87 | 0x89 | 0x8B | 0x8D..=0x90 | 0x93..=0xA2)
        }
        15 => matches!(code, 0x00 | 0x18 | 0x19),
        _ => false,
    }
}
