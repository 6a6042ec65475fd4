//! Retained messages across the cluster: a JetStream stream with one
//! message per subject, and on each node a local store kept current by an
//! ordered consumer (a watch).
//!
//! Every retained publish on a node, a clear (empty payload) included, is
//! also written to the stream `{PREFIX}_RETAINED` on the subject
//! `{prefix}.r.` + the topic's subject ([`Subjects`]), with the same
//! headers as the live copy. The stream keeps the last message per subject
//! (`max_msgs_per_subject = 1`); a clear stays as an empty message, a
//! tombstone, so a node that was away while it happened still learns of it.
//!
//! Each node watches the stream from its last message per subject on, then
//! live, and sets its retained store (and its own store on disk) from what
//! it reads: a message published before the node started arrives with the
//! replay. The live copy that travels over core NATS still reaches current
//! subscribers; it no longer sets the store, so the store follows one
//! order only.
//!
//! Conflicts: the stream's order wins. When two nodes retain on one topic
//! at once, every node ends with the copy the stream stored last. The
//! publishing node sets its own store at once (a subscriber there sees its
//! message without a round trip). While its writes to a topic await their
//! acks it holds back what the watch shows for that topic, and afterwards
//! applies only copies the stream stored after its own (the ack carries
//! the sequence), so it never steps back to an older message. Its own
//! copies need not come back through the watch: a consumer skips messages
//! the per-subject limit removed before it got to them.
//!
//! JetStream away: the stream cannot be made or written (JetStream not
//! enabled, NATS down). The node serves its local clients meanwhile, logs
//! at warn, counts each retained message not written
//! (`moat_dropped_messages_total{reason="cluster"}`) and retries; until the
//! watch runs, retained messages from peers are stored as they arrive over
//! core NATS (best effort, as without JetStream). A retained message
//! published while the stream could not be written stays on its node.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{MAX_SUBJECT_BYTES, Subjects, envelope};
use crate::broker::Node;
use crate::codec::{Properties, TopicName};
use crate::config::ClusterConfig;
use crate::message::Message;
use crate::metrics::DropReason;

/// Retained writes waiting to be handed to JetStream before new ones are
/// dropped (and counted).
pub(super) const QUEUE_CAPACITY: usize = 4 * 1024;

/// What the watch and this node's writes know of a topic this node wrote.
#[derive(Debug, Default)]
struct Written {
    /// Writes not yet acked (or failed).
    writes: u32,
    /// The highest stream sequence of this node's acked writes: copies
    /// stored before it are older than the local one.
    floor: u64,
    /// The highest stream sequence the watch showed.
    shown: u64,
    /// The newest copy the watch showed, held back while writes await
    /// their acks.
    latest: Option<(u64, Arc<Message>)>,
}

/// What the retained writer and watcher share with the publishing path.
#[derive(Debug)]
pub(super) struct RetainedSync {
    /// Subjects of the stream: `{prefix}.r.` + a topic's subject.
    subjects: Subjects,
    stream_name: String,
    /// Replicas of the stream, when this node creates it.
    replicas: usize,
    node_id: Arc<str>,
    /// Topics this node wrote whose copy in the stream the watch has not
    /// reached yet. Decisions to apply a copy are taken under this lock.
    written: Mutex<HashMap<String, Written>>,
    /// Whether the watch runs, so the stream (not core NATS) sets the store.
    watching: AtomicBool,
    /// Whether the watch has replayed the stream once.
    synced: AtomicBool,
    /// Whether the last write failed: only the first failure of a run is
    /// logged at warn (NATS away fails every write).
    failing: AtomicBool,
}

impl RetainedSync {
    /// The state for the cluster of `config`, for node `node_id`.
    pub(super) fn new(config: &ClusterConfig, node_id: Arc<str>) -> RetainedSync {
        RetainedSync {
            subjects: Subjects::new(&format!("{}.r", config.subject_prefix)),
            stream_name: super::jetstream_name(&config.subject_prefix, "RETAINED"),
            replicas: config.replicas,
            node_id,
            written: Mutex::new(HashMap::new()),
            watching: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            failing: AtomicBool::new(false),
        }
    }

    /// Whether the stream, not core NATS, keeps the retained store current.
    pub(super) fn watching(&self) -> bool {
        self.watching.load(Ordering::Relaxed)
    }

    /// Whether the watch has read the whole stream once since start-up.
    pub(super) fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// Notes a write of this node on the way to the stream.
    pub(super) fn begin_write(&self, topic: &str) {
        self.written.lock().entry(topic.to_owned()).or_default().writes += 1;
    }

    /// Notes a write of this node that ended: stored at stream sequence
    /// `seq`, or failed (`None`). After the last one, applies a copy the
    /// watch showed meanwhile if the stream stored it after this node's.
    pub(super) fn end_write(&self, topic: &str, seq: Option<u64>, node: &Node) {
        let mut written = self.written.lock();
        let Some(entry) = written.get_mut(topic) else { return };
        entry.writes = entry.writes.saturating_sub(1);
        entry.floor = entry.floor.max(seq.unwrap_or(0));
        if entry.writes > 0 {
            return;
        }
        if let Some((seq, message)) = entry.latest.take()
            && seq > entry.floor
        {
            node.retain(&message);
        }
        if entry.shown >= entry.floor {
            written.remove(topic);
        }
    }

    /// Applies a copy the watch showed at stream sequence `seq`, unless it
    /// is older than this node's own (or held back while writes await acks).
    fn offer(&self, topic: &str, seq: u64, message: Arc<Message>, node: &Node) {
        let mut written = self.written.lock();
        let Some(entry) = written.get_mut(topic) else {
            node.retain(&message);
            return;
        };
        entry.shown = entry.shown.max(seq);
        if entry.writes > 0 {
            if seq > entry.floor {
                entry.latest = Some((seq, message));
            }
            return;
        }
        if seq >= entry.floor {
            node.retain(&message);
        }
        if entry.shown >= entry.floor {
            written.remove(topic);
        }
    }

    /// Writes this node's retained messages to the stream until shutdown.
    pub(super) async fn write(
        self: Arc<Self>,
        client: async_nats::Client,
        mut rx: mpsc::Receiver<Arc<Message>>,
        node: Node,
    ) {
        let js = jetstream::new(client);
        while let Some(Some(message)) = node.shutdown().run_until_cancelled(rx.recv()).await {
            let topic = message.topic.as_str();
            let subject = self.subjects.topic(topic);
            if !self.watching() || subject.len() > MAX_SUBJECT_BYTES {
                // No stream to write to (yet): the copy stays here.
                self.end_write(topic, None, &node);
                node.dropped(DropReason::Cluster, 1);
                continue;
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(envelope::NODE_HEADER, &*self.node_id);
            headers.insert(envelope::MESSAGE_HEADER, envelope::encode(&message, Instant::now()).as_str());
            let ack = match js.publish_with_headers(subject, headers, message.payload.clone()).await {
                Ok(ack) => ack,
                Err(e) => {
                    self.failed(&e);
                    self.end_write(topic, None, &node);
                    node.dropped(DropReason::Cluster, 1);
                    continue;
                }
            };
            // Acks are awaited beside the writer, so a slow JetStream does
            // not serialize retained publishes (async-nats bounds how many
            // acks may be outstanding).
            let sync = self.clone();
            let acked_node = node.clone();
            let topic = topic.to_owned();
            node.spawn(async move {
                let Some(result) = acked_node.shutdown().run_until_cancelled(ack.into_future()).await else { return };
                match result {
                    Ok(ack) => {
                        sync.failing.store(false, Ordering::Relaxed);
                        sync.end_write(&topic, Some(ack.sequence), &acked_node);
                    }
                    Err(e) => {
                        sync.failed(&e);
                        sync.end_write(&topic, None, &acked_node);
                        acked_node.dropped(DropReason::Cluster, 1);
                    }
                }
            });
        }
    }

    /// Logs a failed write: at warn the first of a run, then at debug.
    fn failed(&self, error: &dyn std::fmt::Display) {
        if self.failing.swap(true, Ordering::Relaxed) {
            debug!(%error, "cluster: retained message not stored in JetStream");
        } else {
            warn!(%error, "cluster: retained messages not stored in JetStream stay on this node until it is back");
        }
    }

    /// Sets up the stream and keeps the local retained store current from
    /// it until shutdown, starting over (a full replay) after each failure.
    pub(super) async fn watch(self: Arc<Self>, client: async_nats::Client, node: Node) {
        let js = jetstream::new(client.clone());
        let mut failures = 0u32;
        loop {
            let Some(outcome) = node.shutdown().run_until_cancelled(self.watch_once(&js, &client, &node)).await else {
                return;
            };
            // A watch that ran makes the next failure a new outage (warned).
            if self.watching.swap(false, Ordering::Relaxed) {
                failures = 0;
            }
            if let Err(e) = outcome {
                if failures == 0 {
                    warn!(
                        error = %e,
                        stream = %self.stream_name,
                        "cluster: no JetStream stream for retained messages; they are kept per node until it is back"
                    );
                } else {
                    debug!(error = %e, "cluster: retained stream still unavailable");
                }
            }
            failures = failures.saturating_add(1);
            let wait = super::setup_retry_delay(failures);
            if node.shutdown().run_until_cancelled(tokio::time::sleep(wait)).await.is_none() {
                return;
            }
        }
    }

    /// One run of the watch: ends with an error when the stream cannot be
    /// set up or read.
    async fn watch_once(
        &self,
        js: &jetstream::Context,
        client: &async_nats::Client,
        node: &Node,
    ) -> Result<(), async_nats::Error> {
        let stream = js
            .get_or_create_stream(stream::Config {
                name: self.stream_name.clone(),
                subjects: vec![self.subjects.everything()],
                max_messages_per_subject: 1,
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                ..stream::Config::default()
            })
            .await?;
        let consumer = stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: client.new_inbox(),
                description: Some("moat retained watch".to_owned()),
                filter_subject: self.subjects.everything(),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                replay_policy: consumer::ReplayPolicy::Instant,
                ..consumer::push::OrderedConfig::default()
            })
            .await?;
        // A replay shows the stream's latest copy of every topic, in stream
        // order: what was shown before no longer counts. Writes awaiting
        // acks still hold their topics back.
        self.written.lock().retain(|_, entry| {
            entry.shown = 0;
            entry.writes > 0
        });
        let empty = consumer.cached_info().num_pending == 0;
        let mut messages = consumer.messages().await?;
        self.watching.store(true, Ordering::Relaxed);
        if empty {
            self.synced.store(true, Ordering::Relaxed);
        }
        info!(stream = %self.stream_name, "cluster: watching retained messages");
        while let Some(message) = messages.next().await {
            let message = message?;
            let info = message.info()?;
            let (seq, pending, published) = (info.stream_sequence, info.pending, SystemTime::from(info.published));
            self.apply(message.message, seq, published, node);
            if pending == 0 {
                self.synced.store(true, Ordering::Relaxed);
            }
        }
        Err("the retained watch ended".into())
    }

    /// Sets the local retained store from one message of the stream.
    fn apply(&self, nats: async_nats::Message, seq: u64, published: SystemTime, node: &Node) {
        let Some(topic) = self.subjects.topic_of(nats.subject.as_str()) else {
            debug!(subject = %nats.subject, "cluster: retained subject is no topic; ignored");
            return;
        };
        let headers = nats.headers.as_ref();
        let Ok(name) = TopicName::new(&topic) else { return };
        let now = Instant::now();
        let message = match headers.and_then(|h| h.get(envelope::MESSAGE_HEADER)) {
            Some(header) => envelope::decode(name.clone(), nats.payload, header.as_str(), now),
            None => None,
        };
        let Some(mut message) = message else {
            debug!(%topic, "cluster: retained message in an unknown format; ignored");
            return;
        };
        envelope::stored_at(&mut message, published, now);
        if message.is_expired(now) {
            message = Message::new(name, Bytes::new(), message.qos, true, &Properties::default());
        }
        self.offer(&topic, seq, Arc::new(message), node);
    }
}
