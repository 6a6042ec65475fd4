//! Issue 10: the limits on connections per listener, connection rate, topic
//! length, subscriptions per client, user properties per packet and publish
//! rate. Each test hits its limit with real clients, checks the counter,
//! and checks that the broker still serves a normal client afterwards.

use std::time::Duration;

use moat::metrics::{DropReason, Limit, Refusal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::attacks::{disconnect_reason, publish_v5, raw_v5, still_serves, string};
use crate::harness::{
    QUIET, Raw, TestBroker, WAIT, connect_v4, connect_v5_with, frame, subscribe_v4, subscribe_v5, varint,
};

fn hits(broker: &TestBroker, limit: Limit) -> u64 {
    broker.broker.metrics.limit_hits(limit)
}

/// Whether the broker closed `raw` without sending a byte within `QUIET`:
/// what a connection refused at accept sees.
pub(crate) async fn closed_unread(raw: &mut Raw) -> bool {
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(QUIET, raw.0.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
}

/// Connects a raw 3.1.1 client, retrying while the broker has not yet seen
/// earlier connections close (their permits come back as their tasks end);
/// bounded by `WAIT`.
pub(crate) async fn connects_again(broker: &TestBroker, id: &str) -> Raw {
    let started = Instant::now();
    loop {
        let mut raw = broker.raw().await;
        if raw.0.write_all(&connect_v4(id)).await.is_ok() {
            let mut connack = [0u8; 4];
            if let Ok(Ok(_)) = tokio::time::timeout(QUIET, raw.0.read_exact(&mut connack)).await {
                assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK success");
                return raw;
            }
        }
        assert!(started.elapsed() < WAIT, "no connection accepted within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn listener_max_connections_refuses_at_accept_besides_the_global_limit() {
    let broker = TestBroker::with(|c| c.listeners[0].max_connections = Some(3)).await;
    // Silent connections hold their permit from accept on.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(broker.raw().await);
    }
    for raw in &mut held {
        assert!(!closed_unread(raw).await, "within the listener's limit");
    }
    for _ in 0..2 {
        let mut over = broker.raw().await;
        assert!(closed_unread(&mut over).await, "closed at accept, unread");
    }
    assert_eq!(broker.broker.metrics.refusals(Refusal::ListenerMaxConnections), 2);
    assert_eq!(broker.broker.metrics.refusals(Refusal::MaxConnections), 0);
    assert_eq!(hits(&broker, Limit::ListenerMaxConnections), 2);
    drop(held);
    let _again = connects_again(&broker, "after-the-cap").await;
    still_serves(&broker).await;
}

#[tokio::test]
async fn connection_rate_over_the_listener_bucket_closed_at_accept() {
    let broker = TestBroker::with(|c| c.listeners[0].max_connection_rate = 3).await;
    let mut burst = Vec::new();
    for _ in 0..10 {
        burst.push(broker.raw().await);
    }
    refused_by_a_bucket_of_3(&broker, burst).await;
}

/// Checks that a bucket of 3 connections a second refused most of a burst
/// of 10, counted them, and then lets clients in again.
async fn refused_by_a_bucket_of_3(broker: &TestBroker, mut burst: Vec<Raw>) {
    let mut refused = 0;
    for raw in &mut burst {
        if closed_unread(raw).await {
            refused += 1;
        }
    }
    // A full bucket admits 3; it refills at one every 333 ms, so a slow
    // machine may admit one or two more while the burst is accepted.
    assert!((5..=7).contains(&refused), "{refused} of 10 refused");
    assert_eq!(broker.broker.metrics.refusals(Refusal::ConnectionRate), refused);
    assert_eq!(hits(broker, Limit::ConnectionRate), refused);
    drop(burst);
    // One second refills the bucket for the two clients below.
    tokio::time::sleep(Duration::from_secs(1)).await;
    still_serves(broker).await;
}

#[tokio::test]
async fn connection_rate_over_the_global_bucket_closed_at_accept_on_every_listener() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let second = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let broker = TestBroker::with(|c| {
        c.limits.max_connection_rate = 3;
        c.listeners.push(moat::config::ListenerConfig::tcp("second", second));
    })
    .await;
    let mut burst = Vec::new();
    for i in 0..10 {
        // Alternating listeners: one bucket for both.
        let addr = if i % 2 == 0 { broker.addr } else { second };
        burst.push(Raw(tokio::net::TcpStream::connect(addr).await.expect("connect")));
    }
    refused_by_a_bucket_of_3(&broker, burst).await;
}

/// The reason codes of the SUBACK (v5: after the empty properties).
async fn suback(raw: &mut Raw, id: u16, v5: bool) -> Vec<u8> {
    let (first, body) = raw.read_packet().await;
    assert_eq!(first, 0x90, "SUBACK");
    assert_eq!(body[..2], id.to_be_bytes());
    body[if v5 { 3 } else { 2 }..].to_vec()
}

/// A raw 3.1.1 client past CONNACK.
#[tokio::test]
async fn topic_length_over_max_refused_for_names_filters_and_wills() {
    let broker = TestBroker::with(|c| c.limits.max_topic_length = 16).await;
    let exact = "len/0123456789ab"; // 16 bytes
    let over = "len/0123456789abc"; // 17 bytes
    let mut publisher = raw_v5(&broker, "len-pub").await;
    publisher.send(&publish_v5(exact, 1, false, 1, b"x")).await;
    assert_eq!(publisher.read_packet().await.0, 0x40, "PUBACK at the limit");
    publisher.send(&publish_v5(over, 1, false, 2, b"x")).await;
    assert_eq!(disconnect_reason(&mut publisher).await, 0x90, "Topic Name Invalid");

    // Filters: refused per filter in SUBACK, and the client stays.
    let mut v5 = raw_v5(&broker, "len-sub5").await;
    v5.send(&subscribe_v5(1, &[over, exact])).await;
    assert_eq!(suback(&mut v5, 1, true).await, [0x8F, 0x01]);
    let mut v4 = broker.raw_v4("len-sub4").await;
    v4.send(&subscribe_v4(1, &[over, exact])).await;
    assert_eq!(suback(&mut v4, 1, false).await, [0x80, 0x01]);

    // A will topic over the limit: CONNACK 0x90.
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02 | 0x04, 0, 30, 0];
    body.extend(string("len-will"));
    body.push(0); // will properties
    body.extend(string(over));
    body.extend(string("gone"));
    let mut will = broker.raw().await;
    will.send(&frame(0x10, &body)).await;
    let reply = will.read_to_close().await;
    assert_eq!((reply[0], reply[3]), (0x20, 0x90), "CONNACK Topic Name Invalid: {reply:02x?}");

    assert_eq!(hits(&broker, Limit::TopicLength), 4);
    still_serves(&broker).await;
}

#[tokio::test]
async fn subscriptions_beyond_max_per_client_get_quota_exceeded_per_filter() {
    let broker = TestBroker::with(|c| c.limits.max_subscriptions_per_client = 2).await;
    let mut v5 = raw_v5(&broker, "subs5").await;
    v5.send(&subscribe_v5(1, &["s/a", "s/b", "s/c"])).await;
    assert_eq!(suback(&mut v5, 1, true).await, [0x01, 0x01, 0x97]);
    // At the limit, a filter already held can be subscribed again.
    v5.send(&subscribe_v5(2, &["s/a", "s/d"])).await;
    assert_eq!(suback(&mut v5, 2, true).await, [0x01, 0x97]);
    // Unsubscribing makes room.
    let mut unsub = 3u16.to_be_bytes().to_vec();
    unsub.push(0);
    unsub.extend(string("s/b"));
    v5.send(&frame(0xA2, &unsub)).await;
    assert_eq!(v5.read_packet().await.0, 0xB0, "UNSUBACK");
    v5.send(&subscribe_v5(4, &["s/d"])).await;
    assert_eq!(suback(&mut v5, 4, true).await, [0x01]);

    let mut v4 = broker.raw_v4("subs4").await;
    v4.send(&subscribe_v4(1, &["s/a", "s/b", "s/c"])).await;
    assert_eq!(suback(&mut v4, 1, false).await, [0x01, 0x01, 0x80]);

    assert_eq!(hits(&broker, Limit::Subscriptions), 3);
    still_serves(&broker).await;
}

/// `n` user properties ("k", "v"), encoded.
fn user_properties(n: usize) -> Vec<u8> {
    (0..n).flat_map(|_| [0x26, 0, 1, b'k', 0, 1, b'v']).collect()
}

/// A v5 QoS 1 PUBLISH carrying `n` user properties.
fn publish_with_properties(id: u16, n: usize) -> Vec<u8> {
    let props = user_properties(n);
    let mut body = string("props");
    body.extend(id.to_be_bytes());
    body.extend(varint(props.len()));
    body.extend(props);
    body.extend(b"payload");
    frame(0x32, &body)
}

#[tokio::test]
async fn user_properties_over_max_refused_with_packet_too_large() {
    let broker = TestBroker::with(|c| c.limits.max_user_properties = 3).await;
    let mut watcher = broker.v5("props-watcher").await;
    watcher.subscribe("props", rumqttc::v5::mqttbytes::QoS::AtMostOnce).await;
    let mut raw = raw_v5(&broker, "props-pub").await;
    raw.send(&publish_with_properties(1, 3)).await;
    assert_eq!(raw.read_packet().await.0, 0x40, "PUBACK at the limit");
    let got = watcher.publish().await;
    assert_eq!(got.properties.map_or(0, |p| p.user_properties.len()), 3);
    raw.send(&publish_with_properties(2, 4)).await;
    assert_eq!(disconnect_reason(&mut raw).await, 0x95);
    watcher.no_publish().await;

    // On CONNECT: CONNACK 0x95.
    let mut connect = broker.raw().await;
    connect.send(&connect_v5_with("props-connect", None, None, &user_properties(4))).await;
    let reply = connect.read_to_close().await;
    assert_eq!((reply[0], reply[3]), (0x20, 0x95), "CONNACK Packet too large: {reply:02x?}");

    assert_eq!(hits(&broker, Limit::UserProperties), 2);
    still_serves(&broker).await;
}

#[tokio::test]
async fn publish_rate_over_max_refused_in_v5_and_dropped_in_v311() {
    let broker = TestBroker::with(|c| c.limits.max_publish_rate = 5).await;
    // 20 QoS 1 PUBLISH in one write: the bucket holds 5.
    let mut v5 = raw_v5(&broker, "rate5").await;
    let burst: Vec<u8> = (1..=20).flat_map(|id| publish_v5("rate/a", 1, false, id, b"m")).collect();
    v5.send(&burst).await;
    let mut refused = 0;
    for id in 1..=20u16 {
        let (first, body) = v5.read_packet().await;
        assert_eq!((first, &body[..2]), (0x40, &id.to_be_bytes()[..]), "PUBACK {id}");
        match body.get(2).copied().unwrap_or(0) {
            0x97 => refused += 1,
            0x00 | 0x10 => {}
            other => panic!("PUBACK reason {other:#04x}"),
        }
    }
    // Refills at one per 200 ms: a slow machine may admit a few more.
    assert!((10..=15).contains(&refused), "{refused} of 20 refused");

    // 3.1.1: acknowledged and dropped; QoS 0 just dropped.
    let mut v4 = broker.raw_v4("rate4").await;
    let mut burst = Vec::new();
    for id in 1..=10u16 {
        let mut body = string("rate/b");
        body.extend(id.to_be_bytes());
        body.push(b'm');
        burst.extend(frame(0x32, &body));
    }
    for _ in 0..10 {
        let mut body = string("rate/b");
        body.push(b'm');
        burst.extend(frame(0x30, &body));
    }
    v4.send(&burst).await;
    for id in 1..=10u16 {
        assert_eq!(v4.read_packet().await, (0x40, id.to_be_bytes().to_vec()), "PUBACK {id}");
    }
    v4.send(&frame(0xC0, &[])).await;
    assert_eq!(v4.read_packet().await.0, 0xD0, "PINGRESP: every PUBLISH was handled");
    let dropped = broker.broker.metrics.drops(DropReason::PublishRate);
    // 15 of the 20 at least, minus what a slow machine refilled.
    assert!(dropped >= refused + 10, "{dropped} dropped");
    assert_eq!(hits(&broker, Limit::PublishRate), dropped);
    // New connections start with a full bucket.
    still_serves(&broker).await;
}
