//! Per-packet body decoders. Each one receives exactly the packet's
//! remaining length and must consume all of it.

use super::decode::{DecodeError, is_valid_reason};
use super::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, Properties, PubResp, Publish, RetainHandling, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
use super::properties::{PropertyContext as Ctx, decode_properties};
use super::topic::{TopicFilter, TopicName};
use super::types::{ProtocolVersion, QoS, ReasonCode};
use super::wire::Reader;

pub(crate) fn decode_body(
    packet_type: u8,
    flags: u8,
    mut r: Reader,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let v5 = version.is_v5();
    let packet = match packet_type {
        1 => Packet::Connect(Box::new(connect(&mut r)?)),
        2 => Packet::ConnAck(connack(&mut r, v5)?),
        3 => Packet::Publish(publish(&mut r, flags, v5)?),
        4 => Packet::PubAck(pub_resp(&mut r, 4, v5)?),
        5 => Packet::PubRec(pub_resp(&mut r, 5, v5)?),
        6 => Packet::PubRel(pub_resp(&mut r, 6, v5)?),
        7 => Packet::PubComp(pub_resp(&mut r, 7, v5)?),
        8 => Packet::Subscribe(subscribe(&mut r, v5)?),
        9 => Packet::SubAck(suback(&mut r, v5)?),
        10 => Packet::Unsubscribe(unsubscribe(&mut r, v5)?),
        11 => Packet::UnsubAck(unsuback(&mut r, v5)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => {
            let (reason, properties) = reason_and_properties(&mut r, 14, v5, Ctx::Disconnect)?;
            Packet::Disconnect(Disconnect { reason, properties })
        }
        // The fixed header check let 15 through only for v5.
        15 => {
            let (reason, properties) = reason_and_properties(&mut r, 15, v5, Ctx::Auth)?;
            Packet::Auth(Auth { reason, properties })
        }
        _ => return Err(DecodeError::UnknownPacketType),
    };
    r.finish()?;
    Ok(packet)
}

fn properties_if(r: &mut Reader, v5: bool, context: Ctx) -> Result<Properties, DecodeError> {
    if v5 { decode_properties(r, context) } else { Ok(Properties::default()) }
}

fn reason(r: &mut Reader, packet_type: u8) -> Result<ReasonCode, DecodeError> {
    let code = r.u8()?;
    if is_valid_reason(packet_type, code) { Ok(ReasonCode(code)) } else { Err(DecodeError::InvalidReasonCode) }
}

fn topic_name(r: &mut Reader) -> Result<TopicName, DecodeError> {
    TopicName::new(&r.string()?).map_err(|_| DecodeError::InvalidTopicName)
}

fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        // MQTT 3.1 is recognisably MQTT: answer it with return code 1.
        (b"MQTT" | b"MQIsdp", _) => return Err(DecodeError::UnsupportedProtocolVersion(level)),
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let v5 = protocol.is_v5();
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ReservedFlags);
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos = QoS::from_u8((flags >> 3) & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(DecodeError::InvalidConnectFlags);
    }
    if !v5 && password_flag && !username_flag {
        return Err(DecodeError::InvalidConnectFlags);
    }
    let keep_alive = r.u16()?;
    let properties = properties_if(r, v5, Ctx::Connect)?;
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = properties_if(r, v5, Ctx::Will)?;
        let topic = topic_name(r)?;
        if topic.is_empty() {
            return Err(DecodeError::InvalidTopicName);
        }
        let payload = r.binary()?;
        Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
    } else {
        None
    };
    let username = if username_flag { Some(r.string()?) } else { None };
    let password = if password_flag { Some(r.binary()?) } else { None };
    Ok(Connect {
        protocol,
        clean_start: flags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn connack(r: &mut Reader, v5: bool) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::ReservedFlags);
    }
    let code = r.u8()?;
    let reason = if v5 {
        if !is_valid_reason(2, code) {
            return Err(DecodeError::InvalidReasonCode);
        }
        ReasonCode(code)
    } else {
        v311_return_code_to_reason(code)?
    };
    let properties = properties_if(r, v5, Ctx::ConnAck)?;
    Ok(ConnAck { session_present: flags & 0x01 != 0, reason, properties })
}

/// The inverse of the encoder's table: 3.1.1 return codes 0..=5.
fn v311_return_code_to_reason(code: u8) -> Result<ReasonCode, DecodeError> {
    Ok(match code {
        0 => ReasonCode::SUCCESS,
        1 => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        2 => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        3 => ReasonCode::SERVER_UNAVAILABLE,
        4 => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        5 => ReasonCode::NOT_AUTHORIZED,
        _ => return Err(DecodeError::InvalidReasonCode),
    })
}

fn publish(r: &mut Reader, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    // The fixed header check already refused QoS 3 and DUP on QoS 0.
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let topic = topic_name(r)?;
    let packet_id = if qos == QoS::AtMostOnce { None } else { Some(r.packet_id()?) };
    let properties = properties_if(r, v5, Ctx::Publish)?;
    // An empty topic is only meaningful as a v5 topic alias reference.
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::EmptyTopicWithoutAlias);
    }
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 0b0001 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP: v5 may stop after the packet id
/// (success) or after the reason code (no properties).
fn pub_resp(r: &mut Reader, packet_type: u8, v5: bool) -> Result<PubResp, DecodeError> {
    let packet_id = r.packet_id()?;
    let (reason, properties) = reason_and_properties(r, packet_type, v5, Ctx::PubResp)?;
    Ok(PubResp { packet_id, reason, properties })
}

/// The optional reason code and properties of the acknowledgements,
/// DISCONNECT and AUTH. Absent fields mean success without properties. AUTH
/// may only omit both at once.
fn reason_and_properties(
    r: &mut Reader,
    packet_type: u8,
    v5: bool,
    context: Ctx,
) -> Result<(ReasonCode, Properties), DecodeError> {
    if !v5 || r.is_empty() {
        return Ok((ReasonCode::SUCCESS, Properties::default()));
    }
    let code = reason(r, packet_type)?;
    if r.is_empty() && context != Ctx::Auth {
        return Ok((code, Properties::default()));
    }
    Ok((code, decode_properties(r, context)?))
}

fn subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = properties_if(r, v5, Ctx::Subscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = TopicFilter::new(&r.string()?).map_err(|_| DecodeError::InvalidTopicFilter)?;
        let options = subscription_options(r.u8()?, v5)?;
        if options.no_local && filter.share_group().is_some() {
            return Err(DecodeError::NoLocalOnSharedSubscription);
        }
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptyPayload);
    }
    Ok(Subscribe { packet_id, properties, filters })
}

fn subscription_options(byte: u8, v5: bool) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = if v5 { 0xC0 } else { 0xFC };
    if byte & reserved != 0 {
        return Err(DecodeError::InvalidSubscriptionOptions);
    }
    let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::InvalidRetainHandling),
    };
    Ok(SubscriptionOptions { qos, no_local: byte & 0x04 != 0, retain_as_published: byte & 0x08 != 0, retain_handling })
}

fn suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = properties_if(r, v5, Ctx::SubAck)?;
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        let code = r.u8()?;
        let valid = if v5 { is_valid_reason(9, code) } else { matches!(code, 0..=2 | 0x80) };
        if !valid {
            return Err(DecodeError::InvalidReasonCode);
        }
        reasons.push(ReasonCode(code));
    }
    if reasons.is_empty() {
        return Err(DecodeError::EmptyPayload);
    }
    Ok(SubAck { packet_id, properties, reasons })
}

fn unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = properties_if(r, v5, Ctx::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(TopicFilter::new(&r.string()?).map_err(|_| DecodeError::InvalidTopicFilter)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptyPayload);
    }
    Ok(Unsubscribe { packet_id, properties, filters })
}

fn unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    if !v5 {
        // 3.1.1 UNSUBACK is just the packet id.
        return Ok(UnsubAck { packet_id, properties: Properties::default(), reasons: Vec::new() });
    }
    let properties = decode_properties(r, Ctx::UnsubAck)?;
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        reasons.push(reason(r, 11)?);
    }
    if reasons.is_empty() {
        return Err(DecodeError::EmptyPayload);
    }
    Ok(UnsubAck { packet_id, properties, reasons })
}
