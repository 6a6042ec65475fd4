//! Messages for persistent sessions, kept in JetStream so that they
//! outlive the node that holds the session.
//!
//! The stream `{PREFIX}_QUEUE` captures the subjects every node already
//! publishes QoS 1/2 messages on (`{prefix}.t.>`, `{prefix}.d.>`) with
//! interest retention: JetStream keeps a message only while a consumer
//! wants it, so the stream stores nothing while no session is kept, and
//! publishers send nothing extra; nats-server still sequences every such
//! message (about 2 us of its CPU each here: BENCHMARKS.md, "Cluster
//! path: CPU per message"). QoS 0 messages, which no consumer takes,
//! travel on twin subjects it does not capture (`subject`).
//!
//! **Keep.** When a connection with a session that outlives it is set up
//! (and whenever its subscriptions change), its node makes sure the
//! session has a durable consumer (named after the client id, not the
//! node) whose filters are the subjects of its QoS 1/2 subscriptions,
//! with the session's subscriptions and expiry in the consumer's metadata,
//! its inactivity threshold set to the session expiry (so JetStream drops
//! it when the session would have ended), and at most the client's Receive
//! Maximum of messages unacknowledged. From then on the session is *kept*
//! ([`crate::session::SessionState::kept`]): the router queues no QoS 1/2
//! message for it; while a connection is attached, the node takes them
//! from the consumer, matched against the session's subscriptions as a
//! delivery would be, and acknowledges each to JetStream once the client
//! has it (PUBACK, or PUBREC for QoS 2) or it is dropped on its way out.
//! Nothing a publisher was acknowledged for is lost when the subscriber's
//! node dies: JetStream delivers what was not acknowledged again after
//! `[cluster] redelivery_s`.
//!
//! **Away.** When the connection ends, the node stops taking from the
//! consumer (pulling on for an absent client would have JetStream deliver
//! what the session holds again every `redelivery_s`); the session keeps
//! what it took, JetStream the rest. The client resumes on any node: the
//! session moves there (`ownership`), or, if its node is gone, comes back
//! from the consumer's metadata ([`Queue::recover`]), and the new
//! connection takes from the same consumer.
//!
//! **NATS away.** A session stays kept while its node is cut from NATS:
//! what other nodes publish for it waits in JetStream, what its node
//! publishes waits on the node (`outbound`), unacknowledged. When the
//! connection is back, feeders pull again at once, and consumers that
//! could not follow their sessions meanwhile are brought up to date
//! before the node stores anything more ([`resync`]).
//!
//! Limits: messages published while a session becomes kept may arrive
//! twice at QoS 1 (its node queued them for it, and its new consumer has
//! them too; at QoS 2 its feeder knows them by their
//! [`MessageId`](crate::message::MessageId) and
//! skips the consumer's copy: [`Taken`]), so may those published while a
//! share group's consumer is first made (QoS 2 too; [`share`] for a node
//! joining a group), and messages queued on a node before its session was
//! kept die with that node (with a store that keeps them, they come back
//! from it). A message
//! JetStream delivers again (its acknowledgement was lost, or the client
//! took longer than `redelivery_s`) is recognised by its stream sequence
//! while the session still holds it, and at QoS 2 after that too, for
//! as long as JetStream may hand it over again ([`Taken`]).
//! A message JetStream sent towards a pull the moment its connection ended
//! reaches the client only when it is delivered again, after
//! `redelivery_s`.
//!
//! **Share groups.** A share group's QoS 1/2 messages are kept the same
//! way, in a durable consumer per group and filter ([`Queue::share`]):
//! each node with members of the group pulls from it while one of them
//! is connected there, so JetStream spreads the messages over those
//! nodes, and each goes to one connected member, acknowledged when its
//! client has it. What a dying node took is delivered again (to a member
//! elsewhere) after `redelivery_s`; what a member drops is given back at
//! once. While no member is connected, the messages wait in JetStream.
//!
//! **Publishers.** While any session is kept ([`Queue::wanted`]), QoS 1/2
//! messages go to NATS as JetStream publishes, and their publishers'
//! PUBACK/PUBREC wait until JetStream has stored them (or answered that
//! no kept session wants them): see [`super::Cluster::stored`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, consumer, stream};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::subject::{Subjects, disjoint};
use super::{JETSTREAM_WAIT, SessionReplica, envelope, hex};
use crate::broker::Node;
use crate::codec::{QoS, TopicName};
use crate::config::ClusterConfig;
use crate::message::JetStreamAck;
use crate::session::{Session, SessionState};
use crate::store::StoredSession;

mod feeder;
mod resync;
mod share;
mod taken;

use feeder::Feeder;
pub(in crate::cluster) use share::ShareRoute;
pub(in crate::cluster) use taken::Taken;

/// Metadata key of the session record on a kept session's consumer.
const SESSION_METADATA: &str = "moat-session";
/// Idle heartbeat of a connection's pull from its session's consumer.
const FEED_HEARTBEAT: Duration = Duration::from_secs(5);
/// How often a node looks whether any session is kept.
const WANTED_INTERVAL: Duration = Duration::from_secs(1);
/// Messages a node asks a share group's consumer for at once...
const SHARE_BATCH: usize = 64;
/// ... and how long it waits for them, which is also how long it takes
/// to stop pulling once its last member there went offline.
const SHARE_PULL: Duration = Duration::from_secs(1);
/// Messages of one share group JetStream hands out unacknowledged.
const SHARE_ACK_PENDING: i64 = 4096;
/// How long a share group's consumer outlives its last pull at least (a
/// node restarting, its members reconnecting), and the longest session
/// expiry among the members a node sees when it sets the consumer up.
const SHARE_IDLE_MIN: Duration = Duration::from_secs(60);
/// How long JetStream waits before it offers again a message a node gave
/// back (no member of the group online there, or its queue full).
const GIVE_BACK_DELAY: Duration = Duration::from_secs(1);

/// JetStream's duplicate window for the queue stream (its default).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// This node's side of the queue stream.
#[derive(Debug)]
pub(super) struct Queue {
    config: stream::Config,
    /// Topic subjects (`{prefix}.t...`), as the stream captures them.
    subjects: Subjects,
    prefix: String,
    /// How long JetStream waits for an acknowledgement before it delivers a
    /// message again (`[cluster] redelivery_s`).
    ack_wait: Duration,
    /// The stream, once set up.
    stream: Mutex<Option<stream::Stream>>,
    /// The main NATS connection, once made.
    client: std::sync::OnceLock<async_nats::Client>,
    /// Whether any session (on any node) is kept: only then does a
    /// publisher's acknowledgement wait for JetStream.
    wanted: AtomicBool,
    /// Consumer set-ups begun and finished on this node so far: a look at
    /// the stream that began while one was under way, or that one
    /// overtook, may not turn `wanted` off (it may not show that consumer).
    set_ups_begun: AtomicU64,
    set_ups_done: AtomicU64,
    /// Reply subjects of messages to acknowledge to JetStream (or give
    /// back), for the task that publishes the answers
    /// ([`Queue::acknowledge`], [`Queue::give_back`]).
    acks: mpsc::UnboundedSender<Answer>,
    /// Taken by [`Queue::run`].
    acks_rx: Mutex<Option<mpsc::UnboundedReceiver<Answer>>>,
    /// Bumped each time the main NATS connection is made (and once the
    /// stream is set up): feeders and share groups pull again at once,
    /// and [`Queue::resync`] brings lagging consumers up to date.
    connects: watch::Sender<u64>,
    /// Sessions whose consumer could not be made to match them (JetStream
    /// away or slow), by client id: a session kept already, whose consumer
    /// now lags behind its subscriptions, so that this node stores no QoS
    /// 1/2 message until it is brought up to date
    /// ([`Queue::consumers_current`]), or one not kept yet, which queues
    /// here meanwhile. [`Queue::resync`] tries them again.
    lagging: Mutex<HashMap<Arc<str>, Lag>>,
}

/// A session whose consumer could not be made to match it.
#[derive(Debug, Clone, Copy)]
struct Lag {
    /// Kept already (its consumer lags behind its subscriptions), or not
    /// kept yet.
    kept: bool,
    /// Failed attempts made while NATS was there.
    failures: u32,
}

/// Failed attempts, made while connected, after which a kept session whose
/// consumer cannot be updated is no longer kept.
const LAGGING_ATTEMPTS: u32 = 10;

/// What a node tells JetStream of a message it delivered: on this reply
/// subject, that it was handled (`true`) or given back.
type Answer = (Arc<str>, bool);

impl Queue {
    /// The queue of the cluster of `config`.
    pub(super) fn new(config: &ClusterConfig) -> Queue {
        let prefix = &config.subject_prefix;
        let (acks, acks_rx) = mpsc::unbounded_channel();
        Queue {
            config: stream::Config {
                name: super::jetstream_name(prefix, "QUEUE"),
                description: Some("moat: messages for persistent sessions".to_owned()),
                subjects: vec![format!("{prefix}.t.>"), format!("{prefix}.d.>")],
                retention: stream::RetentionPolicy::Interest,
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                ..stream::Config::default()
            },
            subjects: Subjects::new(prefix),
            prefix: prefix.clone(),
            ack_wait: Duration::from_secs(u64::from(config.redelivery_s)),
            stream: Mutex::new(None),
            client: std::sync::OnceLock::new(),
            wanted: AtomicBool::new(false),
            set_ups_begun: AtomicU64::new(0),
            set_ups_done: AtomicU64::new(0),
            acks,
            acks_rx: Mutex::new(Some(acks_rx)),
            connects: watch::Sender::new(0),
            lagging: Mutex::new(HashMap::new()),
        }
    }

    /// The main NATS connection was made (again).
    pub(super) fn connected(&self) {
        self.connects.send_modify(|n| *n += 1);
    }

    /// How long a session remembers the QoS 2 messages it took
    /// ([`Taken`]): JetStream delivers one whose
    /// acknowledgement it lost again within `redelivery_s`, twice that
    /// across a leader's election, and the node publishes one again under
    /// its id within JetStream's duplicate window (two minutes), beyond
    /// which JetStream itself would store a second copy.
    pub(super) fn taken_window(&self) -> Duration {
        (2 * self.ack_wait).max(DUPLICATE_WINDOW)
    }

    /// Whether every kept session's consumer matches its subscriptions, so
    /// that what JetStream stores now reaches whom it should.
    pub(super) fn consumers_current(&self) -> bool {
        !self.lagging.lock().values().any(|lag| lag.kept)
    }

    /// Sets up the stream, retrying while JetStream is away, then keeps
    /// [`Queue::wanted`] current; acknowledges messages meanwhile.
    pub(super) async fn run(self: Arc<Self>, client: async_nats::Client, node: Node) {
        if let Some(acks) = self.acks_rx.lock().take() {
            node.spawn(acknowledge(client.clone(), acks, node.shutdown().clone()));
        }
        let _ = self.client.set(client.clone());
        let js = jetstream::new(client);
        let what = format!("stream {} for persistent sessions", self.config.name);
        let without = "each node queues for its own until it is back";
        let creating = || async { js.get_or_create_stream(self.config.clone()).await.map_err(Into::into) };
        let Some(stream) = super::set_up(&node, &what, without, creating).await else { return };
        info!(stream = %self.config.name, "cluster: persistent sessions are kept in JetStream");
        *self.stream.lock() = Some(stream.clone());
        // Sessions that came while there was no stream are kept now.
        self.connected();
        self.watch_consumers(stream, &node).await;
    }

    /// Keeps [`Queue::wanted`] current (once per [`WANTED_INTERVAL`])
    /// until shutdown.
    async fn watch_consumers(&self, mut stream: stream::Stream, node: &Node) {
        loop {
            let begun = self.set_ups_begun.load(Ordering::Acquire);
            let settled = self.set_ups_done.load(Ordering::Acquire) == begun;
            // A failed look keeps the last answer, and so does one that a
            // consumer set up here may have overtaken.
            if let Ok(Ok(info)) = tokio::time::timeout(JETSTREAM_WAIT, stream.info()).await {
                let wanted = info.state.consumer_count > 0;
                if wanted || (settled && self.set_ups_begun.load(Ordering::Acquire) == begun) {
                    self.wanted.store(wanted, Ordering::Release);
                }
            }
            if node.shutdown().run_until_cancelled(tokio::time::sleep(WANTED_INTERVAL)).await.is_none() {
                return;
            }
        }
    }

    /// Whether a session is kept somewhere, so JetStream must have stored
    /// a QoS 1/2 message before its publisher is acknowledged. (A node
    /// learns of the first kept session elsewhere within
    /// [`WANTED_INTERVAL`]; the stream captures messages meanwhile all the
    /// same.)
    pub(super) fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Acquire)
    }

    fn stream(&self) -> Option<stream::Stream> {
        self.stream.lock().clone()
    }

    /// Whether the stream is set up, so sessions are kept in it.
    pub(super) fn ready(&self) -> bool {
        self.stream.lock().is_some()
    }

    /// The consumer of `session` as its state says it should be, or `None`
    /// when it has no QoS 1/2 subscription to keep messages for.
    fn consumer_config(
        &self,
        session: &Session,
        state: &SessionState,
        window: usize,
    ) -> Option<consumer::pull::Config> {
        let filters: Vec<String> = state
            .subscriptions
            .iter()
            .filter(|(f, s)| f.share_group().is_none() && s.options.qos != QoS::AtMostOnce)
            .flat_map(|(f, _)| self.subjects.filter(f.filter()))
            .collect();
        if filters.is_empty() {
            return None;
        }
        let record = StoredSession {
            client_id: session.client_id().clone(),
            expiry_s: state.expiry_s,
            subscriptions: state.subscriptions.iter().map(|(f, s)| (f.clone(), s.clone())).collect(),
            pending: Vec::new(),
            inflight: Vec::new(),
            incoming_qos2: Vec::new(),
            will: None,
            owner: None,
        };
        Some(consumer::pull::Config {
            durable_name: Some(consumer_name(session.client_id())),
            description: Some("moat: a persistent session".to_owned()),
            // Whatever overlaps is merged up to the whole branch: each
            // message is matched against the subscriptions anyway.
            filter_subjects: disjoint(filters, |p| branch(&self.prefix, p)),
            deliver_policy: consumer::DeliverPolicy::New,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_ack_pending: i64::try_from(window.max(1)).unwrap_or(i64::MAX),
            inactive_threshold: match state.expiry_s {
                u32::MAX => Duration::ZERO,
                s => Duration::from_secs(u64::from(s)),
            },
            metadata: HashMap::from([(SESSION_METADATA.to_owned(), hex(&crate::store::encode_session(&record)))]),
            ..consumer::pull::Config::default()
        })
    }

    /// Creates or updates the consumer `config`, counted as a set-up for
    /// [`Queue::wanted`], which it turns on first: publishers here wait for
    /// JetStream from before the session is kept.
    async fn set_consumer(
        &self,
        stream: &stream::Stream,
        config: consumer::pull::Config,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, async_nats::Error> {
        self.set_ups_begun.fetch_add(1, Ordering::AcqRel);
        self.wanted.store(true, Ordering::Release);
        // Not asked while disconnected: the client would hold the request
        // and send it once reconnected, making the consumer after this
        // node gave up on it (and queued for the session itself).
        if self.client.get().is_none_or(|c| c.connection_state() != async_nats::connection::State::Connected) {
            self.set_ups_done.fetch_add(1, Ordering::AcqRel);
            return Err("not connected to NATS".into());
        }
        let created = tokio::time::timeout(JETSTREAM_WAIT, stream.create_consumer(config)).await;
        self.set_ups_done.fetch_add(1, Ordering::AcqRel);
        Ok(created.map_err(|_| "JetStream did not answer")??)
    }

    /// Keeps `session`, whose connection is attached, in JetStream if it
    /// outlives the connection and has QoS 1/2 subscriptions, and takes its
    /// messages from its consumer (at most `window` unacknowledged) while
    /// the connection lasts; otherwise stops keeping it. Returns whether it
    /// is kept.
    pub(super) async fn keep(self: &Arc<Self>, session: &Arc<Session>, window: usize, node: &Node) -> bool {
        let Some(stream) = self.stream() else { return false };
        let (epoch, config, was) = {
            let mut state = session.lock();
            let config = (state.expiry_s > 0).then(|| self.consumer_config(session, &state, window)).flatten();
            let replica = SessionReplica::of(&mut state);
            replica.parking += 1;
            if config.is_some() {
                // The consumer may have what the router queues here from now
                // until the session is kept (`Taken`).
                replica.setting_up = (replica.setting_up.0 + 1, self.taken_window());
            }
            (replica.parking, config, replica.kept)
        };
        let Some(config) = config else {
            self.lagging.lock().remove(session.client_id());
            if was {
                SessionReplica::of(&mut session.lock()).unkeep();
                let name = consumer_name(session.client_id());
                let _ = tokio::time::timeout(JETSTREAM_WAIT, stream.delete_consumer(&name)).await;
            }
            return false;
        };
        let made = self.set_consumer(&stream, config).await;
        if made.is_ok() {
            self.lagging.lock().remove(session.client_id());
        }
        let mut state = session.lock();
        let online = state.online;
        let under_way = &mut SessionReplica::of(&mut state).setting_up.0;
        *under_way = under_way.saturating_sub(1);
        let consumer = match made {
            Ok(consumer) => consumer,
            Err(e) => {
                drop(state);
                return self.lags(session, &e);
            }
        };
        let replica = SessionReplica::of(&mut state);
        // Handed over to another node meanwhile.
        if replica.parking != epoch {
            return false;
        }
        replica.kept = true;
        if online && replica.feeding.is_none() {
            let stop = node.shutdown().child_token();
            replica.feeding = Some(stop.clone());
            let feeder = Feeder { queue: self.clone(), session: session.clone(), window, stop };
            node.spawn(feeder.run(consumer));
        }
        true
    }

    /// `session`'s consumer could not be made to match it (`error`):
    /// remembered for [`Queue::resync`]. Returns whether the session stays
    /// kept: a kept session does, until its consumer failed
    /// [`LAGGING_ATTEMPTS`] times while NATS was there; then it queues on
    /// its node like one never kept, rather than hold this node's QoS 1/2
    /// publishers for ever.
    fn lags(&self, session: &Session, error: &async_nats::Error) -> bool {
        let connected =
            self.client.get().is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected);
        let kept = session.lock().kept();
        let mut lagging = self.lagging.lock();
        let first = !lagging.contains_key(session.client_id());
        let lag = lagging.entry(session.client_id().clone()).or_insert(Lag { kept, failures: 0 });
        lag.kept = kept;
        lag.failures += u32::from(connected);
        if kept && lag.failures >= LAGGING_ATTEMPTS {
            *lag = Lag { kept: false, failures: 0 };
            drop(lagging);
            SessionReplica::of(&mut session.lock()).unkeep();
            warn!(%error, "cluster: a kept session's consumer cannot be updated; its node queues for it until it can");
            return false;
        }
        match (first, kept) {
            (true, true) => {
                warn!(%error, "cluster: a kept session's consumer not updated; QoS 1/2 messages wait until it is")
            }
            (true, false) => {
                warn!(%error, "cluster: session not kept in JetStream yet; this node queues for it meanwhile")
            }
            _ => debug!(%error, "cluster: a session's consumer still not updated"),
        }
        kept
    }

    /// The connection of kept `session` ended with a new session expiry:
    /// its consumer's record and inactivity threshold follow.
    pub(super) async fn park(&self, session: &Arc<Session>, window: usize) {
        let Some(stream) = self.stream() else { return };
        let (epoch, config) = {
            let mut state = session.lock();
            if !state.kept() || state.online {
                return;
            }
            let replica = SessionReplica::of(&mut state);
            replica.parking += 1;
            let parking = replica.parking;
            (parking, self.consumer_config(session, &state, window))
        };
        let Some(config) = config else { return };
        if let Err(e) = self.set_consumer(&stream, config).await {
            debug!(error = %e, "cluster: a kept session's new expiry not recorded in JetStream");
        } else if SessionReplica::get(&session.lock()).is_none_or(|r| r.parking != epoch) {
            debug!("cluster: a kept session resumed while its expiry was recorded");
        }
    }

    /// The session of `client_id` as its consumer records it (its
    /// subscriptions and expiry; the messages follow once its connection
    /// takes from the consumer), for a node taking over a client whose
    /// node is gone.
    pub(super) async fn recover(&self, client_id: &str) -> Option<StoredSession> {
        let stream = self.stream()?;
        let name = consumer_name(client_id);
        let looking = stream.get_consumer::<consumer::pull::Config>(&name);
        let consumer = tokio::time::timeout(JETSTREAM_WAIT, looking).await.ok()?.ok()?;
        let record = consumer.cached_info().config.metadata.get(SESSION_METADATA)?;
        match unhex(record).map(|bytes| crate::store::decode_session(&bytes)) {
            Some(Ok(session)) if &*session.client_id == client_id => Some(session),
            _ => {
                warn!("cluster: a kept session's record cannot be read; the client starts afresh");
                None
            }
        }
    }

    /// Deletes the consumer of `client_id`'s session, if any, in the
    /// background: the session ended, or a clean start drops what it kept.
    pub(super) fn forget(&self, client_id: &str, node: &Node) {
        self.lagging.lock().remove(client_id);
        let Some(stream) = self.stream() else { return };
        let name = consumer_name(client_id);
        node.spawn(async move {
            let _ = tokio::time::timeout(JETSTREAM_WAIT, stream.delete_consumer(&name)).await;
        });
    }

    /// Tells JetStream, in the background, that the message it delivered
    /// with `ack` reached its client (or never will).
    pub(super) fn acknowledge(&self, ack: &JetStreamAck) {
        // Fails only at shutdown, when JetStream delivers it again later.
        let _ = self.acks.send((ack.reply.clone(), true));
    }

    /// Gives a message JetStream delivered with `ack` back, in the
    /// background, for it to deliver again soon (to another member of a
    /// share group), rather than after `redelivery_s`.
    pub(super) fn give_back(&self, ack: &JetStreamAck) {
        let _ = self.acks.send((ack.reply.clone(), false));
    }

    /// The message a node published, as stored `published` (its expiry
    /// counts from then), with its publisher's client id; `None` if
    /// unreadable or expired.
    fn decode(&self, nats: async_nats::Message, published: SystemTime) -> Option<envelope::Received> {
        let topic = self.subjects.topic_of(nats.subject.as_str())?;
        let topic = TopicName::new(&topic).ok()?;
        let now = Instant::now();
        let mut received = envelope::read(topic, nats, now)?;
        envelope::stored_at(&mut received.message, published, now);
        (!received.message.is_expired(now)).then_some(received)
    }
}

/// What a message pulled from a consumer says of itself.
struct Pulled {
    /// How to answer JetStream for it.
    ack: JetStreamAck,
    /// How many times JetStream has delivered it (1 the first time).
    delivered: i64,
    /// When JetStream stored it.
    published: SystemTime,
}

impl Pulled {
    /// `None` for a message without JetStream's metadata or reply subject
    /// (nothing to answer).
    fn of(message: &jetstream::Message) -> Option<Pulled> {
        let info = message.info().ok()?;
        let reply = Arc::<str>::from(message.message.reply.as_ref()?.as_str());
        let ack = JetStreamAck { seq: info.stream_sequence, reply };
        Some(Pulled { ack, delivered: info.delivered, published: SystemTime::from(info.published) })
    }
}

/// Publishes the answers [`Queue::acknowledge`] and [`Queue::give_back`]
/// queue, until shutdown.
async fn acknowledge(client: async_nats::Client, mut acks: mpsc::UnboundedReceiver<Answer>, stop: CancellationToken) {
    let give_back = bytes::Bytes::from(format!("-NAK {{\"delay\": {}}}", GIVE_BACK_DELAY.as_nanos()));
    while let Some(Some((reply, handled))) = stop.run_until_cancelled(acks.recv()).await {
        let answer = if handled { bytes::Bytes::new() } else { give_back.clone() };
        if let Err(e) = client.publish(async_nats::Subject::from(&*reply), answer).await {
            debug!(error = %e, "cluster: acknowledgement to JetStream not sent; the message comes again");
        }
    }
}

/// The branch wildcard (`{prefix}.t.>` or `{prefix}.d.>`) over `pattern`.
fn branch(prefix: &str, pattern: &str) -> String {
    let rest = pattern.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')).unwrap_or(pattern);
    let branch = rest.split('.').next().unwrap_or("t");
    format!("{prefix}.{branch}.>")
}

/// The consumer of `client_id`'s parked session: `s` and the hex SHA-256
/// of the id (consumer names allow few characters and little length).
fn consumer_name(client_id: &str) -> String {
    format!("s{}", hex(ring::digest::digest(&ring::digest::SHA256, client_id.as_bytes()).as_ref()))
}

/// The consumer of share group `group` of `filter`: `g` and the hex
/// SHA-256 of both.
fn share_consumer_name(filter: &str, group: &str) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [group, "\0", filter] {
        context.update(part.as_bytes());
    }
    format!("g{}", hex(context.finish().as_ref()))
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        assert_eq!(unhex(&hex(&[0, 1, 0xab, 0xff])), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        let name = consumer_name("dev/1");
        assert!(name.len() == 65 && name.starts_with('s') && name.chars().all(|c| c.is_ascii_alphanumeric()));
        let name = share_consumer_name("a/#", "g");
        assert!(name.len() == 65 && name.starts_with('g') && name.chars().all(|c| c.is_ascii_alphanumeric()));
        // The separator keeps `g`+`a/b` and `ga`+`/b` apart.
        assert_ne!(share_consumer_name("/b", "ga"), share_consumer_name("a/b", "g"));
    }

    #[test]
    fn branches_cover_their_patterns() {
        assert_eq!(branch("acme.moat", "acme.moat.t.a.*"), "acme.moat.t.>");
        assert_eq!(branch("moat", "moat.d.$SYS"), "moat.d.>");
    }
}
