//! Persistent sessions: queued messages, redelivery, expiry, takeover.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::QoS as Q4;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet as V5Packet};

use crate::harness::{TestBroker, WAIT, within};

#[tokio::test]
async fn mqtt_3_1_2_4_v311_persistent_session_gets_queued_messages() {
    let broker = TestBroker::start().await;
    let persistent = |o: &mut rumqttc::MqttOptions| {
        o.set_clean_session(false);
    };
    let mut sub = broker.v4_with("keeper", persistent).await;
    assert!(!sub.connack.session_present);
    sub.subscribe("q/#", Q4::AtLeastOnce).await;
    sub.client.disconnect().await.expect("disconnect");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let publisher = broker.v4("p").await;
    publisher.client.publish("q/1", Q4::AtLeastOnce, false, "while away").await.expect("publish");
    publisher.client.publish("q/2", Q4::AtMostOnce, false, "qos0 dropped").await.expect("publish");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut back = broker.v4_with("keeper", persistent).await;
    assert!(back.connack.session_present, "[MQTT-3.2.2-2] session present");
    let got = back.publish().await;
    assert_eq!(got.payload.as_ref(), b"while away");
    back.no_publish().await;
}

#[tokio::test]
async fn mqtt_4_4_0_1_unacknowledged_messages_resent_with_dup() {
    let broker = TestBroker::start().await;
    let opts = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
        o.set_manual_acks(true);
    };
    let mut sub = broker.v5_with("lazy", opts).await;
    sub.subscribe("d", Q5::AtLeastOnce).await;
    let publisher = broker.v5("p").await;
    publisher.client.publish("d", Q5::AtLeastOnce, false, "ack me").await.expect("publish");
    let first = sub.publish().await;
    assert!(!first.dup);
    sub.kill(); // never acknowledged

    let mut back = broker.v5_with("lazy", opts).await;
    assert!(back.connack.session_present);
    let again = back.publish().await;
    assert!(again.dup, "resent with DUP");
    assert_eq!(again.payload, Bytes::from("ack me"));
}

#[tokio::test]
async fn v5_session_expiry_zero_discards_session() {
    let broker = TestBroker::start().await;
    let mut sub = broker
        .v5_with("short", |o| {
            o.set_clean_start(false);
        })
        .await;
    sub.subscribe("e", Q5::AtLeastOnce).await;
    sub.client.disconnect().await.expect("disconnect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(broker.broker.router.subscription_count(), 0);
    let back = broker
        .v5_with("short", |o| {
            o.set_clean_start(false);
        })
        .await;
    assert!(!back.connack.session_present);
}

/// Real time until the broker has seen the connection end (sockets), then
/// virtual time for the expiry: a minute passes at once, and no machine
/// load makes the timer look early or late.
#[tokio::test]
async fn v5_session_expires_after_interval() {
    let broker = TestBroker::start().await;
    let sub = broker
        .v5_with("expiring", |o| {
            o.set_clean_start(false);
            o.set_session_expiry_interval(Some(60));
        })
        .await;
    let session = broker.broker.sessions.get("expiring").expect("session");
    sub.kill();
    within(WAIT, "the broker sees the connection end", || !session.lock().online).await;
    tokio::time::pause();
    tokio::time::sleep(Duration::from_secs(58)).await;
    assert!(broker.broker.sessions.get("expiring").is_some(), "expired before its interval");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(broker.broker.sessions.get("expiring").is_none(), "outlived its interval");
    tokio::time::resume();
}

#[tokio::test]
async fn mqtt_3_1_4_3_takeover_disconnects_old_with_0x8e() {
    let broker = TestBroker::start().await;
    let mut old = broker.v5("twin").await;
    let _new = broker.v5("twin").await;
    assert_eq!(old.disconnect_reason().await, DisconnectReasonCode::SessionTakenOver);
}

#[tokio::test]
async fn shutdown_tells_v5_clients_0x8b() {
    let broker = TestBroker::start().await;
    let mut client = broker.v5("bye").await;
    let stopping = tokio::spawn(broker.stop());
    loop {
        match client.next().await {
            Some(V5Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, DisconnectReasonCode::ServerShuttingDown);
                break;
            }
            Some(_) => {}
            None => panic!("closed without DISCONNECT"),
        }
    }
    stopping.await.expect("stopped");
}

#[tokio::test]
async fn restart_recovers_sessions_and_retained_messages_from_the_store() {
    use std::sync::Arc;

    let store: Arc<dyn moat::store::Store> = Arc::new(moat::store::MemoryStore::default());
    let first = TestBroker::with_store(store.clone(), |_| {}).await;
    let persistent = |o: &mut rumqttc::MqttOptions| {
        o.set_clean_session(false);
    };
    let mut sub = first.v4_with("durable", persistent).await;
    sub.subscribe("keep/#", Q4::AtLeastOnce).await;
    sub.client.disconnect().await.expect("disconnect");
    let publisher = first.v4("p").await;
    publisher.client.publish("keep/r", Q4::AtLeastOnce, true, "retained").await.expect("publish");
    publisher.client.publish("keep/q", Q4::AtLeastOnce, false, "queued").await.expect("publish");
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.stop().await;

    let second = TestBroker::with_store(store, |_| {}).await;
    let mut back = second.v4_with("durable", persistent).await;
    assert!(back.connack.session_present);
    let mut payloads = vec![back.publish().await.payload, back.publish().await.payload];
    payloads.sort();
    assert_eq!(payloads, [Bytes::from("queued"), Bytes::from("retained")]);
    let mut fresh = second.v4("fresh").await;
    fresh.subscribe("keep/r", Q4::AtMostOnce).await;
    assert_eq!(fresh.publish().await.payload, Bytes::from("retained"));
}

#[tokio::test]
async fn takeover_of_a_session_without_expiry_leaves_the_newcomer_working() {
    let broker = TestBroker::start().await;
    let resume = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_clean_start(false);
    };
    let mut first = broker.v5_with("again", resume).await;
    first.subscribe("old", Q5::AtMostOnce).await;
    let mut second = broker.v5_with("again", resume).await;
    assert_eq!(first.disconnect_reason().await, DisconnectReasonCode::SessionTakenOver);
    assert!(!second.connack.session_present, "the old session ended with its connection");
    second.subscribe("new", Q5::AtMostOnce).await;
    let publisher = broker.v5("p").await;
    publisher.client.publish("old", Q5::AtMostOnce, false, "stale").await.expect("publish");
    publisher.client.publish("new", Q5::AtMostOnce, false, "fresh").await.expect("publish");
    assert_eq!(second.publish().await.payload, Bytes::from("fresh"));
    second.no_publish().await;
    // The newcomer is registered, so it can itself be taken over.
    let _third = broker.v5("again").await;
    assert_eq!(second.disconnect_reason().await, DisconnectReasonCode::SessionTakenOver);
}

#[tokio::test]
async fn reconnecting_ends_the_timers_of_the_previous_disconnect() {
    // A device on a flaky network: disconnects and resumptions of one
    // session with a long expiry. Each disconnect arms an expiry timer; each
    // resumption must end it, or every cycle would keep a task (and the
    // session) alive until its expiry.
    let broker = TestBroker::start().await;
    let opts = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(3600));
    };
    let cycle = || async {
        let client = broker.v5_with("flaky", opts).await;
        client.client.disconnect().await.expect("disconnect");
        // The broker has detached the session once it accepts the next
        // connection; wait for the DISCONNECT to be read.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    cycle().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The broker's own tasks (plugin directory watch, ...) and one timer.
    let after_one = broker.broker.tasks.len();
    for _ in 0..19 {
        cycle().await;
    }
    let end = std::time::Instant::now() + crate::harness::WAIT;
    while broker.broker.tasks.len() > after_one {
        let extra = broker.broker.tasks.len() - after_one;
        assert!(std::time::Instant::now() < end, "{extra} more tasks after 20 cycles than after 1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
