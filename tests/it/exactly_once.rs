//! QoS 2 exactly once across a SIGKILL of the `moat` process (issue 26):
//! each test stops the broker at one point of a QoS 2 exchange where a
//! durable write and a packet sent must come in a given order, restarts it,
//! and checks what the clients get. The random kill loop is `bench/crash`.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::durable::{Raw, Receiver, config_with, free_port, start_moat};

/// A PUBLISH as a client sees it.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    qos: u8,
    dup: bool,
    retain: bool,
    packet_id: u16,
    payload: String,
}

impl Raw {
    /// The next packet, which must be a QoS 1/2 PUBLISH.
    fn publish_seen(&mut self) -> std::io::Result<Seen> {
        let (kind, body) = self.try_packet()?;
        if kind & 0xf0 != 0x30 || (kind >> 1) & 3 == 0 {
            return Err(std::io::Error::other(format!("expected a QoS 1/2 PUBLISH, got {kind:#x}")));
        }
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        Ok(Seen {
            qos: (kind >> 1) & 3,
            dup: kind & 0x08 != 0,
            retain: kind & 1 != 0,
            packet_id: u16::from_be_bytes([body[2 + topic_len], body[3 + topic_len]]),
            payload: String::from_utf8_lossy(&body[4 + topic_len..]).into_owned(),
        })
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Every payload in `want` arrived exactly once, and nothing else did.
fn exactly_once(rx: &Receiver, want: &BTreeSet<String>, who: &str) {
    let got: BTreeSet<_> = rx.got.keys().cloned().collect();
    assert_eq!(&got, want, "{who}: what arrived");
    let twice: Vec<_> = rx.got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{who}: delivered more than once: {twice:?}");
}

/// A QoS 2 publish that a full queue holds back (its PUBREC waits,
/// `limits.queue_full_wait_ms`) while another persistent subscriber
/// already has its copy: the packet id is stored in one commit with every
/// copy, the held one included, so after a crash the publisher's resend is
/// acknowledged, not routed again [MQTT-4.3.3-10], and the held copy is
/// delivered from the store. Before issue 26 the id was stored only once
/// the held copy was queued: the resend went to `fast` a second time.
#[cfg(unix)]
#[test]
fn mqtt_4_3_3_10_a_held_qos2_publish_is_not_routed_again_after_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // One message in flight and one queued per subscriber: `slow`, which
    // never acknowledges, holds the third publish back for a minute.
    let limits = "[limits]\nmax_inflight = 1\nmax_queued_messages = 1\nqueue_full_wait_ms = 60000\n";
    let config = config_with(dir.path(), port, limits);
    let mut moat = start_moat(&config, port, &[]);
    let (mut slow, _) = Raw::connect(port, "held-slow", false);
    slow.subscribe("held/#", 2);
    let (mut fast, _) = Raw::connect(port, "held-fast", false);
    fast.subscribe("held/#", 2);
    let (mut publisher, _) = Raw::connect(port, "held-pub", false);
    for (id, payload) in [(1, "m1"), (2, "m2")] {
        publisher.publish_acked("held/t", id, 2, payload.as_bytes()).expect("completed");
    }
    // `slow` has m1 in flight and m2 queued: m3 is held, without PUBREC.
    publisher.publish_qos2("held/t", 3, b"m3", false).expect("publish");
    let mut rx = Receiver::default();
    fast.consume(&mut rx, Some(&set(&["m1", "m2", "m3"])), Duration::from_secs(10));
    exactly_once(&rx, &set(&["m1", "m2", "m3"]), "fast before the crash");
    publisher.0.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    assert!(publisher.try_packet().is_err(), "m3 is held: no PUBREC yet");
    moat.kill().expect("SIGKILL");
    moat.wait().expect("reaped");

    let mut moat = start_moat(&config, port, &[]);
    let (mut publisher, present) = Raw::connect(port, "held-pub", false);
    assert!(present, "the publisher's session survived");
    publisher.publish_qos2("held/t", 3, b"m3", true).expect("resend");
    publisher.expect(0x50).expect("PUBREC of the resend");
    publisher.pubrel(3).expect("PUBREL");
    publisher.expect(0x70).expect("PUBCOMP");
    for (name, mut rx) in [("held-fast", rx), ("held-slow", Receiver::default())] {
        let (mut sub, present) = Raw::connect(port, name, false);
        assert!(present, "{name}: the session survived");
        sub.consume(&mut rx, None, Duration::from_secs(2));
        exactly_once(&rx, &set(&["m1", "m2", "m3"]), name);
    }
    moat.kill().expect("stop");
    moat.wait().expect("reaped");
}

/// A retained QoS 2 message sent to a persistent session because it
/// subscribed goes out only once its packet id is stored, like any queued
/// QoS 2 message: after a crash before its PUBREC it is sent again, with
/// DUP and the same packet id [MQTT-4.4.0-1]. Before issue 26 it was never
/// stored: the broker forgot it, and the id the client still held could be
/// reused for another message, which a client that delivers on PUBLISH
/// would then take for a resend and drop.
#[cfg(unix)]
#[test]
fn mqtt_4_4_0_1_a_retained_qos2_delivery_is_resent_after_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = config_with(dir.path(), port, "");
    let mut moat = start_moat(&config, port, &[]);
    let (mut publisher, _) = Raw::connect(port, "ret-pub", true);
    let mut retained = publisher.publish_qos1("ret/t", 1, b"kept");
    retained[0] = 0x35; // QoS 2, retain
    publisher.send(&retained);
    publisher.expect(0x50).expect("PUBREC");
    publisher.pubrel(1).expect("PUBREL");
    publisher.expect(0x70).expect("PUBCOMP");
    let (mut sub, _) = Raw::connect(port, "ret-sub", false);
    sub.subscribe("ret/#", 2);
    let first = sub.publish_seen().expect("the retained message");
    assert_eq!((first.qos, first.retain, first.dup, first.payload.as_str()), (2, true, false, "kept"));
    // No PUBREC: the crash comes first.
    moat.kill().expect("SIGKILL");
    moat.wait().expect("reaped");

    let mut moat = start_moat(&config, port, &[]);
    let (mut sub, present) = Raw::connect(port, "ret-sub", false);
    assert!(present, "the session survived");
    sub.0.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let again = sub.publish_seen().expect("the unacknowledged PUBLISH is resent");
    assert_eq!(again, Seen { dup: true, ..first });
    moat.kill().expect("stop");
    moat.wait().expect("reaped");
}
