//! Byte-exact cases for SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ,
//! PINGRESP, DISCONNECT and AUTH in both versions.

use bytes::BytesMut;

use super::tests::{decode_all, encode_vec, exact, filter, pid};
use super::*;
use ProtocolVersion::{V5, V311};

#[test]
fn subscribe_v311() {
    let sub = Subscribe {
        packet_id: pid(1),
        properties: Properties::default(),
        filters: vec![
            (filter("a/b"), SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() }),
            (filter("c/#"), SubscriptionOptions { qos: QoS::ExactlyOnce, ..Default::default() }),
        ],
    };
    exact(b"\x82\x0E\x00\x01\x00\x03a/b\x01\x00\x03c/#\x02", V311, Packet::Subscribe(sub));
}

#[test]
fn subscribe_v5_with_options_and_identifier() {
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
    };
    let sub = Subscribe {
        packet_id: pid(1),
        properties: Properties { subscription_identifiers: vec![5], ..Properties::default() },
        filters: vec![(filter("a/b"), options)],
    };
    exact(b"\x82\x0B\x00\x01\x02\x0B\x05\x00\x03a/b\x2D", V5, Packet::Subscribe(sub));
}

#[test]
fn suback_v311_failure_is_0x80() {
    let ack = SubAck {
        packet_id: pid(1),
        properties: Properties::default(),
        reasons: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::UNSPECIFIED_ERROR],
    };
    exact(b"\x90\x04\x00\x01\x01\x80", V311, Packet::SubAck(ack.clone()));
    // Any v5 failure code goes out as 0x80 in 3.1.1.
    let mut denied = ack;
    denied.reasons[1] = ReasonCode::NOT_AUTHORIZED;
    assert_eq!(encode_vec(&Packet::SubAck(denied), V311), b"\x90\x04\x00\x01\x01\x80");
}

#[test]
fn suback_v5() {
    let ack = SubAck {
        packet_id: pid(1),
        properties: Properties::default(),
        reasons: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::NOT_AUTHORIZED],
    };
    exact(b"\x90\x05\x00\x01\x00\x01\x87", V5, Packet::SubAck(ack));
}

#[test]
fn unsubscribe_and_unsuback() {
    let unsub = Unsubscribe { packet_id: pid(2), properties: Properties::default(), filters: vec![filter("a/b")] };
    exact(b"\xA2\x07\x00\x02\x00\x03a/b", V311, Packet::Unsubscribe(unsub.clone()));
    exact(b"\xA2\x08\x00\x02\x00\x00\x03a/b", V5, Packet::Unsubscribe(unsub));
    let v311 = UnsubAck { packet_id: pid(2), properties: Properties::default(), reasons: vec![] };
    exact(b"\xB0\x02\x00\x02", V311, Packet::UnsubAck(v311));
    let v5 = UnsubAck {
        packet_id: pid(2),
        properties: Properties::default(),
        reasons: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
    };
    exact(b"\xB0\x05\x00\x02\x00\x00\x11", V5, Packet::UnsubAck(v5.clone()));
    // 3.1.1 has no reason codes: they are dropped.
    assert_eq!(encode_vec(&Packet::UnsubAck(v5), V311), b"\xB0\x02\x00\x02");
}

#[test]
fn ping_both_versions() {
    for version in [V311, V5] {
        exact(b"\xC0\x00", version, Packet::PingReq);
        exact(b"\xD0\x00", version, Packet::PingResp);
    }
}

#[test]
fn disconnect_both_versions() {
    exact(b"\xE0\x00", V311, Packet::Disconnect(Disconnect::default()));
    exact(b"\xE0\x00", V5, Packet::Disconnect(Disconnect::default()));
    let with_will = Disconnect { reason: ReasonCode::DISCONNECT_WITH_WILL, ..Disconnect::default() };
    exact(b"\xE0\x02\x04\x00", V5, Packet::Disconnect(with_will.clone()));
    // The reason-only short form decodes; we never send it (see encode.rs).
    assert_eq!(decode_all(b"\xE0\x01\x04", V5), Ok(Packet::Disconnect(with_will.clone())));
    // 3.1.1 DISCONNECT has no body.
    assert_eq!(encode_vec(&Packet::Disconnect(with_will), V311), b"\xE0\x00");
    let expiry = Disconnect {
        reason: ReasonCode::SUCCESS,
        properties: Properties { session_expiry_interval: Some(0), ..Properties::default() },
    };
    exact(b"\xE0\x07\x00\x05\x11\x00\x00\x00\x00", V5, Packet::Disconnect(expiry));
}

#[test]
fn auth_v5_only() {
    exact(b"\xF0\x00", V5, Packet::Auth(Auth::default()));
    let auth = Auth {
        reason: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: Properties { authentication_method: Some("SCRAM".into()), ..Properties::default() },
    };
    exact(b"\xF0\x0A\x18\x08\x15\x00\x05SCRAM", V5, Packet::Auth(auth.clone()));
    let mut buf = BytesMut::new();
    assert_eq!(encode(&Packet::Auth(auth), V311, &mut buf), Err(EncodeError::NotInVersion));
    assert!(buf.is_empty());
    assert_eq!(decode_all(b"\xF0\x00", V311), Err(DecodeError::UnknownPacketType));
}
