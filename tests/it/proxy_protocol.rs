//! Issue 23, item 8: listeners behind a proxy (`proxy_protocol = true`).
//! The PROXY header's source address stands for the client, so a remote
//! client behind a local proxy is not "loopback"; a connection without a
//! valid header, or from an untrusted address, is closed. Raw sockets play
//! the proxy.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use moat::config::{ClientAuth, Config, ListenerProtocol, Secret};
use moat::metrics::Refusal;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::{Raw, TestBroker, WAIT, connect_v4, connect_v5};
use crate::limits::closed_unread;
use crate::pki::{ServerPki, client_config};

async fn proxied_broker(tweak: impl FnOnce(&mut Config)) -> TestBroker {
    TestBroker::with(|c| {
        c.listeners[0].proxy_protocol = true;
        tweak(c);
    })
    .await
}

/// A PROXY protocol v1 header for a TCP client at `source`.
fn v1(source: SocketAddr) -> Vec<u8> {
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    let destination = if source.is_ipv4() { "127.0.0.1" } else { "::1" };
    format!("PROXY {family} {} {destination} {} 1883\r\n", source.ip(), source.port()).into_bytes()
}

/// A PROXY protocol v2 header: `PROXY` for a TCP client at `source`, or
/// `LOCAL` (the proxy's own connection) when `source` is `None`.
fn v2(source: Option<SocketAddr>) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    let Some(source) = source else {
        out.extend([0x20, 0x00, 0, 0]);
        return out;
    };
    let mut addresses = Vec::new();
    let family = match source.ip() {
        IpAddr::V4(ip) => {
            addresses.extend(ip.octets());
            addresses.extend([127, 0, 0, 1]);
            0x11
        }
        IpAddr::V6(ip) => {
            addresses.extend(ip.octets());
            addresses.extend(std::net::Ipv6Addr::LOCALHOST.octets());
            0x21
        }
    };
    addresses.extend(source.port().to_be_bytes());
    addresses.extend(1883u16.to_be_bytes());
    out.extend([0x21, family]);
    out.extend((addresses.len() as u16).to_be_bytes());
    out.extend(addresses);
    out
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// Sends `header` then a v5 CONNECT; returns the CONNACK reason code.
async fn connect_through(broker: &TestBroker, header: &[u8], id: &str) -> u8 {
    let mut raw = broker.raw().await;
    raw.send(header).await;
    raw.send(&connect_v5(id)).await;
    let (first, body) = raw.read_packet().await;
    assert_eq!(first, 0x20, "CONNACK");
    body[1]
}

#[tokio::test]
async fn a_remote_client_behind_a_local_proxy_is_not_loopback() {
    let broker = proxied_broker(|_| {}).await;
    // The default listener admits anonymous clients from loopback only.
    assert_eq!(connect_through(&broker, &v1(addr("192.0.2.7:51000")), "v1-remote").await, 0x87);
    assert_eq!(connect_through(&broker, &v2(Some(addr("[2001:db8::7]:51000"))), "v2-remote").await, 0x87);
    assert_eq!(connect_through(&broker, &v2(Some(addr("192.0.2.8:40000"))), "v2-remote4").await, 0x87);
    assert_eq!(connect_through(&broker, &v1(addr("127.0.0.1:51000")), "v1-local").await, 0);
    assert_eq!(connect_through(&broker, &v2(Some(addr("[::1]:40000"))), "v2-local").await, 0);
    // LOCAL: the proxy speaking for itself, from its own (loopback) address.
    assert_eq!(connect_through(&broker, &v2(None), "v2-health-check").await, 0);
}

#[tokio::test]
async fn the_admin_api_shows_the_address_the_proxy_reported() {
    let broker = proxied_broker(|c| {
        c.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.admin.token = Some(Secret::new(crate::ops::TOKEN));
    })
    .await;
    let mut raw = broker.raw().await;
    // Header and CONNECT in one segment, as a proxy may send them.
    let mut first = v2(Some(addr("127.0.0.9:40001")));
    first.extend(connect_v4("behind-proxy"));
    raw.send(&first).await;
    assert_eq!(raw.read_exact(4).await, [0x20, 2, 0, 0], "CONNACK success");
    let admin = broker.admin.expect("admin listener");
    let (status, body) = crate::ops::http(admin, "GET", "/api/clients", Some(crate::ops::TOKEN)).await;
    assert_eq!(status, 200);
    let clients: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(clients[0]["client_id"], "behind-proxy");
    assert_eq!(clients[0]["peer"], "127.0.0.9:40001");
}

#[tokio::test]
async fn a_connection_without_a_valid_header_is_closed() {
    let broker = proxied_broker(|_| {}).await;
    let bad: [&[u8]; 6] = [
        &connect_v5("no-header"),
        b"PROXY TCP4 nonsense\r\n",
        b"PROXY TCP4 192.0.2.1 127.0.0.1 70000 1883\r\n",
        b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2 and far too much text for a version 1 header of at most 107 bytes..\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04\x7f\x00\x00\x01",
    ];
    for (i, bytes) in bad.iter().enumerate() {
        let mut raw = broker.raw().await;
        raw.send(bytes).await;
        raw.send(&connect_v4("after-bad-header")).await;
        assert!(raw.read_to_close().await.is_empty(), "case {i}: closed without an answer");
    }
    assert_eq!(broker.broker.metrics.refusals(Refusal::Transport), bad.len() as u64);
    assert_eq!(broker.broker.sessions.len(), 0);
}

#[tokio::test]
async fn a_header_cut_short_is_dropped_at_the_connect_timeout() {
    let broker = proxied_broker(|c| c.limits.connect_timeout_ms = 300).await;
    let started = tokio::time::Instant::now();
    let mut stalled = broker.raw().await;
    stalled.send(b"PROXY TCP4 192.0.2.1 ").await;
    assert!(stalled.read_to_close().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250), "closed before the timeout");
}

#[tokio::test]
async fn only_trusted_proxies_may_send_a_header() {
    let broker =
        proxied_broker(|c| c.listeners[0].trusted_proxies = Some(vec!["192.0.2.0/24".parse().expect("block")])).await;
    let mut raw = Raw(TcpStream::connect(broker.addr).await.expect("connect"));
    assert!(closed_unread(&mut raw).await, "a connection from an untrusted address is closed unread");
    let mut raw = broker.raw().await;
    raw.send(&v1(addr("127.0.0.1:50000"))).await;
    raw.send(&connect_v4("untrusted")).await;
    assert!(raw.read_to_close().await.is_empty());
    assert_eq!(broker.broker.sessions.len(), 0);
}

#[tokio::test]
async fn the_header_comes_before_the_websocket_upgrade() {
    let broker = proxied_broker(|c| c.listeners[0].protocol = ListenerProtocol::Ws).await;
    for (source, expected) in [("192.0.2.7:50000", 0x87), ("127.0.0.1:50000", 0)] {
        let mut tcp = TcpStream::connect(broker.addr).await.expect("tcp");
        tcp.write_all(&v1(addr(source))).await.expect("header");
        let mut request = format!("ws://{}/mqtt", broker.addr).into_client_request().expect("request");
        request.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
        let (mut ws, _) = tokio_tungstenite::client_async(request, tcp).await.expect("upgrade after the header");
        ws.send(Message::binary(connect_v5("ws-behind-proxy"))).await.expect("send");
        let connack = match tokio::time::timeout(WAIT, ws.next()).await.expect("in time") {
            Some(Ok(Message::Binary(data))) => data,
            other => panic!("expected CONNACK, got {other:?}"),
        };
        assert_eq!((connack[0], connack[3]), (0x20, expected), "{source}: {connack:02x?}");
    }
}

#[tokio::test]
async fn the_header_comes_before_the_tls_handshake() {
    let pki = ServerPki::new("proxied-tls", ClientAuth::None);
    let broker = proxied_broker(|c| pki.apply(&mut c.listeners[0], ListenerProtocol::Tls)).await;
    let connector = tokio_rustls::TlsConnector::from(client_config(&pki.ca.pem(), None, &[]));
    for (source, expected) in [("[2001:db8::9]:50000", 0x87), ("127.0.0.1:50000", 0)] {
        let mut tcp = TcpStream::connect(broker.addr).await.expect("tcp");
        tcp.write_all(&v2(Some(addr(source)))).await.expect("header");
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let mut tls = tokio::time::timeout(WAIT, connector.connect(name, tcp)).await.expect("in time").expect("tls");
        tls.write_all(&connect_v5("tls-behind-proxy")).await.expect("CONNECT");
        let mut connack = [0u8; 4];
        tokio::time::timeout(WAIT, tls.read_exact(&mut connack)).await.expect("in time").expect("CONNACK");
        assert_eq!((connack[0], connack[3]), (0x20, expected), "{source}: {connack:02x?}");
    }
}
