//! Issue 23, item 3: a subscriber that stops reading. Its writes have a
//! deadline (`limits.write_timeout_ms`), at most a budget of its backlog
//! sits in its write buffer, an operator's kick and shutdown end a blocked
//! write, and the number of sessions is bounded (`limits.max_sessions`).

use std::time::Duration;

use moat::codec::QoS;
use moat::metrics::{Limit, Refusal};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;
use tokio::net::TcpSocket;
use tokio::time::Instant;

use crate::attacks::still_serves;
use crate::harness::{Raw, TestBroker, WAIT, connect_v4, connect_v5_with, subscribe_v5, within};

/// Session Expiry Interval (0x11) of 60 s, as CONNECT properties.
const EXPIRY_60S: [u8; 5] = [0x11, 0, 0, 0, 60];

/// A v5 CONNECT resuming the session of `id` (no Clean Start), which then
/// outlives the connection by 60 s.
fn resume_v5(id: &str) -> Vec<u8> {
    let mut connect = connect_v5_with(id, None, None, &EXPIRY_60S);
    // Fixed header (2 bytes), protocol name (6), level (1), then the flags.
    connect[9] &= !0x02;
    connect
}

/// A v5 subscriber on a socket with a small receive buffer that reads its
/// CONNACK and SUBACK and then nothing: the broker's writes soon block.
async fn stuck_subscriber(broker: &TestBroker, id: &str, properties: &[u8], filter: &str) -> Raw {
    let mut raw = stuck_connect(broker, &connect_v5_with(id, None, None, properties)).await;
    raw.send(&subscribe_v5(1, &[filter])).await;
    assert_eq!(raw.read_packet().await.0, 0x90, "SUBACK");
    raw
}

/// A v5 connection with a 4 KiB receive buffer, past a successful CONNACK.
async fn stuck_connect(broker: &TestBroker, connect: &[u8]) -> Raw {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut raw = Raw(socket.connect(broker.addr).await.expect("connect"));
    raw.send(connect).await;
    let (first, body) = raw.read_packet().await;
    assert_eq!((first, body[1]), (0x20, 0), "CONNACK success");
    raw
}

/// Publishes 8 KiB QoS 0 messages on `topic` in bursts until the queue of
/// the subscriber `id` stays non-empty for a while after a burst: its
/// connection is blocked in a write (or already gone).
async fn flood_until_blocked(broker: &TestBroker, id: &str, topic: &str) {
    let publisher = broker.v5("flooder").await;
    let payload = vec![b'x'; 8 * 1024];
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < 4 * WAIT, "the writes to {id} never blocked");
        for _ in 0..50 {
            publisher.client.publish(topic, Q5::AtMostOnce, false, payload.clone()).await.expect("publish");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(session) = broker.broker.sessions.get(id) else { return };
        if !session.lock().pending.is_empty() {
            return;
        }
    }
}

#[tokio::test]
async fn a_subscriber_that_never_reads_is_disconnected_at_the_write_timeout() {
    let broker = TestBroker::with(|c| {
        c.limits.write_timeout_ms = 300;
        c.limits.max_queued_messages = 20;
    })
    .await;
    let stuck = stuck_subscriber(&broker, "stuck", &[], "flood/#").await;
    flood_until_blocked(&broker, "stuck", "flood/0").await;
    // Its clean session ends with the connection.
    within(WAIT, "the stuck subscriber is disconnected", || broker.broker.sessions.get("stuck").is_none()).await;
    assert_eq!(broker.broker.metrics.limit_hits(Limit::WriteTimeout), 1);
    still_serves(&broker).await;
    drop(stuck);
}

#[tokio::test]
async fn a_kick_ends_a_blocked_write() {
    let broker = TestBroker::with(|c| c.limits.max_queued_messages = 20).await;
    let stuck = stuck_subscriber(&broker, "stuck", &[], "flood/#").await;
    flood_until_blocked(&broker, "stuck", "flood/0").await;
    assert!(broker.broker.kick("stuck"), "the stuck client is connected");
    // Well before the 30 s write timeout.
    within(Duration::from_secs(3), "the kicked subscriber lets go", || broker.broker.sessions.get("stuck").is_none())
        .await;
    assert_eq!(broker.broker.metrics.limit_hits(Limit::WriteTimeout), 0);
    still_serves(&broker).await;
    drop(stuck);
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_blocked_write() {
    let broker = TestBroker::with(|c| {
        c.limits.max_queued_messages = 20;
        c.limits.shutdown_grace_ms = 30_000;
    })
    .await;
    let stuck = stuck_subscriber(&broker, "stuck", &[], "flood/#").await;
    flood_until_blocked(&broker, "stuck", "flood/0").await;
    let started = Instant::now();
    broker.stop().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown waited {took:?} for a client that does not read");
    drop(stuck);
}

/// A backlog waiting for a subscriber that comes back and does not read:
/// what leaves its queue for the write buffer and is not written yet stays
/// within the drain budget (64 KiB) and one packet, however wide its
/// in-flight window.
#[tokio::test]
async fn a_backlog_waits_in_the_queue_not_in_the_write_buffer() {
    const N: usize = 100;
    const PAYLOAD: usize = 32 * 1024;
    let broker = TestBroker::with(|c| {
        c.limits.max_inflight = N as u16;
        c.limits.max_queued_messages = N;
    })
    .await;
    let first = stuck_subscriber(&broker, "stuck", &EXPIRY_60S, "backlog/#").await;
    drop(first);
    let session = broker.broker.sessions.get("stuck").expect("the session outlives its connection");
    within(WAIT, "the session goes offline", || !session.lock().online).await;
    let mut publisher = broker.v5("publisher").await;
    for _ in 0..N {
        publisher.client.publish("backlog/t", Q5::AtLeastOnce, false, vec![b'x'; PAYLOAD]).await.expect("publish");
    }
    let mut acked = 0;
    while acked < N {
        if let Some(V5Packet::PubAck(_)) = publisher.next().await {
            acked += 1;
        }
    }
    assert_eq!(session.lock().pending.len(), N, "the backlog is queued");
    let before = broker.broker.metrics.snapshot();
    let stuck = stuck_connect(&broker, &resume_v5("stuck")).await;
    // Lets it move what it will and block.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(broker.broker.kick("stuck"));
    within(Duration::from_secs(3), "the kicked subscriber lets go", || !session.lock().online).await;
    let after = broker.broker.metrics.snapshot();
    let moved = (after.sent[QoS::AtLeastOnce as usize] - before.sent[QoS::AtLeastOnce as usize]) as usize;
    let written = (after.bytes_sent - before.bytes_sent) as usize;
    let unwritten = (moved * (PAYLOAD + 18)).saturating_sub(written);
    assert!(moved > 0, "nothing left the queue");
    assert!(unwritten <= 64 * 1024 + PAYLOAD + 4 * N, "{moved} messages moved out, {written} bytes written");
    drop(stuck);
}

#[tokio::test]
async fn max_sessions_refuses_a_new_session_not_a_resumed_one() {
    let broker = TestBroker::with(|c| c.limits.max_sessions = 2).await;
    for id in ["kept-1", "kept-2"] {
        let mut raw = broker.raw().await;
        raw.send(&connect_v5_with(id, None, None, &EXPIRY_60S)).await;
        assert_eq!(raw.read_packet().await.1[1], 0, "CONNACK success");
        raw.send(&[0xE0, 0]).await;
        raw.read_to_close().await;
    }
    within(WAIT, "both sessions are offline", || broker.broker.sessions.all().iter().all(|s| !s.lock().online)).await;
    assert_eq!(broker.broker.sessions.len(), 2);
    let mut third = broker.raw().await;
    third.send(&connect_v5_with("third", None, None, &[])).await;
    let (first, body) = third.read_packet().await;
    assert_eq!((first, body[1]), (0x20, 0x97), "v5: Quota exceeded");
    let mut third = broker.raw().await;
    third.send(&connect_v4("third")).await;
    assert_eq!(third.read_to_close().await, [0x20, 2, 0, 3], "3.1.1: Server unavailable");
    assert_eq!(broker.broker.metrics.refusals(Refusal::MaxSessions), 2);
    assert_eq!(broker.broker.metrics.limit_hits(Limit::MaxSessions), 2);
    // Resuming, or starting clean under a known client id, adds none.
    let mut again = broker.raw().await;
    again.send(&resume_v5("kept-1")).await;
    let (_, body) = again.read_packet().await;
    assert_eq!((body[0], body[1]), (1, 0), "session present, success");
    let mut clean = broker.raw().await;
    clean.send(&connect_v4("kept-2")).await;
    assert_eq!(clean.read_exact(4).await, [0x20, 2, 0, 0]);
}
