//! Several clients' packet sequences through a real broker in-process:
//! CONNECT (with takeover, wills, session expiry), SUBSCRIBE (incl.
//! `$share`), PUBLISH at every QoS, acks, UNSUBSCRIBE, DISCONNECT, dropped
//! sockets and raw bytes, each client on a `tokio::io::duplex` stream
//! served by `moat::connection::serve`. Time is paused, so keep alive,
//! will delay and expiry fire as soon as the broker is idle.
//!
//! Invariants: no panic; once every client is gone no connection is
//! counted; the trie and the sessions agree on the subscriptions; queues
//! and inflight windows stay within their limits; and after shutdown every
//! task ends.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use moat::auth::Policy;
use moat::broker::Broker;
use moat::codec::{self, *};
use moat::config::{Config, ListenerConfig};
use moat::store::{MemoryStore, Recovered};
use moat::transport::Peer;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, WriteHalf};

const SLOTS: usize = 4;
const IDS: [&str; 3] = ["c0", "c1", "c2"];
const TOPICS: [&str; 5] = ["a", "a/b", "b", "$SYS/x", "c/d/e"];
const FILTERS: [&str; 7] = ["a", "a/#", "#", "+", "+/b", "$SYS/#", "c/+/e"];

#[derive(Arbitrary, Debug)]
enum Op {
    Connect { slot: u8, id: u8, v5: bool, clean: bool, keep_alive: u8, expiry: u8, will: Option<(u8, u8, bool, u8)> },
    Subscribe { slot: u8, filter: u8, qos: u8, share: bool, no_local: bool, pid: u8 },
    Unsubscribe { slot: u8, filter: u8, share: bool, pid: u8 },
    Publish { slot: u8, topic: u8, qos: u8, retain: bool, pid: u8, alias: Option<u8>, alias_only: bool, payload: u8 },
    Ack { slot: u8, kind: u8, pid: u8 },
    Ping { slot: u8 },
    Disconnect { slot: u8, with_will: bool, expiry: Option<u8> },
    Drop { slot: u8 },
    Raw { slot: u8, bytes: Vec<u8> },
    Sleep { secs: u8 },
}

struct Client {
    writer: WriteHalf<DuplexStream>,
    version: ProtocolVersion,
}

fuzz_target!(|ops: Vec<Op>| {
    if ops.len() > 64 {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
    rt.block_on(run(ops));
});

fn config() -> Config {
    let mut config = Config::default();
    config.limits.max_inflight = 4;
    config.limits.max_queued_messages = 8;
    config.limits.max_packet_size = 16 * 1024;
    config.limits.connect_timeout_ms = 1000;
    config.limits.topic_alias_maximum = 4;
    config.limits.shutdown_grace_ms = 1000;
    config
}

async fn run(ops: Vec<Op>) {
    let broker = Broker::new(config(), Arc::new(MemoryStore::default()), Recovered::default(), Policy::none());
    let listener = Arc::new(ListenerConfig::tcp("fuzz", SocketAddr::from(([127, 0, 0, 1], 1883))));
    let name = Arc::new("fuzz".to_owned());
    // The accept loop's connection permits, never short here.
    let slots = Arc::new(tokio::sync::Semaphore::new(tokio::sync::Semaphore::MAX_PERMITS));
    let mut clients: Vec<Option<Client>> = (0..SLOTS).map(|_| None).collect();
    let mut readers = Vec::new();
    for op in ops {
        if let Op::Connect { slot, .. } = op {
            let (client, server) = tokio::io::duplex(8 * 1024);
            let peer = Peer::plain(SocketAddr::from(([127, 0, 0, 1], 40000 + u16::from(slot))));
            let Ok(permit) = slots.clone().try_acquire_owned() else { return };
            let listener = (listener.clone(), name.clone());
            let permits = moat::connection::Permits { global: permit.into(), listener: None, task: broker.tasks.token() };
            tokio::spawn(moat::connection::serve(broker.clone(), server, peer, listener, permits));
            let (mut reader, writer) = tokio::io::split(client);
            // Drains whatever the broker sends, so it never blocks on us.
            readers.push(tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                while matches!(reader.read(&mut buf).await, Ok(n) if n > 0) {}
            }));
            let version =
                if matches!(op, Op::Connect { v5: true, .. }) { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
            close(clients[usize::from(slot) % SLOTS].replace(Client { writer, version })).await;
        }
        step(&mut clients, op).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for client in clients {
        close(client).await;
    }
    // Let every connection notice its socket closed, and timers run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    check_consistent(&broker);
    assert_eq!(broker.metrics.connections_current(), 0, "connections counted after all closed");
    broker.shutdown.cancel();
    broker.tasks.close();
    let ended = tokio::time::timeout(Duration::from_secs(60), broker.tasks.wait()).await;
    assert!(ended.is_ok(), "{} broker tasks still running after shutdown", broker.tasks.len());
    for reader in readers {
        let done = tokio::time::timeout(Duration::from_secs(5), reader).await;
        assert!(done.is_ok(), "a connection was never closed by the broker");
    }
}

fn check_consistent(broker: &Broker) {
    let running = broker.config();
    let limits = &running.limits;
    let mut subscriptions = 0;
    for session in broker.sessions.all() {
        let state = session.lock();
        subscriptions += state.subscriptions.len();
        assert!(state.pending.len() <= limits.max_queued_messages, "queue beyond its limit: {}", state.pending.len());
        assert!(state.inflight.len() <= usize::from(limits.max_inflight), "inflight beyond the window");
        assert!(!state.online, "session online with no client");
    }
    assert_eq!(broker.router.subscription_count(), subscriptions, "trie and sessions disagree");
}

async fn step(clients: &mut [Option<Client>], op: Op) {
    let slot = match &op {
        Op::Sleep { secs } => {
            tokio::time::sleep(Duration::from_secs(u64::from(*secs % 8))).await;
            return;
        }
        Op::Connect { slot, .. }
        | Op::Subscribe { slot, .. }
        | Op::Unsubscribe { slot, .. }
        | Op::Publish { slot, .. }
        | Op::Ack { slot, .. }
        | Op::Ping { slot }
        | Op::Disconnect { slot, .. }
        | Op::Drop { slot }
        | Op::Raw { slot, .. } => usize::from(*slot) % SLOTS,
    };
    if matches!(op, Op::Drop { .. }) {
        close(clients[slot].take()).await;
        return;
    }
    let Some(client) = clients[slot].as_mut() else { return };
    let mut buf = BytesMut::new();
    match op {
        Op::Raw { bytes, .. } => buf.extend_from_slice(&bytes),
        op => {
            let Some(packet) = packet(op, client.version) else { return };
            if codec::encode(&packet, client.version, &mut buf).is_err() {
                return;
            }
        }
    }
    // The broker may have closed this connection; that is fine.
    let write = tokio::time::timeout(Duration::from_secs(5), client.writer.write_all(&buf)).await;
    if !matches!(write, Ok(Ok(()))) {
        close(clients[slot].take()).await;
    }
}

/// Closes a client's socket: the read half lives on in its reader task,
/// so only a shutdown makes the broker see the end of the stream.
async fn close(client: Option<Client>) {
    if let Some(mut client) = client {
        let _ = tokio::time::timeout(Duration::from_secs(1), client.writer.shutdown()).await;
    }
}

fn pick<'a>(table: &[&'a str], i: u8) -> &'a str {
    table[usize::from(i) % table.len()]
}

fn qos(q: u8) -> QoS {
    QoS::from_u8(q % 3).unwrap_or(QoS::AtMostOnce)
}

fn pid(p: u8) -> PacketId {
    PacketId::new(u16::from(p % 8) + 1).unwrap_or(PacketId::new(1).expect("1 is a packet id"))
}

fn filter(f: u8, share: bool) -> TopicFilter {
    let f = pick(&FILTERS, f);
    let text = if share { format!("$share/g/{f}") } else { f.to_owned() };
    TopicFilter::new(&text).expect("table filters are valid")
}

fn topic(t: u8) -> TopicName {
    TopicName::new(pick(&TOPICS, t)).expect("table topics are valid")
}

fn packet(op: Op, version: ProtocolVersion) -> Option<Packet> {
    let v5 = version.is_v5();
    let props = Properties::default;
    Some(match op {
        Op::Connect { id, v5: _, clean, keep_alive, expiry, will, .. } => {
            let mut properties = props();
            if v5 && expiry % 4 != 0 {
                properties.session_expiry_interval = Some(u32::from(expiry % 4));
            }
            let will = will.map(|(t, q, retain, delay)| {
                let mut properties = props();
                if v5 && delay % 3 != 0 {
                    properties.will_delay_interval = Some(u32::from(delay % 3));
                }
                Will { topic: topic(t), payload: Bytes::from_static(b"will"), qos: qos(q), retain, properties }
            });
            Packet::Connect(Box::new(Connect {
                protocol: version,
                clean_start: clean,
                keep_alive: u16::from(keep_alive % 4),
                client_id: pick(&IDS, id).to_owned(),
                will,
                username: None,
                password: None,
                properties,
            }))
        }
        Op::Subscribe { filter: f, qos: q, share, no_local, pid: p, .. } => {
            let options = SubscriptionOptions { qos: qos(q), no_local: no_local && v5, ..Default::default() };
            Packet::Subscribe(Subscribe {
                packet_id: pid(p),
                properties: props(),
                filters: vec![(filter(f, share), options)],
            })
        }
        Op::Unsubscribe { filter: f, share, pid: p, .. } => {
            Packet::Unsubscribe(Unsubscribe { packet_id: pid(p), properties: props(), filters: vec![filter(f, share)] })
        }
        Op::Publish { topic: t, qos: q, retain, pid: p, alias, alias_only, payload, .. } => {
            let qos = qos(q);
            let mut properties = props();
            let mut name = topic(t);
            if v5 && let Some(a) = alias {
                properties.topic_alias = Some(u16::from(a % 6));
                if alias_only {
                    name = TopicName::new("").expect("empty name is allowed with an alias");
                }
            }
            Packet::Publish(Publish {
                dup: false,
                qos,
                retain,
                topic: name,
                packet_id: (qos != QoS::AtMostOnce).then(|| pid(p)),
                properties,
                payload: Bytes::from(vec![payload; usize::from(payload % 32)]),
            })
        }
        Op::Ack { kind, pid: p, .. } => {
            let resp = PubResp::success(pid(p));
            match kind % 4 {
                0 => Packet::PubAck(resp),
                1 => Packet::PubRec(resp),
                2 => Packet::PubRel(resp),
                _ => Packet::PubComp(resp),
            }
        }
        Op::Ping { .. } => Packet::PingReq,
        Op::Disconnect { with_will, expiry, .. } => {
            let mut properties = props();
            if v5 {
                properties.session_expiry_interval = expiry.map(|e| u32::from(e % 4));
            }
            let reason = if with_will && v5 { ReasonCode::DISCONNECT_WITH_WILL } else { ReasonCode::SUCCESS };
            Packet::Disconnect(Disconnect { reason, properties })
        }
        Op::Drop { .. } | Op::Raw { .. } | Op::Sleep { .. } => return None,
    })
}
