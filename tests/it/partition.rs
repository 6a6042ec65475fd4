//! The cluster under partitions: nodes reach NATS through a proxy the test
//! breaks ([`proxy`]), real clients publish numbered messages across
//! nodes and count what was acknowledged and what arrived ([`workload`]).
//! Each case asserts no acknowledged message is lost (and, at QoS 2, none
//! arrives twice). The short cases run in CI; `partition_report` (ignored)
//! runs each fault several times at the rates and prints the
//! table README.md's cluster section reports.

mod proxy;
mod report;
mod workload;

use std::net::SocketAddr;
use std::time::Duration;

use moat::config::ClusterConfig;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;

use crate::cluster::{NATS_WAIT, Nats, Process, free_port, persistent, publish, received, until_kept, until_queue};
use crate::harness::TestBroker;
use proxy::{Link, Proxy};
use workload::{Publisher, Subscriber, Tally};

/// How long a case waits, after its fault, for every acknowledged message.
const DRAIN: Duration = Duration::from_secs(40);

/// A node on `url` as the issue set them up (a silent node is dead after
/// 5 s, JetStream delivers again after 5 s).
async fn node(url: &str, id: &str) -> TestBroker {
    let cluster = ClusterConfig {
        node_id: Some(id.to_owned()),
        node_timeout_s: 5,
        redelivery_s: 5,
        ..ClusterConfig::new(vec![url.to_owned()])
    };
    TestBroker::with(|c| c.cluster = Some(cluster)).await
}

/// The rates and lengths of one exchange.
#[derive(Debug, Clone, Copy)]
struct Load {
    qos: QoS,
    /// Messages a second, each way.
    rate: u32,
    /// Messages each way.
    count: u64,
}

/// Both directions of an exchange between two nodes.
#[derive(Debug, Default)]
struct Outcome {
    a_to_b: Tally,
    b_to_a: Tally,
}

impl Outcome {
    fn lost(&self) -> usize {
        self.a_to_b.lost().len() + self.b_to_a.lost().len()
    }

    fn duplicated(&self) -> usize {
        self.a_to_b.duplicated().len() + self.b_to_a.duplicated().len()
    }

    fn acknowledged(&self) -> usize {
        self.a_to_b.acknowledged.len() + self.b_to_a.acknowledged.len()
    }
}

/// Node `a`'s and `b`'s subscribers (kept sessions), then a publisher on
/// each node sending to the other's subscriber while `fault` runs; waits
/// for the messages and counts.
async fn exchange(a: SocketAddr, b: SocketAddr, load: Load, fault: impl std::future::Future<Output = ()>) -> Outcome {
    let tag = format!("{:x}", rand_tag());
    let sub_a = Subscriber::start(&format!("sub-a-{tag}"), a, &format!("to-a-{tag}/#"), load.qos).await;
    let sub_b = Subscriber::start(&format!("sub-b-{tag}"), b, &format!("to-b-{tag}/#"), load.qos).await;
    let pub_a = Publisher::start(&format!("pub-a-{tag}"), a, &format!("to-b-{tag}/x"), load.qos, load.rate, load.count);
    let pub_b = Publisher::start(&format!("pub-b-{tag}"), b, &format!("to-a-{tag}/x"), load.qos, load.rate, load.count);
    fault.await;
    finish(load, (pub_a, sub_b), (pub_b, sub_a)).await
}

/// Distinct client ids and topics per exchange.
fn rand_tag() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    (nanos as u64 & 0xffff_ffff) << 8 | NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Waits until both nodes keep sessions in JetStream.
async fn until_keeping(nodes: &[&TestBroker]) {
    let deadline = tokio::time::Instant::now() + NATS_WAIT;
    for node in nodes {
        while !moat::cluster::Cluster::plugged(node.broker.replication()).expect("clustered").keeps_sessions() {
            assert!(tokio::time::Instant::now() < deadline, "JetStream never set up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The faults a case puts the cluster through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Node `b`'s NATS connections are closed, and new ones refused.
    Reset,
    /// Node `b`'s NATS connections stay open; nothing goes through.
    Blackhole,
    /// Node `b`'s NATS traffic arrives this much later.
    Delay(Duration),
    /// The NATS server is killed and started again (same store).
    NatsRestart,
    /// Node `b` is cut (reset), then killed; its clients move to `a`.
    KillDuringCut,
    /// Three NATS servers: the one leading the queue stream is cut from
    /// the other two (routes reset); the nodes stay connected wherever
    /// they are.
    LeaderCut,
}

impl Fault {
    /// What `MOAT_PARTITION_FAULTS` calls it.
    fn short_name(&self) -> &'static str {
        match self {
            Fault::Reset => "reset",
            Fault::Blackhole => "blackhole",
            Fault::Delay(_) => "delay",
            Fault::NatsRestart => "restart",
            Fault::KillDuringCut => "kill",
            Fault::LeaderCut => "leader",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Reset => write!(f, "node cut from NATS (connections reset, refused)"),
            Fault::Blackhole => write!(f, "node cut from NATS (blackhole, sockets open)"),
            Fault::Delay(d) => write!(f, "node's NATS link delayed {} ms", d.as_millis()),
            Fault::NatsRestart => write!(f, "NATS server killed and restarted"),
            Fault::KillDuringCut => write!(f, "node cut from NATS, then killed"),
            Fault::LeaderCut => write!(f, "JetStream leader cut from its peers (3 servers)"),
        }
    }
}

/// When the fault starts and how long it lasts.
#[derive(Debug, Clone, Copy)]
struct Timing {
    at: Duration,
    length: Duration,
}

/// What CI runs: a few seconds per case.
const SHORT: Timing = Timing { at: Duration::from_secs(1), length: Duration::from_secs(2) };

/// Runs `fault` once under `load` and returns what came of it.
async fn run(fault: Fault, load: Load, timing: Timing) -> Outcome {
    let outcome = match fault {
        Fault::Reset | Fault::Blackhole | Fault::Delay(_) | Fault::NatsRestart => cut(fault, load, timing).await,
        Fault::KillDuringCut => kill_during_cut(load, timing).await,
        Fault::LeaderCut => leader_cut(load, timing).await,
    };
    eprintln!(
        "{fault} | QoS {} | acknowledged {} | lost {} | duplicated {}",
        load.qos as u8,
        outcome.acknowledged(),
        outcome.lost(),
        outcome.duplicated()
    );
    if outcome.duplicated() > 0 {
        eprintln!("  duplicated a->b {:?}, b->a {:?}", outcome.a_to_b.duplicated(), outcome.b_to_a.duplicated());
    }
    outcome
}

/// One NATS server; node `a` on it, node `b` through a proxy; both ready
/// to keep sessions.
async fn pair() -> (Nats, Proxy, TestBroker, TestBroker) {
    let nats = Nats::start().await;
    let proxy = Proxy::start(address(nats.port)).await;
    let (a, b) = (node(&nats.url(), "a").await, node(&proxy.url(), "b").await);
    nats.until_owning("a").await;
    nats.until_owning("b").await;
    until_keeping(&[&a, &b]).await;
    (nats, proxy, a, b)
}

/// [`pair`], and `fault` while the nodes exchange messages.
async fn cut(fault: Fault, load: Load, timing: Timing) -> Outcome {
    let (mut nats, proxy, a, b) = pair().await;
    let nats = &mut nats;
    let breaking = async {
        tokio::time::sleep(timing.at).await;
        match fault {
            Fault::Reset => proxy.set(Link::Reset),
            Fault::Blackhole => proxy.set(Link::Blackhole),
            Fault::Delay(d) => proxy.set(Link::Delay(d)),
            _ => nats.kill(),
        }
        tokio::time::sleep(timing.length).await;
        match fault {
            Fault::NatsRestart => nats.spawn().await,
            _ => proxy.set(Link::Forward),
        }
    };
    exchange(a.addr, b.addr, load, breaking).await
}

fn address(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Node `b` (a process of its own) reaches NATS through a proxy; it is cut,
/// then killed while cut, and its clients go to node `a`.
async fn kill_during_cut(load: Load, timing: Timing) -> Outcome {
    let nats = Nats::start().await;
    let proxy = Proxy::start(address(nats.port)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let b_port = free_port();
    let mut b = Some(
        Process::start_with(&proxy.url(), "b", b_port, dir.path(), "node_timeout_s = 5\nredelivery_s = 5\n").await,
    );
    let a = node(&nats.url(), "a").await;
    nats.until_owning("a").await;
    nats.until_owning("b").await;
    until_keeping(&[&a]).await;
    let (a_addr, b_addr) = (a.addr, address(b_port));
    let tag = format!("{:x}", rand_tag());
    let sub_a = Subscriber::start(&format!("sub-a-{tag}"), a_addr, &format!("to-a-{tag}/#"), load.qos).await;
    let sub_b = Subscriber::start(&format!("sub-b-{tag}"), b_addr, &format!("to-b-{tag}/#"), load.qos).await;
    // Both sessions kept (node b's after its node set it up) before anyone publishes.
    until_consumers(&nats, 2).await;
    let pub_a =
        Publisher::start(&format!("pub-a-{tag}"), a_addr, &format!("to-b-{tag}/x"), load.qos, load.rate, load.count);
    let pub_b =
        Publisher::start(&format!("pub-b-{tag}"), b_addr, &format!("to-a-{tag}/x"), load.qos, load.rate, load.count);
    tokio::time::sleep(timing.at).await;
    proxy.set(Link::Reset);
    tokio::time::sleep(timing.length / 2).await;
    drop(b.take());
    sub_b.move_to(a_addr);
    pub_b.move_to(a_addr);
    tokio::time::sleep(timing.length / 2).await;
    proxy.set(Link::Forward);
    finish(load, (pub_a, sub_b), (pub_b, sub_a)).await
}

/// Waits until JetStream has `n` consumers for kept sessions.
async fn until_consumers(nats: &Nats, n: usize) {
    let deadline = tokio::time::Instant::now() + NATS_WAIT;
    loop {
        let queue = nats.stream("MOAT_QUEUE").await;
        let consumers = queue["consumer_detail"].as_array().map_or(0, Vec::len);
        if consumers >= n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{consumers} consumers, not {n}: {queue}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Three NATS servers whose routes go through proxies (one per server and
/// peer it dials); nodes `a` and `b` on all three, streams with three
/// replicas. The server leading the queue stream is cut from the others.
async fn leader_cut(load: Load, timing: Timing) -> Outcome {
    const N: usize = 3;
    let ports: Vec<u16> = (0..N).map(|_| free_port()).collect();
    // routes[i][j]: server i's way to server j.
    let mut routes: Vec<Vec<Option<Proxy>>> = Vec::with_capacity(N);
    for i in 0..N {
        let mut row = Vec::with_capacity(N);
        for (j, port) in ports.iter().enumerate() {
            row.push(if i == j { None } else { Some(Proxy::start(address(*port)).await) });
        }
        routes.push(row);
    }
    // Advertised route addresses lead nowhere, so servers meet only
    // through the proxies.
    let nowhere = free_port();
    let servers = Nats::cluster_with(&ports, |i| {
        let urls: Vec<String> = routes[i].iter().flatten().map(|p| format!("nats-route://{}", p.addr)).collect();
        vec!["--routes".to_owned(), urls.join(","), "--cluster_advertise".to_owned(), format!("127.0.0.1:{nowhere}")]
    })
    .await;
    let urls: Vec<String> = servers.iter().map(Nats::url).collect();
    let replicated = |id: &str| ClusterConfig {
        node_id: Some(id.to_owned()),
        node_timeout_s: 5,
        redelivery_s: 5,
        replicas: N,
        ..ClusterConfig::new(urls.clone())
    };
    let a = TestBroker::with(|c| c.cluster = Some(replicated("a"))).await;
    let b = TestBroker::with(|c| c.cluster = Some(replicated("b"))).await;
    crate::cluster::until_owning_on(&servers, "a").await;
    crate::cluster::until_owning_on(&servers, "b").await;
    until_keeping(&[&a, &b]).await;
    let leader = servers[0].stream_leader("MOAT_QUEUE").await;
    let cut: usize = leader.trim_start_matches('s').parse().expect("server name s{i}");
    let links =
        || (0..N).filter(|j| *j != cut).flat_map(|j| [routes[cut][j].as_ref(), routes[j][cut].as_ref()]).flatten();
    let breaking = async {
        tokio::time::sleep(timing.at).await;
        links().for_each(|p| p.set(Link::Reset));
        tokio::time::sleep(timing.length).await;
        links().for_each(|p| p.set(Link::Forward));
    };
    exchange(a.addr, b.addr, load, breaking).await
}

/// Waits for both publishers and then for both subscribers.
async fn finish(
    load: Load,
    (pub_a, sub_b): (Publisher, Subscriber),
    (pub_b, sub_a): (Publisher, Subscriber),
) -> Outcome {
    let (acked_a, acked_b) = tokio::join!(pub_a.finish(load.count, DRAIN), pub_b.finish(load.count, DRAIN));
    let (got_b, got_a) = tokio::join!(sub_b.finish(&acked_a, DRAIN), sub_a.finish(&acked_b, DRAIN));
    Outcome {
        a_to_b: Tally { acknowledged: acked_a, received: got_b },
        b_to_a: Tally { acknowledged: acked_b, received: got_a },
    }
}

fn assert_none_lost(outcome: &Outcome, load: Load) {
    assert!(outcome.acknowledged() > 0, "nothing acknowledged: {outcome:?}");
    assert_eq!(
        (outcome.a_to_b.lost(), outcome.b_to_a.lost()),
        (vec![], vec![]),
        "acknowledged and lost (a->b, b->a) of {} acknowledged",
        outcome.acknowledged()
    );
    if load.qos == QoS::ExactlyOnce {
        assert_eq!(
            (outcome.a_to_b.duplicated(), outcome.b_to_a.duplicated()),
            (vec![], vec![]),
            "QoS 2 duplicates (a->b, b->a)"
        );
    }
}

/// What CI publishes: 50 messages a second each way for four seconds.
const CI_LOAD: Load = Load { qos: QoS::AtLeastOnce, rate: 50, count: 200 };

#[tokio::test]
async fn a_node_whose_nats_connection_is_reset_loses_no_acknowledged_message() {
    let outcome = run(Fault::Reset, CI_LOAD, SHORT).await;
    assert_none_lost(&outcome, CI_LOAD);
}

#[tokio::test]
async fn a_node_whose_nats_link_is_blackholed_loses_no_acknowledged_message() {
    let outcome = run(Fault::Blackhole, CI_LOAD, SHORT).await;
    assert_none_lost(&outcome, CI_LOAD);
}

#[tokio::test]
async fn qos2_across_a_reset_is_neither_lost_nor_duplicated() {
    let load = Load { qos: QoS::ExactlyOnce, ..CI_LOAD };
    let outcome = run(Fault::Reset, load, SHORT).await;
    assert_none_lost(&outcome, load);
}

/// A QoS 2 message whose acknowledgement to JetStream was lost with the
/// link is delivered again by JetStream `redelivery_s` later, after
/// however many other messages the session took meanwhile: its node
/// recognises it and does not deliver it twice. Before, a session
/// remembered its last 256 QoS 2 messages only, so a redelivery that came
/// after more than that (a session taking 100 a second and a 5 s
/// redelivery) went to the client again: the duplicates of the JetStream
/// leader cut.
#[tokio::test]
async fn a_qos2_message_whose_acknowledgement_was_lost_is_not_delivered_twice_after_many_others() {
    const REDELIVERY_S: u32 = 15;
    const OTHERS: usize = 300;
    let nats = Nats::start().await;
    let proxy = Proxy::start(address(nats.port)).await;
    let node = |url: String, id: &str| {
        let cluster =
            ClusterConfig { node_id: Some(id.to_owned()), redelivery_s: REDELIVERY_S, ..ClusterConfig::new(vec![url]) };
        TestBroker::with(|c| c.cluster = Some(cluster))
    };
    let (a, b) = (node(nats.url(), "a").await, node(proxy.url(), "b").await);
    nats.until_owning("a").await;
    nats.until_owning("b").await;
    until_keeping(&[&a, &b]).await;
    let mut device = b
        .v5_with("forgetful", |o| {
            persistent(o);
            o.set_manual_acks(true);
        })
        .await;
    device.subscribe("lost/#", QoS::ExactlyOnce).await;
    until_kept(&b, "forgetful").await;
    let publisher = a.v5("pub").await;

    publish(&publisher, "lost/first", QoS::ExactlyOnce, "first").await;
    let first = device.publish_within(NATS_WAIT).await;
    let sent_at = tokio::time::Instant::now();
    // The node's acknowledgement to JetStream goes into a link that holds
    // it, and is lost when the link is reset.
    proxy.set(Link::Blackhole);
    device.client.ack(&first).await.expect("PUBREC");
    while !matches!(device.next_within(NATS_WAIT).await, Some(V5Packet::PubRel(_))) {}
    tokio::time::sleep(Duration::from_millis(300)).await;
    cut_b(&proxy, &b).await;
    proxy.set(Link::Forward);
    let cluster = moat::cluster::Cluster::plugged(b.broker.replication()).expect("clustered");
    let deadline = tokio::time::Instant::now() + NATS_WAIT;
    while !cluster.shares_across_nodes() {
        assert!(tokio::time::Instant::now() < deadline, "node b not back on NATS");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // More than the session used to remember, before JetStream hands
    // `first` over again.
    for i in 0..OTHERS {
        publish(&publisher, "lost/more", QoS::ExactlyOnce, &i.to_string()).await;
    }
    for i in 0..OTHERS {
        let p = device.publish_within(NATS_WAIT).await;
        assert_eq!(String::from_utf8_lossy(&p.payload), i.to_string(), "in order, and `first` not again");
        device.client.ack(&p).await.expect("PUBREC");
    }
    assert!(
        sent_at.elapsed() < Duration::from_secs(u64::from(REDELIVERY_S)),
        "the others took longer than the redelivery: the test proves nothing"
    );
    // JetStream delivers `first` again (its acknowledgement was lost): one
    // delivery more than the messages...
    let deliveries = OTHERS as u64 + 2;
    until_queue(&nats, "`first` delivered again", |queue| {
        let consumers = queue["consumer_detail"].as_array().cloned().unwrap_or_default();
        consumers.iter().any(|c| c["delivered"]["consumer_seq"].as_u64().unwrap_or(0) >= deliveries)
    })
    .await;
    // ...and the node keeps it from the client.
    device.no_publish().await;
}

#[tokio::test]
async fn a_restarted_nats_server_loses_no_acknowledged_message() {
    let outcome = run(Fault::NatsRestart, CI_LOAD, SHORT).await;
    assert_none_lost(&outcome, CI_LOAD);
}

#[tokio::test]
async fn a_node_killed_while_cut_from_nats_loses_no_acknowledged_message() {
    let outcome = run(Fault::KillDuringCut, CI_LOAD, SHORT).await;
    assert_none_lost(&outcome, CI_LOAD);
}

#[tokio::test]
async fn cutting_the_jetstream_leader_from_its_peers_loses_no_acknowledged_message() {
    let timing = Timing { at: Duration::from_secs(1), length: Duration::from_secs(5) };
    let outcome = run(Fault::LeaderCut, CI_LOAD, timing).await;
    assert_none_lost(&outcome, CI_LOAD);
}

/// Waits until node `b` is connected to NATS again, its NATS
/// subscriptions (plain and share groups') back.
async fn until_back(nats: &Nats, b: &TestBroker, subject: &str) {
    let cluster = moat::cluster::Cluster::plugged(b.broker.replication()).expect("clustered");
    let deadline = tokio::time::Instant::now() + NATS_WAIT;
    while !(cluster.shares_across_nodes() && nats.has_subject("b", subject).await) {
        assert!(tokio::time::Instant::now() < deadline, "node b not back on NATS");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Cuts node `b` (reset) and waits until it knows.
async fn cut_b(proxy: &Proxy, b: &TestBroker) {
    proxy.set(Link::Reset);
    let cluster = moat::cluster::Cluster::plugged(b.broker.replication()).expect("clustered");
    let deadline = tokio::time::Instant::now() + NATS_WAIT;
    while cluster.shares_across_nodes() {
        assert!(tokio::time::Instant::now() < deadline, "node b never noticed the cut");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn after_a_reset_every_nats_subscription_of_the_node_comes_back() {
    let (nats, proxy, a, b) = pair().await;
    let mut plain = b.v5("plain").await;
    plain.subscribe("p/#", QoS::AtMostOnce).await;
    let mut member = b.v5("member").await;
    member.subscribe("$share/g/s/#", QoS::AtLeastOnce).await;
    let mut device = b.v5_with("mover", persistent).await;
    device.subscribe("m/#", QoS::AtLeastOnce).await;
    until_back(&nats, &b, "moat.t.p.>").await;

    cut_b(&proxy, &b).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.set(Link::Forward);
    until_back(&nats, &b, "moat.t.p.>").await;

    // Interest (a plain queue subscription), the share group's queue
    // subscription and its consumer, the retained watch.
    let publisher = a.v5("pub").await;
    publish(&publisher, "p/1", QoS::AtMostOnce, "plain").await;
    assert_eq!(received(&mut plain).await.1, "plain");
    publish(&publisher, "s/1", QoS::AtMostOnce, "shared at most once").await;
    assert_eq!(received(&mut member).await.1, "shared at most once");
    publish(&publisher, "s/2", QoS::AtLeastOnce, "shared at least once").await;
    assert_eq!(member.publish_within(NATS_WAIT).await.payload, &b"shared at least once"[..]);
    crate::cluster::retain(&publisher, "k/1", "kept").await;
    crate::cluster::until_retained(&b, "k/1", Some("kept")).await;
    // The heartbeat: node b's entry in the nodes bucket moves on.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("NATS client"));
    let nodes = js.get_key_value("MOAT_NODES").await.expect("nodes bucket");
    let beat = || async { nodes.entry("b").await.expect("read").map_or(0, |e| e.revision) };
    let first = beat().await;
    let deadline = tokio::time::Instant::now() + NATS_WAIT;
    while beat().await == first {
        assert!(tokio::time::Instant::now() < deadline, "node b's heartbeat stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Takeover requests: the device moves to node a, node b hands it over.
    let moved = a.v5_with("mover", persistent).await;
    assert!(moved.connack.session_present);
    assert_eq!(device.disconnect_reason().await, rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver);
}

#[tokio::test]
async fn a_subscription_made_while_cut_gets_what_its_node_published_meanwhile_once() {
    let (nats, proxy, _a, b) = pair().await;
    let mut device = b.v5_with("late", persistent).await;
    device.subscribe("x/#", QoS::ExactlyOnce).await;
    until_kept(&b, "late").await;
    let mut publisher = b.v5("pub").await;

    // The consumer cannot follow the new subscription while cut: what is
    // published meanwhile waits until it does.
    cut_b(&proxy, &b).await;
    device.subscribe("y/#", QoS::ExactlyOnce).await;
    publish(&publisher, "y/1", QoS::ExactlyOnce, "new").await;
    publish(&publisher, "x/1", QoS::ExactlyOnce, "old").await;
    // Nothing while cut: JetStream delivers both once it has them.
    device.no_publish().await;
    proxy.set(Link::Forward);
    until_back(&nats, &b, "moat.t.x.>").await;
    crate::cluster::puback_within(&mut publisher, NATS_WAIT).await;
    let mut got = [device.publish_within(NATS_WAIT).await, device.publish_within(NATS_WAIT).await];
    got.sort_by(|l, r| l.topic.cmp(&r.topic));
    let got: Vec<_> = got.iter().map(|p| (p.topic.to_vec(), p.payload.to_vec())).collect();
    assert_eq!(got, [(b"x/1".to_vec(), b"old".to_vec()), (b"y/1".to_vec(), b"new".to_vec())]);
    device.no_publish().await;
}

#[tokio::test]
async fn a_session_that_could_not_be_kept_while_cut_is_kept_once_its_node_is_back() {
    let (nats, proxy, a, b) = pair().await;
    let publisher = b.v5("pub").await;
    cut_b(&proxy, &b).await;
    let mut fresh = b.v5_with("fresh", persistent).await;
    fresh.subscribe("f/#", QoS::ExactlyOnce).await;
    // Not kept: it queues for itself meanwhile.
    publish(&publisher, "f/1", QoS::ExactlyOnce, "while cut").await;
    assert_eq!(received(&mut fresh).await.1, "while cut");

    proxy.set(Link::Forward);
    until_back(&nats, &b, "moat.t.f.>").await;
    until_kept(&b, "fresh").await;
    let remote = a.v5("remote").await;
    publish(&remote, "f/2", QoS::ExactlyOnce, "from a").await;
    assert_eq!(fresh.publish_within(NATS_WAIT).await.payload, &b"from a"[..]);
    // What it queued itself is not delivered again from JetStream.
    fresh.no_publish().await;
}

#[tokio::test]
async fn a_qos1_publish_the_way_to_nats_has_no_room_for_is_refused_not_acknowledged() {
    use moat::metrics::DropReason;
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
    let (_nats, proxy, _a, b) = pair().await;
    let mut device = b.v5_with("kept", persistent).await;
    device.subscribe("q/#", QoS::AtLeastOnce).await;
    until_kept(&b, "kept").await;
    cut_b(&proxy, &b).await;
    // QoS 0 fills the way to NATS: the NATS client's own buffer (2,048
    // commands), then the queue in front of it (65,536 messages).
    let flood = b.v5("flood").await;
    for _ in 0..68_000 {
        flood.client.publish("f/x", QoS::AtMostOnce, false, &b"x"[..]).await.expect("publish");
    }
    let deadline = tokio::time::Instant::now() + NATS_WAIT;
    while b.broker.metrics.drops(DropReason::Cluster) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the queue to NATS never filled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // v5: 0x97, the message goes nowhere; 3.1.1: no PUBACK, disconnected.
    let mut publisher = b.v5("pub").await;
    publish(&publisher, "q/1", QoS::AtLeastOnce, "no room").await;
    loop {
        match publisher.next().await {
            Some(Packet::PubAck(ack)) => {
                assert_eq!(ack.reason, PubAckReason::QuotaExceeded);
                break;
            }
            Some(_) => {}
            None => panic!("closed before PUBACK"),
        }
    }
    let mut old = b.v4("pub-3.1.1").await;
    old.client.publish("q/2", rumqttc::QoS::AtLeastOnce, false, "no room").await.expect("publish");
    loop {
        match old.next().await {
            Some(rumqttc::Packet::PubAck(_)) => panic!("acknowledged though the cluster cannot take it"),
            Some(_) => {}
            None => break,
        }
    }
    device.no_publish().await;
}
