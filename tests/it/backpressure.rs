//! Publishers held back by full subscriber queues (`limits.queue_full_wait_ms`):
//! a QoS 1/2 message that meets the full queue of a connected subscriber is
//! held with its acknowledgement until the queue drains, instead of being
//! acknowledged and dropped.

use std::time::Duration;

use moat::metrics::DropReason;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;
use tokio::time::Instant;

use crate::attacks::string;
use crate::harness::{Raw, TestBroker, WAIT, frame};

/// Reads the next packet of a raw subscriber, which must be a QoS 1
/// PUBLISH, acknowledges it, and returns its payload.
async fn take_qos1(subscriber: &mut Raw) -> String {
    let (first, body) = subscriber.read_packet().await;
    assert_eq!(first & 0xf6, 0x32, "a QoS 1 PUBLISH");
    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    subscriber.send(&frame(0x40, &body[2 + topic_len..4 + topic_len])).await;
    String::from_utf8(body[4 + topic_len..].to_vec()).expect("utf-8")
}

/// Waits for `n` PUBACKs on `publisher`, bounded by `bound`; all must say
/// Success while the topic has subscribers.
async fn pubacks(publisher: &mut crate::harness::V5, n: usize, bound: Duration) -> usize {
    pubacks_any(publisher, n, bound, true).await
}

async fn pubacks_any(publisher: &mut crate::harness::V5, n: usize, bound: Duration, success: bool) -> usize {
    let deadline = Instant::now() + bound;
    let mut acked = 0;
    while acked < n {
        match tokio::time::timeout_at(deadline, publisher.next()).await {
            Ok(Some(V5Packet::PubAck(ack))) => {
                if success {
                    assert_eq!(ack.reason, rumqttc::v5::mqttbytes::v5::PubAckReason::Success);
                }
                acked += 1;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    acked
}

#[tokio::test]
async fn a_publisher_waits_for_a_slow_subscriber_and_nothing_is_lost() {
    let broker = TestBroker::with(|c| {
        c.limits.max_queued_messages = 10;
        c.limits.max_inflight = 5;
    })
    .await;
    let mut subscriber = broker.raw_subscriber("slow", "bp/t", None).await;
    let mut publisher = broker.v5("fast").await;
    const N: usize = 200;
    for i in 0..N {
        publisher.client.publish("bp/t", Q5::AtLeastOnce, false, format!("{i:04}")).await.expect("publish");
    }
    // The subscriber has not read yet: 5 in flight and 10 queued fit, so
    // the publisher is held at its 16th message.
    let early = pubacks(&mut publisher, N, Duration::from_millis(300)).await;
    assert!(early < N, "all {N} acknowledged before the subscriber read one");
    // Now it reads and acknowledges each message, slowly at first.
    let mut received = Vec::with_capacity(N);
    let started = Instant::now();
    while received.len() < N {
        assert!(started.elapsed() < 2 * WAIT, "only {} of {N} delivered", received.len());
        received.push(take_qos1(&mut subscriber).await);
        if received.len() < 30 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let expected: Vec<String> = (0..N).map(|i| format!("{i:04}")).collect();
    assert_eq!(received, expected, "every message, in order");
    assert_eq!(early + pubacks(&mut publisher, N - early, WAIT).await, N, "every message acknowledged");
    assert_eq!(broker.broker.metrics.drops(DropReason::QueueFull), 0);
}

#[tokio::test]
async fn a_subscriber_that_never_catches_up_holds_a_publisher_once_then_its_messages_drop() {
    let broker = TestBroker::with(|c| {
        c.limits.max_queued_messages = 5;
        c.limits.max_inflight = 2;
        c.limits.queue_full_wait_ms = 300;
    })
    .await;
    let stuck = broker.raw_subscriber("stuck", "bp/stuck", Some(4096)).await;
    let mut keeps_up = broker.v5("keeps-up").await;
    keeps_up.subscribe("bp/stuck", Q5::AtLeastOnce).await;
    let mut publisher = broker.v5("publisher").await;
    const N: usize = 50;
    let started = Instant::now();
    for i in 0..N {
        publisher.client.publish("bp/stuck", Q5::AtLeastOnce, false, format!("{i}")).await.expect("publish");
    }
    assert_eq!(pubacks(&mut publisher, N, WAIT).await, N, "every message acknowledged in the end");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "the publisher was not held ({took:?})");
    // 2 in flight and 5 queued reached the stuck subscriber; the rest were
    // dropped for it: the held one after the wait, the others at once.
    let dropped = broker.broker.metrics.drops(DropReason::QueueFull);
    assert_eq!(dropped, (N - 7) as u64);
    // The subscriber that keeps up got everything.
    for i in 0..N {
        assert_eq!(keeps_up.publish().await.payload, format!("{i}").as_bytes());
    }
    drop(stuck);
}

#[tokio::test]
async fn a_held_publisher_is_released_when_the_subscriber_goes_away() {
    let broker = TestBroker::with(|c| {
        c.limits.max_queued_messages = 5;
        c.limits.max_inflight = 2;
        c.limits.queue_full_wait_ms = 60_000;
    })
    .await;
    let stuck = broker.raw_subscriber("leaving", "bp/leave", Some(4096)).await;
    let mut publisher = broker.v5("publisher").await;
    for i in 0..20 {
        publisher.client.publish("bp/leave", Q5::AtLeastOnce, false, format!("{i}")).await.expect("publish");
    }
    let early = pubacks(&mut publisher, 20, Duration::from_millis(300)).await;
    assert!(early < 20, "not held");
    drop(stuck);
    // Well before the 60 s wait: the session went offline, and the held
    // message and those after it were acknowledged.
    // Those after it find no subscriber (v5 0x10).
    let rest = pubacks_any(&mut publisher, 20 - early, WAIT, false).await;
    assert_eq!(rest, 20 - early, "the rest acknowledged once it left");
}

/// A held publish goes to each subscriber as soon as that subscriber has
/// room, not when the first one held (in router order) has: a stuck
/// subscriber delays its publisher's acknowledgement, never the copies of
/// the others. Before, the held publish waited for the room of whichever
/// session was held first, so with the stuck one first everyone waited
/// out `queue_full_wait_ms`.
#[tokio::test]
async fn a_held_publish_reaches_each_subscriber_that_has_room_while_another_is_stuck() {
    let broker = TestBroker::with(|c| {
        c.limits.max_queued_messages = 1;
        c.limits.max_inflight = 1;
        c.limits.queue_full_wait_ms = 60_000;
    })
    .await;
    let stuck = broker.raw_subscriber("stuck", "bp/each", Some(4096)).await;
    let mut late = Vec::new();
    for i in 0..5 {
        late.push(broker.raw_subscriber(&format!("late-{i}"), "bp/each", None).await);
    }
    let mut publisher = broker.v5("publisher").await;
    for i in 0..3 {
        publisher.client.publish("bp/each", Q5::AtLeastOnce, false, format!("{i}")).await.expect("publish");
    }
    // One in flight and one queued everywhere: the third is held for all.
    assert_eq!(pubacks(&mut publisher, 3, Duration::from_millis(300)).await, 2, "the third is held");
    for (i, subscriber) in late.iter_mut().enumerate() {
        for n in 0..3 {
            let payload = tokio::time::timeout(WAIT, take_qos1(subscriber))
                .await
                .unwrap_or_else(|_| panic!("late-{i} did not get message {n} while `stuck` holds the publish"));
            assert_eq!(payload, n.to_string());
        }
    }
    drop(stuck);
}

/// Issue 25: QoS 0 was lost although its subscriber kept reading. A
/// publisher's burst arrives in one read of hundreds of packets, routed in
/// one turn (up to `INPUT_BATCH`) before the subscriber's task runs: a
/// queue smaller than the turn overflowed and QoS 0 was dropped, though
/// the subscriber had fallen behind nobody but the broker's own scheduling.
/// Now the publisher waits for room as for QoS 1, and QoS 0 is dropped only
/// for a subscriber that did not drain within `queue_full_wait_ms`.
#[tokio::test]
async fn a_qos0_burst_to_a_subscriber_that_keeps_reading_loses_nothing() {
    let broker = TestBroker::with(|c| {
        c.limits.max_queued_messages = 10;
        // Far longer than a reading subscriber needs, so a loaded machine
        // cannot make this test fail.
        c.limits.queue_full_wait_ms = 20_000;
    })
    .await;
    let mut subscriber = broker.raw_subscriber("reader", "bp/q0", None).await;
    let mut publisher = broker.raw_v4("burst").await;
    const N: usize = 2000;
    let mut burst = Vec::new();
    for i in 0..N {
        let mut body = string("bp/q0");
        body.extend(format!("{i:04}").as_bytes());
        burst.extend(frame(0x30, &body));
    }
    // One write: the broker reads the burst in a few large reads.
    publisher.send(&burst).await;
    for i in 0..N {
        let (first, body) = subscriber.read_packet().await;
        assert_eq!(first & 0xf6, 0x30, "a QoS 0 PUBLISH");
        assert_eq!(&body[7..], format!("{i:04}").as_bytes(), "message {i} of {N}, in order");
    }
    assert_eq!(broker.broker.metrics.drops(DropReason::QueueFull), 0);
}

/// The other side of the test above: a QoS 0 subscriber that stopped
/// reading holds a publisher once, for `queue_full_wait_ms`, and from then
/// on its QoS 0 messages are dropped (counted) without a wait.
#[tokio::test]
async fn a_qos0_subscriber_that_stopped_reading_holds_a_publisher_once() {
    let broker = TestBroker::with(|c| {
        c.limits.max_queued_messages = 5;
        c.limits.queue_full_wait_ms = 300;
    })
    .await;
    let stuck = broker.raw_subscriber("stuck-q0", "bp/q0s", Some(4096)).await;
    let mut publisher = broker.raw_v4("q0-publisher").await;
    // 1,000 messages of 8 KiB: far more than the sockets (the broker's
    // send buffer grows to a few MiB), the connection's write batch and
    // the queue take together.
    let mut burst = Vec::new();
    for _ in 0..1000 {
        let mut body = string("bp/q0s");
        body.extend([b'x'; 8192]);
        burst.extend(frame(0x30, &body));
    }
    let started = Instant::now();
    publisher.send(&burst).await;
    publisher.send(&[0xc0, 0]).await;
    assert_eq!(publisher.read_packet().await.0, 0xd0, "PINGRESP once the burst is handled");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "the publisher was not held ({took:?})");
    assert!(broker.broker.metrics.drops(DropReason::QueueFull) > 0, "nothing dropped for a stuck subscriber");
    drop(stuck);
}
