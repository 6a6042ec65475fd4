//! Packet encoding.
//!
//! Every packet body is written once, against [`Sink`]: a counting pass
//! sizes it and checks every limit, then the real pass writes it. So
//! [`encoded_len`] and [`encode`] always agree, and a failed [`encode`]
//! leaves the buffer untouched.
//!
//! For 3.1.1 the encoder drops properties and v5-only options and maps
//! reason codes to 3.1.1 return codes: see [`v311_connack_return_code`] and
//! SUBACK (granted QoS 0..=2 kept, any failure becomes 0x80).

use bytes::{BufMut, BytesMut};

use super::packet::{Connect, Packet, Properties, Publish};
use super::properties::put_properties;
use super::types::{ProtocolVersion, QoS, ReasonCode};
use super::wire::{Counter, Sink, VARINT_MAX, varint_len};

/// Why a packet could not be encoded. Nothing is written when encoding
/// fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The remaining length would exceed 268,435,455 bytes.
    #[error("packet too large")]
    TooLarge,
    /// A string or binary field is longer than 65,535 bytes.
    #[error("string or binary field longer than 65535 bytes")]
    StringTooLong,
    /// The packet cannot be expressed in this protocol version: AUTH, or a
    /// password without a user name, in 3.1.1.
    #[error("not representable in this protocol version")]
    NotInVersion,
    /// A PUBLISH packet id that does not match its QoS (present exactly when
    /// QoS > 0), or DUP set on QoS 0.
    #[error("packet identifier or DUP flag inconsistent with QoS")]
    InvalidPacketId,
    /// An empty topic name where one is not allowed: a will topic, a 3.1.1
    /// PUBLISH, or a v5 PUBLISH without a topic alias.
    #[error("invalid topic name")]
    InvalidTopicName,
    /// SUBSCRIBE/UNSUBSCRIBE without filters, or SUBACK (or v5 UNSUBACK)
    /// without reason codes.
    #[error("empty payload")]
    EmptyPayload,
    /// A subscription identifier of 0 or above 268,435,455.
    #[error("value out of range")]
    ValueOutOfRange,
}

/// Appends `packet` to `buf`.
///
/// CONNECT is written in the version of its own [`Connect::protocol`];
/// every other packet in `version`.
///
/// # Errors
/// [`EncodeError`] when the packet cannot be represented; `buf` is then
/// unchanged.
pub fn encode(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let (first, remaining) = header(packet, version)?;
    buf.reserve(1 + varint_len(remaining) + remaining);
    BufMut::put_u8(buf, first);
    buf.put_varint(remaining)?;
    body(buf, packet, version)
}

/// A QoS 0 PUBLISH of `payload` to `topic` without properties (an empty
/// property list in v5), retain and DUP clear: the bytes [`encode`] gives
/// for that packet, written from the parts without building a [`Publish`]
/// (issue 25: the shared packet of a QoS 0 fan-out, once per message).
///
/// # Errors
/// [`EncodeError`] for an empty or overlong topic or an oversized packet.
pub fn encode_qos0(topic: &str, payload: &[u8], version: ProtocolVersion) -> Result<bytes::Bytes, EncodeError> {
    if topic.is_empty() {
        return Err(EncodeError::InvalidTopicName);
    }
    let topic_len = u16::try_from(topic.len()).map_err(|_| EncodeError::StringTooLong)?;
    let remaining = 2 + topic.len() + usize::from(version.is_v5()) + payload.len();
    if remaining > VARINT_MAX as usize {
        return Err(EncodeError::TooLarge);
    }
    let mut buf = BytesMut::with_capacity(1 + varint_len(remaining) + remaining);
    BufMut::put_u8(&mut buf, 0x30);
    buf.put_varint(remaining)?;
    BufMut::put_u16(&mut buf, topic_len);
    BufMut::put_slice(&mut buf, topic.as_bytes());
    if version.is_v5() {
        BufMut::put_u8(&mut buf, 0);
    }
    BufMut::put_slice(&mut buf, payload);
    Ok(buf.freeze())
}

/// The number of bytes [`encode`] would append, fixed header included.
///
/// # Errors
/// [`EncodeError`] when the packet cannot be represented.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let (_, remaining) = header(packet, version)?;
    Ok(1 + varint_len(remaining) + remaining)
}

/// The 3.1.1 CONNACK return code the encoder sends for a reason code.
///
/// | reason code | 3.1.1 return code |
/// |---|---|
/// | any success (< 0x80) | 0 accepted |
/// | 0x84 unsupported protocol version | 1 unacceptable protocol version |
/// | 0x85 client identifier not valid | 2 identifier rejected |
/// | 0x88 server unavailable, 0x89 busy, 0x8B shutting down, 0x97 quota exceeded, 0x9C use another server, 0x9D server moved, 0x9F connection rate exceeded | 3 server unavailable |
/// | 0x86 bad user name or password | 4 bad user name or password |
/// | anything else (0x87 not authorized, 0x8A banned, 0x8C bad authentication method, 0x80.., ...) | 5 not authorized |
///
/// Other failures are refusals by policy or protocol, and "not authorized"
/// is the only 3.1.1 code that refuses without blaming the server or the
/// credentials.
pub fn v311_connack_return_code(reason: ReasonCode) -> u8 {
    match reason.0 {
        0x00..=0x7F => 0,
        0x84 => 1,
        0x85 => 2,
        0x88 | 0x89 | 0x8B | 0x97 | 0x9C | 0x9D | 0x9F => 3,
        0x86 => 4,
        _ => 5,
    }
}

/// The fixed header's first byte and the remaining length.
fn header(packet: &Packet, version: ProtocolVersion) -> Result<(u8, usize), EncodeError> {
    let first = match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => {
            let qos = p.qos as u8;
            0x30 | u8::from(p.dup) << 3 | qos << 1 | u8::from(p.retain)
        }
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    };
    let mut counter = Counter::default();
    body(&mut counter, packet, version)?;
    if counter.0 > VARINT_MAX as usize {
        return Err(EncodeError::TooLarge);
    }
    Ok((first, counter.0))
}

fn body<S: Sink>(s: &mut S, packet: &Packet, version: ProtocolVersion) -> Result<(), EncodeError> {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => connect(s, c)?,
        Packet::ConnAck(c) => {
            s.put_u8(u8::from(c.session_present && c.reason.is_success()));
            s.put_u8(if v5 { c.reason.0 } else { v311_connack_return_code(c.reason) });
            properties_if(s, v5, &c.properties)?;
        }
        Packet::Publish(p) => publish(s, p, v5)?,
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            s.put_u16(r.packet_id.get());
            if v5 {
                reason_and_properties(s, r.reason, &r.properties)?;
            }
        }
        Packet::Subscribe(sub) => {
            s.put_u16(sub.packet_id.get());
            properties_if(s, v5, &sub.properties)?;
            if sub.filters.is_empty() {
                return Err(EncodeError::EmptyPayload);
            }
            for (filter, o) in &sub.filters {
                s.put_binary(filter.as_str().as_bytes())?;
                let mut byte = o.qos as u8;
                if v5 {
                    byte |= u8::from(o.no_local) << 2
                        | u8::from(o.retain_as_published) << 3
                        | (o.retain_handling as u8) << 4;
                }
                s.put_u8(byte);
            }
        }
        Packet::SubAck(ack) => {
            s.put_u16(ack.packet_id.get());
            properties_if(s, v5, &ack.properties)?;
            if ack.reasons.is_empty() {
                return Err(EncodeError::EmptyPayload);
            }
            for reason in &ack.reasons {
                s.put_u8(match reason.0 {
                    _ if v5 => reason.0,
                    code @ 0..=2 => code,
                    _ => 0x80,
                });
            }
        }
        Packet::Unsubscribe(unsub) => {
            s.put_u16(unsub.packet_id.get());
            properties_if(s, v5, &unsub.properties)?;
            if unsub.filters.is_empty() {
                return Err(EncodeError::EmptyPayload);
            }
            for filter in &unsub.filters {
                s.put_binary(filter.as_str().as_bytes())?;
            }
        }
        Packet::UnsubAck(ack) => {
            s.put_u16(ack.packet_id.get());
            if v5 {
                put_properties(s, &ack.properties)?;
                if ack.reasons.is_empty() {
                    return Err(EncodeError::EmptyPayload);
                }
                for reason in &ack.reasons {
                    s.put_u8(reason.0);
                }
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            if v5 {
                reason_and_properties(s, d.reason, &d.properties)?;
            }
        }
        Packet::Auth(a) => {
            if !v5 {
                return Err(EncodeError::NotInVersion);
            }
            reason_and_properties(s, a.reason, &a.properties)?;
        }
    }
    Ok(())
}

fn properties_if<S: Sink>(s: &mut S, v5: bool, p: &Properties) -> Result<(), EncodeError> {
    if v5 { put_properties(s, p) } else { Ok(()) }
}

/// The short form for success without properties (nothing after the
/// packet id); otherwise the reason code and the property length, even when
/// it is 0. The spec also allows the reason code alone, but clients in the
/// field (rumqttc 0.25) fail to parse that form, so we never send it.
fn reason_and_properties<S: Sink>(s: &mut S, reason: ReasonCode, p: &Properties) -> Result<(), EncodeError> {
    if reason == ReasonCode::SUCCESS && p.is_empty() {
        return Ok(());
    }
    s.put_u8(reason.0);
    put_properties(s, p)
}

fn connect<S: Sink>(s: &mut S, c: &Connect) -> Result<(), EncodeError> {
    let v5 = c.protocol.is_v5();
    if !v5 && c.password.is_some() && c.username.is_none() {
        return Err(EncodeError::NotInVersion);
    }
    s.put_binary(b"MQTT")?;
    s.put_u8(c.protocol.level());
    let mut flags =
        u8::from(c.clean_start) << 1 | u8::from(c.username.is_some()) << 7 | u8::from(c.password.is_some()) << 6;
    if let Some(will) = &c.will {
        flags |= 0x04 | (will.qos as u8) << 3 | u8::from(will.retain) << 5;
    }
    s.put_u8(flags);
    s.put_u16(c.keep_alive);
    properties_if(s, v5, &c.properties)?;
    s.put_binary(c.client_id.as_bytes())?;
    if let Some(will) = &c.will {
        if will.topic.is_empty() {
            return Err(EncodeError::InvalidTopicName);
        }
        properties_if(s, v5, &will.properties)?;
        s.put_binary(will.topic.as_str().as_bytes())?;
        s.put_binary(&will.payload)?;
    }
    if let Some(username) = &c.username {
        s.put_binary(username.as_bytes())?;
    }
    if let Some(password) = &c.password {
        s.put_binary(password)?;
    }
    Ok(())
}

fn publish<S: Sink>(s: &mut S, p: &Publish, v5: bool) -> Result<(), EncodeError> {
    let id_matches_qos = (p.qos == QoS::AtMostOnce) == p.packet_id.is_none();
    if !id_matches_qos || (p.dup && p.qos == QoS::AtMostOnce) {
        return Err(EncodeError::InvalidPacketId);
    }
    // 3.1.1 has no aliases, and a v5 empty topic needs one.
    if p.topic.is_empty() && (!v5 || p.properties.topic_alias.is_none()) {
        return Err(EncodeError::InvalidTopicName);
    }
    s.put_binary(p.topic.as_str().as_bytes())?;
    if let Some(id) = p.packet_id {
        s.put_u16(id.get());
    }
    properties_if(s, v5, &p.properties)?;
    s.put_slice(&p.payload);
    Ok(())
}
