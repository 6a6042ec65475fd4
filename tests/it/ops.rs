//! Operating the broker: `/metrics` moving with real traffic, the admin
//! API's token, kicking a client, and `$SYS` topics under the policy.

use std::net::SocketAddr;
use std::time::Duration;

use moat::config::{Config, Secret};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet as V5Packet, PubAckReason, SubscribeReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{TestBroker, WAIT};
use crate::plugin_support::stage;

pub const TOKEN: &str = "t0ken-for-tests";

/// A broker with the admin API on an ephemeral loopback port and a token.
async fn admin_broker(tweak: impl FnOnce(&mut Config)) -> (TestBroker, SocketAddr) {
    let broker = TestBroker::with(|c| {
        c.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.admin.token = Some(Secret::new(TOKEN));
        tweak(c);
    })
    .await;
    let admin = broker.admin.expect("admin listener bound");
    (broker, admin)
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect to admin");
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        raw
    };
    let raw = tokio::time::timeout(WAIT, exchange).await.expect("admin answers in time");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    (status, body.to_owned())
}

/// The value of one sample (`name{labels}` exactly as rendered) in
/// Prometheus text.
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until every `(series, value)` holds (counters are flushed once
/// per connection loop turn, a moment after the packets they count).
async fn until_metrics(admin: SocketAddr, want: &[(&str, u64)]) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, text) = http(admin, "GET", "/metrics", Some(TOKEN)).await;
        assert_eq!(status, 200);
        if want.iter().all(|(series, value)| sample(&text, series) == Some(*value)) {
            return text;
        }
        if tokio::time::Instant::now() > deadline {
            let got: Vec<_> = want.iter().map(|(s, _)| (*s, sample(&text, s))).collect();
            panic!("metrics never reached {want:?}; last seen {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_move_as_traffic_flows() {
    let (broker, admin) = admin_broker(|c| c.sys.interval_s = 0).await;
    let text = until_metrics(admin, &[("moat_connections", 0), ("moat_messages_received_total{qos=\"0\"}", 0)]).await;
    assert!(text.contains("# TYPE moat_messages_received_total counter"), "HELP/TYPE lines:\n{text}");
    assert!(text.contains("# HELP moat_connections "), "HELP/TYPE lines:\n{text}");

    let mut sub = broker.v4("sub").await;
    sub.subscribe("t/#", rumqttc::QoS::AtLeastOnce).await;
    let publisher = broker.v5("pub").await;
    publisher.client.publish("t/0", Q5::AtMostOnce, false, "zero").await.expect("publish");
    publisher.client.publish("t/1", Q5::AtLeastOnce, false, "one").await.expect("publish");
    assert_eq!(&sub.publish().await.payload[..], b"zero");
    assert_eq!(&sub.publish().await.payload[..], b"one");

    let text = until_metrics(
        admin,
        &[
            ("moat_connections", 2),
            ("moat_connections_total", 2),
            ("moat_auth_total{outcome=\"success\"}", 2),
            ("moat_messages_received_total{qos=\"0\"}", 1),
            ("moat_messages_received_total{qos=\"1\"}", 1),
            ("moat_messages_sent_total{qos=\"0\"}", 1),
            ("moat_messages_sent_total{qos=\"1\"}", 1),
            ("moat_subscriptions", 1),
            ("moat_sessions", 2),
        ],
    )
    .await;
    assert!(sample(&text, "moat_bytes_received_total").is_some_and(|b| b > 20), "{text}");
    assert!(sample(&text, "moat_bytes_sent_total").is_some_and(|b| b > 10), "{text}");

    sub.kill();
    until_metrics(admin, &[("moat_connections", 1), ("moat_connections_total", 2)]).await;
}

#[tokio::test]
async fn admin_api_needs_the_token_except_for_health() {
    let (broker, admin) = admin_broker(|_| {}).await;
    let _client = broker
        .v5_with("dev-1", |o| {
            o.set_credentials("alice", "hunter2");
        })
        .await;
    for path in ["/metrics", "/api/clients", "/api/sessions", "/api/subscriptions", "/api/plugins"] {
        assert_eq!(http(admin, "GET", path, None).await.0, 401, "{path} without a token");
        assert_eq!(http(admin, "GET", path, Some("wrong")).await.0, 401, "{path} with a wrong token");
        assert_eq!(http(admin, "GET", path, Some(TOKEN)).await.0, 200, "{path} with the token");
    }
    assert_eq!(http(admin, "POST", "/api/clients/dev-1/kick", Some("wrong")).await.0, 401);
    assert_eq!(http(admin, "GET", "/health", None).await.0, 200);
    // Ready once `Server::run` has started, which the harness spawned.
    let deadline = tokio::time::Instant::now() + WAIT;
    while http(admin, "GET", "/ready", None).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "/ready never became 200");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http(admin, "GET", "/nothing", Some(TOKEN)).await.0, 404);

    let (_, body) = http(admin, "GET", "/api/clients", Some(TOKEN)).await;
    let clients: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(clients[0]["client_id"], "dev-1");
    // No authenticator verified alice: the name is only claimed.
    assert_eq!(clients[0]["username"], serde_json::Value::Null);
    assert_eq!(clients[0]["claimed_username"], "alice");
    assert_eq!(clients[0]["protocol"], "5.0");
    assert!(!body.contains("hunter2"), "never a password: {body}");
}

#[tokio::test]
async fn a_kicked_client_is_disconnected_and_others_keep_working() {
    let (broker, admin) = admin_broker(|_| {}).await;
    let mut victim = broker.v5("victim").await;
    let mut other = broker.v5("other").await;
    other.subscribe("still/#", Q5::AtMostOnce).await;

    let (status, _) = http(admin, "POST", "/api/clients/victim/kick", Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(victim.disconnect_reason().await, DisconnectReasonCode::AdministrativeAction);
    assert_eq!(http(admin, "POST", "/api/clients/nobody/kick", Some(TOKEN)).await.0, 404);

    other.client.publish("still/here", Q5::AtMostOnce, false, "yes").await.expect("publish");
    assert_eq!(&other.publish().await.payload[..], b"yes");
    // The kicked connection lets go of its session just after its DISCONNECT.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = http(admin, "GET", "/api/clients", Some(TOKEN)).await;
        assert!(body.contains("other"), "{body}");
        if !body.contains("victim") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "kicked client still listed: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sys_topics_arrive_and_clients_cannot_publish_there() {
    let broker = TestBroker::with(|c| c.sys.interval_s = 1).await;
    let mut sub = broker.v5("sys-reader").await;
    sub.subscribe("$SYS/broker/version", Q5::AtMostOnce).await;
    let version = sub.publish().await;
    assert!(version.payload.starts_with(b"moat "), "{version:?}");

    // The retained value may predate this client; the next interval counts it.
    sub.subscribe("$SYS/broker/clients/connected", Q5::AtMostOnce).await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let p = sub.publish().await;
        if p.topic == "$SYS/broker/clients/connected" {
            seen.push(p.payload.clone());
            if &p.payload[..] == b"1" {
                break;
            }
        }
    }
    assert_eq!(seen.last().map(|p| &p[..]), Some(&b"1"[..]), "{seen:?}");

    let mut forger = broker.v5("forger").await;
    forger.client.publish("$SYS/broker/version", Q5::AtLeastOnce, true, "evil").await.expect("publish");
    loop {
        match forger.next().await {
            Some(V5Packet::PubAck(ack)) => {
                assert_eq!(ack.reason, PubAckReason::NotAuthorized);
                break;
            }
            Some(_) => {}
            None => panic!("forger disconnected"),
        }
    }
    let mut fresh = broker.v5("fresh").await;
    fresh.subscribe("$SYS/broker/version", Q5::AtMostOnce).await;
    // The retained copy (a live publication may race ahead of it).
    let mut stored = fresh.publish().await;
    for _ in 0..3 {
        if stored.retain {
            break;
        }
        stored = fresh.publish().await;
    }
    assert!(stored.retain, "a new subscription gets the retained value");
    assert!(stored.payload.starts_with(b"moat "), "the forged value was not stored: {stored:?}");
}

#[tokio::test]
async fn sys_topics_are_readable_only_where_the_policy_allows() {
    let dir = stage(&[("acl", "topic-prefix", "[config]\nprefix = \"$SYS/broker/clients/\"\n")]);
    let path = dir.path().to_owned();
    let broker = TestBroker::with(|c| {
        c.plugins.dir = Some(path);
        c.sys.interval_s = 1;
    })
    .await;
    let mut reader = broker.v5("reader").await;
    let allowed = reader.subscribe("$SYS/broker/clients/connected", Q5::AtMostOnce).await;
    assert_eq!(allowed.return_codes, [SubscribeReasonCode::Success(Q5::AtMostOnce)]);
    assert_eq!(reader.publish().await.topic, "$SYS/broker/clients/connected");

    let mut denied = broker.v5("denied").await;
    let refused = denied.subscribe("$SYS/broker/version", Q5::AtMostOnce).await;
    assert_eq!(refused.return_codes, [SubscribeReasonCode::NotAuthorized]);
    // Across more than one publication interval, nothing arrives.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    denied.no_publish().await;
}

/// Sends raw bytes to the admin listener and returns the status it answers.
async fn raw_status(addr: SocketAddr, bytes: &[u8]) -> u16 {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect to admin");
        stream.write_all(bytes).await.expect("send");
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        raw
    };
    let raw = tokio::time::timeout(WAIT, exchange).await.expect("admin answers in time");
    let text = String::from_utf8_lossy(&raw);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status code")
}

#[tokio::test]
async fn admin_refuses_oversized_and_malformed_requests() {
    let (_broker, admin) = admin_broker(|_| {}).await;
    let huge = format!("GET /health HTTP/1.1\r\nX-Filler: {}\r\n\r\n", "a".repeat(10 * 1024));
    assert_eq!(raw_status(admin, huge.as_bytes()).await, 413);
    assert_eq!(raw_status(admin, b"\x00\x01 not http\r\n\r\n").await, 400);
    let big_body = b"POST /api/clients/x/kick HTTP/1.1\r\nContent-Length: 100000\r\n\r\n";
    assert_eq!(raw_status(admin, big_body).await, 413);
    // Still serving.
    assert_eq!(http(admin, "GET", "/health", None).await.0, 200);
}

/// `moat_plugin_decisions_total` tells allows, denials, ignores and failed
/// calls apart, per plugin and hook; `moat_plugin_denials_total` counts a
/// plugin's denials and failures together.
#[tokio::test]
async fn plugin_decisions_are_counted_per_plugin_hook_and_decision() {
    let dir = stage(&[
        ("gate", "topic-prefix", "order = 1\n[config]\nprefix = \"ok/\"\ndeny_prefix = \"no/\"\n"),
        ("boom", "panic", "order = 2\n"),
    ]);
    let path = dir.path().to_owned();
    let (broker, admin) = admin_broker(|c| c.plugins.dir = Some(path)).await;
    let mut client = broker.v5("decider").await;
    // gate allows; gate denies; gate ignores and boom fails; gate ignores
    // and boom allows.
    for (topic, allowed) in [("ok/1", true), ("no/1", false), ("evil/1", false), ("other/1", true)] {
        let reason = crate::acl_plugin::publish_qos1(&mut client, topic, false).await;
        assert_eq!(reason == PubAckReason::NotAuthorized, !allowed, "{topic}: {reason:?}");
    }
    let series = |plugin: &str, decision: &str| {
        format!("moat_plugin_decisions_total{{plugin=\"{plugin}\",hook=\"authorize\",decision=\"{decision}\"}}")
    };
    let want = [
        (series("gate", "allow"), 1),
        (series("gate", "deny"), 1),
        (series("gate", "ignore"), 2),
        (series("gate", "failure"), 0),
        (series("boom", "allow"), 1),
        (series("boom", "deny"), 0),
        (series("boom", "failure"), 1),
        ("moat_plugin_denials_total{plugin=\"gate\"}".to_owned(), 1),
        ("moat_plugin_denials_total{plugin=\"boom\"}".to_owned(), 1),
    ];
    let want: Vec<(&str, u64)> = want.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    let text = until_metrics(admin, &want).await;
    assert!(text.contains("# TYPE moat_plugin_decisions_total counter"), "{text}");
    assert!(!text.contains("plugin=\"gate\",hook=\"authenticate\""), "only the hooks a plugin implements:\n{text}");
    let (status, body) = http(admin, "GET", "/api/plugins", Some(TOKEN)).await;
    assert_eq!(status, 200);
    let plugins: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let gate = plugins.as_array().and_then(|l| l.iter().find(|p| p["name"] == "gate")).expect("gate listed");
    assert_eq!(gate["decisions"]["authorize"]["ignore"], 2, "{gate}");
}
