//! CONNECT and CONNACK.

use std::time::Duration;

use crate::harness::{TestBroker, connect_v4, connect_v5, frame};

#[tokio::test]
async fn v311_connack_success() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.send(&connect_v4("c1")).await;
    assert_eq!(raw.read_exact(4).await, [0x20, 2, 0, 0]);
}

#[tokio::test]
async fn mqtt_3_2_2_v5_assigned_client_identifier() {
    let broker = TestBroker::start().await;
    let client = broker.v5("").await;
    let props = client.connack.properties.clone().expect("CONNACK properties");
    let assigned = props.assigned_client_identifier.expect("assigned id");
    assert!(!assigned.is_empty());
    assert!(props.receive_max.is_some());
    assert!(props.max_packet_size.is_some());
}

#[tokio::test]
async fn mqtt_3_1_3_8_v311_empty_id_needs_clean_session() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    // Empty client id with clean session 0.
    raw.send(&frame(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 30, 0, 0])).await;
    assert_eq!(raw.read_to_close().await, [0x20, 2, 0, 2], "identifier rejected");
}

#[tokio::test]
async fn mqtt_3_1_2_2_unsupported_protocol_level() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.send(&frame(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 30, 0, 1, b'x'])).await;
    assert_eq!(raw.read_to_close().await, [0x20, 2, 0, 1], "unacceptable protocol version");
}

#[tokio::test]
async fn mqtt_3_1_0_1_first_packet_must_be_connect() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.send(&[0xC0, 0]).await; // PINGREQ
    assert!(raw.read_to_close().await.is_empty());
}

#[tokio::test]
async fn connect_timeout_drops_silent_clients() {
    let broker = TestBroker::with(|c| c.limits.connect_timeout_ms = 200).await;
    let mut raw = broker.raw().await;
    let started = tokio::time::Instant::now();
    assert!(raw.read_to_close().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn anonymous_refused_when_listener_forbids_it() {
    let broker = TestBroker::with(|c| c.listeners[0].allow_anonymous = moat::config::Anonymous::Never).await;
    let mut raw = broker.raw().await;
    raw.send(&connect_v5("anon")).await;
    let reply = raw.read_to_close().await;
    assert_eq!(&reply[..4], [0x20, 3, 0, 0x87], "v5 CONNACK not authorized");
}

#[tokio::test]
async fn max_connections_is_enforced() {
    let broker = TestBroker::with(|c| c.limits.max_connections = 1).await;
    let _first = broker.v4("only").await;
    let mut raw = broker.raw().await;
    raw.send(&connect_v4("second")).await;
    assert!(raw.read_to_close().await.is_empty());
}

#[tokio::test]
async fn mqtt_3_1_2_3_v5_malformed_connect_gets_connack_reason() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    // v5 CONNECT with the reserved flag set.
    raw.send(&frame(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 5, 0x03, 0, 30, 0, 0, 1, b'x'])).await;
    assert_eq!(raw.read_to_close().await, [0x20, 3, 0, 0x81, 0], "CONNACK malformed packet");
}
