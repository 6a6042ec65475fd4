//! Clustering over NATS: publishes cross nodes over core NATS, retained
//! messages through a JetStream stream, share groups through NATS queue
//! groups; each session is held by one node, which the client's connection
//! claims (`ownership`); QoS 1/2 messages for persistent sessions are
//! kept in JetStream and fed to them from there (`queue`); wills of a
//! node that died are published by another (`wills`).
//!
//! Each node keeps its connections, sessions, plugins and subscription trie.
//! What it adds is two NATS connections and these tasks:
//! - **Outbound**: every message published on this node (not `$SYS`) is
//!   handed, as the `Arc` the router already holds, to a bounded queue, and
//!   one task publishes it on its subject ([`subject`]). Publishing
//!   everything and letting the NATS server's interest graph drop what no
//!   node wants costs one frame to the local NATS server per publish; the
//!   alternative, announcing each node's filters and matching them on the
//!   publisher, needs a second trie and leaves windows in which a new remote
//!   subscription misses messages. The publisher never waits: when the
//!   queue is full (NATS slow or away) the message is not forwarded and is
//!   counted (`moat_dropped_messages_total{reason="cluster"}`), or, for a
//!   QoS 1/2 publish while a session is kept somewhere, refused. The task
//!   takes what is queued in batches and waits while the NATS client's own
//!   queue is full, so the connection paces it; the queue in front of it,
//!   bounded in messages and bytes, absorbs bursts meanwhile.
//! - **Interest**: the router reports each filter that gains its first or
//!   loses its last subscription (of any session, in trie order); this task
//!   keeps a count per NATS subject and queue group and holds one NATS
//!   subscription per distinct pair.
//! - **Inbound**, one per NATS subscription: decodes and routes what peers
//!   sent, like a local publish minus the forwarding (no loops), a batch
//!   of what the client buffered at a time. What the client cannot buffer
//!   (a slow consumer) it drops and reports; those are counted
//!   (`reason="cluster_inbound"`).
//! - **Retained** (`retained`): a writer copies each retained publish (and
//!   clear) to the stream, and a watch keeps the local retained store
//!   current from it; the stream's order decides conflicts.
//!
//! No echo, no duplicates: the main connection is made with `no_echo`, and
//! the origin's node id travels in each message's envelope (`envelope`) and is checked. Every
//! non-shared subscription of a node joins the NATS queue group named by
//! its node id, so a message matching several of a node's subjects (`a/+`
//! and `+/b`) still reaches that node once; the node's own trie then merges
//! its sessions' overlapping subscriptions as for a local publish, share
//! groups left out.
//!
//! Share groups: a node with members of `$share/{group}/{filter}` holds,
//! on its second connection (with echo, so its own publishes can come back
//! to it), a queue subscription per subject of the filter in the queue
//! group [`Subjects::share_queue`]; NATS gives each message to one such
//! node and that node picks one member. While that connection is up, local
//! publishes and plain inbound messages skip share groups
//! ([`crate::router::Scope::Plain`]); while it is down, every node serves
//! its own members (one copy per node, as a single node would). With
//! JetStream, a group's QoS 1/2 messages come from its durable consumer
//! instead (`queue`), so they outlive the node that took them; the
//! queue subscription then passes over them.
//!
//! Guarantees: core NATS delivers at most once, so a message crosses nodes
//! at most once for clean sessions whatever its QoS, and the publisher's
//! PUBACK means "routed locally and handed to NATS". For persistent
//! sessions JetStream keeps QoS 1/2 messages until their clients have
//! them, and while any such session exists a PUBACK means "stored by
//! JetStream", whatever happens to the connection meanwhile (`queue`,
//! `outbound`, `Cluster::stored`). Order from one
//! publisher on one topic is kept while that topic matches a single one of
//! the receiving node's subjects (NATS keeps order per subscription).
//! Retained messages are the exception: JetStream stores them, so a node
//! started later, or away meanwhile, still gets them.

mod envelope;
mod link;
mod outbound;
mod ownership;
mod plug;
mod queue;
mod replica;
mod retained;
mod setup;
pub mod subject;
mod wills;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tracing::{error, info};

pub use crate::broker::{Claim, Forwarded};
use crate::broker::{Node, WeakNode};
use crate::codec::QoS;
use crate::config::{ClusterConfig, WireFormat};
use crate::message::Message;
use crate::metrics::DropReason;
use crate::router::Interest;
use link::{Events, Link, connect_options, queued_size};
use ownership::Ownership;
use queue::Queue;
pub use replica::SessionReplica;
use retained::RetainedSync;
use setup::{JETSTREAM_WAIT, bucket_config, jetstream_name, open_buckets, set_up, setup_retry_delay};
pub use subject::Subjects;
use wills::Wills;

/// Messages waiting to be handed to NATS before new ones are dropped...
const OUTBOUND_CAPACITY: usize = 64 * 1024;
/// ... and bytes (topics and payloads) of them: enough for a burst of
/// small messages at full speed, bounded for large ones.
const OUTBOUND_BYTES: usize = 64 * 1024 * 1024;
/// Messages the outbound task takes from its queue at once.
const OUTBOUND_BATCH: usize = 256;
/// Messages one NATS subscription buffers before the client drops new
/// ones (a slow consumer). The channel allocates as it fills, so an idle
/// subscription costs nothing; a full one holds at most this many of the
/// server's `max_payload` (1 MiB by default).
const SUBSCRIPTION_CAPACITY: usize = 64 * 1024;
/// Messages of one subscription routed in one go.
const INBOUND_BATCH: usize = 256;
/// Longest subject sent to NATS. Its protocol lines (`HPUB subject ...`,
/// `SUB subject ...`) may not exceed the server's `max_control_line`
/// (4 KiB by default) or it drops the whole connection; an MQTT topic may
/// be 64 KiB. Longer topics stay local (counted), longer filters get no
/// remote messages (logged).
const MAX_SUBJECT_BYTES: usize = 3 * 1024;

/// This node's link to the others.
#[derive(Debug)]
pub struct Cluster {
    node_id: Arc<str>,
    servers: Vec<String>,
    subjects: Subjects,
    outbound: mpsc::Sender<Outgoing>,
    /// Bytes of the messages in `outbound` ([`queued_size`]).
    queued_bytes: Arc<AtomicUsize>,
    /// QoS 1/2 messages put in `outbound` so far. Locked across the
    /// `try_send`, so the count follows the queue's order.
    handed: Mutex<u64>,
    /// How many of those NATS has taken as far as their publishers need:
    /// stored by JetStream when a session is kept somewhere, sent
    /// otherwise. Advances in queue order.
    stored: Arc<watch::Sender<u64>>,
    /// Retained messages (and clears) on their way to the retained stream.
    retained_out: mpsc::Sender<Arc<Message>>,
    retained: Arc<RetainedSync>,
    ownership: Arc<Ownership>,
    wills: Arc<Wills>,
    queue: Arc<Queue>,
    /// Taken by [`Cluster::start`].
    pending: Mutex<Option<Receivers>>,
    /// NATS subscriptions held now.
    subscriptions: Arc<AtomicUsize>,
    /// Whether the connection holding the share groups' queue
    /// subscriptions is up, so NATS picks the node serving each message of
    /// a share group (otherwise every node serves its own members).
    shares: Arc<AtomicBool>,
    /// `[cluster] store_timeout_s`.
    store_wait: Duration,
    /// `[cluster] wire_format`.
    wire_format: WireFormat,
    /// The node this is plugged into, set by [`Cluster::start`]. Weak: the
    /// broker holds the cluster.
    node: std::sync::OnceLock<WeakNode>,
}

/// A message on its way to NATS, and the client id of its publisher (for
/// No Local where it is delivered from JetStream), if a client published
/// it at QoS 1 or 2.
type Outgoing = (Arc<Message>, Option<Arc<str>>);

#[derive(Debug)]
struct Receivers {
    outbound: mpsc::Receiver<Outgoing>,
    retained: mpsc::Receiver<Arc<Message>>,
    interest: mpsc::UnboundedReceiver<Interest>,
}

impl Cluster {
    /// A link for `config`, not yet connected, and the sender the router
    /// reports interest on.
    pub fn new(config: &ClusterConfig) -> (Cluster, mpsc::UnboundedSender<Interest>) {
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let (interest, interest_rx) = mpsc::unbounded_channel();
        let (retained_out, retained_rx) = mpsc::channel(retained::QUEUE_CAPACITY);
        let node_id: Arc<str> = config.node_id.clone().unwrap_or_else(random_node_id).into();
        let cluster = Cluster {
            retained: Arc::new(RetainedSync::new(config, node_id.clone())),
            ownership: Arc::new(Ownership::new(config, node_id.clone())),
            wills: Arc::new(Wills::new(config, node_id.clone())),
            queue: Arc::new(Queue::new(config)),
            node_id,
            servers: config.nats.clone(),
            subjects: Subjects::new(&config.subject_prefix),
            outbound,
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            handed: Mutex::new(0),
            stored: Arc::new(watch::Sender::new(0)),
            retained_out,
            pending: Mutex::new(Some(Receivers {
                outbound: outbound_rx,
                retained: retained_rx,
                interest: interest_rx,
            })),
            subscriptions: Arc::new(AtomicUsize::new(0)),
            shares: Arc::new(AtomicBool::new(false)),
            store_wait: Duration::from_secs(u64::from(config.store_timeout_s)),
            wire_format: config.wire_format,
            node: std::sync::OnceLock::new(),
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

    /// Whether share groups are served across nodes now (NATS picks one
    /// node per message), rather than by every node for its own members.
    pub fn shares_across_nodes(&self) -> bool {
        self.shares.load(Ordering::Relaxed)
    }

    /// Whether the retained stream is watched now, so it (rather than
    /// retained messages arriving over core NATS) sets the retained store.
    pub fn retained_watched(&self) -> bool {
        self.retained.watching()
    }

    /// Whether this node has read the whole retained stream once since it
    /// started (retained messages published before it started are here).
    pub fn retained_synced(&self) -> bool {
        self.retained.synced()
    }

    /// Claims the session of `client_id` for this node before a
    /// connection attaches to it ([`ownership`]): the node that held it
    /// disconnects the client there and hands the session over (unless
    /// `clean_start`).
    pub(crate) async fn claim(&self, client_id: &str, clean_start: bool) -> Claim {
        self.ownership.claim(client_id, clean_start).await
    }

    /// The session of `client_id`, claimed with `revision`, ended here.
    pub(crate) fn release(&self, client_id: &str, revision: u64) {
        if let Some(node) = self.node() {
            self.ownership.release(client_id, revision, &node);
        }
    }

    /// The node this is plugged into, once started and while it runs.
    fn node(&self) -> Option<Node> {
        self.node.get()?.upgrade()
    }

    /// How long a QoS 1/2 publisher's acknowledgement may wait for
    /// JetStream ([`Cluster::stored`]) before its connection is closed
    /// without it (`[cluster] store_timeout_s`).
    pub(crate) fn store_timeout(&self) -> Duration {
        self.store_wait
    }

    /// Whether a session is kept somewhere in the cluster, as far as this
    /// node knows, so QoS 1/2 publishes here are acknowledged only once
    /// JetStream has stored them.
    pub fn waits_for_jetstream(&self) -> bool {
        self.queue.wanted()
    }

    /// Whether persistent sessions are kept in JetStream now (the stream
    /// for it is set up).
    pub fn keeps_sessions(&self) -> bool {
        self.queue.ready()
    }

    /// Keeps `session`, whose connection (with a Receive Maximum of
    /// `window`) is attached, in JetStream ([`queue`]) if it outlives the
    /// connection and has QoS 1/2 subscriptions, and feeds the connection
    /// from it; otherwise stops keeping it. Called when the connection is
    /// set up (`first`) and whenever its subscriptions change.
    pub(crate) async fn keep(&self, session: &Arc<crate::session::Session>, window: usize, first: bool) {
        let Some(node) = self.node() else { return };
        let newly = !session.lock().kept();
        let kept = self.queue.keep(session, window, &node).await;
        if !kept || !(first || newly) {
            return;
        }
        // Whoever claims the session next is told to look in JetStream
        // (the claim that attached this connection did not say so).
        let Some(revision) = SessionReplica::get(&session.lock()).and_then(|r| r.claimed) else { return };
        if let Some(marked) = self.ownership.mark_kept(session.client_id(), revision).await {
            let mut state = session.lock();
            let replica = SessionReplica::of(&mut state);
            if replica.claimed == Some(revision) {
                replica.claimed = Some(marked);
            }
        }
    }

    /// The connection of kept `session` ended with a new session expiry:
    /// its consumer's record follows, in the background.
    pub(crate) fn park(&self, session: Arc<crate::session::Session>, window: usize) {
        let Some(node) = self.node() else { return };
        let queue = self.queue.clone();
        node.spawn(async move { queue.park(&session, window).await });
    }

    /// The kept session of `client_id` whose node is gone, if JetStream
    /// keeps one.
    pub(crate) async fn recover(&self, client_id: &str) -> Option<crate::store::StoredSession> {
        self.queue.recover(client_id).await
    }

    /// The session of `client_id` ended, or a clean start replaces it:
    /// what JetStream kept for it goes.
    pub(crate) fn forget_session(&self, client_id: &str) {
        if let Some(node) = self.node() {
            self.queue.forget(client_id, &node);
        }
    }

    /// Tells JetStream that a message it kept for a session reached the
    /// client (or never will).
    pub(crate) fn acknowledge(&self, ack: &crate::message::JetStreamAck) {
        self.queue.acknowledge(ack);
    }

    /// Gives a message JetStream delivered for a session back, for it to
    /// be delivered again soon: the session dropped it.
    pub(crate) fn give_back(&self, ack: &crate::message::JetStreamAck) {
        self.queue.give_back(ack);
    }

    /// Registers the will of `client_id`'s new connection, so that another
    /// node publishes it `delay_s` after this one is found dead
    /// ([`wills`]). The revision to unregister it with, if registered.
    pub(crate) async fn register_will(&self, client_id: &str, will: &crate::codec::Will, delay_s: u32) -> Option<u64> {
        self.wills.register(client_id, will, delay_s).await
    }

    /// The connection whose will was registered as `revision` ended here.
    pub(crate) fn unregister_will(&self, client_id: &str, revision: u64) {
        if let Some(node) = self.node() {
            self.wills.unregister(client_id, revision, &node);
        }
    }

    /// Hands a message published on this node to the other nodes, and,
    /// when this node `retained` it, to the retained stream. Never waits:
    /// with the queue full (in messages or bytes), or a topic too long for
    /// a subject, the message stays local (the broker counts it).
    pub(crate) fn forward(&self, message: &Arc<Message>, publisher: Option<&Arc<str>>, retained: bool) -> Forwarded {
        let forwarded = if !self.subjects.fits(message.topic.as_str(), MAX_SUBJECT_BYTES) {
            Forwarded::TooLong
        } else if self.enqueue(message, publisher) {
            Forwarded::Yes
        } else {
            Forwarded::Full
        };
        if retained {
            // Counted before it is queued, so the writer's end (a failure)
            // never comes first.
            self.retained.begin_write(message.topic.as_str());
            if self.retained_out.try_send(message.clone()).is_err()
                && let Some(node) = self.node()
            {
                self.retained.end_write(message.topic.as_str(), None, &node);
                node.dropped(DropReason::Cluster, 1);
            }
        }
        forwarded
    }

    /// Puts `message` in the queue towards NATS if it has room.
    fn enqueue(&self, message: &Arc<Message>, publisher: Option<&Arc<str>>) -> bool {
        let size = queued_size(message);
        // Taken first, given back on refusal: concurrent publishers can
        // never together pass the bound.
        let sent = self.queued_bytes.fetch_add(size, Ordering::Relaxed) + size <= OUTBOUND_BYTES
            && if message.qos == QoS::AtMostOnce {
                self.outbound.try_send((message.clone(), None)).is_ok()
            } else {
                let mut handed = self.handed.lock();
                let sent = self.outbound.try_send((message.clone(), publisher.cloned())).is_ok();
                *handed += u64::from(sent);
                sent
            };
        if !sent {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
        }
        sent
    }

    /// What a publisher's PUBACK/PUBREC waits for while a session is
    /// kept somewhere ([`queue`]): every QoS 1/2 message this node handed
    /// to the cluster so far stored by JetStream (or sent, if handed out
    /// before). `None` when nothing is kept, so the acknowledgement does
    /// not wait for the queue towards NATS, or when that is so already.
    pub(crate) fn stored(&self) -> Option<crate::store::Barrier> {
        if !self.queue.wanted() {
            return None;
        }
        self.backlog()
    }

    /// What waits until every QoS 1/2 message this node handed to the
    /// cluster so far is settled (stored by JetStream, or sent while no
    /// session was kept), whether or not a session is kept now; `None`
    /// when that is so already.
    pub(crate) fn backlog(&self) -> Option<crate::store::Barrier> {
        let target = *self.handed.lock();
        let done = self.stored.subscribe();
        let behind = *done.borrow() < target;
        behind.then(|| crate::store::Barrier::until(done, target))
    }

    /// Connects to NATS and starts the outbound and interest tasks (once;
    /// later calls do nothing). A NATS server that cannot be reached is
    /// logged at error and retried for ever; local clients are served
    /// meanwhile, and publishes are not forwarded while the queue is full.
    pub fn start(&self, node: Node) {
        let Some(receivers) = self.pending.lock().take() else { return };
        let _ = self.node.set(node.downgrade());
        let events =
            Arc::new(Events { node: node.downgrade(), queue: self.queue.clone(), last_slow_warning: Mutex::new(None) });
        let main_events = events.clone();
        let main = connect_options(format!("moat {}", self.node_id)).no_echo().event_callback(move |event| {
            let events = main_events.clone();
            async move { events.record(&event, true) }
        });
        // Share groups' queue subscriptions live on a second connection: a
        // node's own publishes must reach them (NATS may pick this node),
        // and the main connection does not see its own publishes.
        let shares = self.shares.clone();
        let share = connect_options(format!("moat {} shares", self.node_id)).event_callback(move |event| {
            let (shares, events) = (shares.clone(), events.clone());
            async move {
                match event {
                    async_nats::Event::Connected => shares.store(true, Ordering::Relaxed),
                    async_nats::Event::Disconnected => shares.store(false, Ordering::Relaxed),
                    _ => {}
                }
                events.record(&event, false);
            }
        });
        let servers = self.servers.clone();
        let link = Link {
            node_id: self.node_id.clone(),
            subjects: self.subjects.clone(),
            subscriptions: self.subscriptions.clone(),
            queued_bytes: self.queued_bytes.clone(),
            stored: self.stored.clone(),
            queue: self.queue.clone(),
            wire_format: self.wire_format,
        };
        let retained = self.retained.clone();
        let ownership = self.ownership.clone();
        let wills = self.wills.clone();
        let queue = self.queue.clone();
        let store_wait = self.store_wait;
        node.clone().spawn(async move {
            // With retry_on_initial_connect these return at once; the
            // connections are made (and remade) in the background.
            let (client, share) = match tokio::try_join!(main.connect(servers.clone()), share.connect(servers.clone()))
            {
                Ok(clients) => clients,
                Err(e) => {
                    error!(error = %e, "cluster: cannot set up the NATS client; this node runs alone");
                    return;
                }
            };
            info!(node_id = %link.node_id, servers = ?servers, "cluster: NATS client started");
            let link = Arc::new(link);
            node.spawn(link.clone().publish(client.clone(), receivers.outbound, node.clone()));
            node.spawn(retained.clone().write(client.clone(), receivers.retained, node.clone()));
            node.spawn(retained.watch(client.clone(), node.clone()));
            node.spawn(ownership.run(client.clone(), node.clone()));
            node.spawn(wills.run(client.clone(), node.clone()));
            node.spawn(queue.clone().run(client.clone(), node.clone()));
            node.spawn(queue.resync(client.clone(), store_wait, node.clone()));
            link.interest(client, share, receivers.interest, node).await;
        });
    }
}

/// Reconnect at once, then back off to at most two seconds.
fn reconnect_delay(attempts: usize) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX).min(6);
    if attempts <= 1 { Duration::ZERO } else { Duration::from_millis(62 * 2u64.pow(exp)).min(Duration::from_secs(2)) }
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
    format!("moat-{}", hex(&bytes))
}

/// `bytes` in lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        // Writing to a String cannot fail.
        let _ = std::fmt::Write::write_fmt(&mut s, format_args!("{b:02x}"));
        s
    })
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
