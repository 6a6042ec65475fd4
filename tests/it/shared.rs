//! Shared subscriptions `$share/{group}/{filter}`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;

use crate::harness::{QUIET, TestBroker, V5, WAIT, connect_v5, frame};

#[tokio::test]
async fn mqtt_4_8_2_each_message_to_one_member_per_group() {
    let broker = TestBroker::start().await;
    let mut a = broker.v5("a").await;
    let mut b = broker.v5("b").await;
    let mut other = broker.v5("other-group").await;
    a.subscribe("$share/g/jobs/+", Q5::AtLeastOnce).await;
    b.subscribe("$share/g/jobs/+", Q5::AtLeastOnce).await;
    other.subscribe("$share/h/jobs/+", Q5::AtLeastOnce).await;
    let publisher = broker.v5("p").await;
    for i in 0..10 {
        publisher.client.publish(format!("jobs/{i}"), Q5::AtLeastOnce, false, "w").await.expect("publish");
    }
    let mut got_a = 0;
    let mut got_b = 0;
    for _ in 0..10 {
        other.publish().await;
    }
    while got_a + got_b < 10 {
        tokio::select! {
            _ = a.publish() => got_a += 1,
            _ = b.publish() => got_b += 1,
        }
    }
    a.no_publish().await;
    b.no_publish().await;
    assert!(got_a > 0 && got_b > 0, "both members served: {got_a} / {got_b}");
}

#[tokio::test]
async fn v311_clients_may_use_shared_subscriptions() {
    let broker = TestBroker::start().await;
    let mut sub = broker.v4("legacy").await;
    sub.subscribe("$share/g/t", rumqttc::QoS::AtMostOnce).await;
    let publisher = broker.v4("p").await;
    publisher.client.publish("t", rumqttc::QoS::AtMostOnce, false, "x").await.expect("publish");
    assert_eq!(sub.publish().await.topic, "t");
}

// --- A member that leaves: its unacknowledged messages go to the others
// (issue 28). Messages are numbered; the tests count them by number.

/// A member of `$share/g/w/#` that receives and never acknowledges
/// (manual acknowledgements), connected with `tweak` applied.
async fn stubborn(broker: &TestBroker, id: &str, tweak: impl FnOnce(&mut rumqttc::v5::MqttOptions)) -> V5 {
    let mut member = broker
        .v5_with(id, |o| {
            o.set_manual_acks(true);
            tweak(o);
        })
        .await;
    member.subscribe("$share/g/w/#", Q5::AtLeastOnce).await;
    member
}

/// A member of `$share/g/w/#` that acknowledges everything.
async fn willing(broker: &TestBroker, id: &str) -> V5 {
    let mut member = broker.v5(id).await;
    member.subscribe("$share/g/w/#", Q5::AtLeastOnce).await;
    member
}

/// A persistent session with a ten-minute expiry.
fn persistent(o: &mut rumqttc::v5::MqttOptions) {
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(600));
}

/// Publishes messages `range` (payload: the number) on `w/{i}` at `qos`
/// and waits until the publisher has every acknowledgement (PUBACK, or
/// PUBCOMP for QoS 2).
async fn publish_acked(publisher: &mut V5, range: std::ops::Range<usize>, qos: Q5) {
    let n = range.len();
    for i in range {
        publisher.client.publish(format!("w/{i}"), qos, false, i.to_string()).await.expect("publish");
    }
    let mut acked = 0;
    while acked < n {
        match publisher.next().await {
            Some(V5Packet::PubAck(_)) if qos == Q5::AtLeastOnce => acked += 1,
            Some(V5Packet::PubComp(_)) if qos == Q5::ExactlyOnce => acked += 1,
            Some(_) => {}
            None => panic!("publisher gone"),
        }
    }
}

fn number(p: &rumqttc::v5::mqttbytes::v5::Publish) -> usize {
    String::from_utf8_lossy(&p.payload).parse().expect("a numbered message")
}

/// Reads `member`'s messages until it has every number in `want` or none
/// comes for a while; returns how many times each number came.
async fn collect(member: &mut V5, want: &BTreeSet<usize>) -> BTreeMap<usize, usize> {
    let mut got = BTreeMap::new();
    while !want.iter().all(|w| got.contains_key(w)) {
        let Some(p) = member.try_publish(WAIT).await else { break };
        *got.entry(number(&p)).or_default() += 1;
    }
    got
}

/// Asserts every number of `want` is in `got`.
fn none_lost(got: &BTreeMap<usize, usize>, want: &BTreeSet<usize>) {
    let lost: Vec<_> = want.iter().filter(|w| !got.contains_key(w)).collect();
    assert!(lost.is_empty(), "acknowledged to the publisher, then lost: {} of {}: {lost:?}", lost.len(), want.len());
}

/// Waits until the session of `id` has ended.
async fn until_session_ended(broker: &TestBroker, id: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker.broker.sessions.get(id).is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the session of {id} did not end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Issue 28's case: one of two members reads its share but never
/// acknowledges it, then its socket closes mid-stream. Mosquitto loses
/// what it held; MQTT 5 4.8.2 says it SHOULD go to another member.
#[tokio::test]
async fn mqtt_4_8_2_a_dead_members_unacknowledged_messages_go_to_another_member() {
    const N: usize = 400;
    let broker = TestBroker::start().await;
    let mut survivor = willing(&broker, "survivor").await;
    let mut doomed = stubborn(&broker, "doomed", |_| {}).await;
    let mut publisher = broker.v5("p").await;
    publish_acked(&mut publisher, 0..N / 2, Q5::AtLeastOnce).await;
    doomed.publish().await;
    doomed.kill();
    publish_acked(&mut publisher, N / 2..N, Q5::AtLeastOnce).await;
    let want: BTreeSet<usize> = (0..N).collect();
    none_lost(&collect(&mut survivor, &want).await, &want);
    assert!(broker.broker.metrics.snapshot().redispatched > 0, "counted");
}

/// However the session of a member ends — an operator's kick, a clean
/// start of the same client id taking over, its expiry — the other
/// member gets what it held.
#[tokio::test]
async fn a_members_messages_go_to_another_member_whichever_way_its_session_ends() {
    const N: usize = 20;
    let broker = TestBroker::start().await;
    let mut survivor = willing(&broker, "survivor").await;
    let mut publisher = broker.v5("p").await;
    let expiring = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(1));
    };
    for (round, end) in ["kick", "clean start", "expiry"].into_iter().enumerate() {
        let id = format!("doomed-{round}");
        let mut doomed = match end {
            "expiry" => stubborn(&broker, &id, expiring).await,
            "clean start" => stubborn(&broker, &id, persistent).await,
            _ => stubborn(&broker, &id, |_| {}).await,
        };
        let range = round * N..(round + 1) * N;
        publish_acked(&mut publisher, range.clone(), Q5::AtLeastOnce).await;
        doomed.publish().await;
        match end {
            "kick" => assert!(broker.broker.kick(&id), "kicked"),
            "clean start" => broker.v5(&id).await.kill(),
            _ => doomed.kill(),
        }
        let want: BTreeSet<usize> = range.collect();
        none_lost(&collect(&mut survivor, &want).await, &want);
        until_session_ended(&broker, &id).await;
    }
}

/// A member that disconnects but keeps its session keeps its messages
/// for `limits.share_hold_ms`, and gets them again when it resumes.
#[tokio::test]
async fn a_member_that_keeps_its_session_keeps_its_messages_within_share_hold_ms() {
    const N: usize = 20;
    let broker = TestBroker::with(|c| c.limits.share_hold_ms = 60_000).await;
    let mut survivor = willing(&broker, "survivor").await;
    let mut away = stubborn(&broker, "away", persistent).await;
    let mut publisher = broker.v5("p").await;
    publish_acked(&mut publisher, 0..N, Q5::AtLeastOnce).await;
    let mut held = BTreeSet::new();
    while let Some(p) = away.try_publish(QUIET).await {
        held.insert(number(&p));
    }
    assert!(!held.is_empty(), "the member got its share");
    away.kill();
    let theirs: BTreeSet<usize> = (0..N).filter(|i| !held.contains(i)).collect();
    let got = collect(&mut survivor, &theirs).await;
    none_lost(&got, &theirs);
    survivor.no_publish().await;
    let mut back = broker.v5_with("away", persistent).await;
    assert!(back.connack.session_present);
    let again = collect(&mut back, &held).await;
    none_lost(&again, &held);
}

/// ... and past `limits.share_hold_ms`, those messages go to another
/// member: a member that never returns does not hold them for ever.
#[tokio::test]
async fn after_share_hold_ms_an_absent_members_messages_go_to_another_member() {
    const N: usize = 20;
    let broker = TestBroker::with(|c| c.limits.share_hold_ms = 200).await;
    let mut survivor = willing(&broker, "survivor").await;
    let mut away = stubborn(&broker, "away", persistent).await;
    let mut publisher = broker.v5("p").await;
    publish_acked(&mut publisher, 0..N, Q5::AtLeastOnce).await;
    away.publish().await;
    away.kill();
    // Sent to no one else while it is away.
    publish_acked(&mut publisher, N..2 * N, Q5::AtLeastOnce).await;
    let want: BTreeSet<usize> = (0..2 * N).collect();
    none_lost(&collect(&mut survivor, &want).await, &want);
    let mut back = broker.v5_with("away", persistent).await;
    assert!(back.connack.session_present);
    back.no_publish().await;
}

/// With no member left, what the last one held waits in the group for
/// the next member, up to a session queue's bound; what is over it is
/// dropped and counted.
#[tokio::test]
async fn with_no_member_left_messages_wait_in_the_group_within_its_bound() {
    const N: usize = 8;
    let broker = TestBroker::with(|c| c.limits.max_queued_messages = 5).await;
    let mut last = stubborn(&broker, "last", |_| {}).await;
    let mut publisher = broker.v5("p").await;
    publish_acked(&mut publisher, 0..N, Q5::AtLeastOnce).await;
    for _ in 0..N {
        last.publish().await;
    }
    last.kill();
    until_session_ended(&broker, "last").await;
    assert_eq!(broker.broker.router.share_waiting(), 5);
    assert_eq!(broker.broker.metrics.drops(moat::metrics::DropReason::ShareGroupFull), 3);
    let mut next = willing(&broker, "next").await;
    let want: BTreeSet<usize> = (0..5).collect();
    let got = collect(&mut next, &want).await;
    assert_eq!(got.keys().copied().collect::<BTreeSet<_>>(), want, "the oldest, in the group's bound");
    next.no_publish().await;
    assert_eq!(broker.broker.router.share_waiting(), 0);
}

/// QoS 2: what the leaving member answered with PUBREC is its own (it
/// has the message) and is never delivered again; the rest goes on,
/// exactly once.
#[tokio::test]
async fn mqtt_4_8_2_qos2_messages_go_on_only_if_the_member_had_not_sent_pubrec() {
    const N: usize = 20;
    let broker = TestBroker::start().await;
    let mut survivor = broker.v5("survivor").await;
    survivor.subscribe("$share/g/w/#", Q5::ExactlyOnce).await;
    let mut raw = broker.raw().await;
    raw.send(&connect_v5("raw-member")).await;
    assert_eq!(raw.read_packet().await.0, 0x20, "CONNACK");
    let filter = b"$share/g/w/#";
    let mut body = vec![0, 1, 0, 0, filter.len() as u8];
    body.extend(filter);
    body.push(2);
    raw.send(&frame(0x82, &body)).await;
    assert_eq!(raw.read_packet().await.0, 0x90, "SUBACK");

    let mut publisher = broker.v5("p").await;
    publish_acked(&mut publisher, 0..N, Q5::ExactlyOnce).await;
    // The raw member's share: it answers PUBREC for every other one.
    let (mut received, mut pubrec, mut pubrel) = (BTreeSet::new(), BTreeSet::new(), 0);
    while let Ok((first, body)) = tokio::time::timeout(QUIET, raw.read_packet()).await {
        if first == 0x62 {
            pubrel += 1;
            continue;
        }
        assert_eq!(first & 0xf0, 0x30, "PUBLISH");
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let id = [body[2 + topic_len], body[3 + topic_len]];
        let props_len = usize::from(body[4 + topic_len]);
        let n: usize = String::from_utf8_lossy(&body[5 + topic_len + props_len..]).parse().expect("number");
        received.insert(n);
        if received.len() % 2 == 1 {
            raw.send(&frame(0x50, &id)).await;
            pubrec.insert(n);
        }
    }
    assert!(pubrec.len() >= 2, "the raw member got its share: {received:?}");
    // Its PUBRECs arrived: each has its PUBREL, which it never completes.
    for _ in pubrel..pubrec.len() {
        assert_eq!(raw.read_packet().await.0, 0x62, "PUBREL");
    }
    drop(raw);
    let want: BTreeSet<usize> = (0..N).filter(|i| !pubrec.contains(i)).collect();
    let got = collect(&mut survivor, &want).await;
    survivor.no_publish().await;
    none_lost(&got, &want);
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "QoS 2 delivered twice: {twice:?}");
    let again: Vec<_> = got.keys().filter(|n| pubrec.contains(n)).collect();
    assert!(again.is_empty(), "the leaving member had these (PUBREC), yet they went on: {again:?}");
}

/// A publisher held back by a member's full queue
/// (`limits.queue_full_wait_ms`) when that member leaves: the message it
/// holds goes to another member, not to the session that ended.
#[tokio::test]
async fn a_message_held_for_a_leaving_members_full_queue_goes_to_another_member() {
    const N: usize = 10;
    let broker = TestBroker::with(|c| {
        c.limits.max_queued_messages = 2;
        c.limits.queue_full_wait_ms = 60_000;
    })
    .await;
    let mut survivor = willing(&broker, "survivor").await;
    // One message in flight at a time, never acknowledged: its queue fills.
    let mut slow = stubborn(&broker, "slow", |o| {
        o.set_receive_maximum(Some(1));
    })
    .await;
    let mut publisher = broker.v5("p").await;
    for i in 0..N {
        publisher.client.publish(format!("w/{i}"), Q5::AtLeastOnce, false, i.to_string()).await.expect("publish");
    }
    slow.publish().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !broker
        .broker
        .sessions
        .get("slow")
        .is_some_and(|s| s.lock().flags.contains(moat::session::Flags::PUBLISHERS_WAITING))
    {
        assert!(tokio::time::Instant::now() < deadline, "the publisher was never held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    slow.kill();
    let mut acked = 0;
    while acked < N {
        acked += usize::from(matches!(publisher.next().await, Some(V5Packet::PubAck(_))));
    }
    let want: BTreeSet<usize> = (0..N).collect();
    none_lost(&collect(&mut survivor, &want).await, &want);
}

/// What a leaving member gave up goes to the others only as far as their
/// queues have room (members coming and going cannot grow a queue past
/// `limits.max_queued_messages`); the rest waits in the group and follows
/// as the member takes from its queue.
#[tokio::test]
async fn given_up_messages_fill_a_members_queue_to_its_bound_and_the_rest_follows_as_it_drains() {
    const N: usize = 10;
    let broker = TestBroker::with(|c| c.limits.max_queued_messages = 5).await;
    // One message in flight at a time: the rest of its share queues.
    let mut slow = stubborn(&broker, "slow", |o| {
        o.set_receive_maximum(Some(1));
    })
    .await;
    let mut doomed = stubborn(&broker, "doomed", |_| {}).await;
    let mut publisher = broker.v5("p").await;
    publish_acked(&mut publisher, 0..N, Q5::AtLeastOnce).await;
    let first = slow.publish().await;
    doomed.publish().await;
    doomed.kill();
    until_session_ended(&broker, "doomed").await;
    let queued = broker.broker.sessions.get("slow").map(|s| s.lock().pending.len()).expect("session");
    assert_eq!(queued, 5, "filled to its bound, not past it");
    assert_eq!(broker.broker.router.share_waiting(), N - 1 - queued, "the rest waits in the group");
    // It acknowledges from now on: the group's messages follow.
    slow.client.ack(&first).await.expect("ack");
    let mut got = BTreeSet::from([number(&first)]);
    while got.len() < N {
        let Some(p) = slow.try_publish(WAIT).await else { break };
        slow.client.ack(&p).await.expect("ack");
        got.insert(number(&p));
    }
    assert_eq!(got, (0..N).collect::<BTreeSet<_>>());
    assert_eq!(broker.broker.router.share_waiting(), 0);
}
