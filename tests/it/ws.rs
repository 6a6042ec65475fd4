//! MQTT over WebSocket and secure WebSocket: rumqttc clients, and a raw
//! tokio-tungstenite client behaving as a browser library (MQTT.js) does.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use moat::config::{ClientAuth, ListenerProtocol};
use rumqttc::{TlsConfiguration, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::harness::{TestBroker, WAIT, connect_v4, connect_v5};
use crate::pki::{ServerPki, client_config};

async fn ws_broker(path: Option<&str>) -> TestBroker {
    TestBroker::with(|c| {
        c.listeners[0].protocol = ListenerProtocol::Ws;
        c.listeners[0].ws_path = path.map(str::to_owned);
    })
    .await
}

/// A WebSocket handshake to `path` offering `protocols`, as a browser does.
async fn ws_client(
    broker: &TestBroker,
    path: &str,
    protocols: &str,
) -> Result<(tokio_tungstenite::WebSocketStream<TcpStream>, Option<String>), tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{}{path}", broker.addr).into_client_request().expect("request");
    if !protocols.is_empty() {
        request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_str(protocols).expect("header"));
    }
    let tcp = TcpStream::connect(broker.addr).await.expect("tcp");
    let (ws, response) = tokio_tungstenite::client_async(request, tcp).await?;
    let chosen = response.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok()).map(str::to_owned);
    Ok((ws, chosen))
}

async fn next_binary(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> Vec<u8> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("message in time") {
            Some(Ok(Message::Binary(data))) => return data.to_vec(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a binary message, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn ws_pubsub_with_rumqttc() {
    let broker = ws_broker(None).await;
    let url = format!("ws://127.0.0.1:{}/mqtt", broker.addr.port());
    let mut sub = broker
        .v5_with("ws-sub", |o| {
            *o = rumqttc::v5::MqttOptions::new("ws-sub", url.clone(), broker.addr.port());
            o.set_transport(Transport::Ws);
        })
        .await;
    sub.subscribe("web/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await;
    let publisher = broker
        .v4_with("ws-pub", |o| {
            *o = rumqttc::MqttOptions::new("ws-pub", url.clone(), broker.addr.port());
            o.set_transport(Transport::Ws);
        })
        .await;
    publisher.client.publish("web/a", rumqttc::QoS::AtLeastOnce, false, "over ws").await.expect("publish");
    assert_eq!(&sub.publish().await.payload[..], b"over ws");
}

#[tokio::test]
async fn wss_pubsub_with_rumqttc() {
    let pki = ServerPki::new("wss", ClientAuth::None);
    let broker = TestBroker::with(|c| pki.apply(&mut c.listeners[0], ListenerProtocol::Wss)).await;
    let url = format!("wss://127.0.0.1:{}/mqtt", broker.addr.port());
    let config = client_config(&pki.ca.pem(), None, &[b"http/1.1"]);
    let transport = || Transport::Wss(TlsConfiguration::Rustls(config.clone()));
    let mut sub = broker
        .v5_with("wss-sub", |o| {
            *o = rumqttc::v5::MqttOptions::new("wss-sub", url.clone(), broker.addr.port());
            o.set_transport(transport());
        })
        .await;
    sub.subscribe("web/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await;
    let publisher = broker
        .v5_with("wss-pub", |o| {
            *o = rumqttc::v5::MqttOptions::new("wss-pub", url.clone(), broker.addr.port());
            o.set_transport(transport());
        })
        .await;
    publisher
        .client
        .publish("web/b", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "over wss")
        .await
        .expect("publish");
    assert_eq!(&sub.publish().await.payload[..], b"over wss");
}

#[tokio::test]
async fn mqtt_6_0_0_2_message_boundaries_do_not_matter() {
    let broker = ws_broker(None).await;
    let (mut ws, chosen) = ws_client(&broker, "/mqtt", "mqtt").await.expect("upgrade");
    assert_eq!(chosen.as_deref(), Some("mqtt"));
    // One CONNECT split over two messages, as a client may send it.
    let connect = connect_v5("browser");
    ws.send(Message::binary(connect[..5].to_vec())).await.expect("send");
    ws.send(Message::binary(connect[5..].to_vec())).await.expect("send");
    let connack = next_binary(&mut ws).await;
    assert_eq!((connack[0], &connack[2..4]), (0x20, &[0, 0][..]), "v5 CONNACK success: {connack:02x?}");
    // PINGREQ answered in a binary message.
    ws.send(Message::binary(vec![0xC0, 0])).await.expect("send");
    assert_eq!(next_binary(&mut ws).await, [0xD0, 0]);
}

#[tokio::test]
async fn ws_accepts_mqttv31_subprotocol_and_none() {
    let broker = ws_broker(None).await;
    let (mut ws, chosen) = ws_client(&broker, "/mqtt", "mqttv3.1").await.expect("upgrade");
    assert_eq!(chosen.as_deref(), Some("mqttv3.1"));
    ws.send(Message::binary(connect_v4("old"))).await.expect("send");
    assert_eq!(next_binary(&mut ws).await, [0x20, 2, 0, 0]);
    let (_, chosen) = ws_client(&broker, "/mqtt", "").await.expect("upgrade without subprotocol");
    assert_eq!(chosen, None);
    assert!(ws_client(&broker, "/mqtt", "chat").await.is_err(), "foreign subprotocol refused");
}

#[tokio::test]
async fn ws_other_paths_get_404() {
    let broker = ws_broker(Some("/broker")).await;
    assert!(ws_client(&broker, "/broker", "mqtt").await.is_ok());
    let mut tcp = TcpStream::connect(broker.addr).await.expect("tcp");
    tcp.write_all(
        b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Protocol: mqtt\r\n\r\n",
    )
    .await
    .expect("write");
    let mut reply = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut reply)).await.expect("closed in time").expect("read");
    assert!(reply.starts_with(b"HTTP/1.1 404"), "{}", String::from_utf8_lossy(&reply));
}

#[tokio::test]
async fn mqtt_6_0_0_1_text_message_closes_the_connection() {
    let broker = ws_broker(None).await;
    let (mut ws, _) = ws_client(&broker, "/mqtt", "mqtt").await.expect("upgrade");
    ws.send(Message::binary(connect_v4("texter"))).await.expect("send");
    assert_eq!(next_binary(&mut ws).await, [0x20, 2, 0, 0]);
    ws.send(Message::text("not mqtt")).await.expect("send");
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "connection closed after a text message");
}

#[tokio::test]
async fn stalled_ws_upgrade_is_dropped_at_connect_timeout() {
    let broker = TestBroker::with(|c| {
        c.listeners[0].protocol = ListenerProtocol::Ws;
        c.limits.connect_timeout_ms = 300;
    })
    .await;
    let mut stalled = broker.raw().await;
    stalled.send(b"GET /mqtt HTTP/1.1\r\n").await;
    let started = tokio::time::Instant::now();
    assert!(stalled.read_to_close().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(200));
}
