//! Byte-exact encode/decode cases for every packet type in both versions.

use bytes::{Bytes, BytesMut};

use super::*;
use ProtocolVersion::{V5, V311};

pub(super) fn pid(value: u16) -> PacketId {
    PacketId::new(value).expect("test packet ids are non-zero")
}

pub(super) fn topic(name: &str) -> TopicName {
    TopicName::new(name).expect("valid test topic")
}

pub(super) fn filter(f: &str) -> TopicFilter {
    TopicFilter::new(f).expect("valid test filter")
}

/// Decodes all of `bytes` as exactly one packet.
pub(super) fn decode_all(bytes: &[u8], version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, version, u32::MAX)?.expect("complete packet");
    assert!(buf.is_empty(), "decode left {} bytes", buf.len());
    Ok(packet)
}

pub(super) fn encode_vec(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).expect("encodable");
    assert_eq!(encoded_len(packet, version), Ok(buf.len()));
    buf.to_vec()
}

/// `bytes` decodes to `packet` and `packet` encodes to `bytes`.
pub(super) fn exact(bytes: &[u8], version: ProtocolVersion, packet: Packet) {
    assert_eq!(decode_all(bytes, version), Ok(packet.clone()));
    assert_eq!(encode_vec(&packet, version), bytes);
}

fn ack(id: u16, reason: u8, properties: Properties) -> PubResp {
    PubResp { packet_id: pid(id), reason: ReasonCode(reason), properties }
}

fn connect(protocol: ProtocolVersion) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: "test".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

#[test]
fn connect_v311_minimal() {
    let bytes = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3C\x00\x04test";
    exact(bytes, V311, Packet::Connect(Box::new(connect(V311))));
    // CONNECT decodes by its own protocol level whatever the caller says.
    assert_eq!(decode_all(bytes, V5), Ok(Packet::Connect(Box::new(connect(V311)))));
}

#[test]
fn connect_v311_will_username_password() {
    let mut c = connect(V311);
    c.client_id = String::new();
    c.will = Some(Will {
        topic: topic("w"),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties::default(),
    });
    c.username = Some("u".into());
    c.password = Some(Bytes::from_static(b"p"));
    // flags: user 0x80 | password 0x40 | will retain 0x20 | will QoS 1 0x08 | will 0x04 | clean 0x02
    let bytes = b"\x10\x1A\x00\x04MQTT\x04\xEE\x00\x3C\x00\x00\x00\x01w\x00\x03bye\x00\x01u\x00\x01p";
    exact(bytes, V311, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_v5_with_properties_and_will_properties() {
    let mut c = connect(V5);
    c.properties.session_expiry_interval = Some(120);
    c.properties.receive_maximum = Some(20);
    c.will = Some(Will {
        topic: topic("w"),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties { will_delay_interval: Some(10), ..Properties::default() },
    });
    let bytes = b"\x10\x25\x00\x04MQTT\x05\x06\x00\x3C\
        \x08\x11\x00\x00\x00\x78\x21\x00\x14\
        \x00\x04test\
        \x05\x18\x00\x00\x00\x0A\x00\x01w\x00\x01x";
    exact(bytes, V5, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_v5_password_without_username_is_allowed() {
    let mut c = connect(V5);
    c.password = Some(Bytes::from_static(b"pw"));
    let bytes = b"\x10\x15\x00\x04MQTT\x05\x42\x00\x3C\x00\x00\x04test\x00\x02pw";
    exact(bytes, V5, Packet::Connect(Box::new(c)));
}

#[test]
fn connack_v311() {
    let ok = ConnAck { session_present: true, ..ConnAck::default() };
    exact(b"\x20\x02\x01\x00", V311, Packet::ConnAck(ok));
    let refused = ConnAck { reason: ReasonCode::BAD_USER_NAME_OR_PASSWORD, ..ConnAck::default() };
    exact(b"\x20\x02\x00\x04", V311, Packet::ConnAck(refused));
    let old = ConnAck { reason: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION, ..ConnAck::default() };
    exact(b"\x20\x02\x00\x01", V311, Packet::ConnAck(old));
}

#[test]
fn connack_v311_return_code_table() {
    let table = [
        (0x00, 0),
        (0x84, 1),
        (0x85, 2),
        (0x88, 3),
        (0x89, 3),
        (0x9F, 3),
        (0x86, 4),
        (0x87, 5),
        (0x8A, 5),
        (0x8C, 5),
        (0x80, 5),
    ];
    for (reason, code) in table {
        assert_eq!(v311_connack_return_code(ReasonCode(reason)), code, "{reason:#x}");
        // Session present is never sent with a refusal [MQTT-3.2.2-4].
        let packet = ConnAck { session_present: true, reason: ReasonCode(reason), ..ConnAck::default() };
        let expected = [0x20, 0x02, u8::from(reason == 0), code];
        assert_eq!(encode_vec(&Packet::ConnAck(packet), V311), expected);
    }
}

#[test]
fn connack_v5_with_properties() {
    let properties = Properties {
        assigned_client_identifier: Some("id".into()),
        topic_alias_maximum: Some(10),
        maximum_qos: Some(1),
        ..Properties::default()
    };
    let packet = ConnAck { session_present: false, reason: ReasonCode::SUCCESS, properties };
    let bytes = b"\x20\x0D\x00\x00\x0A\x12\x00\x02id\x22\x00\x0A\x24\x01";
    exact(bytes, V5, Packet::ConnAck(packet));
    exact(b"\x20\x03\x00\x87\x00", V5, Packet::ConnAck(ConnAck { reason: ReasonCode(0x87), ..ConnAck::default() }));
}

fn publish(qos: QoS, id: Option<u16>, properties: Properties) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic("a/b"),
        packet_id: id.map(pid),
        properties,
        payload: Bytes::from_static(b"hi"),
    }
}

#[test]
fn publish_v311_qos0_and_qos2_dup_retain() {
    exact(b"\x30\x07\x00\x03a/bhi", V311, Packet::Publish(publish(QoS::AtMostOnce, None, Properties::default())));
    let mut p = publish(QoS::ExactlyOnce, Some(7), Properties::default());
    p.dup = true;
    p.retain = true;
    exact(b"\x3D\x09\x00\x03a/b\x00\x07hi", V311, Packet::Publish(p));
}

#[test]
fn publish_v5_qos1_with_properties() {
    let properties = Properties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        topic_alias: Some(5),
        user_properties: vec![("k".into(), "v".into())],
        ..Properties::default()
    };
    let bytes = b"\x32\x1B\x00\x03a/b\x00\x0A\x11\x01\x01\x02\x00\x00\x00\x3C\x23\x00\x05\x26\x00\x01k\x00\x01vhi";
    exact(bytes, V5, Packet::Publish(publish(QoS::AtLeastOnce, Some(10), properties)));
}

#[test]
fn publish_v5_empty_topic_with_alias() {
    let properties = Properties { topic_alias: Some(3), ..Properties::default() };
    let mut p = publish(QoS::AtMostOnce, None, properties);
    p.topic = topic("");
    exact(b"\x30\x08\x00\x00\x03\x23\x00\x03hi", V5, Packet::Publish(p));
}

#[test]
fn publish_payload_is_not_copied() {
    let mut buf = BytesMut::from(&b"\x30\x07\x00\x03a/bhi"[..]);
    let payload_addr = buf.as_ptr() as usize + 7;
    let Some(Packet::Publish(p)) = decode(&mut buf, V311, u32::MAX).expect("valid") else {
        panic!("expected a publish");
    };
    assert_eq!(p.payload.as_ptr() as usize, payload_addr);
}

#[test]
fn pub_acks_v311() {
    exact(b"\x40\x02\x00\x0A", V311, Packet::PubAck(PubResp::success(pid(10))));
    exact(b"\x50\x02\x00\x0A", V311, Packet::PubRec(PubResp::success(pid(10))));
    exact(b"\x62\x02\x00\x0A", V311, Packet::PubRel(PubResp::success(pid(10))));
    exact(b"\x70\x02\x00\x0A", V311, Packet::PubComp(PubResp::success(pid(10))));
}

#[test]
fn pub_acks_v5_short_and_long_forms() {
    // Success without properties: the two-byte short form.
    exact(b"\x40\x02\x00\x0A", V5, Packet::PubAck(PubResp::success(pid(10))));
    // A reason code without properties is sent with a zero property
    // length; the reason-only short form is accepted on input.
    exact(b"\x50\x04\x00\x0A\x10\x00", V5, Packet::PubRec(ack(10, 0x10, Properties::default())));
    assert_eq!(decode_all(b"\x62\x03\x00\x0A\x92", V5), Ok(Packet::PubRel(ack(10, 0x92, Properties::default()))));
    let reason = Properties { reason_string: Some("bad".into()), ..Properties::default() };
    exact(b"\x70\x0A\x00\x0A\x92\x06\x1F\x00\x03bad", V5, Packet::PubComp(ack(10, 0x92, reason)));
    // The long form of plain success decodes too (and re-encodes short).
    let long = decode_all(b"\x40\x04\x00\x0A\x00\x00", V5);
    assert_eq!(long, Ok(Packet::PubAck(PubResp::success(pid(10)))));
}
