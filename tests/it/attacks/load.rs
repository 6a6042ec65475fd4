//! The attacks that work by volume or by silence: a subscriber that never
//! reads, a connection flood, and slowloris on TLS and WebSocket listeners.
//! Each bounded in count and time, each followed by a normal client.

use std::time::Duration;

use futures_util::StreamExt;
use moat::codec::QoS;
use moat::config::{ClientAuth, ListenerProtocol};
use moat::metrics::{DropReason, Refusal};
use rumqttc::Transport;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5Code;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::still_serves;
use crate::harness::{TestBroker, WAIT};
use crate::limits::{closed_unread, connects_again};
use crate::pki::{ServerPki, client_config};

/// Waits, bounded by `WAIT`, until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn subscriber_that_never_reads_is_bounded_and_others_keep_being_served() {
    let broker = TestBroker::with(|c| {
        c.limits.max_queued_messages = 20;
        c.limits.max_inflight = 10;
    })
    .await;
    // A 3.1.1 subscriber with a small receive buffer that reads its SUBACK
    // and then nothing: the broker's writes to it soon block.
    let stuck = broker.raw_subscriber("stuck", "flood/#", Some(4096)).await;

    let publisher = broker.v5("flooder").await;
    let payload = vec![b'x'; 8 * 1024];
    let started = Instant::now();
    // QoS 0 until the socket buffers and the queue are full and the broker
    // drops: at most 32 MiB, far beyond any loopback socket buffer.
    let mut sent = 0;
    while broker.broker.metrics.drops(DropReason::QueueFull) == 0 {
        assert!(sent < 4000, "no QoS 0 message dropped after {sent}");
        publisher.client.publish("flood/0", Q5::AtMostOnce, false, payload.clone()).await.expect("publish");
        sent += 1;
        if sent % 50 == 0 {
            // Lets the broker catch up with the publisher's stream.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // QoS 1 now: kept only up to the queue bound.
    for _ in 0..100 {
        publisher.client.publish("flood/1", Q5::AtLeastOnce, false, payload.clone()).await.expect("publish");
    }
    let session = broker.broker.sessions.all().into_iter().find(|s| &**s.client_id() == "stuck").expect("session");
    eventually("the 100 QoS 1 messages fill the stuck session's queue", || {
        // Queued, each evicting a QoS 0, until the queue holds 20 of them;
        // the rest are dropped. (QoS 0 messages the publisher sent before
        // the loop saw its first drop are dropped too, so the drop count
        // says nothing about the QoS 1 messages.)
        session.lock().pending.iter().filter(|d| d.qos == QoS::AtLeastOnce).count() == 20
    })
    .await;
    {
        let state = session.lock();
        assert!(state.pending.len() <= 20, "queue bounded: {}", state.pending.len());
        assert!(state.pending.iter().all(|d| d.qos == QoS::AtLeastOnce), "QoS 0 evicted first");
        assert!(state.inflight.len() <= 10, "in flight bounded: {}", state.inflight.len());
    }
    still_serves(&broker).await;
    assert!(started.elapsed() < 4 * WAIT, "flood took {:?}", started.elapsed());
    drop(stuck);
}

#[tokio::test]
async fn connection_flood_beyond_max_connections_refused_then_normal_client_served() {
    let broker = TestBroker::with(|c| c.limits.max_connections = 50).await;
    let mut flood = Vec::with_capacity(200);
    for _ in 0..200 {
        flood.push(broker.raw().await);
    }
    let metrics = &broker.broker.metrics;
    eventually("150 refusals counted", || metrics.refusals(Refusal::MaxConnections) >= 150).await;
    assert_eq!(metrics.refusals(Refusal::MaxConnections), 150);
    // While the flood holds every permit, a normal client is refused too.
    let mut late = broker.raw().await;
    assert!(closed_unread(&mut late).await, "refused at accept during the flood");
    drop(flood);
    let _first = connects_again(&broker, "after-flood").await;
    still_serves(&broker).await;
}

#[tokio::test]
async fn slowloris_on_tls_closed_at_connect_timeout() {
    let pki = ServerPki::new("slowloris-tls", ClientAuth::None);
    let broker = TestBroker::with(|c| {
        pki.apply(&mut c.listeners[0], ListenerProtocol::Tls);
        c.limits.connect_timeout_ms = 300;
    })
    .await;
    let started = Instant::now();
    // Connects and sends nothing.
    let mut silent = broker.raw().await;
    // Starts a ClientHello (a record header announcing 512 bytes, then one).
    let mut stalled = broker.raw().await;
    stalled.send(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
    // Completes the handshake and never sends CONNECT.
    let connector = tokio_rustls::TlsConnector::from(client_config(&pki.ca.pem(), None, &[]));
    let tcp = TcpStream::connect(broker.addr).await.expect("tcp");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut mute = tokio::time::timeout(WAIT, connector.connect(name, tcp)).await.expect("in time").expect("tls");
    assert!(silent.read_to_close().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250), "closed before the timeout");
    stalled.read_to_close().await;
    let mut rest = Vec::new();
    let end = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read_to_end(&mut mute, &mut rest)).await;
    assert!(end.is_ok(), "TLS connection without CONNECT kept open");
    assert!(rest.is_empty(), "no MQTT answer without CONNECT: {rest:02x?}");
    assert_eq!(broker.broker.metrics.refusals(Refusal::Transport), 2);
    assert_eq!(broker.broker.metrics.refusals(Refusal::Protocol), 1);
    let config = client_config(&pki.ca.pem(), None, &[]);
    assert_eq!(crate::tls::try_v5(&broker, "after-slowloris", config).await, Ok(V5Code::Success));
    let _ = mute.shutdown().await;
}

#[tokio::test]
async fn slowloris_on_websocket_closed_at_connect_timeout() {
    let broker = TestBroker::with(|c| {
        c.listeners[0].protocol = ListenerProtocol::Ws;
        c.limits.connect_timeout_ms = 300;
    })
    .await;
    // Connects and sends nothing.
    let mut silent = broker.raw().await;
    // Starts the HTTP upgrade and stalls.
    let mut stalled = broker.raw().await;
    stalled.send(b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\n").await;
    // Upgrades and never sends CONNECT.
    let mut request = format!("ws://{}/mqtt", broker.addr).into_client_request().expect("request");
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let tcp = TcpStream::connect(broker.addr).await.expect("tcp");
    let (mut mute, _) = tokio_tungstenite::client_async(request, tcp).await.expect("upgrade");
    assert!(silent.read_to_close().await.is_empty());
    assert!(stalled.read_to_close().await.is_empty());
    let end = tokio::time::timeout(WAIT, async {
        while let Some(Ok(message)) = mute.next().await {
            assert!(message.is_close(), "no MQTT answer without CONNECT: {message:?}");
        }
    })
    .await;
    assert!(end.is_ok(), "WebSocket without CONNECT kept open");
    assert_eq!(broker.broker.metrics.refusals(Refusal::Transport), 2);
    assert_eq!(broker.broker.metrics.refusals(Refusal::Protocol), 1);
    let url = format!("ws://127.0.0.1:{}/mqtt", broker.addr.port());
    let mut sub = broker
        .v5_with("ws-after", |o| {
            *o = rumqttc::v5::MqttOptions::new("ws-after", url.clone(), broker.addr.port());
            o.set_transport(Transport::Ws);
        })
        .await;
    sub.subscribe("ws/#", Q5::AtMostOnce).await;
    sub.client.publish("ws/ok", Q5::AtMostOnce, false, "fine").await.expect("publish");
    assert_eq!(&sub.publish().await.payload[..], b"fine");
}
