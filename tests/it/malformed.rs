//! Malformed input closes only the offending connection, with the right
//! reason code for v5 clients, and the broker keeps serving others.

use crate::harness::{TestBroker, connect_v4, connect_v5, frame};

/// Connects a raw v5 client, sends `bad`, and returns the DISCONNECT
/// reason code the broker answered with (`None` if it just closed).
async fn v5_reason_for(broker: &TestBroker, bad: &[u8]) -> Option<u8> {
    let mut raw = broker.raw().await;
    raw.send(&connect_v5("bad")).await;
    let connack = raw.read_exact(2).await;
    assert_eq!(connack[0], 0x20);
    raw.read_exact(usize::from(connack[1])).await;
    raw.send(bad).await;
    let reply = raw.read_to_close().await;
    match reply.as_slice() {
        [] => None,
        [0xE0, _, code, ..] => Some(*code),
        other => panic!("expected DISCONNECT, got {other:02x?}"),
    }
}

async fn still_serves(broker: &TestBroker) {
    let mut sub = broker.v4("healthy-sub").await;
    sub.subscribe("ok", rumqttc::QoS::AtMostOnce).await;
    let publisher = broker.v4("healthy-pub").await;
    publisher.client.publish("ok", rumqttc::QoS::AtMostOnce, false, "fine").await.expect("publish");
    assert_eq!(sub.publish().await.payload.as_ref(), b"fine");
}

#[tokio::test]
async fn mqtt_3_3_1_4_qos_3_is_malformed() {
    let broker = TestBroker::start().await;
    let bad = frame(0x36, &[0, 1, b't', 0, 1, 0]);
    assert_eq!(v5_reason_for(&broker, &bad).await, Some(0x81));
    still_serves(&broker).await;
}

#[tokio::test]
async fn mqtt_3_3_2_2_wildcard_in_publish_topic() {
    let broker = TestBroker::start().await;
    let bad = frame(0x30, &[0, 3, b'a', b'/', b'#', 0]);
    assert_eq!(v5_reason_for(&broker, &bad).await, Some(0x90));
    still_serves(&broker).await;
}

#[tokio::test]
async fn mqtt_1_5_4_invalid_utf8_topic() {
    let broker = TestBroker::start().await;
    let bad = frame(0x30, &[0, 2, 0xC3, 0x28, 0]);
    assert_eq!(v5_reason_for(&broker, &bad).await, Some(0x81));
    let null = frame(0x30, &[0, 2, b'a', 0, 0]);
    assert_eq!(v5_reason_for(&broker, &null).await, Some(0x81));
    still_serves(&broker).await;
}

#[tokio::test]
async fn mqtt_3_8_1_1_subscribe_reserved_flags() {
    let broker = TestBroker::start().await;
    let bad = frame(0x80, &[0, 1, 0, 0, 1, b't', 0]);
    assert_eq!(v5_reason_for(&broker, &bad).await, Some(0x81));
    still_serves(&broker).await;
}

#[tokio::test]
async fn mqtt_3_1_0_2_second_connect_is_protocol_error() {
    let broker = TestBroker::start().await;
    assert_eq!(v5_reason_for(&broker, &connect_v5("again")).await, Some(0x82));
    still_serves(&broker).await;
}

#[tokio::test]
async fn oversized_packet_rejected_from_header() {
    let broker = TestBroker::with(|c| c.limits.max_packet_size = 1024).await;
    // Claims 2 MB; the broker must refuse from the fixed header alone.
    let bad = [0x30, 0x80, 0x80, 0x80, 0x01];
    assert_eq!(v5_reason_for(&broker, &bad).await, Some(0x95));
    still_serves(&broker).await;
}

#[tokio::test]
async fn v5_topic_alias_out_of_range() {
    let broker = TestBroker::start().await;
    // PUBLISH "t" with Topic Alias 1000 (> maximum).
    let bad = frame(0x30, &[0, 1, b't', 3, 0x23, 0x03, 0xE8]);
    assert_eq!(v5_reason_for(&broker, &bad).await, Some(0x94));
    still_serves(&broker).await;
}

#[tokio::test]
async fn v311_malformed_packet_just_closes() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.send(&connect_v4("v3bad")).await;
    assert_eq!(raw.read_exact(4).await, [0x20, 2, 0, 0]);
    raw.send(&frame(0x36, &[0, 1, b't', 0, 1])).await;
    assert!(raw.read_to_close().await.is_empty());
    still_serves(&broker).await;
}
