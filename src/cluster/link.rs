//! The NATS connections of a node and the tasks between them and the
//! router: the events the clients report, the NATS subscriptions that
//! follow local interest (`interest`), and the routing of what other nodes
//! sent (`inbound`). Publishing towards NATS is `outbound`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::queue::{Queue, ShareRoute};
use super::subject::Subjects;
use super::{MAX_SUBJECT_BYTES, envelope};
use crate::broker::{Node, WeakNode};
use crate::codec::{QoS, TopicName};
use crate::config::WireFormat;
use crate::message::Message;
use crate::metrics::DropReason;
use crate::router::Interest;

/// Options both connections share: named, reconnecting for ever, retrying
/// the first connect.
pub(super) fn connect_options(name: String) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .subscription_capacity(super::SUBSCRIPTION_CAPACITY)
        .reconnect_delay_callback(super::reconnect_delay)
}

/// What the NATS clients report: logged, and messages they dropped counted.
#[derive(Debug)]
pub(super) struct Events {
    /// Weak: the clients' event tasks must not keep the broker alive.
    pub(super) node: WeakNode,
    /// Told when the main connection is made (again).
    pub(super) queue: Arc<Queue>,
    /// When a slow consumer was last logged; one warning per interval says
    /// enough (the client reports each dropped message).
    pub(super) last_slow_warning: Mutex<Option<Instant>>,
}

impl Events {
    /// Quiet time between two slow-consumer warnings.
    const SLOW_WARNING_INTERVAL: Duration = Duration::from_secs(10);

    /// Logs (and acts on) `event` of the main connection (`main`) or the
    /// share groups' one.
    pub(super) fn record(&self, event: &async_nats::Event, main: bool) {
        match event {
            async_nats::Event::Connected => {
                info!("cluster: connected to NATS");
                // Feeders pull again, lagging consumers catch up, what
                // waited for JetStream goes (`queue::resync`).
                if main {
                    self.queue.connected();
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
                if let Some(node) = self.node.upgrade() {
                    node.dropped(DropReason::ClusterInbound, 1);
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
pub(super) struct Link {
    pub(super) node_id: Arc<str>,
    pub(super) subjects: Subjects,
    pub(super) subscriptions: Arc<AtomicUsize>,
    /// [`Cluster::queued_bytes`].
    pub(super) queued_bytes: Arc<AtomicUsize>,
    /// [`Cluster::stored`].
    pub(super) stored: Arc<watch::Sender<u64>>,
    pub(super) queue: Arc<Queue>,
    /// `cluster.wire_format`.
    pub(super) wire_format: WireFormat,
}

/// A local share group's count of members, the handle that ends serving
/// it from its consumer ([`Queue::share`]), and how its messages come.
type Serving = (usize, CancellationToken, Arc<ShareRoute>);

/// A share group whose NATS queue subscription an inbound task serves.
#[derive(Debug)]
struct Share {
    /// The filter, without `$share/{group}/`.
    filter: Box<str>,
    group: Box<str>,
    /// Whether its QoS 1/2 messages come from the queue group, are held,
    /// or come from its consumer in JetStream ([`Queue::share`]).
    route: Arc<ShareRoute>,
}

/// What a queued message counts against [`OUTBOUND_BYTES`].
pub(super) fn queued_size(message: &Message) -> usize {
    message.topic.as_str().len() + message.payload.len()
}

impl Link {
    /// Keeps one NATS subscription per distinct subject of the local
    /// filters (queue group: the node id), and one per subject and share
    /// group of the shared ones (queue group: the share group and filter,
    /// on the `share` connection), until shutdown.
    pub(super) async fn interest(
        self: Arc<Self>,
        client: async_nats::Client,
        share: async_nats::Client,
        mut rx: mpsc::UnboundedReceiver<Interest>,
        node: Node,
    ) {
        // By subject and queue group: a count of local subscriptions and
        // the handle that ends the NATS subscription.
        let mut held: HashMap<(String, String), (usize, CancellationToken)> = HashMap::new();
        // By filter and share group: a count of local members, the handle
        // that ends serving the group from its consumer, and whether it is.
        let mut shares: HashMap<(Box<str>, Box<str>), Serving> = HashMap::new();
        while let Some(Some(change)) = node.shutdown().run_until_cancelled(rx.recv()).await {
            match change {
                Interest::Add(filter, group) => {
                    let route = group.as_ref().map(|g| {
                        let (count, _, route) = shares.entry((filter.clone(), g.clone())).or_insert_with(|| {
                            let stop = node.shutdown().child_token();
                            let route = Arc::new(ShareRoute::new(self.queue.ready()));
                            let serving = self.queue.clone().share(
                                filter.clone(),
                                g.clone(),
                                route.clone(),
                                stop.clone(),
                                node.clone(),
                            );
                            node.spawn(serving);
                            (0, stop, route)
                        });
                        *count += 1;
                        route.clone()
                    });
                    let queue = match &group {
                        Some(g) => self.subjects.share_queue(g, &filter),
                        None => self.node_id.to_string(),
                    };
                    for subject in self.subjects.subscribed(&filter) {
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
                        let stop = node.shutdown().child_token();
                        held.insert(key, (1, stop.clone()));
                        self.subscriptions.fetch_add(1, Ordering::Relaxed);
                        let target = group.as_ref().zip(route.clone()).map(|(g, route)| Share {
                            filter: filter.clone(),
                            group: g.clone(),
                            route,
                        });
                        node.spawn(self.clone().inbound(subscriber, target, stop, node.clone()));
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
                    for subject in self.subjects.subscribed(&filter) {
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
        node: Node,
    ) {
        // What the client has buffered is routed in one go, without a
        // wake-up per message, so this task keeps up with the connection.
        let mut batches = (&mut subscriber).ready_chunks(super::INBOUND_BATCH);
        // The last subject's topic: messages on one subject tend to come
        // in runs, and mapping a subject back costs two allocations.
        let mut last = None;
        while let Some(Some(batch)) = stop.run_until_cancelled(batches.next()).await {
            // Each subscriber woken once per batch, when it is routed.
            crate::session::wakes::in_one_go(|| {
                for nats in batch {
                    let Some(message) = self.decode(nats, shared.is_some(), &mut last) else { continue };
                    match &shared {
                        Some(share) if message.qos != QoS::AtMostOnce => match share.route.arrived(message) {
                            Some(message) => node.deliver_shared(message, &share.filter, &share.group),
                            None => 0,
                        },
                        Some(share) => node.deliver_shared(Arc::new(message), &share.filter, &share.group),
                        None => node.deliver_remote(Arc::new(message)),
                    };
                }
            });
        }
        // Dropping the subscriber unsubscribes without waiting (NATS may be
        // away with the client's queue full).
        drop(subscriber);
    }

    /// The message a node sent, or `None` for our own (unless `own`), or
    /// for one this version cannot read (logged at debug: peers run other
    /// versions during an upgrade). `last` is the last subject mapped to a
    /// topic and that topic.
    fn decode(
        &self,
        nats: async_nats::Message,
        own: bool,
        last: &mut Option<(async_nats::Subject, TopicName)>,
    ) -> Option<Message> {
        let topic = match last {
            Some((subject, topic)) if *subject == nats.subject => topic.clone(),
            _ => {
                let Some(topic) = self.subjects.topic_of(nats.subject.as_str()).and_then(|t| TopicName::new(&t).ok())
                else {
                    debug!(subject = %nats.subject, "cluster: subject is no topic; ignored");
                    return None;
                };
                *last = Some((nats.subject.clone(), topic.clone()));
                topic
            }
        };
        let Some(received) = envelope::read(topic, nats, Instant::now()) else {
            debug!("cluster: message in an unknown format; ignored");
            return None;
        };
        if !own && received.origin == self.node_id.as_bytes() {
            return None;
        }
        // A QoS 1/2 message published again for JetStream's sake: the
        // first copy came this way already, or was lost with the
        // connection it left on (core NATS is at most once).
        let message = received.message;
        (message.qos == QoS::AtMostOnce || !received.retry).then_some(message)
    }
}
