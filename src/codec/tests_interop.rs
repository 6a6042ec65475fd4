//! Cross-checks against an independent implementation (rumqttc's
//! mqttbytes): what it writes we decode, and what we write it reads.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{QoS as RQoS, v4};
use rumqttc::v5::mqttbytes::{QoS as R5QoS, v5};

use super::tests::{decode_all, encode_vec, filter, pid, topic};
use super::*;
use ProtocolVersion::{V5, V311};

#[test]
fn decodes_rumqttc_v4_connect_publish_subscribe() {
    let mut connect = v4::Connect::new("client");
    connect.set_login("user", "pass");
    connect.last_will = Some(v4::LastWill::new("will/t", "gone", RQoS::AtLeastOnce, true));
    let mut buf = BytesMut::new();
    v4::Packet::Connect(connect).write(&mut buf, 1 << 20).expect("writes");
    let Ok(Packet::Connect(c)) = decode_all(&buf, V311) else { panic!("connect") };
    assert_eq!((c.protocol, c.client_id.as_str(), c.keep_alive), (V311, "client", 10));
    assert_eq!(c.username.as_deref(), Some("user"));
    assert_eq!(c.password.as_deref(), Some(&b"pass"[..]));
    let will = c.will.expect("will");
    assert_eq!(
        (will.topic.as_str(), &will.payload[..], will.qos, will.retain),
        ("will/t", &b"gone"[..], QoS::AtLeastOnce, true)
    );

    let mut publish = v4::Publish::new("a/b", RQoS::ExactlyOnce, "payload");
    publish.pkid = 9;
    let mut buf = BytesMut::new();
    v4::Packet::Publish(publish).write(&mut buf, 1 << 20).expect("writes");
    let Ok(Packet::Publish(p)) = decode_all(&buf, V311) else { panic!("publish") };
    assert_eq!(
        (p.topic.as_str(), p.qos, p.packet_id, &p.payload[..]),
        ("a/b", QoS::ExactlyOnce, Some(pid(9)), &b"payload"[..])
    );

    let mut subscribe = v4::Subscribe::new("x/+/#", RQoS::AtLeastOnce);
    subscribe.pkid = 3;
    let mut buf = BytesMut::new();
    v4::Packet::Subscribe(subscribe).write(&mut buf, 1 << 20).expect("writes");
    let Ok(Packet::Subscribe(s)) = decode_all(&buf, V311) else { panic!("subscribe") };
    assert_eq!(s.filters, vec![(filter("x/+/#"), SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() })]);
}

#[test]
fn rumqttc_v4_reads_our_connack_and_suback() {
    let connack = ConnAck { session_present: true, ..ConnAck::default() };
    let mut buf = BytesMut::from(&encode_vec(&Packet::ConnAck(connack), V311)[..]);
    let read = v4::Packet::read(&mut buf, 1 << 20).expect("reads");
    assert_eq!(read, v4::Packet::ConnAck(v4::ConnAck::new(v4::ConnectReturnCode::Success, true)));
    let suback =
        SubAck { packet_id: pid(3), properties: Properties::default(), reasons: vec![ReasonCode(1), ReasonCode(0x87)] };
    let mut buf = BytesMut::from(&encode_vec(&Packet::SubAck(suback), V311)[..]);
    let codes = vec![v4::SubscribeReasonCode::Success(RQoS::AtLeastOnce), v4::SubscribeReasonCode::Failure];
    assert_eq!(v4::Packet::read(&mut buf, 1 << 20).expect("reads"), v4::Packet::SubAck(v4::SubAck::new(3, codes)));
}

#[test]
fn decodes_rumqttc_v5_connect_and_publish() {
    let connect = v5::Connect {
        keep_alive: 30,
        client_id: "c5".into(),
        clean_start: false,
        properties: Some(v5::ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(100),
            max_packet_size: Some(1 << 16),
            topic_alias_max: Some(8),
            request_response_info: Some(1),
            request_problem_info: Some(0),
            user_properties: vec![("k".into(), "v".into())],
            authentication_method: None,
            authentication_data: None,
        }),
    };
    let will = v5::LastWill::new("w", "bye", R5QoS::AtMostOnce, false, None);
    let mut buf = BytesMut::new();
    v5::Packet::Connect(connect, Some(will), None).write(&mut buf, None).expect("writes");
    let Ok(Packet::Connect(c)) = decode_all(&buf, V311) else { panic!("connect") };
    assert_eq!((c.protocol, c.client_id.as_str(), c.clean_start), (V5, "c5", false));
    assert_eq!(c.properties.session_expiry_interval, Some(3600));
    assert_eq!(c.properties.maximum_packet_size, Some(1 << 16));
    assert_eq!(c.properties.user_properties, vec![("k".to_owned(), "v".to_owned())]);
    assert_eq!(c.will.map(|w| w.topic), Some(topic("w")));

    let properties = v5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(5),
        topic_alias: Some(2),
        response_topic: Some("r/t".into()),
        correlation_data: Some(Bytes::from_static(b"id")),
        user_properties: vec![],
        subscription_identifiers: vec![1, 300],
        content_type: Some("text/plain".into()),
    };
    let mut publish = v5::Publish::new("a/b", R5QoS::AtLeastOnce, "x", Some(properties));
    publish.pkid = 4;
    let mut buf = BytesMut::new();
    v5::Packet::Publish(publish).write(&mut buf, None).expect("writes");
    let Ok(Packet::Publish(p)) = decode_all(&buf, V5) else { panic!("publish") };
    assert_eq!(p.properties.subscription_identifiers, vec![1, 300]);
    assert_eq!(p.properties.response_topic, Some(topic("r/t")));
    assert_eq!(p.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!((p.packet_id, &p.payload[..]), (Some(pid(4)), &b"x"[..]));
}

#[test]
fn rumqttc_v5_reads_our_publish_and_subscribe() {
    let publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: topic("a/b"),
        packet_id: Some(pid(7)),
        properties: Properties {
            message_expiry_interval: Some(10),
            subscription_identifiers: vec![128],
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        },
        payload: Bytes::from_static(b"hello"),
    };
    let mut buf = BytesMut::from(&encode_vec(&Packet::Publish(publish), V5)[..]);
    let Ok(v5::Packet::Publish(p)) = v5::Packet::read(&mut buf, None) else { panic!("publish") };
    assert_eq!((&p.topic[..], p.pkid, p.retain, &p.payload[..]), (&b"a/b"[..], 7, true, &b"hello"[..]));
    let props = p.properties.expect("properties");
    assert_eq!((props.message_expiry_interval, props.subscription_identifiers), (Some(10), vec![128]));

    let options = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::SendIfNew,
    };
    let subscribe =
        Subscribe { packet_id: pid(2), properties: Properties::default(), filters: vec![(filter("s/#"), options)] };
    let mut buf = BytesMut::from(&encode_vec(&Packet::Subscribe(subscribe), V5)[..]);
    let Ok(v5::Packet::Subscribe(s)) = v5::Packet::read(&mut buf, None) else { panic!("subscribe") };
    let f = &s.filters[0];
    assert_eq!((f.path.as_str(), f.qos, f.nolocal, f.preserve_retain), ("s/#", R5QoS::ExactlyOnce, true, true));
    assert_eq!(f.retain_forward_rule, v5::RetainForwardRule::OnNewSubscribe);
}
