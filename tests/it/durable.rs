//! The on-disk store: what survives a broker stop, a crash (SIGKILL of the
//! `moat` process) and a corrupt store.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moat::store::{DiskStore, Durability, Store};
use rumqttc::QoS as Q4;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5::PublishProperties;

use crate::harness::{TestBroker, frame};

fn open(dir: &Path) -> Arc<DiskStore> {
    Arc::new(DiskStore::open(&dir.join("store"), Durability::Sync).expect("store opens"))
}

/// Runs a broker on `store`, then stops it and closes the store.
async fn with_broker<F: AsyncFnOnce(&TestBroker)>(store: Arc<DiskStore>, body: F) {
    let broker = TestBroker::with_store(store.clone(), |_| {}).await;
    body(&broker).await;
    broker.stop().await;
    store.close();
}

#[tokio::test]
async fn retained_messages_sessions_and_queues_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let persistent = |o: &mut rumqttc::MqttOptions| {
        o.set_clean_session(false);
    };
    with_broker(open(dir.path()), async |broker| {
        let mut sub = broker.v4_with("durable", persistent).await;
        sub.subscribe("keep/#", Q4::AtLeastOnce).await;
        sub.client.disconnect().await.expect("disconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut publisher = broker.v4("p").await;
        publisher.client.publish("keep/r", Q4::AtLeastOnce, true, "retained").await.expect("publish");
        publisher.client.publish("keep/q", Q4::AtLeastOnce, false, "queued").await.expect("publish");
        for _ in 0..2 {
            while !matches!(publisher.next().await, Some(rumqttc::Packet::PubAck(_))) {}
        }
    })
    .await;

    with_broker(open(dir.path()), async |broker| {
        let mut back = broker.v4_with("durable", persistent).await;
        assert!(back.connack.session_present);
        let mut payloads = vec![back.publish().await.payload, back.publish().await.payload];
        payloads.sort();
        assert_eq!(payloads, [Bytes::from("queued"), Bytes::from("retained")]);
        // The subscription came back too.
        let publisher = broker.v4("p2").await;
        publisher.client.publish("keep/again", Q4::AtLeastOnce, false, "live").await.expect("publish");
        assert_eq!(back.publish().await.payload, Bytes::from("live"));
        let mut fresh = broker.v4("fresh").await;
        fresh.subscribe("keep/r", Q4::AtMostOnce).await;
        assert_eq!(fresh.publish().await.payload, Bytes::from("retained"));
    })
    .await;
}

#[tokio::test]
async fn expired_sessions_and_messages_are_dropped_at_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let expiring = |secs: u32| {
        move |o: &mut rumqttc::v5::MqttOptions| {
            o.set_clean_start(false);
            let mut props = rumqttc::v5::mqttbytes::v5::ConnectProperties::new();
            props.session_expiry_interval = Some(secs);
            o.set_connect_properties(props);
        }
    };
    with_broker(open(dir.path()), async |broker| {
        for (id, secs) in [("short", 1), ("long", 3600)] {
            let mut sub = broker.v5_with(id, expiring(secs)).await;
            sub.subscribe("x", Q5::AtLeastOnce).await;
            sub.client.disconnect().await.expect("disconnect");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let publisher = broker.v5("p").await;
        let props = PublishProperties { message_expiry_interval: Some(1), ..PublishProperties::default() };
        publisher.client.publish_with_properties("x", Q5::AtLeastOnce, false, "brief", props).await.expect("publish");
        publisher.client.publish("x", Q5::AtLeastOnce, false, "lasting").await.expect("publish");
        tokio::time::sleep(Duration::from_millis(300)).await;
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    with_broker(open(dir.path()), async |broker| {
        let short = broker.v5_with("short", expiring(60)).await;
        assert!(!short.connack.session_present, "expired while the broker was down");
        let mut long = broker.v5_with("long", expiring(3600)).await;
        assert!(long.connack.session_present);
        assert_eq!(long.publish().await.payload, Bytes::from("lasting"));
        long.no_publish().await;
    })
    .await;
}

// --- The `moat` binary on a store directory -------------------------------

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// A config file with one listener and `[storage]` in `dir`.
fn config(dir: &Path, port: u16) -> PathBuf {
    config_with(dir, port, "")
}

/// [`config`] with more sections (`extra`, TOML) before `[storage]`.
pub(crate) fn config_with(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let path = dir.join("moat.toml");
    let store = dir.join("store");
    let text = format!(
        "[[listeners]]\nbind = \"127.0.0.1:{port}\"\n\n{extra}\n[storage]\ndir = \"{}\"\ndurability = \"sync\"\n",
        store.display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// A `moat` child process, killed when dropped (so a failing test leaves
/// no broker behind).
pub(crate) struct Moat(Child);

impl Moat {
    /// SIGKILL, and reap.
    pub(crate) fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }

    pub(crate) fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for Moat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn start_moat(config: &Path, port: u16, extra: &[&str]) -> Moat {
    let mut child = Command::new(env!("CARGO_BIN_EXE_moat"))
        .arg("--config")
        .arg(config)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start moat");
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut stderr = String::new();
            child.stderr.take().map(|mut e| e.read_to_string(&mut stderr));
            panic!("moat exited with {status}: {stderr}");
        }
        assert!(started.elapsed() < Duration::from_secs(10), "moat did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    Moat(child)
}

/// A blocking MQTT 3.1.1 client speaking raw packets.
pub(crate) struct Raw(pub(crate) TcpStream);

impl Raw {
    pub(crate) fn connect(port: u16, client_id: &str, clean: bool) -> (Raw, bool) {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut raw = Raw(stream);
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, if clean { 0x02 } else { 0 }, 0, 60];
        body.extend(u16::try_from(client_id.len()).expect("short id").to_be_bytes());
        body.extend(client_id.as_bytes());
        raw.send(&frame(0x10, &body));
        let (kind, connack) = raw.packet();
        assert_eq!((kind, connack[1]), (0x20, 0), "CONNACK accepted");
        (raw, connack[0] & 1 == 1)
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).expect("write");
    }

    /// The next packet: first byte and body.
    pub(crate) fn packet(&mut self) -> (u8, Vec<u8>) {
        self.try_packet().expect("packet")
    }

    pub(crate) fn try_packet(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        let mut first = [0u8; 1];
        self.0.read_exact(&mut first)?;
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let mut b = [0u8; 1];
            self.0.read_exact(&mut b)?;
            len |= usize::from(b[0] & 0x7f) << shift;
            shift += 7;
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        self.0.read_exact(&mut body)?;
        Ok((first[0], body))
    }

    /// Publishes at QoS 1 or 2 and waits for the handshake to complete
    /// (PUBACK, or PUBREC + PUBCOMP).
    pub(crate) fn publish_acked(&mut self, topic: &str, id: u16, qos: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut packet = self.publish_qos1(topic, id, payload);
        packet[0] = 0x30 | (qos << 1);
        self.0.write_all(&packet)?;
        let [hi, lo] = id.to_be_bytes();
        if qos == 2 {
            self.expect(0x50)?;
            self.0.write_all(&[0x62, 2, hi, lo])?;
            self.expect(0x70)
        } else {
            self.expect(0x40)
        }
    }

    /// Sends a QoS 2 PUBLISH (with DUP when resent).
    pub(crate) fn publish_qos2(&mut self, topic: &str, id: u16, payload: &[u8], dup: bool) -> std::io::Result<()> {
        let mut packet = self.publish_qos1(topic, id, payload);
        packet[0] = 0x34 | if dup { 0x08 } else { 0 };
        self.0.write_all(&packet)
    }

    /// Sends PUBREL for `id`.
    pub(crate) fn pubrel(&mut self, id: u16) -> std::io::Result<()> {
        let [hi, lo] = id.to_be_bytes();
        self.0.write_all(&[0x62, 2, hi, lo])
    }

    pub(crate) fn expect(&mut self, kind: u8) -> std::io::Result<()> {
        let (got, _) = self.try_packet()?;
        if got == kind { Ok(()) } else { Err(std::io::Error::other(format!("expected {kind:#x}, got {got:#x}"))) }
    }

    /// Reads PUBLISHes (acknowledging them) until `want` are all in `got`
    /// or nothing arrives for a few seconds.
    fn receive_until(
        &mut self,
        got: &mut std::collections::BTreeSet<String>,
        want: &std::collections::BTreeSet<String>,
    ) {
        self.0.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        while !want.is_subset(got) {
            let Ok((kind, body)) = self.try_packet() else { return };
            assert_eq!(kind & 0xf0, 0x30, "PUBLISH");
            let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let id = [body[2 + topic_len], body[3 + topic_len]];
            got.insert(String::from_utf8_lossy(&body[4 + topic_len..]).into_owned());
            self.send(&[0x40, 2, id[0], id[1]]);
        }
    }

    fn subscribe_qos1(&mut self, filter: &str) {
        self.subscribe(filter, 1);
    }

    pub(crate) fn subscribe(&mut self, filter: &str, qos: u8) {
        let mut body = vec![0, 1];
        body.extend(u16::try_from(filter.len()).expect("short").to_be_bytes());
        body.extend(filter.as_bytes());
        body.push(qos);
        self.send(&frame(0x82, &body));
        assert_eq!(self.packet().0, 0x90, "SUBACK");
    }

    /// A QoS 1 PUBLISH packet, not sent (change its first byte for QoS 2,
    /// DUP or retain).
    pub(crate) fn publish_qos1(&mut self, topic: &str, id: u16, payload: &[u8]) -> Vec<u8> {
        let mut body = u16::try_from(topic.len()).expect("short").to_be_bytes().to_vec();
        body.extend(topic.as_bytes());
        body.extend(id.to_be_bytes());
        body.extend(payload);
        frame(0x32, &body)
    }

    /// Receives and acknowledges PUBLISHes as a client with a persistent
    /// session does (QoS 2 delivered once per packet id until PUBREL),
    /// until the socket fails, `want` is all in `rx.got`, or nothing
    /// arrives for `idle`.
    pub(crate) fn consume(
        &mut self,
        rx: &mut Receiver,
        want: Option<&std::collections::BTreeSet<String>>,
        idle: Duration,
    ) {
        self.0.set_read_timeout(Some(idle)).expect("timeout");
        while want.is_none_or(|want| !want.iter().all(|w| rx.got.contains_key(w))) {
            let Ok((kind, body)) = self.try_packet() else { return };
            let sent = match kind & 0xf0 {
                0x30 => {
                    let qos = (kind >> 1) & 3;
                    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                    let (id, payload) = if qos == 0 {
                        ([0, 0], &body[2 + topic_len..])
                    } else {
                        ([body[2 + topic_len], body[3 + topic_len]], &body[4 + topic_len..])
                    };
                    let payload = String::from_utf8_lossy(payload).into_owned();
                    if qos != 2 || rx.awaiting_rel.insert(u16::from_be_bytes(id)) {
                        *rx.got.entry(payload).or_default() += 1;
                    }
                    match qos {
                        1 => self.0.write_all(&[0x40, 2, id[0], id[1]]),
                        2 => self.0.write_all(&[0x50, 2, id[0], id[1]]),
                        _ => Ok(()),
                    }
                }
                0x60 => {
                    rx.awaiting_rel.remove(&u16::from_be_bytes([body[0], body[1]]));
                    self.0.write_all(&[0x70, 2, body[0], body[1]])
                }
                _ => Ok(()),
            };
            if sent.is_err() {
                return;
            }
        }
    }

    pub(crate) fn disconnect(mut self) {
        self.send(&[0xe0, 0]);
    }
}

#[cfg(unix)]
#[test]
fn acknowledged_qos1_messages_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = config(dir.path(), port);
    let mut moat = start_moat(&config, port, &[]);
    let (mut sub, _) = Raw::connect(port, "crash-sub", false);
    sub.subscribe_qos1("crash/#");
    sub.disconnect();
    std::thread::sleep(Duration::from_millis(100));

    let (mut publisher, _) = Raw::connect(port, "crash-pub", true);
    let count: u16 = 200;
    let batch: Vec<u8> =
        (1..=count).flat_map(|i| publisher.publish_qos1("crash/t", i, format!("m{i}").as_bytes())).collect();
    publisher.send(&batch);
    for _ in 0..count {
        assert_eq!(publisher.packet().0, 0x40, "PUBACK");
    }
    // Every message is acknowledged: crash now, with no chance to save.
    moat.kill().expect("SIGKILL");
    moat.wait().expect("reaped");

    let mut moat = start_moat(&config, port, &[]);
    let (mut sub, present) = Raw::connect(port, "crash-sub", false);
    assert!(present, "the session survived the crash");
    let mut got = std::collections::BTreeSet::new();
    while got.len() < usize::from(count) {
        let (kind, body) = sub.packet();
        assert_eq!(kind & 0xf0, 0x30, "PUBLISH");
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let id = [body[2 + topic_len], body[3 + topic_len]];
        got.insert(String::from_utf8_lossy(&body[4 + topic_len..]).into_owned());
        sub.send(&[0x40, 2, id[0], id[1]]);
    }
    let want: std::collections::BTreeSet<_> = (1..=count).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
    moat.kill().expect("stop");
    moat.wait().expect("reaped");
}

/// The issue's proof: QoS 1 and 2 publishers, the broker SIGKILLed at
/// random points, ten times; every message whose PUBACK/PUBCOMP arrived is
/// delivered after the restart.
#[cfg(unix)]
#[test]
fn repeated_sigkill_at_random_points_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = config(dir.path(), port);
    let mut moat = start_moat(&config, port, &[]);
    let (mut sub, _) = Raw::connect(port, "kill-sub", false);
    sub.subscribe_qos1("kill/#");
    sub.disconnect();
    let mut seed = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
    let (mut acked, mut received) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    for round in 0..10 {
        let publisher = std::thread::spawn(move || {
            let mut done = Vec::new();
            let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else { return done };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut raw = Raw(stream);
            let body = [0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'p'];
            raw.send(&frame(0x10, &body));
            if raw.expect(0x20).is_err() {
                return done;
            }
            for i in 1..=u16::MAX {
                let payload = format!("r{round}-{i}");
                if raw.publish_acked("kill/t", i, 1 + u8::from(i % 2 == 0), payload.as_bytes()).is_err() {
                    break;
                }
                done.push(payload);
            }
            done
        });
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        std::thread::sleep(Duration::from_millis(50 + (seed >> 33) % 200));
        moat.kill().expect("SIGKILL");
        moat.wait().expect("reaped");
        acked.extend(publisher.join().expect("publisher"));
        moat = start_moat(&config, port, &[]);
        let (mut sub, present) = Raw::connect(port, "kill-sub", false);
        assert!(present, "round {round}: the session survived");
        sub.receive_until(&mut received, &acked);
        let missing: Vec<_> = acked.difference(&received).collect();
        assert!(missing.is_empty(), "round {round}: acknowledged but lost: {missing:?}");
        sub.disconnect();
    }
    assert!(acked.len() >= 10, "the publishers got some acknowledgements ({})", acked.len());
    moat.kill().expect("stop");
    moat.wait().expect("reaped");
}

/// What a subscribing client remembers across reconnects: every payload
/// delivered to the application (with a count) and the QoS 2 packet ids
/// it has received but not yet seen released.
#[derive(Default)]
pub(crate) struct Receiver {
    pub(crate) got: std::collections::BTreeMap<String, u32>,
    awaiting_rel: std::collections::BTreeSet<u16>,
}

/// A publisher thread alternating QoS 1 and QoS 2 on `topic` until the
/// broker goes away; returns the payloads whose handshake completed.
fn publish_until_killed(port: u16, topic: &'static str, round: u32) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut done = Vec::new();
        let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else { return done };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut raw = Raw(stream);
        let body = [0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'p'];
        raw.send(&frame(0x10, &body));
        if raw.expect(0x20).is_err() {
            return done;
        }
        for i in 1..=u16::MAX {
            let payload = format!("r{round}-{i}");
            if raw.publish_acked(topic, i, 1 + u8::from(i % 2 == 0), payload.as_bytes()).is_err() {
                break;
            }
            done.push(payload);
        }
        done
    })
}

/// Issue 9, gap 1: a persistent subscriber that is *connected* while the
/// broker is SIGKILLed gets, after the restart, every message whose
/// PUBACK/PUBCOMP the publisher got: QoS 1 at least once, QoS 2 (even
/// numbers) exactly once.
#[cfg(unix)]
#[test]
fn an_online_persistent_subscriber_loses_nothing_acknowledged_across_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = config(dir.path(), port);
    let mut moat = start_moat(&config, port, &[]);
    let (mut sub, _) = Raw::connect(port, "live-sub", false);
    sub.subscribe("live/#", 2);
    let mut seed = u64::from(std::process::id()) ^ 0x2545_f491_4f6c_dd1d;
    let (mut acked, mut rx) = (std::collections::BTreeSet::new(), Receiver::default());
    for round in 0..5 {
        let reader = std::thread::spawn(move || {
            sub.consume(&mut rx, None, Duration::from_secs(10));
            rx
        });
        let publisher = publish_until_killed(port, "live/t", round);
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        std::thread::sleep(Duration::from_millis(100 + (seed >> 33) % 200));
        moat.kill().expect("SIGKILL");
        moat.wait().expect("reaped");
        acked.extend(publisher.join().expect("publisher"));
        rx = reader.join().expect("reader");
        moat = start_moat(&config, port, &[]);
        let present;
        (sub, present) = Raw::connect(port, "live-sub", false);
        assert!(present, "round {round}: the session survived");
        sub.consume(&mut rx, Some(&acked), Duration::from_secs(3));
        let missing: Vec<_> = acked.iter().filter(|a| !rx.got.contains_key(*a)).collect();
        assert!(missing.is_empty(), "round {round}: acknowledged but lost: {missing:?}");
        let twice: Vec<_> = rx
            .got
            .iter()
            .filter(|(p, n)| {
                **n > 1 && p.rsplit('-').next().and_then(|i| i.parse::<u16>().ok()).is_some_and(|i| i % 2 == 0)
            })
            .collect();
        assert!(twice.is_empty(), "round {round}: QoS 2 delivered more than once: {twice:?}");
    }
    assert!(acked.len() >= 10, "the publishers got some acknowledgements ({})", acked.len());
    moat.kill().expect("stop");
    moat.wait().expect("reaped");
}

/// A QoS 2 message a publisher with a persistent session has not finished:
/// its packet id, payload, and whether PUBREL went out.
struct Unfinished {
    id: u16,
    payload: String,
    released: bool,
}

/// A persistent-session publisher sending QoS 2 on `topic` until the broker
/// goes away; returns the payloads whose PUBCOMP arrived and the message in
/// the middle of its handshake, if any.
fn publish_qos2_until_killed(
    port: u16,
    client_id: &'static str,
    topic: &'static str,
    round: u32,
) -> std::thread::JoinHandle<(Vec<String>, Option<Unfinished>)> {
    std::thread::spawn(move || {
        let mut done = Vec::new();
        let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else { return (done, None) };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut raw = Raw(stream);
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0, 0, 60];
        body.extend(u16::try_from(client_id.len()).expect("short").to_be_bytes());
        body.extend(client_id.as_bytes());
        raw.send(&frame(0x10, &body));
        if raw.expect(0x20).is_err() {
            return (done, None);
        }
        for id in 1..=u16::MAX {
            let payload = format!("q{round}-{id}");
            let mut unfinished = Unfinished { id, payload: payload.clone(), released: false };
            if raw.publish_qos2(topic, id, payload.as_bytes(), false).is_err() || raw.expect(0x50).is_err() {
                return (done, Some(unfinished));
            }
            unfinished.released = true;
            if raw.pubrel(id).is_err() || raw.expect(0x70).is_err() {
                return (done, Some(unfinished));
            }
            done.push(payload);
        }
        (done, None)
    })
}

/// Issue 9, gap 1: a QoS 2 publisher with a persistent session resumes
/// after the broker was SIGKILLed in the middle of its handshake and
/// resends (PUBLISH with DUP and the same packet id, or PUBREL once it
/// sent one); every message is delivered exactly once. Round 0 kills the
/// broker right after a PUBREC, so the resent PUBLISH must be recognised
/// from the store.
#[cfg(unix)]
#[test]
fn qos2_publishers_resending_after_sigkill_deliver_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = config(dir.path(), port);
    let mut moat = start_moat(&config, port, &[]);
    let (mut sub, _) = Raw::connect(port, "x2-sub", false);
    sub.subscribe("x2/#", 2);
    sub.disconnect();

    // PUBREC received, then the crash, before PUBREL.
    let (mut publisher, _) = Raw::connect(port, "x2-pub", false);
    publisher.publish_qos2("x2/t", 7, b"first", false).expect("publish");
    publisher.expect(0x50).expect("PUBREC");
    moat.kill().expect("SIGKILL");
    moat.wait().expect("reaped");
    let mut unfinished = Some(Unfinished { id: 7, payload: "first".to_owned(), released: false });

    let mut seed = u64::from(std::process::id()) ^ 0x51_7cc1_b727_220a;
    let (mut acked, mut rx) = (std::collections::BTreeSet::new(), Receiver::default());
    for round in 0..8 {
        moat = start_moat(&config, port, &[]);
        let (mut publisher, present) = Raw::connect(port, "x2-pub", false);
        assert!(present, "round {round}: the publisher's session survived");
        if let Some(u) = unfinished.take() {
            // Resend as the protocol says: the PUBLISH again (DUP) until
            // PUBREC, then PUBREL until PUBCOMP.
            if !u.released {
                publisher.publish_qos2("x2/t", u.id, u.payload.as_bytes(), true).expect("resend");
                publisher.expect(0x50).expect("PUBREC of the resend");
            }
            publisher.pubrel(u.id).expect("PUBREL");
            let (kind, body) = publisher.packet();
            assert_eq!((kind, &body[..2]), (0x70, &u.id.to_be_bytes()[..]), "round {round}: PUBCOMP");
            acked.insert(u.payload);
        }
        publisher.disconnect();
        let (mut sub, present) = Raw::connect(port, "x2-sub", false);
        assert!(present, "round {round}: the subscriber's session survived");
        sub.consume(&mut rx, Some(&acked), Duration::from_secs(3));
        let missing: Vec<_> = acked.iter().filter(|a| !rx.got.contains_key(*a)).collect();
        assert!(missing.is_empty(), "round {round}: acknowledged but lost: {missing:?}");
        let twice: Vec<_> = rx.got.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "round {round}: QoS 2 delivered more than once: {twice:?}");
        sub.disconnect();

        let publisher = publish_qos2_until_killed(port, "x2-pub", "x2/t", round);
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        std::thread::sleep(Duration::from_millis(50 + (seed >> 33) % 200));
        moat.kill().expect("SIGKILL");
        moat.wait().expect("reaped");
        let (done, left) = publisher.join().expect("publisher");
        acked.extend(done);
        unfinished = left;
    }
    assert!(acked.len() >= 10, "the publisher got some acknowledgements ({})", acked.len());
}

/// Issue 9, gap 2: a will waiting for its delay when the broker is
/// SIGKILLed is published after the restart once due; one whose session
/// expired while the broker was down is dropped; one whose client comes
/// back first is not published.
#[cfg(unix)]
#[tokio::test]
async fn delayed_wills_survive_sigkill_unless_the_session_ended_or_resumed() {
    use crate::harness::{V5, delayed_will};
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = config(dir.path(), port);
    let mut moat = start_moat(&config, port, &[]);
    let options = |id: &str, expiry: u32| {
        let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_start(false);
        let mut props = rumqttc::v5::mqttbytes::v5::ConnectProperties::new();
        props.session_expiry_interval = Some(expiry);
        o.set_connect_properties(props);
        o
    };
    let with_will = |id: &str, expiry: u32, delay: u32| {
        let mut o = options(id, expiry);
        o.set_last_will(delayed_will(&format!("wills/{id}"), id, delay));
        o
    };
    let mut watcher = V5::connect(options("watcher", 600)).await;
    watcher.subscribe("wills/#", Q5::AtLeastOnce).await;
    watcher.client.disconnect().await.expect("disconnect");
    // Due 2 s after the connection drops; its session would end after 1 s
    // (which would publish it, were the broker up); due after 4 s.
    let clients = [with_will("kept", 60, 2), with_will("expired", 1, 30), with_will("back", 60, 4)];
    for opts in clients {
        V5::connect(opts).await.kill();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    moat.kill().expect("SIGKILL");
    moat.wait().expect("reaped");
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let mut moat = start_moat(&config, port, &[]);
    let back = V5::connect(options("back", 60)).await;
    assert!(back.connack.session_present);
    let mut watcher = V5::connect(options("watcher", 600)).await;
    assert!(watcher.connack.session_present);
    assert_eq!(watcher.publish().await.payload, Bytes::from("kept"));
    // "back" would be due about 4 s after the drop; wait past it.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    watcher.no_publish().await;
    drop(back);
    moat.kill().expect("stop");
    moat.wait().expect("reaped");
}

#[test]
fn a_corrupt_store_stops_startup_and_repair_quarantines_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = config(dir.path(), port);
    let store = dir.path().join("store");
    {
        // A record Moat cannot decode.
        let db = fjall::Database::builder(&store).open().expect("opens");
        let ks = db.keyspace("retained", fjall::KeyspaceCreateOptions::default).expect("keyspace");
        ks.insert("t", [1u8, 0xff, 0xff, 0xff]).expect("insert");
        db.persist(fjall::PersistMode::SyncAll).expect("persist");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_moat")).arg("--config").arg(&config).output().expect("run moat");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&store.display().to_string()) && stderr.contains("corrupt"), "{stderr}");
    assert!(stderr.contains("--repair"), "{stderr}");

    let mut moat = start_moat(&config, port, &["--repair"]);
    let quarantined: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("store.corrupt-"))
        .collect();
    assert_eq!(quarantined.len(), 1, "the bad store was moved aside");
    moat.kill().expect("stop");
    moat.wait().expect("reaped");
    let mut stderr = String::new();
    moat.0.stderr.take().map(|mut e| e.read_to_string(&mut stderr));
    assert!(stderr.contains("QUARANTINED"), "{stderr}");
}

#[test]
fn a_truncated_store_file_stops_startup_naming_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    {
        let disk = DiskStore::open(&store, Durability::Sync).expect("opens");
        disk.session_opened(&Arc::from("c"), 60);
        disk.close();
    }
    // Cut every metadata file fjall keeps outside its journals in half.
    let mut cut = 0;
    for entry in walk(&store) {
        let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if name.starts_with('v') || name == "version" || name.ends_with("manifest") {
            let len = std::fs::metadata(&entry).expect("meta").len();
            std::fs::OpenOptions::new().write(true).open(&entry).and_then(|f| f.set_len(len / 2)).expect("truncate");
            cut += 1;
        }
    }
    assert!(cut > 0, "found files to truncate in {:?}", walk(&store));
    let err = DiskStore::open(&store, Durability::Sync).expect_err("truncated");
    assert!(err.to_string().contains(&store.display().to_string()), "{err}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("list").flatten() {
        let path = entry.path();
        if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
    }
    out
}

#[test]
fn the_store_trait_object_is_usable() {
    // `DiskStore` is a `Store` like `MemoryStore`.
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = open(dir.path());
    assert!(store.recover().expect("empty").sessions.is_empty());
}

/// Issue 28: at shutdown the clean session of a share group's last member
/// connected ends; what its client had not acknowledged waits in the
/// group, on disk, and goes to the next member after the restart.
#[tokio::test]
async fn a_share_groups_waiting_messages_survive_a_restart() {
    const N: usize = 10;
    let dir = tempfile::tempdir().expect("tempdir");
    with_broker(open(dir.path()), async |broker| {
        let mut member = broker
            .v5_with("member", |o| {
                o.set_manual_acks(true);
            })
            .await;
        member.subscribe("$share/g/job/#", Q5::AtLeastOnce).await;
        let mut publisher = broker.v5("p").await;
        for i in 0..N {
            publisher.client.publish(format!("job/{i}"), Q5::AtLeastOnce, false, i.to_string()).await.expect("publish");
        }
        let mut acked = 0;
        while acked < N {
            let ack = publisher.next().await;
            acked += usize::from(matches!(ack, Some(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_))));
        }
        for _ in 0..N {
            member.publish().await;
        }
    })
    .await;

    with_broker(open(dir.path()), async |broker| {
        assert_eq!(broker.broker.router.share_waiting(), N, "recovered in the group");
        let mut next = broker.v5("next").await;
        next.subscribe("$share/g/job/#", Q5::AtLeastOnce).await;
        let mut got: Vec<usize> = Vec::new();
        for _ in 0..N {
            got.push(String::from_utf8_lossy(&next.publish().await.payload).parse().expect("a number"));
        }
        assert_eq!(got, (0..N).collect::<Vec<_>>(), "all of them, in order");
        next.no_publish().await;
    })
    .await;
}

/// Issue 28 across SIGKILL: a share group's messages that wait for a
/// member — given up by a member whose clean session ended, or published
/// while its only other member is away — outlive a crash of the broker,
/// and go to the next member.
#[cfg(unix)]
#[test]
fn a_share_groups_waiting_messages_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = config(dir.path(), port);
    // An absent member gives up what it holds at once.
    let text = std::fs::read_to_string(&config).expect("config") + "\n[limits]\nshare_hold_ms = 0\n";
    std::fs::write(&config, text).expect("write config");
    let mut moat = start_moat(&config, port, &[]);
    let (mut away, _) = Raw::connect(port, "away", false);
    away.subscribe_qos1("$share/g/k/#");
    away.disconnect();
    let (mut doomed, _) = Raw::connect(port, "doomed", true);
    doomed.subscribe_qos1("$share/g/k/#");
    let (mut publisher, _) = Raw::connect(port, "p", true);
    for i in 1..=20 {
        publisher.publish_acked("k/t", i, 1, format!("m{i}").as_bytes()).expect("acknowledged");
    }
    // The connected member has them all, and acknowledges none.
    for _ in 1..=20 {
        assert_eq!(doomed.packet().0 & 0xf0, 0x30, "PUBLISH");
    }
    drop(doomed);
    // Taking its client id over waits until its session has ended.
    Raw::connect(port, "doomed", true).0.disconnect();
    for i in 21..=30 {
        publisher.publish_acked("k/t", i, 1, format!("m{i}").as_bytes()).expect("acknowledged");
    }
    moat.kill().expect("SIGKILL");
    moat.wait().expect("reaped");

    let mut moat = start_moat(&config, port, &[]);
    let (mut next, _) = Raw::connect(port, "next", true);
    next.subscribe_qos1("$share/g/k/#");
    let want: std::collections::BTreeSet<String> = (1..=30).map(|i| format!("m{i}")).collect();
    let mut got = std::collections::BTreeSet::new();
    next.receive_until(&mut got, &want);
    let lost: Vec<_> = want.difference(&got).collect();
    assert!(lost.is_empty(), "acknowledged, then lost across SIGKILL: {lost:?}");
    moat.kill().expect("stop");
    moat.wait().expect("reaped");
}

/// Issue 28: a member that keeps its session holds its share group's
/// messages across a restart (they are stored as its own, with their
/// group), and past `limits.share_hold_ms` after the restart, as after a
/// disconnect, they go to another member.
#[tokio::test]
async fn an_absent_members_share_messages_go_to_another_member_after_a_restart() {
    const N: usize = 6;
    let dir = tempfile::tempdir().expect("tempdir");
    with_broker(open(dir.path()), async |broker| {
        let mut away = broker
            .v5_with("away", |o| {
                o.set_manual_acks(true);
                o.set_clean_start(false);
                o.set_session_expiry_interval(Some(600));
            })
            .await;
        away.subscribe("$share/g/job/#", Q5::AtLeastOnce).await;
        let publisher = broker.v5("p").await;
        for i in 0..N {
            publisher.client.publish(format!("job/{i}"), Q5::AtLeastOnce, false, i.to_string()).await.expect("publish");
        }
        for _ in 0..N {
            away.publish().await;
        }
        away.kill();
    })
    .await;

    let store = open(dir.path());
    let broker = TestBroker::with_store(store.clone(), |c| c.limits.share_hold_ms = 200).await;
    let mut next = broker.v5("next").await;
    next.subscribe("$share/g/job/#", Q5::AtLeastOnce).await;
    let mut got = std::collections::BTreeSet::new();
    while got.len() < N {
        let Some(p) = next.try_publish(crate::harness::WAIT).await else { break };
        got.insert(String::from_utf8_lossy(&p.payload).parse::<usize>().expect("a number"));
    }
    assert_eq!(got, (0..N).collect(), "handed on after the hold");
    broker.stop().await;
    store.close();
}
