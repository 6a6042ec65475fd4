//! The login throttle (issue 23, item 4) with real sockets from several
//! loopback addresses (127.0.0.2, .3, ...: each its own address to the
//! broker once `throttle_loopback` is on): an address that failed too often
//! is refused before the authentication plugins run, and an address's
//! logins pass one at a time while other addresses' logins go ahead.

use std::net::SocketAddr;

use moat::config::{Anonymous, Config};
use moat::metrics::Refusal;
use moat::plugin::fixtures::StagedDir;

use crate::harness::{QUIET, Raw, TestBroker, auth_properties, connect_v4, connect_v5_with, frame, varint};
use crate::plugin_support::{stage, stats};

/// A broker with `plugins` staged, no anonymous clients, the throttle on
/// for loopback addresses too, and `tweak` applied.
async fn broker_with(plugins: &[(&str, &str, &str)], tweak: impl FnOnce(&mut Config)) -> (TestBroker, StagedDir) {
    let dir = stage(plugins);
    let path = dir.path().to_owned();
    let broker = TestBroker::with(|c| {
        c.plugins.dir = Some(path);
        c.listeners[0].allow_anonymous = Anonymous::Never;
        c.auth.throttle_loopback = true;
        tweak(c);
    })
    .await;
    (broker, dir)
}

/// A raw connection from the loopback address `127.0.0.<host>`.
async fn raw_from(broker: &TestBroker, host: u8) -> Raw {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from(([127, 0, 0, host], 0))).expect("bind a loopback address");
    Raw(socket.connect(broker.addr).await.expect("connect"))
}

/// The CONNACK reason a v5 login as `user` from `127.0.0.<host>` gets.
async fn login_from(broker: &TestBroker, host: u8, user: &str) -> u8 {
    let mut raw = raw_from(broker, host).await;
    raw.send(&connect_v5_with(&format!("{user}-{host}"), Some(user), Some(b"any"), &[])).await;
    let (kind, body) = raw.read_packet().await;
    assert_eq!(kind, 0x20, "CONNACK");
    body[1]
}

const ALLOW_ALICE: &str = "[config]\nusers = [\"alice\"]\n";
const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;

#[tokio::test]
async fn an_address_that_failed_too_often_is_refused_before_the_plugins_run() {
    let (broker, _dir) = broker_with(&[("allow", "allow-list", ALLOW_ALICE)], |c| {
        c.auth.failed_login_burst = 3;
        c.auth.failed_logins_per_minute = 1;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(login_from(&broker, 2, "mallory").await, BAD_USER_NAME_OR_PASSWORD);
    }
    let calls = stats(&broker.broker.policy(), "allow").calls;
    assert_eq!(calls, 3);
    // Refused at once, even with the right name, and the plugin is not asked.
    assert_eq!(login_from(&broker, 2, "mallory").await, CONNECTION_RATE_EXCEEDED);
    assert_eq!(login_from(&broker, 2, "alice").await, CONNECTION_RATE_EXCEEDED);
    let mut v4 = raw_from(&broker, 2).await;
    v4.send(&connect_v4("old-client")).await;
    assert_eq!(v4.read_to_close().await, [0x20, 2, 0, 3], "3.1.1: server unavailable");
    assert_eq!(stats(&broker.broker.policy(), "allow").calls, calls, "no plugin call for a throttled address");
    assert_eq!(broker.broker.metrics.refusals(Refusal::LoginThrottled), 3);
    // Another address logs in as if nothing happened.
    assert_eq!(login_from(&broker, 3, "alice").await, 0);
    assert_eq!(login_from(&broker, 3, "mallory").await, BAD_USER_NAME_OR_PASSWORD);
}

#[tokio::test]
async fn loopback_is_not_throttled_by_default() {
    // A local proxy would make every client 127.0.0.1: one client's typos
    // must not lock the others out.
    let (broker, _dir) = broker_with(&[("allow", "allow-list", ALLOW_ALICE)], |c| {
        c.auth = moat::config::AuthConfig { failed_login_burst: 2, ..Default::default() };
    })
    .await;
    for _ in 0..5 {
        assert_eq!(login_from(&broker, 1, "mallory").await, BAD_USER_NAME_OR_PASSWORD);
    }
    assert_eq!(login_from(&broker, 1, "alice").await, 0);
}

/// A v5 CONNECT starting a SCRAM-SHA-256 exchange as `user`.
fn scram_first(client_id: &str, user: &str) -> Vec<u8> {
    let first = format!("n,,n={user},r=nonce-of-{client_id}");
    connect_v5_with(client_id, None, None, &auth_properties("SCRAM-SHA-256", Some(first.as_bytes())))
}

/// Whether an AUTH packet (the server's challenge) arrives before `QUIET`.
async fn challenged_within_quiet(raw: &mut Raw) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(QUIET, tokio::io::AsyncReadExt::read_exact(&mut raw.0, &mut first)).await,
        Ok(Ok(_)) if first[0] == 0xF0
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_logs_in_one_at_a_time_while_other_addresses_go_ahead() {
    let scram = "[config]\ncredentials = []\n";
    let (broker, _dir) = broker_with(&[("scram", "scram", scram)], |c| c.auth.logins_per_address = Some(1)).await;
    // 127.0.0.2 starts an exchange and never answers the challenge: its
    // login stays in progress.
    let mut stalled = raw_from(&broker, 2).await;
    stalled.send(&scram_first("stalled", "eve")).await;
    let (kind, _) = stalled.read_packet().await;
    assert_eq!(kind, 0xF0, "AUTH challenge");
    // Its next login waits for the first; another address's does not.
    let mut queued = raw_from(&broker, 2).await;
    queued.send(&scram_first("queued", "eve")).await;
    let mut other = raw_from(&broker, 3).await;
    other.send(&scram_first("other", "bob")).await;
    let (kind, _) = other.read_packet().await;
    assert_eq!(kind, 0xF0, "the other address is challenged at once");
    assert!(!challenged_within_quiet(&mut queued).await, "the same address waits its turn");
    // The stalled login ends (its client goes away): the queued one goes on.
    drop(stalled);
    let (kind, _) = queued.read_packet().await;
    assert_eq!(kind, 0xF0, "challenged once the address's slot is free");
    // The other address's exchange goes on to its end.
    let mut body = vec![0x18];
    let props = auth_properties("SCRAM-SHA-256", Some(b"c=biws,r=wrong,p=AAAA"));
    body.extend(varint(props.len()));
    body.extend(props);
    other.send(&frame(0xF0, &body)).await;
    let (kind, body) = other.read_packet().await;
    assert_eq!((kind, body[1]), (0x20, BAD_USER_NAME_OR_PASSWORD), "CONNACK for a wrong proof");
}
