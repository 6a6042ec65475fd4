//! Issue 9: the retained store and session queues are bounded by
//! `[limits]`, with clear behaviour at the limit.

use bytes::Bytes;
use moat::metrics::DropReason;
use rumqttc::QoS as Q4;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, PubAckReason};

use crate::harness::{TestBroker, V5, WAIT};

/// The reason of the next PUBACK `client` receives.
async fn puback(client: &mut V5) -> PubAckReason {
    tokio::time::timeout(WAIT, async {
        loop {
            match client.next().await {
                Some(V5Packet::PubAck(ack)) => return ack.reason,
                Some(_) => {}
                None => panic!("connection closed before PUBACK"),
            }
        }
    })
    .await
    .expect("PUBACK in time")
}

fn dropped(broker: &TestBroker, reason: DropReason) -> u64 {
    broker.broker.metrics.snapshot().dropped[reason as usize]
}

#[tokio::test]
async fn a_full_retained_store_refuses_v5_qos1_with_quota_exceeded_and_keeps_qos0_unretained() {
    let broker = TestBroker::with(|c| {
        c.limits.max_retained_messages = 2;
        c.limits.max_retained_bytes = 64;
    })
    .await;
    let mut live = broker.v5("live").await;
    live.subscribe("r/#", Q5::AtMostOnce).await;
    let mut publisher = broker.v5("pub").await;
    for topic in ["r/1", "r/2"] {
        publisher.client.publish(topic, Q5::AtLeastOnce, true, "kept").await.expect("publish");
        assert_eq!(puback(&mut publisher).await, PubAckReason::Success);
        live.publish().await;
    }
    // A third topic: refused, and not delivered either.
    publisher.client.publish("r/3", Q5::AtLeastOnce, true, "over").await.expect("publish");
    assert_eq!(puback(&mut publisher).await, PubAckReason::QuotaExceeded);
    // Past the byte bound on a known topic: refused too.
    publisher.client.publish("r/1", Q5::AtLeastOnce, true, vec![b'x'; 100]).await.expect("publish");
    assert_eq!(puback(&mut publisher).await, PubAckReason::QuotaExceeded);
    live.no_publish().await;
    // QoS 0 (and MQTT 3.1.1) messages are delivered, just not retained.
    publisher.client.publish("r/4", Q5::AtMostOnce, true, "passing").await.expect("publish");
    assert_eq!(live.publish().await.payload, Bytes::from("passing"));
    let v4 = broker.v4("v4").await;
    v4.client.publish("r/5", Q4::AtLeastOnce, true, "v4").await.expect("publish");
    assert_eq!(live.publish().await.payload, Bytes::from("v4"));
    // Replacing and deleting still work at the limit.
    publisher.client.publish("r/2", Q5::AtLeastOnce, true, "new").await.expect("publish");
    assert_eq!(puback(&mut publisher).await, PubAckReason::Success);
    publisher.client.publish("r/1", Q5::AtLeastOnce, true, "").await.expect("publish");
    assert_eq!(puback(&mut publisher).await, PubAckReason::Success);

    let mut late = broker.v5("late").await;
    late.subscribe("r/#", Q5::AtMostOnce).await;
    assert_eq!(late.publish().await.payload, Bytes::from("new"));
    late.no_publish().await;
    assert_eq!(dropped(&broker, DropReason::RetainedFull), 4);
}

#[tokio::test]
async fn a_full_queue_evicts_queued_qos0_first_and_then_refuses() {
    // Every message below is 3 bytes of topic and 7 of payload: the queue
    // holds 3.
    let broker = TestBroker::with(|c| c.limits.max_queued_bytes = 30).await;
    // A subscriber that takes one message at a time and acknowledges
    // none until told: the rest queue up in its session.
    let mut sub = broker
        .v5_with("slow", |o| {
            o.set_manual_acks(true);
            o.set_receive_maximum(Some(1));
        })
        .await;
    sub.subscribe("q/#", Q5::AtLeastOnce).await;
    let mut publisher = broker.v5("pub").await;
    let mut send = async |qos: Q5, payload: &str| {
        publisher.client.publish("q/t", qos, false, payload.to_owned()).await.expect("publish");
        if qos != Q5::AtMostOnce {
            assert_eq!(puback(&mut publisher).await, PubAckReason::Success);
        }
    };
    send(Q5::AtLeastOnce, "one-001").await;
    // In flight and unacknowledged: what follows stays queued.
    let first = sub.publish().await;
    assert_eq!(first.payload, Bytes::from("one-001"));
    send(Q5::AtLeastOnce, "one-002").await;
    send(Q5::AtMostOnce, "zero-01").await;
    send(Q5::AtMostOnce, "zero-02").await; // queue full (30 bytes)
    send(Q5::AtLeastOnce, "one-003").await; // evicts zero-01
    send(Q5::AtLeastOnce, "one-004").await; // evicts zero-02
    send(Q5::AtLeastOnce, "one-005").await; // nothing to evict: dropped
    sub.client.ack(&first).await.expect("ack");
    let mut got = Vec::new();
    while got.len() < 3 {
        let p = sub.publish().await;
        got.push(p.payload.clone());
        sub.client.ack(&p).await.expect("ack");
    }
    assert_eq!(got, [Bytes::from("one-002"), Bytes::from("one-003"), Bytes::from("one-004")]);
    sub.no_publish().await;
    assert_eq!(dropped(&broker, DropReason::QueueFull), 3);
}
