//! Numbered messages from real clients, and what became of each: a
//! publisher counts which numbers the broker acknowledged (PUBACK, or
//! PUBREC at QoS 2), a subscriber counts how often each number arrived.
//! Both are rumqttc MQTT 5 clients with persistent sessions that ride out
//! their own disconnections (rumqttc reconnects and resends), and that a
//! test can move to another node (a new client with the same id, as a
//! client behind a load balancer would).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PubRecReason};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Session expiry of the workload's clients: a day, as in the report.
const EXPIRY_S: u32 = 86_400;
/// Pause before polling again after a connection error (rumqttc then
/// reconnects).
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// Messages a publisher has sent and not yet seen acknowledged, at most.
const WINDOW: usize = 64;

fn options(id: &str, addr: SocketAddr, clean_start: bool) -> MqttOptions {
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_clean_start(clean_start);
    opts.set_session_expiry_interval(Some(EXPIRY_S));
    opts.set_connection_timeout(5);
    opts
}

/// What a publisher and the subscriber it published to saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Numbers the broker acknowledged to the publisher.
    pub acknowledged: BTreeSet<u64>,
    /// How many times each number reached the subscriber.
    pub received: BTreeMap<u64, u32>,
}

impl Tally {
    /// Acknowledged numbers that never arrived.
    pub fn lost(&self) -> Vec<u64> {
        self.acknowledged.iter().copied().filter(|n| !self.received.contains_key(n)).collect()
    }

    /// Numbers that arrived more than once.
    pub fn duplicated(&self) -> Vec<u64> {
        self.received.iter().filter(|(_, c)| **c > 1).map(|(n, _)| *n).collect()
    }
}

/// A client publishing `count` numbered messages to `topic`, `rate` a
/// second, resending what is not acknowledged.
pub struct Publisher {
    acknowledged: Arc<Mutex<BTreeSet<u64>>>,
    /// Where it connects; a change makes it start over there.
    addr: watch::Sender<SocketAddr>,
    task: JoinHandle<()>,
}

impl Publisher {
    pub fn start(id: &str, addr: SocketAddr, topic: &str, qos: QoS, rate: u32, count: u64) -> Publisher {
        let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
        let (addr, moved) = watch::channel(addr);
        let run = Publishing {
            id: id.to_owned(),
            topic: topic.to_owned(),
            qos,
            interval: Duration::from_secs(1) / rate.max(1),
            count,
            next: 0,
            retry: VecDeque::new(),
            requested: VecDeque::new(),
            in_flight: HashMap::new(),
            acknowledged: acknowledged.clone(),
        };
        Publisher { acknowledged, addr, task: tokio::spawn(run.run(moved)) }
    }

    /// Moves the publisher to the node at `addr` (its node died): a new
    /// client with a clean start there, which publishes again whatever
    /// was not acknowledged.
    pub fn move_to(&self, addr: SocketAddr) {
        self.addr.send_replace(addr);
    }

    /// Waits until every number is acknowledged or `wait` passes, stops,
    /// and returns the numbers acknowledged.
    pub async fn finish(self, count: u64, wait: Duration) -> BTreeSet<u64> {
        let deadline = tokio::time::Instant::now() + wait;
        while (self.acknowledged.lock().len() as u64) < count && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.task.abort();
        let _ = self.task.await;
        self.acknowledged.lock().clone()
    }
}

struct Publishing {
    id: String,
    topic: String,
    qos: QoS,
    interval: Duration,
    count: u64,
    /// The next number never sent.
    next: u64,
    /// Numbers to send again (dropped by the client, or refused).
    retry: VecDeque<u64>,
    /// Numbers handed to the client and not yet given a packet id, in
    /// order.
    requested: VecDeque<u64>,
    /// The number each packet id in flight carries.
    in_flight: HashMap<u16, u64>,
    acknowledged: Arc<Mutex<BTreeSet<u64>>>,
}

impl Publishing {
    async fn run(mut self, mut moved: watch::Receiver<SocketAddr>) {
        let mut clean_start = false;
        loop {
            let addr = *moved.borrow_and_update();
            let (client, events) = AsyncClient::new(options(&self.id, addr, clean_start), 16);
            tokio::select! {
                () = self.connection(&client, events) => return,
                _ = moved.changed() => {}
            }
            // A new node, a new session there: what the old client held
            // goes again.
            clean_start = true;
            self.forget_client();
        }
    }

    /// The client lost what it held: it is all sent again.
    fn forget_client(&mut self) {
        self.retry.extend(self.in_flight.drain().map(|(_, n)| n));
        self.retry.extend(self.requested.drain(..));
    }

    /// Publishes through one client until all is acknowledged.
    async fn connection(&mut self, client: &AsyncClient, mut events: EventLoop) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Publishes only while connected, so that whatever the client
        // holds when the connection drops is what it resends, or drops
        // with the session.
        let (mut connected, mut first) = (false, true);
        loop {
            let open = connected && self.requested.len() + self.in_flight.len() < WINDOW;
            let more = self.next < self.count || !self.retry.is_empty();
            tokio::select! {
                _ = ticks.tick(), if open && more => {
                    let n = self.retry.pop_front().unwrap_or_else(|| {
                        self.next += 1;
                        self.next - 1
                    });
                    if client.try_publish(self.topic.as_str(), self.qos, false, n.to_string().into_bytes()).is_ok() {
                        self.requested.push_back(n);
                    } else {
                        self.retry.push_front(n);
                    }
                }
                event = events.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                        if !connack.session_present && !first {
                            // rumqttc drops what it held for the old session.
                            eprintln!("{}: session lost on reconnecting; {} sent again", self.id, self.in_flight.len() + self.requested.len());
                            self.forget_client();
                        }
                        (connected, first) = (true, false);
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) if !self.in_flight.contains_key(&pkid) => {
                        if let Some(n) = self.requested.pop_front() {
                            self.in_flight.insert(pkid, n);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        let ok = matches!(ack.reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers);
                        let n = self.in_flight.remove(&ack.pkid);
                        self.settle(n, ok);
                    }
                    Ok(Event::Incoming(Packet::PubRec(rec))) => {
                        let ok = matches!(rec.reason, PubRecReason::Success | PubRecReason::NoMatchingSubscribers);
                        let n = self.in_flight.remove(&rec.pkid);
                        self.settle(n, ok);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        connected = false;
                        tokio::time::sleep(RECONNECT_PAUSE).await;
                    }
                },
            }
            let done = self.next >= self.count && self.retry.is_empty();
            if done && self.requested.is_empty() && self.in_flight.is_empty() {
                // All acknowledged: keep the client polling (QoS 2
                // releases) until stopped.
                loop {
                    if events.poll().await.is_err() {
                        tokio::time::sleep(RECONNECT_PAUSE).await;
                    }
                }
            }
        }
    }

    fn settle(&mut self, n: Option<u64>, acknowledged: bool) {
        let Some(n) = n else { return };
        if acknowledged {
            self.acknowledged.lock().insert(n);
        } else {
            self.retry.push_back(n);
        }
    }
}

/// A client subscribed to `filter` with a persistent session, counting
/// the numbers it receives.
pub struct Subscriber {
    received: Arc<Mutex<BTreeMap<u64, u32>>>,
    addr: watch::Sender<SocketAddr>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Connects and subscribes; returns once subscribed.
    pub async fn start(id: &str, addr: SocketAddr, filter: &str, qos: QoS) -> Subscriber {
        let received = Arc::new(Mutex::new(BTreeMap::new()));
        let (addr, moved) = watch::channel(addr);
        let (subscribed, ready) = tokio::sync::oneshot::channel();
        let run = Subscribing { id: id.to_owned(), filter: filter.to_owned(), qos, received: received.clone() };
        let task = tokio::spawn(run.run(moved, subscribed));
        tokio::time::timeout(crate::cluster::NATS_WAIT, ready).await.expect("subscribed in time").expect("subscribed");
        Subscriber { received, addr, task }
    }

    /// Moves the subscriber to the node at `addr`: the same session, resumed
    /// there.
    pub fn move_to(&self, addr: SocketAddr) {
        self.addr.send_replace(addr);
    }

    /// Waits until every number of `acknowledged` arrived or `wait`
    /// passes, then a little more for duplicates, and stops.
    pub async fn finish(self, acknowledged: &BTreeSet<u64>, wait: Duration) -> BTreeMap<u64, u32> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let missing = {
                let received = self.received.lock();
                acknowledged.iter().any(|n| !received.contains_key(n))
            };
            if !missing || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(crate::harness::QUIET).await;
        self.task.abort();
        let _ = self.task.await;
        self.received.lock().clone()
    }
}

struct Subscribing {
    id: String,
    filter: String,
    qos: QoS,
    received: Arc<Mutex<BTreeMap<u64, u32>>>,
}

impl Subscribing {
    async fn run(self, mut moved: watch::Receiver<SocketAddr>, subscribed: tokio::sync::oneshot::Sender<()>) {
        let mut subscribed = Some(subscribed);
        loop {
            let addr = *moved.borrow_and_update();
            let (client, mut events) = AsyncClient::new(options(&self.id, addr, false), 16);
            let receiving = async {
                loop {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(connack))) if !connack.session_present => {
                            // A new session (the first, or one lost):
                            // subscribe (again).
                            let _ = client.try_subscribe(self.filter.as_str(), self.qos);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Some(done) = subscribed.take() {
                                let _ = done.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let n = std::str::from_utf8(&p.payload).ok().and_then(|s| s.parse::<u64>().ok());
                            if let Some(n) = n {
                                let mut received = self.received.lock();
                                let count = received.entry(n).or_default();
                                *count += 1;
                                if *count > 1 {
                                    // Shown with the test's output when it fails.
                                    eprintln!("{}: {n} again (packet id {}, dup {})", self.id, p.pkid, p.dup);
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("{}: {e}", self.id);
                            tokio::time::sleep(RECONNECT_PAUSE).await;
                        }
                    }
                }
            };
            tokio::select! {
                () = receiving => {}
                _ = moved.changed() => {}
            }
        }
    }
}
