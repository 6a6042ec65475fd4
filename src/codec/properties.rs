//! MQTT 5 properties [MQTT-2.2.2]: one decoder that enforces the
//! specification's table of which property may appear in which packet, and
//! one writer for all of them.

use super::decode::DecodeError;
use super::encode::EncodeError;
use super::packet::Properties;
use super::topic::TopicName;
use super::wire::{Counter, Reader, Sink};

/// The property sets of the specification, one per packet (the four
/// publish acknowledgements share one) plus the will properties that sit in
/// the CONNECT payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubResp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

// Bits of a context mask, so the legality table below reads like the
// specification's table in section 2.2.2.2.
const CONNECT: u16 = 1 << 0;
const WILL: u16 = 1 << 1;
const CONNACK: u16 = 1 << 2;
const PUBLISH: u16 = 1 << 3;
const PUBRESP: u16 = 1 << 4;
const SUBSCRIBE: u16 = 1 << 5;
const SUBACK: u16 = 1 << 6;
const UNSUBSCRIBE: u16 = 1 << 7;
const UNSUBACK: u16 = 1 << 8;
const DISCONNECT: u16 = 1 << 9;
const AUTH: u16 = 1 << 10;
const ALL: u16 = (1 << 11) - 1;

impl PropertyContext {
    pub(crate) fn bit(self) -> u16 {
        match self {
            PropertyContext::Connect => CONNECT,
            PropertyContext::Will => WILL,
            PropertyContext::ConnAck => CONNACK,
            PropertyContext::Publish => PUBLISH,
            PropertyContext::PubResp => PUBRESP,
            PropertyContext::Subscribe => SUBSCRIBE,
            PropertyContext::SubAck => SUBACK,
            PropertyContext::Unsubscribe => UNSUBSCRIBE,
            PropertyContext::UnsubAck => UNSUBACK,
            PropertyContext::Disconnect => DISCONNECT,
            PropertyContext::Auth => AUTH,
        }
    }
}

/// Where each property identifier may appear; `None` for identifiers the
/// specification does not define.
pub(crate) fn allowed_in(id: u32) -> Option<u16> {
    Some(match id {
        0x01..=0x03 | 0x08 | 0x09 => PUBLISH | WILL,
        0x0B => PUBLISH | SUBSCRIBE,
        0x11 => CONNECT | CONNACK | DISCONNECT,
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28..=0x2A => CONNACK,
        0x15 | 0x16 => CONNECT | CONNACK | AUTH,
        0x17 | 0x19 => CONNECT,
        0x18 => WILL,
        0x1C => CONNACK | DISCONNECT,
        0x1F => CONNACK | PUBRESP | SUBACK | UNSUBACK | DISCONNECT | AUTH,
        0x21 | 0x22 | 0x27 => CONNECT | CONNACK,
        0x23 => PUBLISH,
        0x26 => ALL,
        _ => return None,
    })
}

/// Stores a single-valued property, refusing a second occurrence.
fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty);
    }
    *slot = Some(value);
    Ok(())
}

/// A byte property that may only be 0 or 1.
fn flag(r: &mut Reader) -> Result<u8, DecodeError> {
    match r.u8()? {
        value @ (0 | 1) => Ok(value),
        _ => Err(DecodeError::InvalidPropertyValue),
    }
}

fn non_zero_u16(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::InvalidPropertyValue),
        value => Ok(value),
    }
}

/// Reads a property length and the properties it covers.
pub(crate) fn decode_properties(r: &mut Reader, context: PropertyContext) -> Result<Properties, DecodeError> {
    let len = usize::try_from(r.varint()?).map_err(|_| DecodeError::Truncated)?;
    if len > r.remaining() {
        // Property length past the end of the packet is malformed.
        return Err(DecodeError::Truncated);
    }
    let bytes = r.take(len)?;
    let mut r = r.nested(bytes);
    let mut p = Properties::default();
    while !r.is_empty() {
        let id = r.varint()?;
        let allowed = allowed_in(id).ok_or(DecodeError::UnknownProperty)?;
        if allowed & context.bit() == 0 {
            return Err(DecodeError::PropertyNotAllowed);
        }
        match id {
            0x01 => once(&mut p.payload_format_indicator, flag(&mut r)?)?,
            0x02 => once(&mut p.message_expiry_interval, r.u32()?)?,
            0x03 => once(&mut p.content_type, r.string()?)?,
            0x08 => {
                let topic = r.string()?;
                // A response topic is a topic name: non-empty, no wildcards.
                let topic = match TopicName::new(&topic) {
                    Ok(name) if !name.is_empty() => name,
                    _ => return Err(DecodeError::InvalidTopicName),
                };
                once(&mut p.response_topic, topic)?;
            }
            0x09 => once(&mut p.correlation_data, r.binary()?)?,
            0x0B => {
                let value = r.varint()?;
                if value == 0 {
                    return Err(DecodeError::InvalidPropertyValue);
                }
                // Only a server-to-client PUBLISH may carry several.
                if context != PropertyContext::Publish && !p.subscription_identifiers.is_empty() {
                    return Err(DecodeError::DuplicateProperty);
                }
                p.subscription_identifiers.push(value);
            }
            0x11 => once(&mut p.session_expiry_interval, r.u32()?)?,
            0x12 => once(&mut p.assigned_client_identifier, r.string()?)?,
            0x13 => once(&mut p.server_keep_alive, r.u16()?)?,
            0x15 => once(&mut p.authentication_method, r.string()?)?,
            0x16 => once(&mut p.authentication_data, r.binary()?)?,
            0x17 => once(&mut p.request_problem_information, flag(&mut r)?)?,
            0x18 => once(&mut p.will_delay_interval, r.u32()?)?,
            0x19 => once(&mut p.request_response_information, flag(&mut r)?)?,
            0x1A => once(&mut p.response_information, r.string()?)?,
            0x1C => once(&mut p.server_reference, r.string()?)?,
            0x1F => once(&mut p.reason_string, r.string()?)?,
            0x21 => once(&mut p.receive_maximum, non_zero_u16(&mut r)?)?,
            0x22 => once(&mut p.topic_alias_maximum, r.u16()?)?,
            0x23 => once(&mut p.topic_alias, non_zero_u16(&mut r)?)?,
            0x24 => once(&mut p.maximum_qos, flag(&mut r)?)?,
            0x25 => once(&mut p.retain_available, flag(&mut r)?)?,
            0x26 => {
                if p.user_properties.len() >= r.max_user_properties {
                    return Err(DecodeError::TooManyUserProperties);
                }
                let key = r.string()?;
                let value = r.string()?;
                p.user_properties.push((key, value));
            }
            0x27 => match r.u32()? {
                0 => return Err(DecodeError::InvalidPropertyValue),
                value => once(&mut p.maximum_packet_size, value)?,
            },
            0x28 => once(&mut p.wildcard_subscription_available, flag(&mut r)?)?,
            0x29 => once(&mut p.subscription_identifiers_available, flag(&mut r)?)?,
            0x2A => once(&mut p.shared_subscription_available, flag(&mut r)?)?,
            // `allowed_in` already refused every other identifier.
            _ => return Err(DecodeError::UnknownProperty),
        }
    }
    // Authentication data only means something under a method (v5 3.1.2.11.10).
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::InvalidPropertyValue);
    }
    Ok(p)
}

/// Writes the property length followed by every property that is set, in
/// identifier order.
pub(crate) fn put_properties<S: Sink>(sink: &mut S, p: &Properties) -> Result<(), EncodeError> {
    let mut counter = Counter::default();
    put_property_list(&mut counter, p)?;
    sink.put_varint(counter.0)?;
    put_property_list(sink, p)
}

/// Every property present, in identifier order, in two runs so each
/// stays a screenful: up to Server Keep Alive (0x13), then from
/// Authentication Method (0x15).
fn put_property_list<S: Sink>(s: &mut S, p: &Properties) -> Result<(), EncodeError> {
    put_properties_to_0x13(s, p)?;
    put_properties_from_0x15(s, p)
}

/// Properties 0x01 (Payload Format Indicator) to 0x13 (Server Keep Alive).
fn put_properties_to_0x13<S: Sink>(s: &mut S, p: &Properties) -> Result<(), EncodeError> {
    if let Some(v) = p.payload_format_indicator {
        s.put_u8(0x01);
        s.put_u8(v);
    }
    if let Some(v) = p.message_expiry_interval {
        s.put_u8(0x02);
        s.put_u32(v);
    }
    if let Some(v) = &p.content_type {
        s.put_u8(0x03);
        s.put_binary(v.as_bytes())?;
    }
    if let Some(v) = &p.response_topic {
        s.put_u8(0x08);
        s.put_binary(v.as_str().as_bytes())?;
    }
    if let Some(v) = &p.correlation_data {
        s.put_u8(0x09);
        s.put_binary(v)?;
    }
    for &v in &p.subscription_identifiers {
        if v == 0 {
            return Err(EncodeError::ValueOutOfRange);
        }
        s.put_u8(0x0B);
        s.put_varint(v as usize)?;
    }
    if let Some(v) = p.session_expiry_interval {
        s.put_u8(0x11);
        s.put_u32(v);
    }
    if let Some(v) = &p.assigned_client_identifier {
        s.put_u8(0x12);
        s.put_binary(v.as_bytes())?;
    }
    if let Some(v) = p.server_keep_alive {
        s.put_u8(0x13);
        s.put_u16(v);
    }
    Ok(())
}

/// Properties 0x15 (Authentication Method) to 0x2A (Shared Subscription
/// Available).
fn put_properties_from_0x15<S: Sink>(s: &mut S, p: &Properties) -> Result<(), EncodeError> {
    if let Some(v) = &p.authentication_method {
        s.put_u8(0x15);
        s.put_binary(v.as_bytes())?;
    }
    if let Some(v) = &p.authentication_data {
        s.put_u8(0x16);
        s.put_binary(v)?;
    }
    if let Some(v) = p.request_problem_information {
        s.put_u8(0x17);
        s.put_u8(v);
    }
    if let Some(v) = p.will_delay_interval {
        s.put_u8(0x18);
        s.put_u32(v);
    }
    if let Some(v) = p.request_response_information {
        s.put_u8(0x19);
        s.put_u8(v);
    }
    if let Some(v) = &p.response_information {
        s.put_u8(0x1A);
        s.put_binary(v.as_bytes())?;
    }
    if let Some(v) = &p.server_reference {
        s.put_u8(0x1C);
        s.put_binary(v.as_bytes())?;
    }
    if let Some(v) = &p.reason_string {
        s.put_u8(0x1F);
        s.put_binary(v.as_bytes())?;
    }
    let u16_props = [(0x21, p.receive_maximum), (0x22, p.topic_alias_maximum), (0x23, p.topic_alias)];
    for (id, value) in u16_props {
        if let Some(v) = value {
            s.put_u8(id);
            s.put_u16(v);
        }
    }
    for (id, value) in [(0x24, p.maximum_qos), (0x25, p.retain_available)] {
        if let Some(v) = value {
            s.put_u8(id);
            s.put_u8(v);
        }
    }
    for (key, value) in &p.user_properties {
        s.put_u8(0x26);
        s.put_binary(key.as_bytes())?;
        s.put_binary(value.as_bytes())?;
    }
    if let Some(v) = p.maximum_packet_size {
        s.put_u8(0x27);
        s.put_u32(v);
    }
    let flags = [
        (0x28, p.wildcard_subscription_available),
        (0x29, p.subscription_identifiers_available),
        (0x2A, p.shared_subscription_available),
    ];
    for (id, value) in flags {
        if let Some(v) = value {
            s.put_u8(id);
            s.put_u8(v);
        }
    }
    Ok(())
}
