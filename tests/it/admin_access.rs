//! Issue 23, item 5: who may use the admin API. A page in the operator's
//! browser must not reach it (DNS rebinding: a `Host` it does not know;
//! cross-origin requests), and nothing changes state without the token,
//! even on loopback. Raw HTTP requests, so each header is the test's choice.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;

use moat::config::{Config, ListenerConfig, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{TestBroker, WAIT};

/// A broker with the admin API on an ephemeral loopback port.
async fn admin_broker(tweak: impl FnOnce(&mut Config)) -> (TestBroker, SocketAddr) {
    let broker = TestBroker::with(|c| {
        c.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        tweak(c);
    })
    .await;
    let admin = broker.admin.expect("admin listener bound");
    (broker, admin)
}

/// Sends `head` (request line and headers, without the blank line) and
/// returns the status and body.
async fn exchange(addr: SocketAddr, head: &str) -> (u16, String) {
    let talk = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect to admin");
        stream.write_all(format!("{head}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        raw
    };
    let raw = tokio::time::timeout(WAIT, talk).await.expect("admin answers in time");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    (head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status code"), body.to_owned())
}

/// The status of `method path` with `headers` (each ending in CRLF).
async fn status(addr: SocketAddr, method: &str, path: &str, headers: &str) -> u16 {
    exchange(addr, &format!("{method} {path} HTTP/1.1\r\n{}", headers.trim_end())).await.0
}

#[tokio::test]
async fn admin_answers_only_to_hosts_it_knows() {
    let (_broker, admin) = admin_broker(|c| c.admin.allowed_hosts = vec!["moat.internal".into()]).await;
    let port = admin.port();
    for host in [
        format!("localhost:{port}"),
        "localhost".into(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "192.0.2.10:9090".into(),
        format!("moat.internal:{port}"),
        "MOAT.Internal".into(),
    ] {
        assert_eq!(status(admin, "GET", "/api/clients", &format!("Host: {host}\r\n")).await, 200, "Host: {host}");
    }
    // A name that resolved to 127.0.0.1 for a moment: DNS rebinding.
    for host in ["attacker.example", "attacker.example:9090", "localhost.attacker.example", "moat.internal.evil"] {
        assert_eq!(status(admin, "GET", "/api/clients", &format!("Host: {host}\r\n")).await, 403, "Host: {host}");
        assert_eq!(status(admin, "GET", "/health", &format!("Host: {host}\r\n")).await, 403, "Host: {host}");
    }
    assert_eq!(status(admin, "GET", "/api/clients", "").await, 400, "HTTP/1.1 without Host");
    let (code, _) = exchange(admin, "GET /health HTTP/1.0").await;
    assert_eq!(code, 200, "HTTP/1.0 may omit Host");
}

#[tokio::test]
async fn admin_refuses_browser_cross_origin_requests() {
    let (_broker, admin) = admin_broker(|_| {}).await;
    let host = format!("Host: 127.0.0.1:{}\r\n", admin.port());
    let same_origin = format!("{host}Origin: http://127.0.0.1:{}\r\n", admin.port());
    assert_eq!(status(admin, "GET", "/api/clients", &same_origin).await, 200);
    for foreign in ["Origin: http://attacker.example\r\n", "Origin: null\r\n", "Origin: http://127.0.0.1:8000\r\n"] {
        assert_eq!(status(admin, "GET", "/api/clients", &format!("{host}{foreign}")).await, 403, "{foreign}");
    }
    for site in ["cross-site", "same-site"] {
        let headers = format!("{host}Sec-Fetch-Site: {site}\r\n");
        assert_eq!(status(admin, "GET", "/api/clients", &headers).await, 403, "{site}");
    }
    for site in ["same-origin", "none"] {
        let headers = format!("{host}Sec-Fetch-Site: {site}\r\n");
        assert_eq!(status(admin, "GET", "/api/clients", &headers).await, 200, "{site}");
    }
}

#[tokio::test]
async fn state_changing_endpoints_need_a_token_even_on_loopback() {
    let (broker, admin) = admin_broker(|_| {}).await;
    let mut victim = broker.v5("victim").await;
    let host = "Host: localhost\r\n";
    assert_eq!(status(admin, "GET", "/api/clients", host).await, 200, "reads stay open on loopback");
    assert_eq!(status(admin, "POST", "/api/clients/victim/kick", host).await, 403);
    assert_eq!(status(admin, "POST", "/api/reload", host).await, 403);
    let bogus = format!("{host}Authorization: Bearer anything\r\n");
    assert_eq!(status(admin, "POST", "/api/clients/victim/kick", &bogus).await, 403);
    victim.no_publish().await;
    assert!(broker.broker.sessions.get("victim").is_some_and(|s| s.lock().online), "still connected");
}

#[tokio::test]
async fn a_token_file_is_made_owner_only_and_kept_across_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("admin.token");
    let with_file = |c: &mut Config| c.admin.token_file = Some(file.clone());
    let (broker, admin) = admin_broker(with_file).await;
    let mode = std::fs::metadata(&file).expect("token file made").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&file).expect("read").trim().to_owned();
    assert!(token.len() >= 32, "a long random token: {} characters", token.len());
    let _client = broker.v5("kick-me").await;
    let host = "Host: localhost\r\n";
    let bearer = format!("{host}Authorization: Bearer {token}\r\n");
    assert_eq!(status(admin, "GET", "/api/clients", host).await, 401);
    assert_eq!(status(admin, "GET", "/api/clients", &bearer).await, 200);
    assert_eq!(status(admin, "POST", "/api/clients/kick-me/kick", host).await, 401);
    assert_eq!(status(admin, "POST", "/api/clients/kick-me/kick", &bearer).await, 200);
    broker.stop().await;
    // A restart reads the same file: the same token.
    let (_again, admin) = admin_broker(with_file).await;
    assert_eq!(std::fs::read_to_string(&file).expect("read").trim(), token);
    assert_eq!(status(admin, "GET", "/api/clients", &bearer).await, 200);
}

#[tokio::test]
async fn an_unsafe_token_file_stops_the_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shared = dir.path().join("shared.token");
    std::fs::write(&shared, "a-token-others-can-read-0123456789\n").expect("write");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let link = dir.path().join("link.token");
    let target = dir.path().join("target.token");
    std::fs::write(&target, "a-token-behind-a-symbolic-link-0123\n").expect("write");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let empty = dir.path().join("empty.token");
    std::fs::write(&empty, "\n").expect("write");
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    for (file, why) in [(&shared, "group"), (&link, "symbolic link"), (&empty, "empty")] {
        let config = Config {
            listeners: vec![ListenerConfig::tcp("test", SocketAddr::from(([127, 0, 0, 1], 0)))],
            admin: moat::config::AdminConfig {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                token_file: Some(file.clone()),
                ..Default::default()
            },
            ..Config::default()
        };
        let err = moat::Server::bind(config).await.expect_err("refused");
        let message = err.to_string();
        assert!(message.contains(&file.display().to_string()) && message.contains(why), "{message}");
    }
    // A token set in the config still works as before.
    let (_broker, admin) = admin_broker(|c| c.admin.token = Some(Secret::new("t0ken"))).await;
    let bearer = "Host: localhost\r\nAuthorization: Bearer t0ken\r\n";
    assert_eq!(status(admin, "POST", "/api/clients/nobody/kick", bearer).await, 404);
}
