//! One minimal byte string per decode error, named after the normative statement where one applies.

use bytes::{Bytes, BytesMut};

use super::tests::{decode_all, topic};
use super::*;
use DecodeError as E;
use ProtocolVersion::{V5, V311};

fn err(bytes: &[u8], version: ProtocolVersion) -> DecodeError {
    decode_all(bytes, version).expect_err("must not decode")
}

#[test]
fn mqtt_1_5_5_1_non_minimal_variable_byte_integers_are_malformed() {
    assert_eq!(err(b"\xC0\x80\x00", V311), E::MalformedRemainingLength);
    assert_eq!(err(b"\x40\x05\x00\x01\x00\x80\x00", V5), E::MalformedVariableInteger);
}

#[test]
fn packet_too_large_is_reported_from_the_fixed_header() {
    let mut buf = BytesMut::from(&b"\x30\x0A"[..]);
    assert_eq!(decode(&mut buf, V311, 11), Err(E::PacketTooLarge));
    let mut buf = BytesMut::from(&b"\x30\x0A"[..]);
    assert_eq!(decode(&mut buf, V311, 12), Ok(None));
}

#[test]
fn user_properties_beyond_the_limit_stop_the_decoder() {
    // PUBLISH "t" QoS 0 with 3 empty user properties, and in a will.
    let publish = b"\x30\x13\x00\x01t\x0F\x26\x00\x00\x00\x00\x26\x00\x00\x00\x00\x26\x00\x00\x00\x00";
    let limits = |n| DecodeLimits { max_packet_size: u32::MAX, max_user_properties: n };
    let decoded = decode_with(&mut BytesMut::from(&publish[..]), V5, limits(3)).expect("at the limit");
    assert!(matches!(decoded, Some(Packet::Publish(p)) if p.properties.user_properties.len() == 3));
    let refused = decode_with(&mut BytesMut::from(&publish[..]), V5, limits(2));
    assert_eq!(refused, Err(E::TooManyUserProperties));
    assert_eq!(E::TooManyUserProperties.reason_code(), ReasonCode::PACKET_TOO_LARGE);
    // Will properties of a CONNECT count against the same limit.
    let mut connect = b"\x00\x04MQTT\x05\x06\x00\x1E\x00\x00\x01c\x0A".to_vec();
    connect.extend(b"\x26\x00\x00\x00\x00\x26\x00\x00\x00\x00\x00\x01w\x00\x00");
    let mut framed = vec![0x10, u8::try_from(connect.len()).expect("short")];
    framed.extend(connect);
    assert!(decode_with(&mut BytesMut::from(&framed[..]), V5, limits(2)).is_ok());
    let refused = decode_with(&mut BytesMut::from(&framed[..]), V5, limits(1));
    assert_eq!(refused, Err(E::TooManyUserProperties));
}

#[test]
fn unknown_packet_type() {
    assert_eq!(err(b"\x00\x00", V5), E::UnknownPacketType);
    assert_eq!(err(b"\xF0\x00", V311), E::UnknownPacketType);
}

#[test]
fn mqtt_2_1_3_1_reserved_fixed_header_flags() {
    assert_eq!(err(b"\xC1\x00", V311), E::ReservedFlags);
    assert_eq!(err(b"\x60\x02\x00\x01", V311), E::ReservedFlags);
    assert_eq!(err(b"\x80\x08\x00\x01\x00\x03a/b\x00", V311), E::ReservedFlags);
    assert_eq!(err(b"\xA0\x07\x00\x01\x00\x03a/b", V311), E::ReservedFlags);
    assert_eq!(err(b"\x42\x02\x00\x01", V5), E::ReservedFlags);
}

#[test]
fn mqtt_3_3_1_4_publish_qos_3_is_malformed() {
    assert_eq!(err(b"\x36\x03\x00\x01a", V311), E::InvalidQoS);
}

#[test]
fn mqtt_3_3_1_2_dup_on_qos0_is_malformed() {
    assert_eq!(err(b"\x38\x03\x00\x01a", V311), E::DupOnQoS0);
}

#[test]
fn mqtt_3_1_2_1_wrong_protocol_name() {
    assert_eq!(err(b"\x10\x0C\x00\x04MQTX\x04\x02\x00\x3C\x00\x00", V311), E::InvalidProtocolName);
}

#[test]
fn mqtt_3_1_2_2_unsupported_protocol_level() {
    let mqtt31 = b"\x10\x0E\x00\x06MQIsdp\x03\x02\x00\x3C\x00\x00";
    assert_eq!(err(mqtt31, V311), E::UnsupportedProtocolVersion(3));
    assert_eq!(err(b"\x10\x0C\x00\x04MQTT\x06\x02\x00\x3C\x00\x00", V311), E::UnsupportedProtocolVersion(6));
    assert_eq!(E::UnsupportedProtocolVersion(3).reason_code(), ReasonCode(0x84));
    assert_eq!(v311_connack_return_code(ReasonCode(0x84)), 1);
}

#[test]
fn mqtt_3_1_2_3_reserved_flag_must_be_zero() {
    assert_eq!(err(b"\x10\x0C\x00\x04MQTT\x04\x03\x00\x3C\x00\x00", V311), E::ReservedFlags);
}

#[test]
fn mqtt_3_1_2_12_will_qos_3_is_malformed() {
    assert_eq!(err(b"\x10\x0C\x00\x04MQTT\x04\x1E\x00\x3C\x00\x00", V311), E::InvalidQoS);
}

#[test]
fn mqtt_3_1_2_11_will_qos_and_retain_need_the_will_flag() {
    assert_eq!(err(b"\x10\x0C\x00\x04MQTT\x04\x0A\x00\x3C\x00\x00", V311), E::InvalidConnectFlags);
    assert_eq!(err(b"\x10\x0C\x00\x04MQTT\x04\x22\x00\x3C\x00\x00", V311), E::InvalidConnectFlags);
}

#[test]
fn mqtt_3_1_2_22_password_without_username_in_v311() {
    let bytes = b"\x10\x10\x00\x04MQTT\x04\x42\x00\x3C\x00\x00\x00\x02pw";
    assert_eq!(err(bytes, V311), E::InvalidConnectFlags);
}

#[test]
fn mqtt_1_5_4_1_invalid_utf8_is_malformed() {
    assert_eq!(err(b"\x10\x0D\x00\x04MQTT\x04\x02\x00\x3C\x00\x01\xFF", V311), E::InvalidUtf8);
    // An encoded surrogate (U+D800) is not UTF-8 either.
    assert_eq!(err(b"\x30\x05\x00\x03\xED\xA0\x80", V311), E::InvalidUtf8);
}

#[test]
fn mqtt_1_5_4_2_null_character_is_malformed() {
    assert_eq!(err(b"\x10\x0D\x00\x04MQTT\x04\x02\x00\x3C\x00\x01\x00", V311), E::InvalidUtf8);
    assert_eq!(err(b"\x30\x03\x00\x01\x00", V311), E::InvalidUtf8);
}

#[test]
fn body_shorter_than_its_fields_is_truncated() {
    assert_eq!(err(b"\x40\x01\x00", V311), E::Truncated);
    assert_eq!(err(b"\x30\x03\x00\x05a", V311), E::Truncated);
    // Property length past the packet end.
    assert_eq!(err(b"\x40\x04\x00\x01\x00\x05", V5), E::Truncated);
    // AUTH may omit reason and properties together, not properties alone.
    assert_eq!(err(b"\xF0\x01\x18", V5), E::Truncated);
}

#[test]
fn bytes_after_the_contents_are_malformed() {
    assert_eq!(err(b"\xC0\x01\x00", V311), E::TrailingBytes);
    assert_eq!(err(b"\x40\x03\x00\x01\x00", V311), E::TrailingBytes);
    assert_eq!(err(b"\xE0\x01\x00", V311), E::TrailingBytes);
    assert_eq!(err(b"\xB0\x03\x00\x01\x00", V311), E::TrailingBytes);
}

#[test]
fn mqtt_2_2_1_3_packet_id_zero() {
    assert_eq!(err(b"\x40\x02\x00\x00", V311), E::ZeroPacketId);
    assert_eq!(err(b"\x32\x05\x00\x01a\x00\x00", V311), E::ZeroPacketId);
}

#[test]
fn mqtt_3_8_3_4_v311_options_beyond_qos_are_malformed() {
    assert_eq!(err(b"\x82\x06\x00\x01\x00\x01a\x04", V311), E::InvalidSubscriptionOptions);
}

#[test]
fn mqtt_3_8_3_5_v5_reserved_option_bits_are_malformed() {
    assert_eq!(err(b"\x82\x07\x00\x01\x00\x00\x01a\x40", V5), E::InvalidSubscriptionOptions);
    assert_eq!(err(b"\x82\x07\x00\x01\x00\x00\x01a\x03", V5), E::InvalidQoS);
}

#[test]
fn retain_handling_3_is_a_protocol_error() {
    assert_eq!(err(b"\x82\x07\x00\x01\x00\x00\x01a\x30", V5), E::InvalidRetainHandling);
}

#[test]
fn mqtt_3_8_3_4_no_local_on_shared_subscription() {
    let bytes = b"\x82\x10\x00\x01\x00\x00\x0A$share/g/a\x04";
    assert_eq!(err(bytes, V5), E::NoLocalOnSharedSubscription);
}

#[test]
fn mqtt_3_8_3_3_and_3_10_3_2_at_least_one_filter() {
    assert_eq!(err(b"\x82\x02\x00\x01", V311), E::EmptyPayload);
    assert_eq!(err(b"\x82\x03\x00\x01\x00", V5), E::EmptyPayload);
    assert_eq!(err(b"\xA2\x02\x00\x01", V311), E::EmptyPayload);
    assert_eq!(err(b"\x90\x02\x00\x01", V311), E::EmptyPayload);
}

#[test]
fn undefined_reason_codes() {
    assert_eq!(err(b"\x40\x03\x00\x01\x05", V5), E::InvalidReasonCode);
    assert_eq!(err(b"\x20\x02\x00\x06", V311), E::InvalidReasonCode);
    assert_eq!(err(b"\x90\x03\x00\x01\x03", V311), E::InvalidReasonCode);
    assert_eq!(err(b"\xE0\x01\x91", V5), E::InvalidReasonCode);
}

#[test]
fn undefined_and_misplaced_properties_are_malformed() {
    assert_eq!(err(b"\x40\x05\x00\x01\x00\x01\x7F", V5), E::UnknownProperty);
    assert_eq!(err(b"\x40\x07\x00\x01\x00\x03\x23\x00\x01", V5), E::PropertyNotAllowed);
    // Will Delay Interval belongs in the will properties, not CONNECT's.
    let bytes = b"\x10\x12\x00\x04MQTT\x05\x02\x00\x3C\x05\x18\x00\x00\x00\x01\x00\x00";
    assert_eq!(err(bytes, V5), E::PropertyNotAllowed);
    // ... and Session Expiry Interval not in the will properties.
    let bytes = b"\x10\x18\x00\x04MQTT\x05\x06\x00\x3C\x00\x00\x00\x05\x11\x00\x00\x00\x01\x00\x01w\x00\x00";
    assert_eq!(err(bytes, V5), E::PropertyNotAllowed);
    assert_eq!(E::PropertyNotAllowed.reason_code(), ReasonCode::MALFORMED_PACKET);
}

#[test]
fn duplicate_properties_are_a_protocol_error() {
    assert_eq!(err(b"\x30\x0A\x00\x01a\x06\x23\x00\x01\x23\x00\x01", V5), E::DuplicateProperty);
    let bytes = b"\x82\x0B\x00\x01\x04\x0B\x01\x0B\x02\x00\x01a\x00";
    assert_eq!(err(bytes, V5), E::DuplicateProperty);
    // Several subscription identifiers are fine on PUBLISH, as are user
    // properties with the same key anywhere.
    let publish = decode_all(b"\x30\x08\x00\x01a\x04\x0B\x01\x0B\x02", V5);
    assert!(matches!(publish, Ok(Packet::Publish(p)) if p.properties.subscription_identifiers == [1, 2]));
    let users = decode_all(b"\x40\x10\x00\x01\x00\x0C\x26\x00\x01k\x00\x00\x26\x00\x01k\x00\x00", V5);
    assert!(matches!(users, Ok(Packet::PubAck(a)) if a.properties.user_properties.len() == 2));
    assert_eq!(E::DuplicateProperty.reason_code(), ReasonCode::PROTOCOL_ERROR);
}

#[test]
fn out_of_range_property_values_are_a_protocol_error() {
    let cases: [&[u8]; 7] = [
        b"\x30\x07\x00\x01a\x03\x23\x00\x00",        // topic alias 0
        b"\x30\x06\x00\x01a\x02\x01\x02",            // payload format 2
        b"\x30\x06\x00\x01a\x02\x0B\x00",            // subscription identifier 0
        b"\x20\x05\x00\x00\x02\x24\x02",             // maximum QoS 2
        b"\x20\x06\x00\x00\x03\x21\x00\x00",         // receive maximum 0
        b"\x20\x08\x00\x00\x05\x27\x00\x00\x00\x00", // maximum packet size 0
        b"\x20\x05\x00\x00\x02\x25\x02",             // retain available 2
    ];
    for bytes in cases {
        assert_eq!(err(bytes, V5), E::InvalidPropertyValue, "{bytes:02X?}");
    }
    let connect = b"\x10\x0F\x00\x04MQTT\x05\x02\x00\x3C\x02\x17\x02\x00\x00";
    assert_eq!(err(connect, V5), E::InvalidPropertyValue);
    // Authentication data without an authentication method.
    let auth = b"\xF0\x06\x18\x04\x16\x00\x01x";
    assert_eq!(err(auth, V5), E::InvalidPropertyValue);
}

#[test]
fn mqtt_3_3_2_2_publish_topic_must_not_contain_wildcards() {
    assert_eq!(err(b"\x30\x03\x00\x01#", V311), E::InvalidTopicName);
    assert_eq!(err(b"\x30\x05\x00\x03a/+", V5), E::InvalidTopicName);
    assert_eq!(E::InvalidTopicName.reason_code(), ReasonCode::TOPIC_NAME_INVALID);
}

#[test]
fn empty_topic_needs_v5_and_a_topic_alias() {
    assert_eq!(err(b"\x30\x02\x00\x00", V311), E::EmptyTopicWithoutAlias);
    assert_eq!(err(b"\x30\x03\x00\x00\x00", V5), E::EmptyTopicWithoutAlias);
    assert_eq!(E::EmptyTopicWithoutAlias.reason_code(), ReasonCode::PROTOCOL_ERROR);
    // Response topics are topic names too.
    assert_eq!(err(b"\x30\x08\x00\x01a\x04\x08\x00\x01#", V5), E::InvalidTopicName);
}

#[test]
fn invalid_topic_filters() {
    assert_eq!(err(b"\x82\x07\x00\x01\x00\x02a#\x00", V311), E::InvalidTopicFilter);
    assert_eq!(err(b"\xA2\x06\x00\x01\x00\x02a#", V311), E::InvalidTopicFilter);
    assert_eq!(E::InvalidTopicFilter.reason_code(), ReasonCode::TOPIC_FILTER_INVALID);
}

#[test]
fn encode_errors_leave_the_buffer_untouched() {
    let long = "x".repeat(65_536);
    let mut publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic(&long[..65_535]),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::new(),
    };
    let mut buf = BytesMut::from(&b"keep"[..]);
    let mut check = |packet: Packet, version, expected| {
        assert_eq!(encode(&packet, version, &mut buf), Err(expected));
        assert_eq!(encoded_len(&packet, version), Err(expected));
        assert_eq!(&buf[..], b"keep");
    };
    check(Packet::Publish(publish.clone()), V311, EncodeError::InvalidPacketId);
    publish.packet_id = PacketId::new(1);
    publish.properties.content_type = Some(long);
    check(Packet::Publish(publish.clone()), V5, EncodeError::StringTooLong);
    publish.properties = Properties { subscription_identifiers: vec![0], ..Properties::default() };
    check(Packet::Publish(publish.clone()), V5, EncodeError::ValueOutOfRange);
    publish.topic = topic("");
    check(Packet::Publish(publish), V311, EncodeError::InvalidTopicName);
    let sub = Subscribe { packet_id: super::tests::pid(1), properties: Properties::default(), filters: vec![] };
    check(Packet::Subscribe(sub), V5, EncodeError::EmptyPayload);
}

#[test]
fn connect_version_is_known_even_when_the_connect_is_bad() {
    // A v5 CONNECT whose properties are malformed (Will Delay in CONNECT).
    let bytes = b"\x10\x12\x00\x04MQTT\x05\x02\x00\x3C\x05\x18\x00\x00\x00\x01\x00\x00";
    assert_eq!(connect_version(bytes), Some(V5));
    assert_eq!(connect_version(b"\x10\x0C\x00\x04MQTT\x04\x02\x00\x3C\x00\x00"), Some(V311));
    assert_eq!(connect_version(b"\x10\x0E\x00\x06MQIsdp\x03"), None);
    assert_eq!(connect_version(b"\x10\x0C\x00\x04MQ"), None);
    assert_eq!(connect_version(b"\xC0\x00"), None);
}
