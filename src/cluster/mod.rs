//! Clustering over NATS: publishes cross nodes over core NATS, retained
//! messages through a JetStream stream, share groups through NATS queue
//! groups; each session is held by one node, which the client's connection
//! claims ([`ownership`]); QoS 1/2 messages for persistent sessions are
//! kept in JetStream and fed to them from there ([`queue`]); wills of a
//! node that died are published by another ([`wills`]).
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
//! - **Retained** ([`retained`]): a writer copies each retained publish (and
//!   clear) to the stream, and a watch keeps the local retained store
//!   current from it; the stream's order decides conflicts.
//!
//! No echo, no duplicates: the main connection is made with `no_echo`, and
//! the origin's node id travels in a header and is checked. Every
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
//! instead ([`queue`]), so they outlive the node that took them; the
//! queue subscription then passes over them.
//!
//! Guarantees: core NATS delivers at most once, so a message crosses nodes
//! at most once for clean sessions whatever its QoS, and the publisher's
//! PUBACK means "routed locally and handed to NATS". For persistent
//! sessions JetStream keeps QoS 1/2 messages until their clients have
//! them, and while any such session exists a PUBACK means "stored by
//! JetStream", whatever happens to the connection meanwhile ([`queue`],
//! `outbound`, [`Cluster::stored`]). Order from one
//! publisher on one topic is kept while that topic matches a single one of
//! the receiving node's subjects (NATS keeps order per subscription).
//! Retained messages are the exception: JetStream stores them, so a node
//! started later, or away meanwhile, still gets them.

mod envelope;
mod outbound;
mod ownership;
mod queue;
mod retained;
pub mod subject;
mod wills;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::broker::Broker;
use crate::codec::{QoS, TopicName};
use crate::config::ClusterConfig;
use crate::metrics::DropReason;
use crate::router::Message;
pub use ownership::Claim;
use ownership::Ownership;
use queue::Queue;
use retained::RetainedSync;
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

/// Whether [`Cluster::forward`] handed a message on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forwarded {
    /// Queued towards NATS.
    Yes,
    /// Its topic makes a subject longer than NATS takes: it never leaves
    /// this node.
    TooLong,
    /// The queue towards NATS is full (NATS slow or away): it could go
    /// later.
    Full,
}

/// A change of local interest, reported by the router in trie order: a
/// filter (without `$share/{group}/`) and, for a shared subscription, its
/// share group.
#[derive(Debug)]
pub enum Interest {
    /// A session subscribed to this filter.
    Add(Box<str>, Option<Box<str>>),
    /// A session's subscription to this filter went away.
    Remove(Box<str>, Option<Box<str>>),
}

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
    pub(crate) fn release(&self, client_id: &str, revision: u64, broker: &Broker) {
        self.ownership.release(client_id, revision, broker);
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
    pub(crate) async fn keep(
        &self,
        session: &Arc<crate::session::Session>,
        window: usize,
        first: bool,
        broker: &Arc<Broker>,
    ) {
        let newly = !session.lock().kept;
        let kept = self.queue.keep(session, window, broker).await;
        if !kept || !(first || newly) {
            return;
        }
        // Whoever claims the session next is told to look in JetStream
        // (the claim that attached this connection did not say so).
        let Some(revision) = session.lock().claimed else { return };
        if let Some(marked) = self.ownership.mark_kept(session.client_id(), revision).await {
            let mut state = session.lock();
            if state.claimed == Some(revision) {
                state.claimed = Some(marked);
            }
        }
    }

    /// The connection of kept `session` ended with a new session expiry:
    /// its consumer's record follows, in the background.
    pub(crate) fn park(&self, session: Arc<crate::session::Session>, broker: &Broker) {
        let queue = self.queue.clone();
        let window = usize::from(broker.config().limits.max_inflight);
        broker.tasks.spawn(async move { queue.park(&session, window).await });
    }

    /// The kept session of `client_id` whose node is gone, if JetStream
    /// keeps one.
    pub(crate) async fn recover(&self, client_id: &str) -> Option<crate::store::StoredSession> {
        self.queue.recover(client_id).await
    }

    /// The session of `client_id` ended, or a clean start replaces it:
    /// what JetStream kept for it goes.
    pub(crate) fn forget_session(&self, client_id: &str, broker: &Broker) {
        self.queue.forget(client_id, broker);
    }

    /// Tells JetStream that a message it kept for a session reached the
    /// client (or never will).
    pub(crate) fn acknowledge(&self, ack: &crate::session::JetStreamAck) {
        self.queue.acknowledge(ack);
    }

    /// Gives a message JetStream delivered for a session back, for it to
    /// be delivered again soon: the session dropped it.
    pub(crate) fn give_back(&self, ack: &crate::session::JetStreamAck) {
        self.queue.give_back(ack);
    }

    /// Registers the will of `client_id`'s new connection, so that another
    /// node publishes it `delay_s` after this one is found dead
    /// ([`wills`]). The revision to unregister it with, if registered.
    pub(crate) async fn register_will(&self, client_id: &str, will: &crate::codec::Will, delay_s: u32) -> Option<u64> {
        self.wills.register(client_id, will, delay_s).await
    }

    /// The connection whose will was registered as `revision` ended here.
    pub(crate) fn unregister_will(&self, client_id: &str, revision: u64, broker: &Broker) {
        self.wills.unregister(client_id, revision, broker);
    }

    /// Hands a message published on this node to the other nodes, and,
    /// when this node `retained` it, to the retained stream. Never waits:
    /// with the queue full (in messages or bytes), or a topic too long for
    /// a subject, the message stays local and is counted.
    pub(crate) fn forward(
        &self,
        message: &Arc<Message>,
        publisher: Option<&Arc<str>>,
        retained: bool,
        broker: &Broker,
    ) -> Forwarded {
        let forwarded = if !self.subjects.fits(message.topic.as_str(), MAX_SUBJECT_BYTES) {
            Forwarded::TooLong
        } else if self.enqueue(message, publisher) {
            Forwarded::Yes
        } else {
            Forwarded::Full
        };
        if forwarded != Forwarded::Yes {
            broker.metrics.dropped(DropReason::Cluster, 1);
        }
        if retained {
            // Counted before it is queued, so the writer's end (a failure)
            // never comes first.
            self.retained.begin_write(message.topic.as_str());
            if self.retained_out.try_send(message.clone()).is_err() {
                self.retained.end_write(message.topic.as_str(), None, broker);
                broker.metrics.dropped(DropReason::Cluster, 1);
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
    pub fn start(&self, broker: &Arc<Broker>) {
        let Some(receivers) = self.pending.lock().take() else { return };
        let events = Arc::new(Events { broker: Arc::downgrade(broker), last_slow_warning: Mutex::new(None) });
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
            run_id: random_node_id(),
            node_id: self.node_id.clone(),
            subjects: self.subjects.clone(),
            subscriptions: self.subscriptions.clone(),
            queued_bytes: self.queued_bytes.clone(),
            stored: self.stored.clone(),
            queue: self.queue.clone(),
        };
        let retained = self.retained.clone();
        let ownership = self.ownership.clone();
        let wills = self.wills.clone();
        let queue = self.queue.clone();
        let store_wait = self.store_wait;
        let broker = broker.clone();
        let tasks = broker.tasks.clone();
        tasks.spawn(async move {
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
            broker.tasks.spawn(link.clone().publish(client.clone(), receivers.outbound, broker.clone()));
            broker.tasks.spawn(retained.clone().write(client.clone(), receivers.retained, broker.clone()));
            broker.tasks.spawn(retained.watch(client.clone(), broker.clone()));
            broker.tasks.spawn(ownership.run(client.clone(), broker.clone()));
            broker.tasks.spawn(wills.run(client.clone(), broker.clone()));
            broker.tasks.spawn(queue.clone().run(client.clone(), broker.clone()));
            broker.tasks.spawn(queue.resync(client.clone(), store_wait, broker.clone()));
            link.interest(client, share, receivers.interest, broker).await;
        });
    }
}

/// Options both connections share: named, reconnecting for ever, retrying
/// the first connect.
fn connect_options(name: String) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .reconnect_delay_callback(reconnect_delay)
}

/// What the NATS clients report: logged, and messages they dropped counted.
#[derive(Debug)]
struct Events {
    /// Weak: the clients' event tasks must not keep the broker alive.
    broker: std::sync::Weak<Broker>,
    /// When a slow consumer was last logged; one warning per interval says
    /// enough (the client reports each dropped message).
    last_slow_warning: Mutex<Option<Instant>>,
}

impl Events {
    /// Quiet time between two slow-consumer warnings.
    const SLOW_WARNING_INTERVAL: Duration = Duration::from_secs(10);

    /// Logs (and acts on) `event` of the main connection (`main`) or the
    /// share groups' one.
    fn record(&self, event: &async_nats::Event, main: bool) {
        match event {
            async_nats::Event::Connected => {
                info!("cluster: connected to NATS");
                // Feeders pull again, lagging consumers catch up, what
                // waited for JetStream goes (`queue::resync`).
                if let Some(broker) = self.broker.upgrade().filter(|_| main)
                    && let Some(cluster) = broker.cluster()
                {
                    cluster.queue.connected();
                }
            }
            // Kept sessions stay kept: what other nodes publish for them
            // waits in JetStream, and what this node publishes waits here
            // (its publishers unacknowledged) until the connection is back.
            async_nats::Event::Disconnected => {
                error!(
                    "cluster: disconnected from NATS; QoS 1/2 publishes wait for it while sessions are kept, reconnecting"
                );
            }
            async_nats::Event::SlowConsumer(sid) => {
                if let Some(broker) = self.broker.upgrade() {
                    broker.metrics.dropped(DropReason::ClusterInbound, 1);
                }
                let now = Instant::now();
                let mut last = self.last_slow_warning.lock();
                if last.is_none_or(|at| now.duration_since(at) >= Self::SLOW_WARNING_INTERVAL) {
                    *last = Some(now);
                    warn!(sid, "cluster: this node fell behind a NATS subscription; messages from other nodes lost");
                }
            }
            other => warn!(event = %other, "cluster: NATS event"),
        }
    }
}

/// What the cluster tasks share.
#[derive(Debug)]
struct Link {
    node_id: Arc<str>,
    /// 64 random bits for each run of the process, so the ids of its QoS 2
    /// messages (`Nats-Msg-Id`, `outbound`) repeat none of another node's
    /// or an earlier run's.
    run_id: String,
    subjects: Subjects,
    subscriptions: Arc<AtomicUsize>,
    /// [`Cluster::queued_bytes`].
    queued_bytes: Arc<AtomicUsize>,
    /// [`Cluster::stored`].
    stored: Arc<watch::Sender<u64>>,
    queue: Arc<Queue>,
}

/// A local share group's count of members, the handle that ends serving
/// it from its consumer ([`Queue::share`]), and whether that is under way.
type Serving = (usize, CancellationToken, Arc<AtomicBool>);

/// A share group whose NATS queue subscription an inbound task serves.
#[derive(Debug)]
struct Share {
    /// The filter, without `$share/{group}/`.
    filter: Box<str>,
    group: Box<str>,
    /// Whether the group is served from its consumer in JetStream now
    /// ([`Queue::share`]), which then brings its QoS 1/2 messages.
    durable: Arc<AtomicBool>,
}

/// What a queued message counts against [`OUTBOUND_BYTES`].
fn queued_size(message: &Message) -> usize {
    message.topic.as_str().len() + message.payload.len()
}

impl Link {
    /// Keeps one NATS subscription per distinct subject of the local
    /// filters (queue group: the node id), and one per subject and share
    /// group of the shared ones (queue group: the share group and filter,
    /// on the `share` connection), until shutdown.
    async fn interest(
        self: Arc<Self>,
        client: async_nats::Client,
        share: async_nats::Client,
        mut rx: mpsc::UnboundedReceiver<Interest>,
        broker: Arc<Broker>,
    ) {
        // By subject and queue group: a count of local subscriptions and
        // the handle that ends the NATS subscription.
        let mut held: HashMap<(String, String), (usize, CancellationToken)> = HashMap::new();
        // By filter and share group: a count of local members, the handle
        // that ends serving the group from its consumer, and whether it is.
        let mut shares: HashMap<(Box<str>, Box<str>), Serving> = HashMap::new();
        while let Some(Some(change)) = broker.shutdown.run_until_cancelled(rx.recv()).await {
            match change {
                Interest::Add(filter, group) => {
                    let durable = group.as_ref().map(|g| {
                        let (count, _, durable) = shares.entry((filter.clone(), g.clone())).or_insert_with(|| {
                            let (stop, durable) = (broker.shutdown.child_token(), Arc::new(AtomicBool::new(false)));
                            let serving = self.queue.clone().share(
                                filter.clone(),
                                g.clone(),
                                durable.clone(),
                                stop.clone(),
                                broker.clone(),
                            );
                            broker.tasks.spawn(serving);
                            (0, stop, durable)
                        });
                        *count += 1;
                        durable.clone()
                    });
                    let queue = match &group {
                        Some(g) => self.subjects.share_queue(g, &filter),
                        None => self.node_id.to_string(),
                    };
                    for subject in self.subjects.filter(&filter) {
                        let key = (subject, queue.clone());
                        if let Some((count, _)) = held.get_mut(&key) {
                            *count += 1;
                            continue;
                        }
                        if key.0.len() + key.1.len() > MAX_SUBJECT_BYTES {
                            warn!(%filter, "cluster: filter too long for a NATS subject; it gets local messages only");
                            continue;
                        }
                        let nats = if group.is_some() { &share } else { &client };
                        let subscriber = match nats.queue_subscribe(key.0.clone(), key.1.clone()).await {
                            Ok(subscriber) => subscriber,
                            Err(e) => {
                                error!(error = %e, subject = %key.0, "cluster: NATS subscribe failed");
                                continue;
                            }
                        };
                        let stop = broker.shutdown.child_token();
                        held.insert(key, (1, stop.clone()));
                        self.subscriptions.fetch_add(1, Ordering::Relaxed);
                        let target = group.as_ref().zip(durable.clone()).map(|(g, durable)| Share {
                            filter: filter.clone(),
                            group: g.clone(),
                            durable,
                        });
                        broker.tasks.spawn(self.clone().inbound(subscriber, target, stop, broker.clone()));
                    }
                }
                Interest::Remove(filter, group) => {
                    if let Some(g) = &group {
                        let key = (filter.clone(), g.clone());
                        if let Some((count, stop, _)) = shares.get_mut(&key) {
                            *count -= 1;
                            if *count == 0 {
                                stop.cancel();
                                shares.remove(&key);
                            }
                        }
                    }
                    let queue = match &group {
                        Some(g) => self.subjects.share_queue(g, &filter),
                        None => self.node_id.to_string(),
                    };
                    for subject in self.subjects.filter(&filter) {
                        let key = (subject, queue.clone());
                        let Some((count, stop)) = held.get_mut(&key) else { continue };
                        *count -= 1;
                        if *count == 0 {
                            stop.cancel();
                            held.remove(&key);
                            self.subscriptions.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }

    /// Routes what peers publish on one subscription until it is dropped
    /// (the NATS subscription ends with it).
    /// `shared` is set for a share group's subscription, whose messages
    /// (this node's own too) go to one member.
    async fn inbound(
        self: Arc<Self>,
        mut subscriber: async_nats::Subscriber,
        shared: Option<Share>,
        stop: CancellationToken,
        broker: Arc<Broker>,
    ) {
        // What the client has buffered is routed in one go, without a
        // wake-up per message, so this task keeps up with the connection.
        let mut batches = (&mut subscriber).ready_chunks(INBOUND_BATCH);
        while let Some(Some(batch)) = stop.run_until_cancelled(batches.next()).await {
            for nats in batch {
                let Some(message) = self.decode(nats, shared.is_some()) else { continue };
                match &shared {
                    // The group's consumer has it.
                    Some(share) if message.qos != QoS::AtMostOnce && share.durable.load(Ordering::Acquire) => 0,
                    Some(share) => broker.deliver_shared(Arc::new(message), &share.filter, &share.group),
                    None => broker.deliver_remote(Arc::new(message)),
                };
            }
        }
        // Dropping the subscriber unsubscribes without waiting (NATS may be
        // away with the client's queue full).
        drop(subscriber);
    }

    /// The message a node sent, or `None` for our own (unless `own`), or
    /// for one this version cannot read (logged at debug: peers run other
    /// versions during an upgrade).
    fn decode(&self, nats: async_nats::Message, own: bool) -> Option<Message> {
        let headers = nats.headers.as_ref()?;
        let origin = headers.get(envelope::NODE_HEADER)?;
        if !own && origin.as_str() == &*self.node_id {
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
        // A QoS 1/2 message published again for JetStream's sake: the
        // first copy came this way already, or was lost with the
        // connection it left on (core NATS is at most once).
        message.filter(|m| m.qos == QoS::AtMostOnce || headers.get(envelope::RETRY_HEADER).is_none())
    }
}

/// The name of the JetStream stream or bucket `suffix` of the cluster
/// under subject `prefix`: `moat` gives `MOAT_{suffix}`.
fn jetstream_name(prefix: &str, suffix: &str) -> String {
    format!("{}_{suffix}", prefix.replace('.', "_").to_uppercase())
}

/// A key-value bucket of one value per key, on file storage with the
/// configured replicas.
fn bucket_config(config: &ClusterConfig, suffix: &str, description: &str) -> kv::Config {
    kv::Config {
        bucket: jetstream_name(&config.subject_prefix, suffix),
        description: description.to_owned(),
        history: 1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: config.replicas,
        ..kv::Config::default()
    }
}

/// Longest a node waits for one JetStream exchange made for a client that
/// connects or leaves (a claim, a consumer set up, a look at one), so that
/// JetStream being slow or away delays the client rather than stalls it.
const JETSTREAM_WAIT: Duration = Duration::from_secs(3);

/// Longest wait between attempts to set up JetStream streams and buckets.
const SETUP_RETRY_MAX: Duration = Duration::from_secs(5);

/// The wait before the next attempt to set up JetStream after `failures`
/// failed ones: a quarter second more per failure, at most
/// [`SETUP_RETRY_MAX`].
fn setup_retry_delay(failures: u32) -> Duration {
    Duration::from_millis(250 * u64::from(failures.min(20))).min(SETUP_RETRY_MAX)
}

/// Runs `attempt` until it succeeds, retrying while JetStream is away: the
/// first failure is logged at warn, naming `what` and saying what its
/// absence means (`without`), later ones at debug. `None` at shutdown.
async fn set_up<T, F>(broker: &Broker, what: &str, without: &str, mut attempt: impl FnMut() -> F) -> Option<T>
where
    F: std::future::Future<Output = Result<T, async_nats::Error>>,
{
    let mut failures = 0u32;
    loop {
        match broker.shutdown.run_until_cancelled(attempt()).await? {
            Ok(done) => return Some(done),
            Err(e) if failures == 0 => warn!(error = %e, "cluster: no JetStream {what}; {without}"),
            Err(e) => debug!(error = %e, "cluster: JetStream {what} still unavailable"),
        }
        failures = failures.saturating_add(1);
        broker.shutdown.run_until_cancelled(tokio::time::sleep(setup_retry_delay(failures))).await?;
    }
}

/// Opens the key-value buckets of `configs`, creating those missing, and
/// retries while JetStream is away ([`set_up`]; `without` says what their
/// absence means). `None` at shutdown.
async fn open_buckets<const N: usize>(
    client: &async_nats::Client,
    configs: [kv::Config; N],
    broker: &Broker,
    without: &str,
) -> Option<[kv::Store; N]> {
    let js = jetstream::new(client.clone());
    let names: Vec<_> = configs.iter().map(|c| c.bucket.as_str()).collect();
    let what = format!("buckets {}", names.join(", "));
    let buckets = set_up(broker, &what, without, || async {
        let mut buckets = Vec::with_capacity(N);
        for config in &configs {
            let bucket = match js.get_key_value(config.bucket.as_str()).await {
                Ok(bucket) => bucket,
                Err(_) => js.create_key_value(config.clone()).await?,
            };
            buckets.push(bucket);
        }
        Ok(buckets)
    })
    .await?;
    buckets.try_into().ok()
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
