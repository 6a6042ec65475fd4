//! Messages for persistent sessions whose client is away, kept in
//! JetStream so that they outlive the node that held the session.
//!
//! The stream `{PREFIX}_QUEUE` captures the subjects every node already
//! publishes on (`{prefix}.t.>`, `{prefix}.d.>`) with interest retention:
//! JetStream keeps a message only while a consumer wants it, so the
//! stream costs nothing while no session is parked, and publishers send
//! nothing extra.
//!
//! **Park.** When the connection of a session that outlives it ends, its
//! node creates a durable consumer for the session (named after the
//! client id, not the node) whose filters are the subjects of its QoS 1/2
//! subscriptions, with the session's subscriptions and expiry in the
//! consumer's metadata and its inactivity threshold set to the session
//! expiry (so JetStream drops it when the session would have ended). From
//! then on the session is *parked*: the node queues no QoS 1/2 message for
//! it any more ([`crate::session::SessionState::parked`]); JetStream does.
//! What was queued before stays in the session's own queue.
//!
//! **Unpark.** A connection resuming the session, on any node, first takes
//! in what the consumer holds (matched against the session's
//! subscriptions, as a delivery would be), unparks the session, takes in
//! what arrived meanwhile and deletes the consumer. If the session's node
//! is gone, the consumer's metadata brings the session back (its
//! subscriptions and expiry) on the new node: the client gets Session
//! Present and every QoS 1/2 message published since it went away.
//!
//! Limits: a message published in the moment between the consumer being
//! created and the session being parked, or between the last take and the
//! consumer's deletion, may arrive twice (QoS 1 allows it; QoS 2 should
//! not). No Local cannot be applied to parked messages (the publisher is
//! not known), and messages queued on a node before the session was parked
//! die with that node.
//!
//! **Publishers.** While any session is parked ([`Queue::wanted`]), QoS 1/2
//! messages go to NATS as JetStream publishes, and their publishers'
//! PUBACK/PUBREC wait until JetStream has stored them (or answered that
//! no parked session wants them): see [`super::Cluster::stored`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tracing::{debug, info, warn};

use super::subject::{Subjects, disjoint};
use super::{JETSTREAM_WAIT, envelope, hex};
use crate::broker::Broker;
use crate::codec::{QoS, TopicName};
use crate::config::ClusterConfig;
use crate::session::{Delivery, Session, Subscription};
use crate::store::StoredSession;

/// Metadata key of the session record on a parked session's consumer.
const SESSION_METADATA: &str = "moat-session";
/// Messages taken from a consumer at once.
const TAKE_BATCH: usize = 256;
/// How long one take waits for the messages the consumer said it has.
const TAKE_WAIT: Duration = Duration::from_secs(1);
/// How often a node looks whether any session is parked.
const WANTED_INTERVAL: Duration = Duration::from_secs(1);

/// This node's side of the queue stream.
#[derive(Debug)]
pub(super) struct Queue {
    config: stream::Config,
    /// Topic subjects (`{prefix}.t...`), as the stream captures them.
    subjects: Subjects,
    prefix: String,
    /// The stream, once set up.
    stream: Mutex<Option<stream::Stream>>,
    /// Whether any session (on any node) is parked: only then does a
    /// publisher's acknowledgement wait for JetStream.
    wanted: AtomicBool,
    /// Parks begun and finished on this node so far: a look at the stream
    /// that began while one was under way, or that one overtook, may not
    /// turn `wanted` off (it may not show that park's consumer).
    parks_begun: AtomicU64,
    parks_done: AtomicU64,
}

impl Queue {
    /// The queue of the cluster of `config`.
    pub(super) fn new(config: &ClusterConfig) -> Queue {
        let prefix = &config.subject_prefix;
        Queue {
            config: stream::Config {
                name: super::jetstream_name(prefix, "QUEUE"),
                description: Some("moat: messages for persistent sessions whose client is away".to_owned()),
                subjects: vec![format!("{prefix}.t.>"), format!("{prefix}.d.>")],
                retention: stream::RetentionPolicy::Interest,
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                ..stream::Config::default()
            },
            subjects: Subjects::new(prefix),
            prefix: prefix.clone(),
            stream: Mutex::new(None),
            wanted: AtomicBool::new(false),
            parks_begun: AtomicU64::new(0),
            parks_done: AtomicU64::new(0),
        }
    }

    /// Sets up the stream, retrying while JetStream is away, then keeps
    /// [`Queue::wanted`] current.
    pub(super) async fn run(self: Arc<Self>, client: async_nats::Client, broker: Arc<Broker>) {
        let js = jetstream::new(client);
        let what = format!("stream {} for persistent sessions", self.config.name);
        let without = "each node queues for its own until it is back";
        let creating = || async { js.get_or_create_stream(self.config.clone()).await.map_err(Into::into) };
        let Some(stream) = super::set_up(&broker, &what, without, creating).await else { return };
        info!(stream = %self.config.name, "cluster: persistent sessions park in JetStream");
        *self.stream.lock() = Some(stream.clone());
        self.watch_consumers(stream, &broker).await;
    }

    /// Keeps [`Queue::wanted`] current (once per [`WANTED_INTERVAL`])
    /// until shutdown.
    async fn watch_consumers(&self, mut stream: stream::Stream, broker: &Broker) {
        loop {
            let begun = self.parks_begun.load(Ordering::Acquire);
            let settled = self.parks_done.load(Ordering::Acquire) == begun;
            // A failed look keeps the last answer, and so does one that a
            // park here may have overtaken.
            if let Ok(Ok(info)) = tokio::time::timeout(JETSTREAM_WAIT, stream.info()).await {
                let wanted = info.state.consumer_count > 0;
                if wanted || (settled && self.parks_begun.load(Ordering::Acquire) == begun) {
                    self.wanted.store(wanted, Ordering::Release);
                }
            }
            if broker.shutdown.run_until_cancelled(tokio::time::sleep(WANTED_INTERVAL)).await.is_none() {
                return;
            }
        }
    }

    /// Whether a session is parked somewhere, so JetStream must have stored
    /// a QoS 1/2 message before its publisher is acknowledged. (A node
    /// learns of the first parked session within [`WANTED_INTERVAL`]; the
    /// stream captures messages meanwhile all the same.)
    pub(super) fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Acquire)
    }

    fn stream(&self) -> Option<stream::Stream> {
        self.stream.lock().clone()
    }

    /// Whether the stream is set up, so sessions park and resume through
    /// it. (Until it is, a resuming session's parked messages stay in
    /// JetStream for its next resume.)
    pub(super) fn ready(&self) -> bool {
        self.stream.lock().is_some()
    }

    /// Parks `session`, whose connection just ended and which outlives it.
    /// A session with no QoS 1/2 subscription has nothing to keep and is
    /// not parked. Returns whether it is parked now.
    pub(super) async fn park(&self, session: &Arc<Session>) -> bool {
        let Some(stream) = self.stream() else { return false };
        let (epoch, record, filters) = {
            let mut state = session.lock();
            state.parking += 1;
            let filters: Vec<String> = state
                .subscriptions
                .iter()
                .filter(|(f, s)| f.share_group().is_none() && s.options.qos != QoS::AtMostOnce)
                .flat_map(|(f, _)| self.subjects.filter(f.filter()))
                .collect();
            if filters.is_empty() {
                return false;
            }
            let record = StoredSession {
                client_id: session.client_id().clone(),
                expiry_s: state.expiry_s,
                subscriptions: state.subscriptions.iter().map(|(f, s)| (f.clone(), s.clone())).collect(),
                pending: Vec::new(),
                inflight: Vec::new(),
                incoming_qos2: Vec::new(),
                will: None,
            };
            (state.parking, record, filters)
        };
        let name = consumer_name(session.client_id());
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            description: Some("moat: a persistent session whose client is away".to_owned()),
            // Whatever overlaps is merged up to the whole branch: the take
            // matches every message against the subscriptions anyway.
            filter_subjects: disjoint(filters, |p| branch(&self.prefix, p)),
            deliver_policy: consumer::DeliverPolicy::New,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: match record.expiry_s {
                u32::MAX => Duration::ZERO,
                s => Duration::from_secs(u64::from(s)),
            },
            metadata: HashMap::from([(SESSION_METADATA.to_owned(), hex(&crate::store::encode_session(&record)))]),
            ..consumer::pull::Config::default()
        };
        // Resumed (or handed over) since: nothing to park.
        if session.lock().parking != epoch {
            return false;
        }
        // Publishers here wait for JetStream from before the session is
        // parked: none of its messages is acknowledged unstored.
        self.parks_begun.fetch_add(1, Ordering::AcqRel);
        self.wanted.store(true, Ordering::Release);
        let created = tokio::time::timeout(JETSTREAM_WAIT, stream.create_consumer(config)).await;
        self.parks_done.fetch_add(1, Ordering::AcqRel);
        match created {
            Ok(Ok(_)) => {
                let parked = {
                    let mut state = session.lock();
                    let current = state.parking == epoch && !state.online;
                    state.parked |= current;
                    current
                };
                if !parked {
                    // Resumed meanwhile: the session has its messages.
                    let _ = stream.delete_consumer(&name).await;
                }
                parked
            }
            Ok(Err(e)) => {
                debug!(error = %e, "cluster: session not parked; its node queues for it");
                false
            }
            Err(_) => {
                debug!("cluster: session not parked in time; its node queues for it");
                false
            }
        }
    }

    /// The session of `client_id` as its parked consumer records it (its
    /// subscriptions and expiry; the messages follow in [`Queue::unpark`]),
    /// for a node taking over a client whose node is gone.
    pub(super) async fn recover(&self, client_id: &str) -> Option<StoredSession> {
        let stream = self.stream()?;
        let name = consumer_name(client_id);
        let looking = stream.get_consumer::<consumer::pull::Config>(&name);
        let consumer = tokio::time::timeout(JETSTREAM_WAIT, looking).await.ok()?.ok()?;
        let record = consumer.cached_info().config.metadata.get(SESSION_METADATA)?;
        match unhex(record).map(|bytes| crate::store::decode_session(&bytes)) {
            Some(Ok(session)) if &*session.client_id == client_id => Some(session),
            _ => {
                warn!("cluster: a parked session's record cannot be read; the client starts afresh");
                None
            }
        }
    }

    /// Before a connection attaches to `session`: if it is parked (here,
    /// or, when `elsewhere`, where it was before), moves what its consumer
    /// holds into it, unparks it and deletes the consumer. A park still
    /// under way is called off either way.
    pub(super) async fn unpark(&self, session: &Arc<Session>, elsewhere: bool, broker: &Broker) {
        let parked = {
            let mut state = session.lock();
            state.parking += 1;
            state.parked
        };
        let stream = self.stream();
        let Some(stream) = stream.filter(|_| parked || elsewhere) else {
            session.lock().parked = false;
            return;
        };
        let name = consumer_name(session.client_id());
        let unparking = async {
            // Looking costs the connecting client's CONNACK its wait:
            // bounded apart, as most sessions were never parked.
            let looking = stream.get_consumer::<consumer::pull::Config>(&name);
            let mut consumer = match tokio::time::timeout(JETSTREAM_WAIT, looking).await {
                Ok(Ok(consumer)) => consumer,
                Ok(Err(e)) if not_found(&e) => return Ok(false),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err("JetStream did not answer".into()),
            };
            let mut taken = Vec::new();
            self.take(&mut consumer, session, &mut taken).await?;
            {
                let mut state = session.lock();
                state.parked = false;
                push(session, &mut state, taken.drain(..), broker);
            }
            // What was stored while the first take ran.
            self.take(&mut consumer, session, &mut taken).await?;
            push(session, &mut session.lock(), taken.drain(..), broker);
            Ok(true)
        };
        let outcome = tokio::time::timeout(JETSTREAM_WAIT * 3, unparking).await;
        session.lock().parked = false;
        match outcome {
            Ok(Ok(true)) => {
                let _ = tokio::time::timeout(JETSTREAM_WAIT, stream.delete_consumer(&name)).await;
            }
            Ok(Ok(false)) => {}
            // The consumer stays: what it still holds comes with the next
            // resume (perhaps twice), rather than never.
            Ok(Err(e)) => warn!(error = %e, "cluster: messages parked in JetStream not all taken in"),
            Err(_) => warn!("cluster: messages parked in JetStream not all taken in in time"),
        }
    }

    /// Deletes the consumer of `client_id`'s parked session, if any, in
    /// the background: a clean start drops what it kept.
    pub(super) fn forget(&self, client_id: &str, broker: &Broker) {
        let Some(stream) = self.stream() else { return };
        let name = consumer_name(client_id);
        broker.tasks.spawn(async move {
            let _ = tokio::time::timeout(JETSTREAM_WAIT, stream.delete_consumer(&name)).await;
        });
    }

    /// Takes everything the consumer holds now, as deliveries for
    /// `session`. The consumer says how many that is: a fetch may come back
    /// short of it (a consumer leader just elected is still catching up),
    /// so fetches wait a little and go on until that many came, or until
    /// one brings nothing.
    async fn take(
        &self,
        consumer: &mut consumer::Consumer<consumer::pull::Config>,
        session: &Session,
        out: &mut Vec<Delivery>,
    ) -> Result<(), async_nats::Error> {
        let mut left = consumer.info().await?.num_pending;
        while left > 0 {
            let wanted = usize::try_from(left).unwrap_or(usize::MAX).min(TAKE_BATCH);
            let mut batch = consumer.batch().max_messages(wanted).expires(TAKE_WAIT).messages().await?;
            let mut got = 0;
            while let Some(message) = batch.next().await {
                let message = message?;
                got += 1;
                let published = message.info().map(|i| SystemTime::from(i.published)).ok();
                let Some(message) = self.decode(message.message, published) else { continue };
                let state = session.lock();
                if let Some(delivery) = delivery(Arc::new(message), &state.subscriptions) {
                    out.push(delivery);
                }
            }
            if got == 0 {
                return Err(format!("{left} parked messages did not come").into());
            }
            left = left.saturating_sub(got);
        }
        Ok(())
    }

    /// The message a node published, as stored `published` (its expiry
    /// counts from then).
    fn decode(&self, nats: async_nats::Message, published: Option<SystemTime>) -> Option<crate::router::Message> {
        let topic = self.subjects.topic_of(nats.subject.as_str())?;
        let topic = TopicName::new(&topic).ok()?;
        let header = nats.headers.as_ref()?.get(envelope::MESSAGE_HEADER)?.as_str().to_owned();
        let now = Instant::now();
        let mut message = envelope::decode(topic, nats.payload, &header, now)?;
        if let Some(published) = published {
            envelope::stored_at(&mut message, published, now);
        }
        (!message.is_expired(now)).then_some(message)
    }
}

/// Whether `error` says the consumer does not exist.
fn not_found(error: &async_nats::Error) -> bool {
    error
        .downcast_ref::<jetstream::context::ConsumerInfoError>()
        .is_some_and(|e| e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound)
}

/// Queues taken deliveries in order, to the store too, counting what does
/// not fit.
fn push(
    session: &Session,
    state: &mut crate::session::SessionState,
    deliveries: impl Iterator<Item = Delivery>,
    broker: &Broker,
) {
    for mut delivery in deliveries {
        if state.expiry_s > 0 {
            delivery.stored = broker.store.queued(session.client_id(), &delivery);
        }
        if !state.push(delivery) {
            broker.metrics.dropped(crate::metrics::DropReason::QueueFull, 1);
        }
    }
}

/// The delivery of `message` to a session with `subscriptions`, as the
/// router would make it; `None` unless some non-shared subscription
/// matches at QoS 1 or 2.
fn delivery(
    message: Arc<crate::router::Message>,
    subscriptions: &HashMap<crate::codec::TopicFilter, Subscription>,
) -> Option<Delivery> {
    let mut granted = None;
    let (mut retain, mut ids) = (false, Vec::new());
    for (filter, sub) in subscriptions {
        if filter.share_group().is_some()
            || !crate::codec::topic::filter_matches(filter.filter(), message.topic.as_str())
        {
            continue;
        }
        granted = granted.max(Some(sub.options.qos));
        retain |= sub.options.retain_as_published;
        ids.extend(sub.id);
    }
    let qos = message.qos.min(granted?);
    (qos != QoS::AtMostOnce).then(|| Delivery {
        retain: message.retain && retain,
        message,
        qos,
        subscription_ids: ids,
        stored: None,
    })
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

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Properties, SubscriptionOptions, TopicFilter};

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        assert_eq!(unhex(&hex(&[0, 1, 0xab, 0xff])), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        let name = consumer_name("dev/1");
        assert!(name.len() == 65 && name.starts_with('s') && name.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn branches_cover_their_patterns() {
        assert_eq!(branch("acme.moat", "acme.moat.t.a.*"), "acme.moat.t.>");
        assert_eq!(branch("moat", "moat.d.$SYS"), "moat.d.>");
    }

    #[test]
    fn a_taken_message_is_delivered_as_the_router_would() {
        let sub = |qos, id, rap| Subscription {
            options: SubscriptionOptions { qos, retain_as_published: rap, ..SubscriptionOptions::default() },
            id,
        };
        let subscriptions = HashMap::from([
            (TopicFilter::new("a/#").expect("valid"), sub(QoS::AtLeastOnce, Some(1), false)),
            (TopicFilter::new("a/+").expect("valid"), sub(QoS::ExactlyOnce, Some(2), true)),
            (TopicFilter::new("$share/g/a/b").expect("valid"), sub(QoS::ExactlyOnce, Some(3), true)),
            (TopicFilter::new("zero/#").expect("valid"), sub(QoS::AtMostOnce, None, false)),
        ]);
        let message = |topic: &str, qos| {
            let topic = TopicName::new(topic).expect("valid");
            Arc::new(crate::router::Message::new(topic, bytes::Bytes::new(), qos, true, &Properties::default()))
        };
        let d = delivery(message("a/b", QoS::ExactlyOnce), &subscriptions).expect("matches");
        let mut ids = d.subscription_ids.clone();
        ids.sort_unstable();
        assert_eq!((d.qos, d.retain, ids), (QoS::ExactlyOnce, true, vec![1, 2]));
        let d = delivery(message("a/b/c", QoS::ExactlyOnce), &subscriptions).expect("matches");
        assert_eq!((d.qos, d.retain, d.subscription_ids), (QoS::AtLeastOnce, false, vec![1]));
        assert!(delivery(message("zero/1", QoS::AtLeastOnce), &subscriptions).is_none(), "granted QoS 0");
        assert!(delivery(message("a/b", QoS::AtMostOnce), &subscriptions).is_none(), "published at QoS 0");
        assert!(delivery(message("b", QoS::AtLeastOnce), &subscriptions).is_none());
    }
}
