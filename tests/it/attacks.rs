//! The known attacks on MQTT brokers, one test per class. Each also checks
//! that the broker still serves a normal client afterwards.

use std::time::Duration;

use rumqttc::QoS as Q4;
use rumqttc::v5::mqttbytes::QoS as Q5;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::harness::{Raw, TestBroker, WAIT, connect_v4, connect_v5, frame, subscribe_v5, varint};

mod load;

/// A normal subscriber and publisher can still talk through the broker.
pub(crate) async fn still_serves(broker: &TestBroker) {
    let mut sub = broker.v4("healthy-sub").await;
    sub.subscribe("ok", Q4::AtMostOnce).await;
    let publisher = broker.v5("healthy-pub").await;
    publisher.client.publish("ok", Q5::AtMostOnce, false, "fine").await.expect("publish");
    assert_eq!(sub.publish().await.payload.as_ref(), b"fine");
}

/// Reads one packet: (first byte, body).
async fn read_packet(raw: &mut Raw) -> (u8, Vec<u8>) {
    let first = raw.read_exact(1).await[0];
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let byte = raw.read_exact(1).await[0];
        len |= usize::from(byte & 0x7F) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
    }
    (first, raw.read_exact(len).await)
}

/// A raw v5 client past CONNACK.
pub(crate) async fn raw_v5(broker: &TestBroker, id: &str) -> Raw {
    let mut raw = broker.raw().await;
    raw.send(&connect_v5(id)).await;
    let (first, body) = read_packet(&mut raw).await;
    assert_eq!((first, body[1]), (0x20, 0), "CONNACK success");
    raw
}

/// A UTF-8 string field.
pub(crate) fn string(s: &str) -> Vec<u8> {
    let mut out = u16::try_from(s.len()).expect("short string").to_be_bytes().to_vec();
    out.extend(s.as_bytes());
    out
}

/// A v5 PUBLISH with no properties.
pub(crate) fn publish_v5(topic: &str, qos: u8, dup: bool, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = string(topic);
    if qos > 0 {
        body.extend(id.to_be_bytes());
    }
    body.push(0);
    body.extend(payload);
    frame(0x30 | (qos << 1) | if dup { 0x08 } else { 0 }, &body)
}

/// Expects a DISCONNECT from the broker, then the close; returns its reason.
pub(crate) async fn disconnect_reason(raw: &mut Raw) -> u8 {
    let reply = raw.read_to_close().await;
    match reply.as_slice() {
        [0xE0, _, code, ..] => *code,
        other => panic!("expected DISCONNECT, got {other:02x?}"),
    }
}

#[tokio::test]
async fn huge_remaining_length_before_connect_refused_from_header() {
    let broker = TestBroker::start().await;
    // 200 KB claimed: above the CONNECT cap, below max_packet_size. The
    // broker must refuse it from the header, without waiting for the body.
    let mut raw = broker.raw().await;
    let mut claim = vec![0x10];
    claim.extend(varint(200 * 1024));
    raw.send(&claim).await;
    assert!(raw.read_to_close().await.is_empty());
    // The largest length the encoding allows (256 MB).
    let mut raw = broker.raw().await;
    raw.send(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F]).await;
    assert!(raw.read_to_close().await.is_empty());
    still_serves(&broker).await;
}

#[tokio::test]
async fn mqtt_3_1_0_1_first_packet_must_be_connect() {
    let broker = TestBroker::start().await;
    for first in [publish_v5("t", 0, false, 0, b"x"), frame(0xC0, &[]), frame(0x82, &[0, 1, 0, 1, b't', 0])] {
        let mut raw = broker.raw().await;
        raw.send(&first).await;
        assert!(raw.read_to_close().await.is_empty(), "no answer to {first:02x?} before CONNECT");
    }
    assert_eq!(broker.broker.sessions.len(), 0);
    still_serves(&broker).await;
}

#[tokio::test]
async fn slowloris_silent_connection_closed_at_connect_timeout() {
    let broker = TestBroker::with(|c| c.limits.connect_timeout_ms = 300).await;
    let started = Instant::now();
    let mut silent = broker.raw().await;
    assert!(silent.read_to_close().await.is_empty());
    assert!(started.elapsed() < Duration::from_secs(2), "closed after {:?}", started.elapsed());
    still_serves(&broker).await;
}

#[tokio::test]
async fn slowloris_byte_at_a_time_connect_closed_at_connect_timeout() {
    let broker = TestBroker::with(|c| c.limits.connect_timeout_ms = 300).await;
    let mut raw = broker.raw().await;
    let connect = connect_v4("slow-client-with-a-long-identifier");
    let started = Instant::now();
    let mut sent = 0;
    // One byte every 100 ms (the timeout scaled down from seconds): the
    // timer covers the whole CONNECT, not the gap between bytes.
    for byte in &connect {
        if raw.0.write_all(std::slice::from_ref(byte)).await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    assert!(sent < connect.len(), "the broker waited for the whole slow CONNECT");
    assert!(raw.read_to_close().await.is_empty());
    assert_eq!(broker.broker.sessions.len(), 0);
    still_serves(&broker).await;
}

#[tokio::test]
async fn topic_with_65000_levels_refused_with_topic_name_invalid() {
    let broker = TestBroker::start().await;
    let deep = "/".repeat(64_999); // 65,000 empty levels
    let mut raw = raw_v5(&broker, "deep-pub").await;
    raw.send(&publish_v5(&deep, 1, false, 1, b"x")).await;
    assert_eq!(disconnect_reason(&mut raw).await, 0x90);

    // As a filter it is refused in SUBACK with 0x8F, and the client stays.
    let deep_filter = format!("{deep}#");
    let mut raw = raw_v5(&broker, "deep-sub").await;
    raw.send(&subscribe_v5(1, &[&deep_filter])).await;
    let (first, body) = read_packet(&mut raw).await;
    assert_eq!(first, 0x90, "SUBACK");
    assert_eq!(body, [0, 1, 0, 0x8F]);
    raw.send(&frame(0xC0, &[])).await;
    assert_eq!(read_packet(&mut raw).await.0, 0xD0, "PINGRESP");
    still_serves(&broker).await;
}

/// A v5 PUBLISH carrying `n` empty user properties (5 bytes each).
fn publish_with_user_properties(n: usize) -> Vec<u8> {
    let mut props = Vec::with_capacity(n * 5);
    for _ in 0..n {
        props.extend([0x26, 0, 0, 0, 0]);
    }
    let mut body = string("props");
    body.extend(1u16.to_be_bytes());
    body.extend(varint(props.len()));
    body.extend(props);
    body.extend(b"payload");
    frame(0x32, &body)
}

#[tokio::test]
async fn user_properties_100000_refused_by_default_before_decoding_them() {
    let broker = TestBroker::start().await;
    let mut raw = raw_v5(&broker, "props-pub").await;
    raw.send(&publish_with_user_properties(100_000)).await;
    assert_eq!(disconnect_reason(&mut raw).await, 0x95);
    assert_eq!(broker.broker.metrics.limit_hits(moat::metrics::Limit::UserProperties), 1);
    still_serves(&broker).await;
}

#[tokio::test]
async fn user_properties_100000_handled_within_max_packet_size() {
    // Without a limit on user properties, only the packet size bounds them.
    let broker = TestBroker::with(|c| c.limits.max_user_properties = 0).await;
    let mut watcher = broker
        .v5_with("props-watcher", |o| {
            o.set_max_packet_size(Some(2 * 1024 * 1024));
        })
        .await;
    watcher.subscribe("props", Q5::AtLeastOnce).await;
    // A subscriber whose Maximum Packet Size is smaller never gets it
    // [MQTT-3.1.2-24].
    let mut small = broker
        .v5_with("props-small", |o| {
            o.set_max_packet_size(Some(64 * 1024));
        })
        .await;
    small.subscribe("props", Q5::AtLeastOnce).await;
    // 500 KB: within the default 1 MiB limit, so it is decoded and routed.
    let mut raw = raw_v5(&broker, "props-pub").await;
    raw.send(&publish_with_user_properties(100_000)).await;
    let (first, body) = read_packet(&mut raw).await;
    assert_eq!(first, 0x40, "PUBACK");
    assert_eq!(&body[..2], [0, 1]);
    let got = watcher.publish().await;
    assert_eq!(got.properties.map_or(0, |p| p.user_properties.len()), 100_000);
    small.no_publish().await;
    // Twice that is over the limit: refused from the header with 0x95.
    raw.send(&publish_with_user_properties(250_000)).await;
    assert_eq!(disconnect_reason(&mut raw).await, 0x95);
    still_serves(&broker).await;
}

#[tokio::test]
async fn mqtt_4_3_3_10_qos2_packet_id_reuse_not_delivered_twice() {
    let broker = TestBroker::start().await;
    let mut watcher = broker.v4("qos2-watcher").await;
    watcher.subscribe("q2", Q4::ExactlyOnce).await;
    let mut raw = raw_v5(&broker, "qos2-pub").await;
    raw.send(&publish_v5("q2", 2, false, 7, b"once")).await;
    assert_eq!(read_packet(&mut raw).await, (0x50, vec![0, 7]), "PUBREC, success");
    // The same id again before PUBREL (a resend, or a reuse): acknowledged,
    // not routed again.
    raw.send(&publish_v5("q2", 2, true, 7, b"once")).await;
    raw.send(&publish_v5("q2", 2, false, 7, b"reused")).await;
    assert_eq!(read_packet(&mut raw).await.0, 0x50);
    assert_eq!(read_packet(&mut raw).await.0, 0x50);
    assert_eq!(watcher.publish().await.payload.as_ref(), b"once");
    watcher.no_publish().await;
    // PUBREL releases the id [MQTT-4.3.3-13]; after that it is a new message.
    raw.send(&frame(0x62, &[0, 7])).await;
    assert_eq!(read_packet(&mut raw).await, (0x70, vec![0, 7]), "PUBCOMP, success");
    raw.send(&publish_v5("q2", 2, false, 7, b"again")).await;
    assert_eq!(read_packet(&mut raw).await.0, 0x50);
    assert_eq!(watcher.publish().await.payload.as_ref(), b"again");
    still_serves(&broker).await;
}

#[tokio::test]
async fn v5_pubrel_for_unknown_id_answered_pubcomp_0x92() {
    let broker = TestBroker::start().await;
    let mut raw = raw_v5(&broker, "never-published").await;
    raw.send(&frame(0x62, &[0, 42])).await;
    let (first, body) = read_packet(&mut raw).await;
    assert_eq!((first, &body[..3]), (0x70, &[0, 42, 0x92][..]), "PUBCOMP 0x92");
    // The connection is still fine.
    raw.send(&frame(0xC0, &[])).await;
    assert_eq!(read_packet(&mut raw).await.0, 0xD0, "PINGRESP");
    still_serves(&broker).await;
}

#[tokio::test]
async fn receive_maximum_exceeded_disconnects_0x93() {
    let broker = TestBroker::with(|c| c.limits.max_inflight = 2).await;
    let mut raw = raw_v5(&broker, "greedy").await;
    for id in 1..=2u16 {
        raw.send(&publish_v5("rm", 2, false, id, b"x")).await;
        assert_eq!(read_packet(&mut raw).await.0, 0x50, "PUBREC {id}");
    }
    // A third unreleased QoS 2 message: more than the Receive Maximum (4.9).
    raw.send(&publish_v5("rm", 2, false, 3, b"x")).await;
    assert_eq!(disconnect_reason(&mut raw).await, 0x93);
    still_serves(&broker).await;
}

#[tokio::test]
async fn mqtt_3_1_4_3_takeover_loop_leaves_one_session() {
    let broker = TestBroker::start().await;
    let mut previous: Vec<Raw> = Vec::new();
    for _ in 0..50 {
        let mut raw = broker.raw().await;
        raw.send(&connect_v4("same-id")).await;
        assert_eq!(raw.read_exact(4).await, [0x20, 2, 0, 0]);
        previous.push(raw);
    }
    let last = previous.pop().expect("50 connections");
    for mut old in previous {
        // [MQTT-3.1.4-3]: each earlier connection was closed.
        assert!(old.read_to_close().await.is_empty());
    }
    assert_eq!(broker.broker.sessions.len(), 1);
    let deadline = Instant::now() + WAIT;
    while broker.broker.metrics.connections_current() != 1 {
        assert!(Instant::now() < deadline, "connection count never settled at 1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    still_serves(&broker).await;
    drop(last);
}

#[tokio::test]
async fn v5_will_delay_longer_than_session_expiry_sent_at_session_end() {
    let broker = TestBroker::start().await;
    let mut watcher = broker.v5("will-watcher").await;
    watcher.subscribe("wills/#", Q5::AtLeastOnce).await;
    let dying = broker
        .v5_with("expiring", |o| {
            o.set_last_will(crate::harness::delayed_will("wills/expiring", "gone", 3600));
            o.set_session_expiry_interval(Some(1));
        })
        .await;
    dying.kill();
    let started = Instant::now();
    // Delay 3600 s, session expiry 1 s: the will goes when the session ends
    // (3.1.3.2.2: whichever happens first).
    let will = watcher.publish().await;
    assert_eq!(will.payload.as_ref(), b"gone");
    assert!(started.elapsed() >= Duration::from_millis(700), "will sent before the session ended");
    still_serves(&broker).await;
}

#[tokio::test]
async fn v5_zero_length_topic_without_alias_is_protocol_error() {
    let broker = TestBroker::start().await;
    let mut raw = raw_v5(&broker, "no-topic").await;
    raw.send(&publish_v5("", 0, false, 0, b"x")).await;
    assert_eq!(disconnect_reason(&mut raw).await, 0x82);
    still_serves(&broker).await;
}

#[tokio::test]
async fn mqtt_4_7_2_1_hash_does_not_receive_dollar_topics() {
    let broker = TestBroker::start().await;
    let mut everything = broker.v4("everything").await;
    everything.subscribe("#", Q4::AtMostOnce).await;
    let mut plus = broker.v4("plus").await;
    plus.subscribe("+/x", Q4::AtMostOnce).await;
    // `$SYS/` itself is the broker's own (clients may not publish there);
    // any other `$` topic is hidden from wildcards the same way.
    let mut sys = broker.v4("sys").await;
    sys.subscribe("$app/#", Q4::AtMostOnce).await;
    let publisher = broker.v4("dollar-pub").await;
    publisher.client.publish("$app/x", Q4::AtMostOnce, false, "hidden").await.expect("publish");
    assert_eq!(sys.publish().await.payload.as_ref(), b"hidden");
    everything.no_publish().await;
    plus.no_publish().await;
    publisher.client.publish("a/x", Q4::AtMostOnce, false, "seen").await.expect("publish");
    assert_eq!(everything.publish().await.payload.as_ref(), b"seen");
    assert_eq!(plus.publish().await.payload.as_ref(), b"seen");
    still_serves(&broker).await;
}
