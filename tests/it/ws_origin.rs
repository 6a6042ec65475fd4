//! Issue 23, item 6: WebSocket upgrades and the browser's `Origin`. A page
//! in a browser may open a WebSocket to any address; where the broker
//! admits clients that present no secret, only the origins an operator
//! lists may. Raw upgrade requests, and rumqttc setting the header.

use std::net::SocketAddr;

use moat::config::{Anonymous, Config, ListenerProtocol};
use rumqttc::Transport;
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Request};

use crate::harness::{TestBroker, V5, WAIT};

async fn ws_broker(tweak: impl FnOnce(&mut Config)) -> TestBroker {
    TestBroker::with(|c| {
        c.listeners[0].protocol = ListenerProtocol::Ws;
        tweak(c);
    })
    .await
}

/// The status line's code of an upgrade request with `origin`, if any.
async fn upgrade_status(addr: SocketAddr, origin: Option<&str>) -> u16 {
    upgrade_status_as(addr, &format!("127.0.0.1:{}", addr.port()), origin).await
}

/// [`upgrade_status`] with `Host: host`.
async fn upgrade_status_as(addr: SocketAddr, host: &str, origin: Option<&str>) -> u16 {
    let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
    let request = format!(
        "GET /mqtt HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n{origin}\r\n"
    );
    let talk = async {
        let mut tcp = TcpStream::connect(addr).await.expect("tcp");
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut reply = Vec::new();
        let mut chunk = [0u8; 512];
        // Up to the end of the head: an accepted upgrade stays open.
        while !reply.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => reply.extend_from_slice(&chunk[..n]),
            }
        }
        reply
    };
    let reply = tokio::time::timeout(WAIT, talk).await.expect("answer in time");
    let text = String::from_utf8_lossy(&reply);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status line: {text}"))
}

/// rumqttc over WebSocket, sending `origin` as a browser would; the CONNACK
/// code, or `None` when the upgrade was refused.
async fn rumqttc_with_origin(broker: &TestBroker, id: &str, origin: &'static str) -> Option<ConnectReturnCode> {
    let url = format!("ws://127.0.0.1:{}/mqtt", broker.addr.port());
    let mut opts = rumqttc::v5::MqttOptions::new(id, url, broker.addr.port());
    opts.set_transport(Transport::Ws);
    opts.set_request_modifier(move |mut request: Request<()>| async move {
        request.headers_mut().insert("Origin", HeaderValue::from_static(origin));
        request
    });
    let (_client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
    let polled = tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(ack))) => {
                    return Some(ack.code);
                }
                Ok(_) => {}
                Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => return Some(code),
                Err(_) => return None,
            }
        }
    });
    polled.await.expect("an answer in time")
}

#[tokio::test]
async fn browsers_are_refused_by_default_where_anonymous_clients_are_admitted() {
    for anonymous in [Anonymous::Loopback, Anonymous::Always] {
        let broker = ws_broker(|c| c.listeners[0].allow_anonymous = anonymous).await;
        assert_eq!(upgrade_status(broker.addr, Some("https://attacker.example")).await, 403, "{anonymous:?}");
        assert_eq!(upgrade_status(broker.addr, Some("null")).await, 403, "{anonymous:?}");
        assert_eq!(upgrade_status(broker.addr, None).await, 101, "not a browser: {anonymous:?}");
        // A page under a name rebound to the broker's address claims to be
        // the broker itself: refused. The broker's own origin, by address,
        // is what paho-mqtt sends: accepted.
        let port = broker.addr.port();
        let rebound = format!("attacker.example:{port}");
        let claimed = format!("http://{rebound}");
        assert_eq!(upgrade_status_as(broker.addr, &rebound, Some(&claimed)).await, 403, "{anonymous:?}");
        let own = format!("https://127.0.0.1:{port}");
        assert_eq!(upgrade_status(broker.addr, Some(&own)).await, 101, "{anonymous:?}");
        assert_eq!(rumqttc_with_origin(&broker, "page", "https://attacker.example").await, None);
        // Clients that send no Origin, as every MQTT library outside a
        // browser, are served as before.
        let url = format!("ws://127.0.0.1:{}/mqtt", broker.addr.port());
        let mut opts = rumqttc::v5::MqttOptions::new("tool", url, broker.addr.port());
        opts.set_transport(Transport::Ws);
        V5::connect(opts).await;
    }
}

#[tokio::test]
async fn browsers_are_admitted_by_default_where_a_password_is_required() {
    let broker = ws_broker(|c| c.listeners[0].allow_anonymous = Anonymous::Never).await;
    assert_eq!(upgrade_status(broker.addr, Some("https://app.example.com")).await, 101);
    // The upgrade is served; CONNECT still has to authenticate.
    let code = rumqttc_with_origin(&broker, "page", "https://app.example.com").await;
    assert_eq!(code, Some(ConnectReturnCode::NotAuthorized));
}

#[tokio::test]
async fn allowed_origins_admit_the_listed_origins_only() {
    let broker = ws_broker(|c| {
        c.listeners[0].allow_anonymous = Anonymous::Always;
        c.listeners[0].allowed_origins = Some(vec!["https://app.example.com".into(), "http://localhost:8080".into()]);
    })
    .await;
    for listed in ["https://app.example.com", "HTTPS://App.Example.com", "http://localhost:8080"] {
        assert_eq!(upgrade_status(broker.addr, Some(listed)).await, 101, "{listed}");
    }
    for other in ["https://app.example.com:8443", "http://app.example.com", "https://example.com", "null"] {
        assert_eq!(upgrade_status(broker.addr, Some(other)).await, 403, "{other}");
    }
    assert_eq!(upgrade_status(broker.addr, None).await, 101);
    let mut page = rumqttc_with_origin(&broker, "page", "https://app.example.com").await;
    assert_eq!(page.take(), Some(ConnectReturnCode::Success));
    assert_eq!(rumqttc_with_origin(&broker, "evil", "https://attacker.example").await, None);

    let any = ws_broker(|c| c.listeners[0].allowed_origins = Some(vec!["*".into()])).await;
    assert_eq!(upgrade_status(any.addr, Some("https://anywhere.example")).await, 101);
}
