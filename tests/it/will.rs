//! Will messages.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::QoS as Q4;
use rumqttc::v5::mqttbytes::QoS as Q5;

use crate::harness::{Raw, TestBroker};

#[tokio::test]
async fn mqtt_3_1_2_8_will_published_on_abnormal_close() {
    let broker = TestBroker::start().await;
    let mut watcher = broker.v4("watcher").await;
    watcher.subscribe("wills/#", Q4::AtLeastOnce).await;
    let dying = broker
        .v4_with("dying", |o| {
            o.set_last_will(rumqttc::LastWill::new("wills/dying", "gone", Q4::AtLeastOnce, false));
        })
        .await;
    dying.kill();
    let will = watcher.publish().await;
    assert_eq!(will.topic, "wills/dying");
    assert_eq!(will.payload.as_ref(), b"gone");
}

#[tokio::test]
async fn mqtt_3_14_4_3_no_will_after_disconnect() {
    let broker = TestBroker::start().await;
    let mut watcher = broker.v4("watcher").await;
    watcher.subscribe("wills/#", Q4::AtLeastOnce).await;
    let polite = broker
        .v4_with("polite", |o| {
            o.set_last_will(rumqttc::LastWill::new("wills/polite", "gone", Q4::AtLeastOnce, false));
        })
        .await;
    polite.client.disconnect().await.expect("disconnect");
    watcher.no_publish().await;
}

#[tokio::test]
async fn v5_will_delay_cancelled_by_reconnect_and_published_after() {
    let broker = TestBroker::start().await;
    let mut watcher = broker.v5("watcher").await;
    watcher.subscribe("wills/#", Q5::AtLeastOnce).await;
    let with_will = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_last_will(crate::harness::delayed_will("wills/slow", "gone", 1));
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
    };
    let first = broker.v5_with("slow", with_will).await;
    first.kill();
    // Reconnect within the delay: the will must not be sent.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = broker.v5_with("slow", with_will).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    watcher.no_publish().await;
    // Now die for good: the will arrives after about a second.
    second.kill();
    let started = tokio::time::Instant::now();
    let will = watcher.publish().await;
    assert_eq!(will.payload, Bytes::from("gone"));
    assert!(started.elapsed() >= Duration::from_millis(700), "will sent before its delay");
}

/// A raw MQTT 3.1.1 client `id` with keep alive 1 s and a will ("bye" to
/// `wills/<id>`), connected.
async fn raw_with_will(broker: &TestBroker, id: &str) -> Raw {
    let mut raw = broker.raw().await;
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02 | 0x04, 0, 1];
    for s in [id, &format!("wills/{id}"), "bye"] {
        body.extend((s.len() as u16).to_be_bytes());
        body.extend(s.as_bytes());
    }
    raw.send(&crate::harness::frame(0x10, &body)).await;
    assert_eq!(raw.read_exact(4).await, [0x20, 2, 0, 0]);
    raw
}

#[tokio::test]
async fn mqtt_3_1_2_keep_alive_timeout_publishes_will() {
    let broker = TestBroker::start().await;
    let mut watcher = broker.v4("watcher").await;
    watcher.subscribe("wills/#", Q4::AtMostOnce).await;
    // A raw client with keep alive 1 s that then goes silent.
    let mut raw = raw_with_will(&broker, "silent").await;
    let will = watcher.publish().await;
    assert_eq!(will.payload.as_ref(), b"bye");
    raw.read_to_close().await;
}

/// The keep-alive deadline moves with every packet: a client pinging
/// within it stays past several first deadlines, then goes silent and is
/// closed (its will tells when).
#[tokio::test]
async fn keep_alive_moves_with_every_packet() {
    let broker = TestBroker::start().await;
    let mut watcher = broker.v4("watcher").await;
    watcher.subscribe("wills/#", Q4::AtMostOnce).await;
    let mut raw = raw_with_will(&broker, "pinging").await;
    // Keep alive 1 s: closed 1.5 s after the last packet. Pinging every
    // 0.4 s for 3.6 s outlives the first deadline more than twice over.
    for _ in 0..9 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        raw.send(&[0xC0, 0]).await;
        assert_eq!(raw.read_exact(2).await, [0xD0, 0], "PINGRESP while pinging");
    }
    let silent = tokio::time::Instant::now();
    watcher.no_publish().await;
    let will = watcher.publish().await;
    assert_eq!(will.payload.as_ref(), b"bye");
    assert!(silent.elapsed() >= Duration::from_millis(1200), "closed before its keep alive ran out");
    raw.read_to_close().await;
}
