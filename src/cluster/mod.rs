//! Clustering over core NATS: publishes cross nodes, everything else stays
//! local.
//!
//! Each node keeps its connections, sessions, plugins and subscription trie.
//! What it adds is one NATS connection and three kinds of task:
//! - **Outbound**: every message published on this node (not `$SYS`) is
//!   handed, as the `Arc` the router already holds, to a bounded queue, and
//!   one task publishes it on its subject ([`subject`]). Publishing
//!   everything and letting the NATS server's interest graph drop what no
//!   node wants costs one frame to the local NATS server per publish; the
//!   alternative, announcing each node's filters and matching them on the
//!   publisher, needs a second trie and leaves windows in which a new remote
//!   subscription misses messages. The publisher never waits: when the
//!   queue is full (NATS slow or away) the message is not forwarded and is
//!   counted (`moat_dropped_messages_total{reason="cluster"}`).
//! - **Interest**: the router reports each filter that gains its first or
//!   loses its last subscription (of any session, in trie order); this task
//!   keeps a count per NATS subject and holds one NATS subscription per
//!   distinct subject.
//! - **Inbound**, one per NATS subscription: decodes and routes what peers
//!   sent, like a local publish minus the forwarding (no loops).
//!
//! No echo, no duplicates: the connection is made with `no_echo`, and the
//! origin's node id travels in a header and is checked. Every subscription
//! of a node joins the NATS queue group named by its node id, so a message
//! matching several of a node's subjects (`a/+` and `+/b`) still reaches
//! that node once; the node's own trie then merges its sessions' overlapping
//! subscriptions as for a local publish.
//!
//! Guarantees: core NATS delivers at most once, so a message crosses nodes
//! at most once whatever its QoS; the publisher's PUBACK means "routed
//! locally and handed to NATS", not "delivered everywhere". Order from one
//! publisher on one topic is kept while that topic matches a single one of
//! the receiving node's subjects (NATS keeps order per subscription).
//!
//! Hooks for the JetStream increment (issue 12): messages for persistent
//! sessions would go from [`Cluster::forward`] to a stream and the PUBACK
//! would wait for its ack (as the connection already waits for the store
//! through `await_store`); [`Cluster::node_id`] names the owner in the
//! session-ownership KV bucket; the inbound path already routes through
//! `Broker::deliver_remote`, which a durable consumer per session would
//! feed instead of a core subscription.

mod envelope;
pub mod subject;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::broker::Broker;
use crate::codec::TopicName;
use crate::config::ClusterConfig;
use crate::metrics::DropReason;
use crate::router::Message;
pub use subject::Subjects;

/// Messages waiting to be handed to NATS before new ones are dropped.
const OUTBOUND_CAPACITY: usize = 16 * 1024;
/// Messages one NATS subscription buffers before the client reports a slow
/// consumer (the async-nats default, 65536, is a lot of memory per filter).
const SUBSCRIPTION_CAPACITY: usize = 4 * 1024;
/// Longest subject sent to NATS. Its protocol lines (`HPUB subject ...`,
/// `SUB subject ...`) may not exceed the server's `max_control_line`
/// (4 KiB by default) or it drops the whole connection; an MQTT topic may
/// be 64 KiB. Longer topics stay local (counted), longer filters get no
/// remote messages (logged).
const MAX_SUBJECT_BYTES: usize = 3 * 1024;

/// A change of local interest, reported by the router in trie order.
#[derive(Debug)]
pub enum Interest {
    /// A session subscribed to this filter (without `$share/{group}/`).
    Add(Box<str>),
    /// A session's subscription to this filter went away.
    Remove(Box<str>),
}

/// This node's link to the others.
#[derive(Debug)]
pub struct Cluster {
    node_id: Arc<str>,
    servers: Vec<String>,
    subjects: Subjects,
    outbound: mpsc::Sender<Arc<Message>>,
    /// Taken by [`Cluster::start`].
    pending: Mutex<Option<Receivers>>,
    /// NATS subscriptions held now.
    subscriptions: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Receivers {
    outbound: mpsc::Receiver<Arc<Message>>,
    interest: mpsc::UnboundedReceiver<Interest>,
}

impl Cluster {
    /// A link for `config`, not yet connected, and the sender the router
    /// reports interest on.
    pub fn new(config: &ClusterConfig) -> (Cluster, mpsc::UnboundedSender<Interest>) {
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let (interest, interest_rx) = mpsc::unbounded_channel();
        let node_id = config.node_id.clone().unwrap_or_else(random_node_id).into();
        let cluster = Cluster {
            node_id,
            servers: config.nats.clone(),
            subjects: Subjects::new(&config.subject_prefix),
            outbound,
            pending: Mutex::new(Some(Receivers { outbound: outbound_rx, interest: interest_rx })),
            subscriptions: Arc::new(AtomicUsize::new(0)),
        };
        (cluster, interest)
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// NATS subscriptions this node holds now (one per distinct subject of
    /// its subscriptions' filters).
    pub fn subscriptions(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Hands a message published on this node to the other nodes. Never
    /// waits: with the queue full the message stays local and is counted.
    pub(crate) fn forward(&self, message: &Arc<Message>, broker: &Broker) {
        if self.outbound.try_send(message.clone()).is_err() {
            broker.metrics.dropped(DropReason::Cluster, 1);
        }
    }

    /// Connects to NATS and starts the outbound and interest tasks (once;
    /// later calls do nothing). A NATS server that cannot be reached is
    /// logged at error and retried for ever; local clients are served
    /// meanwhile, and publishes are not forwarded while the queue is full.
    pub fn start(&self, broker: &Arc<Broker>) {
        let Some(receivers) = self.pending.lock().take() else { return };
        let options = async_nats::ConnectOptions::new()
            .name(format!("moat {}", self.node_id))
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(|event| async move { log_event(&event) });
        let servers = self.servers.clone();
        let link = Link {
            node_id: self.node_id.clone(),
            subjects: self.subjects.clone(),
            subscriptions: self.subscriptions.clone(),
        };
        let broker = broker.clone();
        let tasks = broker.tasks.clone();
        tasks.spawn(async move {
            // With retry_on_initial_connect this returns at once; the
            // connection is made (and remade) in the background.
            let client = match options.connect(servers.clone()).await {
                Ok(client) => client,
                Err(e) => {
                    error!(error = %e, "cluster: cannot set up the NATS client; this node runs alone");
                    return;
                }
            };
            info!(node_id = %link.node_id, servers = ?servers, "cluster: NATS client started");
            let link = Arc::new(link);
            broker.tasks.spawn(link.clone().publish(client.clone(), receivers.outbound, broker.clone()));
            link.interest(client, receivers.interest, broker).await;
        });
    }
}

/// What the cluster tasks share.
#[derive(Debug)]
struct Link {
    node_id: Arc<str>,
    subjects: Subjects,
    subscriptions: Arc<AtomicUsize>,
}

impl Link {
    /// Publishes this node's messages until shutdown.
    async fn publish(
        self: Arc<Self>,
        client: async_nats::Client,
        mut rx: mpsc::Receiver<Arc<Message>>,
        broker: Arc<Broker>,
    ) {
        loop {
            let message = tokio::select! {
                () = broker.shutdown.cancelled() => break,
                message = rx.recv() => match message {
                    Some(message) => message,
                    None => break,
                },
            };
            if message.is_expired(Instant::now()) {
                continue;
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(envelope::NODE_HEADER, &*self.node_id);
            headers.insert(envelope::MESSAGE_HEADER, envelope::encode(&message, Instant::now()).as_str());
            let subject = self.subjects.topic(message.topic.as_str());
            if subject.len() > MAX_SUBJECT_BYTES {
                debug!(bytes = subject.len(), "cluster: topic too long for a NATS subject; not forwarded");
                broker.metrics.dropped(DropReason::Cluster, 1);
                continue;
            }
            if let Err(e) = client.publish_with_headers(subject, headers, message.payload.clone()).await {
                debug!(error = %e, "cluster: publish to NATS failed");
                broker.metrics.dropped(DropReason::Cluster, 1);
            }
        }
        // Hand what was published to the server before the process ends.
        let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
    }

    /// Keeps one NATS subscription per distinct subject of the local
    /// filters until shutdown.
    async fn interest(
        self: Arc<Self>,
        client: async_nats::Client,
        mut rx: mpsc::UnboundedReceiver<Interest>,
        broker: Arc<Broker>,
    ) {
        let mut held: HashMap<String, (usize, CancellationToken)> = HashMap::new();
        loop {
            let change = tokio::select! {
                () = broker.shutdown.cancelled() => break,
                change = rx.recv() => match change {
                    Some(change) => change,
                    None => break,
                },
            };
            match change {
                Interest::Add(filter) => {
                    for subject in self.subjects.filter(&filter) {
                        if let Some((count, _)) = held.get_mut(&subject) {
                            *count += 1;
                            continue;
                        }
                        if subject.len() > MAX_SUBJECT_BYTES {
                            warn!(%filter, "cluster: filter too long for a NATS subject; it gets local messages only");
                            continue;
                        }
                        let subscriber = match client.queue_subscribe(subject.clone(), self.node_id.to_string()).await {
                            Ok(subscriber) => subscriber,
                            Err(e) => {
                                error!(error = %e, %subject, "cluster: NATS subscribe failed");
                                continue;
                            }
                        };
                        let stop = broker.shutdown.child_token();
                        held.insert(subject, (1, stop.clone()));
                        self.subscriptions.fetch_add(1, Ordering::Relaxed);
                        broker.tasks.spawn(self.clone().inbound(subscriber, stop, broker.clone()));
                    }
                }
                Interest::Remove(filter) => {
                    for subject in self.subjects.filter(&filter) {
                        let Some((count, stop)) = held.get_mut(&subject) else { continue };
                        *count -= 1;
                        if *count == 0 {
                            stop.cancel();
                            held.remove(&subject);
                            self.subscriptions.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }

    /// Routes what peers publish on one subscription until it is dropped
    /// (the NATS subscription ends with it).
    async fn inbound(
        self: Arc<Self>,
        mut subscriber: async_nats::Subscriber,
        stop: CancellationToken,
        broker: Arc<Broker>,
    ) {
        loop {
            let nats = tokio::select! {
                () = stop.cancelled() => break,
                nats = subscriber.next() => match nats {
                    Some(nats) => nats,
                    None => break,
                },
            };
            let Some(message) = self.decode(nats) else { continue };
            broker.deliver_remote(Arc::new(message));
        }
        // Dropping the subscriber unsubscribes without waiting (NATS may be
        // away with the client's queue full).
        drop(subscriber);
    }

    /// The message a peer sent, or `None` for our own, or for one this
    /// version cannot read (logged at debug: peers run other versions
    /// during an upgrade).
    fn decode(&self, nats: async_nats::Message) -> Option<Message> {
        let headers = nats.headers.as_ref()?;
        let origin = headers.get(envelope::NODE_HEADER)?;
        if origin.as_str() == &*self.node_id {
            return None;
        }
        let Some(topic) = self.subjects.topic_of(nats.subject.as_str()).and_then(|t| TopicName::new(&t).ok()) else {
            debug!(subject = %nats.subject, "cluster: subject is no topic; ignored");
            return None;
        };
        let header = headers.get(envelope::MESSAGE_HEADER)?;
        let message = envelope::decode(topic, nats.payload, header.as_str(), Instant::now());
        if message.is_none() {
            debug!(origin = origin.as_str(), "cluster: message in an unknown format; ignored");
        }
        message
    }
}

/// Reconnect at once, then back off to at most two seconds.
fn reconnect_delay(attempts: usize) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX).min(6);
    if attempts <= 1 { Duration::ZERO } else { Duration::from_millis(62 * 2u64.pow(exp)).min(Duration::from_secs(2)) }
}

fn log_event(event: &async_nats::Event) {
    match event {
        async_nats::Event::Connected => info!("cluster: connected to NATS"),
        async_nats::Event::Disconnected => {
            error!("cluster: disconnected from NATS; serving local clients only, reconnecting");
        }
        async_nats::Event::SlowConsumer(sid) => warn!(sid, "cluster: a NATS subscription fell behind; messages lost"),
        other => warn!(event = %other, "cluster: NATS event"),
    }
}

/// A node id unique enough for one cluster: 64 random bits.
fn random_node_id() -> String {
    let mut bytes = [0u8; 8];
    // The system's randomness is there or the process could not run TLS;
    // without it the id still differs by process and time.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        bytes = (u64::from(std::process::id()) ^ nanos as u64).to_be_bytes();
    }
    let mut id = String::from("moat-");
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = std::fmt::Write::write_fmt(&mut id, format_args!("{b:02x}"));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_node_ids_differ_and_are_valid_names() {
        let (a, b) = (random_node_id(), random_node_id());
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'), "{a}");
    }

    #[test]
    fn reconnect_backs_off_to_two_seconds() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert!(reconnect_delay(2) < reconnect_delay(4));
        assert_eq!(reconnect_delay(100), Duration::from_secs(2));
    }
}
