//! Soak: churn connections, sessions and subscriptions for minutes and check
//! that the broker's state and its memory come back to where they were. The
//! broker is the `moat` binary in its own process, so its resident memory is
//! the broker's alone (clients in this process allocate plenty of their own).
//! Not in the default run (it takes minutes); run it with
//!
//! ```sh
//! cargo test --test it soak:: -- --ignored --nocapture
//! MOAT_SOAK_SECONDS=600 cargo test --test it soak:: -- --ignored --nocapture
//! ```
//!
//! Each round: 100 MQTT 5 clients connect (half of them with a persistent
//! session), subscribe to 5 filters each (one shared), publish at QoS 0 and
//! 1, receive, and go away (half with a DISCONNECT, half by dropping the
//! socket); the persistent sessions are then resumed once with Session
//! Expiry 0, which ends them. After each round nothing may be left
//! (sessions, subscriptions and connections, read from `/metrics`); the
//! broker's resident memory after the last round may exceed that after a
//! short warm-up by at most [`RSS_GROWTH_LIMIT`] (allocator slack, not
//! per-round growth).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;

use crate::harness::{V5, WAIT};
use crate::ops::http;

/// Clients per round.
const CLIENTS: usize = 100;
/// Rounds before the baseline is taken.
const WARMUP_ROUNDS: usize = 5;
/// How much the broker's resident memory may grow from the end of the
/// warm-up to the end of the last round. (Before session timers were
/// cancelled on reconnect, it grew by about 150 KiB a round: 10 MiB in the
/// default two minutes.)
const RSS_GROWTH_LIMIT: u64 = 4 * 1024 * 1024;

/// The broker process, killed when dropped.
struct Broker {
    child: Child,
    mqtt: u16,
    admin: SocketAddr,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

impl Broker {
    fn start() -> Broker {
        let (mqtt, admin) = (free_port(), free_port());
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("soak-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("moat.toml");
        std::fs::write(
            &config,
            format!("[[listeners]]\nbind = \"127.0.0.1:{mqtt}\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
        )
        .expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_moat"))
            .arg("--config")
            .arg(&config)
            .current_dir(&dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start moat");
        let broker = Broker { child, mqtt, admin: SocketAddr::from(([127, 0, 0, 1], admin)) };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", mqtt)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "moat did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }

    /// The broker's resident set size, from /proc.
    fn rss_bytes(&self) -> u64 {
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.child.id())).expect("read statm");
        let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("statm resident field");
        pages * 4096
    }

    /// Sessions, subscriptions and connections, from `/metrics`.
    async fn state(&self) -> (u64, u64, u64) {
        let (status, text) = http(self.admin, "GET", "/metrics", None).await;
        assert_eq!(status, 200, "{text}");
        let sample = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).expect("a sample")
        };
        (sample("moat_sessions"), sample("moat_subscriptions"), sample("moat_connections"))
    }

    async fn v5(&self, id: &str, tweak: impl FnOnce(&mut rumqttc::v5::MqttOptions)) -> V5 {
        let mut opts = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", self.mqtt);
        opts.set_keep_alive(Duration::from_secs(30));
        tweak(&mut opts);
        V5::connect(opts).await
    }
}

/// One round of churn; returns when every client is gone.
async fn round(broker: &Broker, n: usize) {
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let persistent = i % 2 == 0;
        let client = broker
            .v5(&format!("soak-{n}-{i}"), |o| {
                o.set_clean_start(true);
                if persistent {
                    o.set_session_expiry_interval(Some(300));
                }
            })
            .await;
        clients.push(client);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        for filter in [
            format!("soak/{i}/#"),
            "soak/+/all".into(),
            "soak/x/+/y".into(),
            format!("$share/g/soak/{i}/s"),
            "#".into(),
        ] {
            c.subscribe(&filter, QoS::AtLeastOnce).await;
        }
    }
    for (i, c) in clients.iter().enumerate().take(10) {
        c.client.publish(format!("soak/{i}/all"), QoS::AtLeastOnce, false, vec![b'x'; 256]).await.expect("publish");
        c.client.publish(format!("soak/{i}/q0"), QoS::AtMostOnce, false, vec![b'y'; 64]).await.expect("publish");
    }
    // Every client receives something before it goes (the `#` filter).
    for c in &mut clients {
        tokio::time::timeout(WAIT, c.publish()).await.expect("a message within WAIT");
    }
    for (i, c) in clients.into_iter().enumerate() {
        if i % 4 < 2 {
            c.client.disconnect().await.expect("disconnect");
        } else {
            c.kill();
        }
    }
    // Resume each persistent session once, with Session Expiry 0 this
    // time, so it ends with this connection.
    for i in (0..CLIENTS).step_by(2) {
        let c = broker
            .v5(&format!("soak-{n}-{i}"), |o| {
                o.set_clean_start(false);
            })
            .await;
        assert!(c.connack.session_present, "round {n}: session of client {i} resumed");
        c.client.disconnect().await.expect("disconnect");
    }
    // The broker notices dropped sockets and DISCONNECTs on its own time.
    let end = Instant::now() + WAIT * 2;
    loop {
        let left = broker.state().await;
        if left == (0, 0, 0) {
            return;
        }
        assert!(Instant::now() < end, "round {n}: sessions, subscriptions, connections left: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long; run with `cargo test --test it soak:: -- --ignored --nocapture`"]
async fn churn_returns_state_and_memory_to_baseline() {
    let seconds: u64 = std::env::var("MOAT_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let broker = Broker::start();
    let started = Instant::now();
    // Warm-up: the allocator and the broker's maps reach their working size.
    for n in 0..WARMUP_ROUNDS {
        round(&broker, n).await;
    }
    let baseline = broker.rss_bytes();
    let mut rounds = WARMUP_ROUNDS;
    // Bounded by time and by count.
    while started.elapsed() < Duration::from_secs(seconds) && rounds < 10_000 {
        round(&broker, rounds).await;
        rounds += 1;
        if rounds.is_multiple_of(10) {
            println!(
                "soak: {rounds} rounds, RSS {} KiB (after warm-up: {} KiB)",
                broker.rss_bytes() / 1024,
                baseline / 1024
            );
        }
    }
    let end = broker.rss_bytes();
    println!(
        "soak: {rounds} rounds of {CLIENTS} clients in {:?}; RSS after warm-up {} KiB, at the end {} KiB",
        started.elapsed(),
        baseline / 1024,
        end / 1024
    );
    assert!(
        end <= baseline + RSS_GROWTH_LIMIT,
        "resident memory grew from {baseline} to {end} bytes over {rounds} rounds"
    );
}
