//! Quiet connections parked without a task (`limits.park_after_s`, issue
//! 25): whatever would have woken a connection's task still reaches a
//! parked one — bytes, a hang-up, a delivery, its keep alive, a takeover,
//! shutdown — and a parked connection goes on where it stopped.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;

use crate::harness::{Raw, TestBroker, WAIT, connect_v4, frame, subscribe_v4, within};

/// With `park_after_s = 1` a quiet connection parks one to two sweeps
/// after its last event; this leaves room for a loaded machine.
const PARKS_WITHIN: Duration = Duration::from_secs(8);

async fn parking_broker() -> TestBroker {
    TestBroker::with(|c| c.limits.park_after_s = 1).await
}

fn parked(broker: &TestBroker) -> u64 {
    broker.broker.metrics.snapshot().connections_parked
}

/// A raw MQTT 3.1.1 client `id` with keep alive `keep_alive_s`,
/// connected (CONNACK success read).
async fn raw_with_keep_alive(broker: &TestBroker, id: &str, keep_alive_s: u8) -> Raw {
    let mut connect = connect_v4(id);
    // Fixed header (2 bytes), protocol name (6), level, flags, then the
    // keep alive's two bytes.
    connect[10..12].copy_from_slice(&[0, keep_alive_s]);
    let mut raw = broker.raw().await;
    raw.send(&connect).await;
    assert_eq!(raw.read_packet().await, (0x20, vec![0, 0]), "CONNACK");
    raw
}

/// Sends PINGREQ and reads the PINGRESP.
async fn ping(raw: &mut Raw, what: &str) {
    raw.send(&frame(0xC0, &[])).await;
    assert_eq!(raw.read_packet().await, (0xD0, vec![]), "{what}");
}

#[tokio::test]
async fn a_parked_subscriber_gets_every_message_at_every_qos_and_parks_again() {
    let broker = parking_broker().await;
    let mut sub = broker.v5("parked-sub").await;
    sub.subscribe("cmd/#", QoS::ExactlyOnce).await;
    let publisher = broker.v5("parked-pub").await;
    within(PARKS_WITHIN, "both clients parked", || parked(&broker) == 2).await;
    for (n, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
        let payload = format!("command {n}");
        publisher.client.publish("cmd/device", qos, false, payload.clone()).await.expect("publish");
        let got = sub.publish().await;
        assert_eq!((got.payload.as_ref(), got.qos), (payload.as_bytes(), qos), "delivered to the parked subscriber");
        within(PARKS_WITHIN, "both parked again after the exchange", || parked(&broker) == 2).await;
    }
    assert_eq!(broker.broker.metrics.connections_current(), 2, "nobody was disconnected");
}

#[tokio::test]
async fn a_parked_client_is_answered_when_it_pings_and_closed_when_its_keep_alive_runs_out() {
    let broker = parking_broker().await;
    let mut raw = raw_with_keep_alive(&broker, "parked-pinger", 3).await;
    within(PARKS_WITHIN, "the client parked", || parked(&broker) == 1).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        ping(&mut raw, "PINGRESP from a parked connection").await;
        assert_eq!(parked(&broker), 1, "a ping is answered without waking the connection");
    }
    // A ping with more behind it wakes the connection, which answers both.
    let mut ping_and_subscribe = frame(0xC0, &[]);
    ping_and_subscribe.extend(subscribe_v4(7, &["after/ping"]));
    raw.send(&ping_and_subscribe).await;
    assert_eq!(raw.read_packet().await, (0xD0, vec![]), "PINGRESP");
    assert_eq!(raw.read_packet().await, (0x90, vec![0, 7, 1]), "SUBACK");
    within(PARKS_WITHIN, "the client parked again", || parked(&broker) == 1).await;
    // Silent from now on: 1.5 times the keep alive after its last packet,
    // within the sweep's second, the broker closes it (the pings above
    // kept it open past that).
    let closed = tokio::time::timeout(Duration::from_secs(8), raw.read_to_close()).await;
    assert_eq!(closed.expect("closed for keep alive while parked"), Vec::<u8>::new());
    within(WAIT, "connection counted closed", || broker.broker.metrics.connections_current() == 0).await;
    assert_eq!(parked(&broker), 0);
}

/// Pings are what a quiet client sends: one whose keep alive is shorter
/// than `park_after_s` parks all the same, and stays parked.
#[tokio::test]
async fn a_client_that_only_pings_parks_however_short_its_keep_alive() {
    let broker = parking_broker().await;
    let mut raw = raw_with_keep_alive(&broker, "eager-pinger", 1).await;
    let started = std::time::Instant::now();
    while parked(&broker) == 0 {
        assert!(started.elapsed() < PARKS_WITHIN, "a client that only pings never parked");
        tokio::time::sleep(Duration::from_millis(400)).await;
        ping(&mut raw, "PINGRESP").await;
    }
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        ping(&mut raw, "PINGRESP while parked").await;
    }
    assert_eq!(parked(&broker), 1, "still parked, and connected");
}

/// Only an exact PINGREQ is answered from the epoll set: one with its
/// reserved flags set, or a remaining length, is a malformed packet, and
/// a parked connection is closed for it as a running one is.
#[tokio::test]
async fn a_parked_connection_sent_a_malformed_ping_is_closed_for_it() {
    let broker = parking_broker().await;
    for (n, bad) in [vec![0xC1, 0x00], vec![0xC0, 0x01, 0x00]].into_iter().enumerate() {
        let mut raw = raw_with_keep_alive(&broker, &format!("bad-pinger-{n}"), 60).await;
        within(PARKS_WITHIN, "the client parked", || parked(&broker) == 1).await;
        raw.send(&bad).await;
        assert_eq!(raw.read_to_close().await, Vec::<u8>::new(), "closed without a PINGRESP for {bad:02x?}");
        within(WAIT, "connection counted closed", || broker.broker.metrics.connections_current() == 0).await;
        assert_eq!(parked(&broker), 0);
    }
}

/// `park_after_s = 0` turns parking off: a quiet client stays as it was.
#[tokio::test]
async fn nothing_parks_when_park_after_s_is_zero() {
    let broker = TestBroker::with(|c| c.limits.park_after_s = 0).await;
    let mut raw = raw_with_keep_alive(&broker, "never-parked", 60).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(parked(&broker), 0, "parked although park_after_s = 0");
    ping(&mut raw, "PINGRESP").await;
}

#[tokio::test]
async fn a_parked_client_that_hangs_up_has_its_will_published() {
    let broker = parking_broker().await;
    let mut watcher = broker.v5("will-watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let dying = broker
        .v5_with("will-owner", |o| {
            o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                "wills/will-owner",
                "gone",
                QoS::AtLeastOnce,
                false,
                None,
            ));
        })
        .await;
    within(PARKS_WITHIN, "both clients parked", || parked(&broker) == 2).await;
    dying.kill();
    let will = watcher.publish().await;
    assert_eq!((will.topic.as_ref(), will.payload.as_ref()), (&b"wills/will-owner"[..], &b"gone"[..]));
}

#[tokio::test]
async fn a_parked_session_is_taken_over_and_the_new_connection_gets_its_messages() {
    let broker = parking_broker().await;
    let mut old = broker
        .v5_with("device-7", |o| {
            o.set_session_expiry_interval(Some(60));
        })
        .await;
    old.subscribe("cmd/device-7", QoS::AtLeastOnce).await;
    within(PARKS_WITHIN, "the first connection parked", || parked(&broker) == 1).await;
    let mut new = broker
        .v5_with("device-7", |o| {
            o.set_clean_start(false);
            o.set_session_expiry_interval(Some(60));
        })
        .await;
    assert!(new.connack.session_present, "the parked connection's session was taken over");
    assert_eq!(old.disconnect_reason().await, DisconnectReasonCode::SessionTakenOver);
    let publisher = broker.v5("commander").await;
    publisher.client.publish("cmd/device-7", QoS::AtLeastOnce, false, "reboot").await.expect("publish");
    assert_eq!(new.publish().await.payload.as_ref(), b"reboot");
}

#[tokio::test]
async fn shutdown_reaches_parked_connections() {
    let broker = parking_broker().await;
    let mut client = broker.v5("parked-at-shutdown").await;
    within(PARKS_WITHIN, "the client parked", || parked(&broker) == 1).await;
    let stopping = tokio::spawn(broker.stop());
    assert_eq!(client.disconnect_reason().await, DisconnectReasonCode::ServerShuttingDown);
    stopping.await.expect("the broker stopped");
}

/// Clients that come and go while others are parked reuse the
/// descriptors of those that left: each parked socket must wake its own
/// connection, and a message to all reaches every one still there.
#[tokio::test]
async fn parked_connections_come_and_go_and_every_one_left_gets_its_message() {
    let broker = parking_broker().await;
    let mut clients = Vec::new();
    for n in 0..24 {
        clients.push(broker.raw_subscriber(&format!("fleet-{n}"), "fleet/all", None).await);
    }
    within(PARKS_WITHIN, "the fleet parked", || parked(&broker) == 24).await;
    // Every other one hangs up; as many new ones take their descriptors.
    let mut kept: Vec<_> = clients.into_iter().enumerate().filter_map(|(n, c)| (n % 2 == 0).then_some(c)).collect();
    within(WAIT, "the leavers closed", || broker.broker.metrics.connections_current() == 12).await;
    for n in 0..12 {
        kept.push(broker.raw_subscriber(&format!("fleet-new-{n}"), "fleet/all", None).await);
    }
    within(PARKS_WITHIN, "the new fleet parked", || parked(&broker) == 24).await;
    let mut publisher = broker.raw().await;
    publisher.send(&connect_v4("fleet-commander")).await;
    assert_eq!(publisher.read_packet().await.0, 0x20);
    let mut publish = vec![0, 9];
    publish.extend(b"fleet/all");
    publish.extend(b"wake");
    publisher.send(&frame(0x30, &publish)).await;
    for (n, client) in kept.iter_mut().enumerate() {
        let (first, body) = client.read_packet().await;
        assert_eq!((first & 0xF0, &body[11..]), (0x30, &b"wake"[..]), "client {n} got the message");
    }
}
