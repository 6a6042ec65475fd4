//! The broker's shared state and the session lifecycle around connections.

mod share;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Policy;
use crate::codec::Will;
use crate::config::Config;
use crate::metrics::{DropReason, Metrics};
use crate::reload::Reloader;
use crate::router::{Message, Router, Scope};
use crate::session::{Attached, Delivery, Held, Registry, Session};
use crate::store::{PendingWill, Recovered, Store, StoredSession};

/// State shared by every connection: configuration, subscriptions,
/// sessions, and the shutdown signal.
#[derive(Debug)]
pub struct Broker {
    /// The running configuration; replaced whole by a config reload.
    config: ArcSwap<Config>,
    /// Subscription index and retained messages.
    pub router: Router,
    /// Sessions by client id.
    pub sessions: Registry,
    /// Counters and gauges for operators (`/metrics`, `$SYS`).
    pub metrics: Metrics,
    /// Cancelled when the broker shuts down.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks and timers so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Durable copy of sessions and retained messages.
    pub store: Arc<dyn Store>,
    /// The plugin chain in force; replaced whole on reload. A sync lock is
    /// right here: readers clone an `Arc` and let go at once.
    policy: parking_lot::RwLock<Policy>,
    /// Failed logins and logins in progress per client address (`[auth]`),
    /// checked before the authentication chain runs.
    pub(crate) logins: crate::auth::LoginThrottle,
    /// What hot reload needs: the plugin host, the watched directory, the
    /// handles of run-time settings, and the last outcome.
    pub(crate) reload: Reloader,
    next_assigned_id: AtomicU64,
    /// The link to the other nodes, with a `[cluster]` section.
    #[cfg(feature = "cluster")]
    cluster: Option<crate::cluster::Cluster>,
}

/// Why a connection could not attach to its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttachRefused {
    /// The previous connection of the client id did not let go in time.
    #[error("the previous connection did not release the session")]
    Busy,
    /// The session would be a new one beyond `limits.max_sessions`.
    #[error("limits.max_sessions reached")]
    TooManySessions,
}

/// Why a publish was refused before any subscriber got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The retained store is at `limits.max_retained_messages` or
    /// `max_retained_bytes`.
    #[error("the retained store is full")]
    RetainedFull,
    /// In a cluster that keeps sessions in JetStream: the message could not
    /// be handed on towards JetStream now (the queue to NATS is full), so
    /// its publisher must not be acknowledged.
    #[error("the cluster cannot take the message now")]
    NotForwarded,
}

impl Broker {
    /// A broker whose state starts as what `store` recovered.
    pub fn new(config: Config, store: Arc<dyn Store>, recovered: Recovered, policy: Policy) -> Arc<Broker> {
        let plugin_dir = crate::reload::plugin_dir(&config);
        #[cfg(feature = "cluster")]
        let (cluster, router) = match &config.cluster {
            Some(c) => {
                let (cluster, interest) = crate::cluster::Cluster::new(c);
                (Some(cluster), Router::with_interest(interest))
            }
            None => (None, Router::default()),
        };
        #[cfg(not(feature = "cluster"))]
        let router = Router::default();
        router.set_share_bound(config.limits.queue_bound());
        let broker = Arc::new(Broker {
            config: ArcSwap::from_pointee(config),
            router,
            sessions: Registry::default(),
            metrics: Metrics::default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            store,
            policy: parking_lot::RwLock::new(policy),
            logins: crate::auth::LoginThrottle::default(),
            reload: Reloader::new(plugin_dir),
            next_assigned_id: AtomicU64::new(1),
            #[cfg(feature = "cluster")]
            cluster,
        });
        for message in recovered.retained {
            broker.router.retained().set(&message);
        }
        for (share, deliveries) in recovered.shared {
            broker.router.restore_waiting(share, deliveries);
        }
        for mut stored in recovered.sessions {
            let will = stored.will.take();
            let expiry_s = stored.expiry_s;
            let session = broker.restore(stored);
            session.lock().will_pending = will.is_some();
            let timers = CancellationToken::new();
            session.lock().timers = Some(timers.clone());
            if let Some(will) = will {
                // Due while the broker was down: publish it now.
                let wait = Duration::from_millis(will.due_ms.saturating_sub(crate::store::now_ms()));
                broker.schedule_will(session.clone(), 0, will, wait, timers.clone());
            }
            // Its share groups' messages wait for it as after a disconnect.
            broker.hold_shared(session.clone(), 0, timers.clone());
            broker.arm_expiry(session, 0, expiry_s, timers);
        }
        broker
    }

    /// Registers `stored` (its will aside) as an offline session and
    /// subscribes it.
    fn restore(&self, stored: StoredSession) -> Arc<Session> {
        let session = self.sessions.restore(stored.client_id.clone(), self.config().limits.queue_bound());
        {
            let mut state = session.lock();
            state.expiry_s = stored.expiry_s;
            state.owner = stored.owner;
            state.restore_pending(stored.pending);
            state.inflight.extend(stored.inflight);
            state.incoming_qos2.extend(stored.incoming_qos2);
        }
        for (filter, subscription) in stored.subscriptions {
            self.router.subscribe(&session, &filter, &subscription);
            session.lock().subscriptions.insert(filter, subscription);
        }
        session
    }

    /// Ends the session of `client_id` here for another node, which takes
    /// it over: the attached connection leaves (v5: 0x8E Session taken
    /// over), a will waiting for its delay is cancelled as a reconnect
    /// cancels it, and unless `keep` is false the session is returned to
    /// be moved. `None` when there is no session to move.
    #[cfg(feature = "cluster")]
    pub(crate) async fn hand_over(&self, client_id: &str, keep: bool) -> Option<StoredSession> {
        let taken = self.sessions.take(client_id, |session| {
            let moved = {
                let mut state = session.lock();
                if let Some(timers) = state.timers.take() {
                    timers.cancel();
                }
                // An update of its consumer by the connection that just left
                // is called off; the new node takes the consumer over.
                state.parking += 1;
                state.kept = false;
                if std::mem::take(&mut state.will_pending) {
                    self.store.will(session.client_id(), None);
                }
                keep.then(|| StoredSession {
                    client_id: session.client_id().clone(),
                    expiry_s: state.expiry_s,
                    subscriptions: state.subscriptions.iter().map(|(f, s)| (f.clone(), s.clone())).collect(),
                    // Taken, not copied: the deliveries move to the new
                    // node, which answers JetStream for them; the discard
                    // below gives back only what stays.
                    pending: std::mem::take(&mut state.pending).into(),
                    inflight: std::mem::take(&mut state.inflight).into(),
                    incoming_qos2: state.incoming_qos2.iter().copied().collect(),
                    will: None,
                    owner: state.owner.clone(),
                })
            };
            self.discard(session);
            moved
        });
        taken.await.flatten()
    }

    /// Takes in a session another node handed over: it replaces any
    /// session this node still had for that client (left from before the
    /// other node took the client over), and goes to the store as a
    /// session that outlives its connection would.
    #[cfg(feature = "cluster")]
    fn adopt(&self, stored: StoredSession) {
        if let Some(stale) = self.sessions.get(&stored.client_id) {
            self.discard(&stale);
        }
        let session = self.restore(stored);
        let client_id = session.client_id();
        let state = session.lock();
        self.store.session_opened(client_id, state.expiry_s);
        for (filter, subscription) in &state.subscriptions {
            self.store.subscribed(client_id, filter, subscription);
        }
        for id in &state.incoming_qos2 {
            self.store.incoming_qos2(client_id, *id, true);
        }
        drop(state);
        self.save_messages(&session);
    }

    /// The link to the other nodes, when this node is part of a cluster.
    #[cfg(feature = "cluster")]
    pub fn cluster(&self) -> Option<&crate::cluster::Cluster> {
        self.cluster.as_ref()
    }

    /// Whether publishes also go to other nodes (so no local subscriber
    /// does not mean nobody receives them).
    #[cfg(feature = "cluster")]
    pub fn is_clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// Whether publishes also go to other nodes: never without the
    /// `cluster` feature.
    #[cfg(not(feature = "cluster"))]
    pub fn is_clustered(&self) -> bool {
        false
    }

    /// The configuration in force now. A reload replaces it whole, so read
    /// it once per decision rather than field by field across an `.await`.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Replaces the configuration (config reload).
    pub(crate) fn set_config(&self, config: Config) {
        self.router.set_share_bound(config.limits.queue_bound());
        self.config.store(Arc::new(config));
    }

    /// The policy in force now. Calls in flight keep the one they took.
    pub fn policy(&self) -> Policy {
        self.policy.read().clone()
    }

    /// Puts a new policy in force (start-up, reload) and returns the one it
    /// replaces. The caller drops that one: dropping the last handle tears
    /// down its warm instances and memories, which must happen neither
    /// under this lock (every publish reads it) nor on a runtime thread.
    #[must_use = "drop the previous policy off the runtime"]
    pub fn set_policy(&self, policy: Policy) -> Policy {
        std::mem::replace(&mut *self.policy.write(), policy)
    }

    /// A fresh client identifier for a client that sent an empty one.
    pub fn assign_client_id(&self) -> Arc<str> {
        let n = self.next_assigned_id.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        format!("moat-{nanos:08x}-{n}").into()
    }

    /// Publishes a message: stores it if retained, then routes it.
    /// Returns the number of sessions it was delivered to.
    ///
    /// A retained message the retained store has no room for is routed
    /// without being retained (and counted as dropped, `retained_full`).
    pub fn publish(&self, message: Message, publisher: Option<&Arc<Session>>) -> usize {
        self.publish_shared(Arc::new(message), publisher, false, false, None).unwrap_or(0)
    }

    /// [`Broker::publish`] of a message already shared. With
    /// `refuse_over_quota`, a retained message the retained store has no
    /// room for (`limits.max_retained_messages`, `max_retained_bytes`) is
    /// not published at all, so the publisher can be told (v5 0x97).
    /// `acknowledged` says a client waits for this message's PUBACK or
    /// PUBREC: in a cluster that keeps sessions in JetStream, a QoS 1/2
    /// message that cannot be handed on towards JetStream now (its queue to
    /// NATS full) is then refused rather than acknowledged and kept from
    /// the sessions that JetStream should have it for. With `held`, QoS 1/2 deliveries that full queues
    /// of online sessions refuse are handed back there for the publisher to
    /// hold ([`Session::offer`]).
    ///
    /// # Errors
    /// [`Refused`] when the message was refused.
    pub fn publish_shared(
        &self,
        message: Arc<Message>,
        publisher: Option<&Arc<Session>>,
        refuse_over_quota: bool,
        acknowledged: bool,
        held: Option<&mut Vec<Held>>,
    ) -> Result<usize, Refused> {
        let retained = message.retain && self.retain(&message);
        if message.retain && !retained && refuse_over_quota {
            return Err(Refused::RetainedFull);
        }
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            use crate::cluster::Forwarded;
            match cluster.forward(&message, publisher.map(|p| p.client_id()), retained, self) {
                Forwarded::Yes => {}
                // JetStream must have it before its publisher hears, and
                // will once NATS takes more: the publisher tries again.
                Forwarded::Full
                    if acknowledged
                        && message.qos != crate::codec::QoS::AtMostOnce
                        && cluster.waits_for_jetstream() =>
                {
                    return Err(Refused::NotForwarded);
                }
                // Stays here: no node would serve the share groups, and
                // JetStream does not have it for kept sessions.
                Forwarded::Full | Forwarded::TooLong => {
                    return Ok(self.router.route(&message, publisher, &*self.store, &self.metrics, held));
                }
            }
        }
        #[cfg(not(feature = "cluster"))]
        let _ = acknowledged;
        Ok(self.router.route_scoped(&message, publisher, self.local_scope(), &*self.store, &self.metrics, held))
    }

    /// Which local subscriptions a message that went through NATS (or is
    /// published here without a cluster) reaches here: all, or, while the
    /// cluster serves share groups across nodes, all but the share groups
    /// (their members get it from the node NATS picks). With sessions kept
    /// in JetStream, the queue stream holds it for them.
    fn local_scope(&self) -> Scope<'static> {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            let in_queue = cluster.keeps_sessions();
            return if cluster.shares_across_nodes() { Scope::Plain { in_queue } } else { Scope::All { in_queue } };
        }
        Scope::All { in_queue: false }
    }

    /// Keeps a retained message if the retained store has room; otherwise
    /// counts it as dropped and returns false.
    fn retain(&self, message: &Arc<Message>) -> bool {
        let config = self.config();
        let limits = &config.limits;
        if self.router.retained().set_within(message, limits.max_retained_messages, limits.max_retained_bytes) {
            self.store.retain(message);
            true
        } else {
            self.metrics.dropped(DropReason::RetainedFull, 1);
            false
        }
    }

    /// Routes a message another node of the cluster published to the
    /// local sessions, never forwarded again. A retained one is retained
    /// here too only while the cluster's retained stream is not watched
    /// (best effort: a node that was not up misses it); otherwise the
    /// stream sets the store, in its one order.
    #[cfg(feature = "cluster")]
    pub(crate) fn deliver_remote(&self, message: Arc<Message>) -> usize {
        if message.retain && !self.cluster.as_ref().is_some_and(crate::cluster::Cluster::retained_watched) {
            self.retain(&message);
        }
        self.router.route_scoped(&message, None, self.local_scope(), &*self.store, &self.metrics, None)
    }

    /// Routes a message NATS handed to this node for one share group: to
    /// one member of `group` with exactly `filter`.
    #[cfg(feature = "cluster")]
    pub(crate) fn deliver_shared(&self, message: Arc<Message>, filter: &str, group: &str) -> usize {
        self.router.route_scoped(&message, None, Scope::Group { filter, group }, &*self.store, &self.metrics, None)
    }

    /// Sets the retained message of a topic from the cluster's retained
    /// stream (an empty payload clears it), within the retained limits.
    #[cfg(feature = "cluster")]
    pub(crate) fn retain_from_cluster(&self, message: &Arc<Message>) {
        self.retain(message);
    }

    /// Publishes a message of the broker's own (`$SYS`): retained in memory
    /// only, since it is rebuilt at every interval, and routed like any other
    /// message, so subscription and receive authorization apply.
    pub fn publish_system(&self, message: Message) -> usize {
        let message = Arc::new(message);
        if message.retain {
            self.router.retained().set(&message);
        }
        self.router.route(&message, None, &*self.store, &self.metrics, None)
    }

    /// Disconnects the client connected as `client_id` (admin API); a v5
    /// client is told 0x98 Administrative action. Returns whether a
    /// connection was attached to that session.
    pub fn kick(&self, client_id: &str) -> bool {
        let Some(session) = self.sessions.get(client_id) else { return false };
        session.kick(true)
    }

    /// Attaches a connection to the session of `client_id`.
    ///
    /// # Errors
    /// [`AttachRefused`]: the previous connection did not let go, or a new
    /// session would exceed `limits.max_sessions` (checked without a lock
    /// across the attach, so concurrent CONNECTs may pass it together).
    pub async fn attach(&self, client_id: &Arc<str>, clean_start: bool) -> Result<Attached, AttachRefused> {
        let (max_sessions, bound) = {
            let config = self.config();
            (config.limits.max_sessions, config.limits.queue_bound())
        };
        if self.sessions.get(client_id).is_none() && self.sessions.len() >= max_sessions {
            return Err(AttachRefused::TooManySessions);
        }
        let claimed = self.claim(client_id, clean_start).await;
        let attached = self
            .sessions
            .attach(client_id, clean_start, bound, |old| self.discard(old))
            .await
            .ok_or(AttachRefused::Busy)?;
        if claimed.is_some() {
            attached.session.lock().claimed = claimed;
        }
        // A reconnect cancels a will waiting for its delay [MQTT-3.1.3-9].
        if std::mem::take(&mut attached.session.lock().will_pending) {
            self.store.will(client_id, None);
        }
        Ok(attached)
    }

    /// In a cluster, before a connection attaches: claims the session of
    /// `client_id` for this node, bringing it over from the node that held
    /// it, or back from its consumer's record if that node is gone
    /// (`cluster::ownership`, `cluster::queue`). Returns the revision of
    /// the claim, if one was made.
    async fn claim(&self, client_id: &Arc<str>, clean_start: bool) -> Option<u64> {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            let mut claim = cluster.claim(client_id, clean_start).await;
            let mut moved = claim.moved.take();
            let local = self.sessions.get(client_id);
            if clean_start {
                if claim.kept || local.is_some_and(|s| s.lock().kept) {
                    cluster.forget_session(client_id, self);
                }
                return claim.revision;
            }
            if claim.kept && moved.is_none() && local.is_none() {
                // Kept by a node that is gone (or forgot it).
                moved = cluster.recover(client_id).await;
            }
            if let Some(moved) = moved {
                self.adopt(moved);
            }
            // JetStream keeps its messages (whoever held it said so): none
            // are queued here until its connection feeds from the consumer.
            if claim.kept
                && let Some(session) = self.sessions.get(client_id)
            {
                session.lock().kept = true;
            }
            return claim.revision;
        }
        let _ = (client_id, clean_start);
        None
    }

    /// Ends a session: removes its subscriptions, sends the share groups'
    /// messages its client has not received on to other members
    /// [MQTT-4.8.2], and forgets it.
    pub fn discard(&self, session: &Arc<Session>) {
        let (filters, claimed, shared): (Vec<_>, _, _) = {
            let mut state = session.lock();
            if let Some(feeding) = state.feeding.take() {
                feeding.cancel();
            }
            let shared = state.take_shared();
            // What JetStream delivered for it goes back, to be delivered
            // again at once (to another member of a share group).
            #[cfg(feature = "cluster")]
            if let Some(cluster) = &self.cluster {
                let inflight = state.inflight.iter().map(|i| &i.delivery);
                for ack in state.pending.iter().chain(inflight).filter_map(|d| d.jetstream.as_deref()) {
                    cluster.give_back(ack);
                }
            }
            state.clear_pending();
            state.inflight.clear();
            (state.subscriptions.drain().map(|(f, _)| f).collect(), state.claimed.take(), shared)
        };
        for filter in &filters {
            self.router.unsubscribe(session, filter);
        }
        // No member any more: the others take what it gave up.
        self.redispatch(session, shared);
        if self.sessions.remove(session) {
            self.store.session_ended(session.client_id());
            #[cfg(feature = "cluster")]
            if let (Some(cluster), Some(revision)) = (&self.cluster, claimed) {
                cluster.release(session.client_id(), revision, self);
            }
        }
        #[cfg(not(feature = "cluster"))]
        let _ = claimed;
    }

    /// A session that ended was `kept` in JetStream: its consumer goes.
    fn forget_kept(&self, session: &Session, kept: bool) {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = self.cluster.as_ref().filter(|_| kept) {
            cluster.forget_session(session.client_id(), self);
        }
        #[cfg(not(feature = "cluster"))]
        let _ = (session, kept);
    }

    /// Saves every session's messages to the store (at shutdown).
    pub fn persist_sessions(&self) {
        for session in self.sessions.all() {
            self.save_messages(&session);
        }
    }

    fn save_messages(&self, session: &Arc<Session>) {
        // Under the lock, so messages queued to the store later
        // (`Store::queued`) come after this snapshot, never before. Messages
        // without a key get one here, so their delivery deletes them.
        // Messages JetStream keeps are not stored twice: after a restart,
        // JetStream delivers them again.
        let mut state = session.lock();
        let state = &mut *state;
        let unkeyed = state.inflight.iter_mut().map(|i| &mut i.delivery).chain(state.pending.iter_mut());
        for delivery in unkeyed.filter(|d| d.stored.is_none() && d.jetstream.is_none()) {
            delivery.stored = self.store.message_key();
        }
        let pending = state.pending.iter().filter(|d| d.jetstream.is_none()).cloned().collect();
        let inflight = state.inflight.iter().filter(|i| i.delivery.jetstream.is_none()).cloned().collect();
        self.store.session_messages(session.client_id(), pending, inflight);
    }

    /// A delivery is done with (the client acknowledged it, or it was
    /// dropped on its way out): the store forgets it and, in a cluster,
    /// JetStream stops keeping it.
    pub(crate) fn delivered(&self, client_id: &Arc<str>, delivery: &Delivery) {
        if let Some(stored) = delivery.stored {
            self.store.delivered(client_id, stored);
        }
        if let Some(ack) = &delivery.jetstream {
            self.acknowledged(ack);
        }
    }

    /// Tells JetStream that a message it keeps for a session reached its
    /// client (or never will).
    pub(crate) fn acknowledged(&self, ack: &crate::session::JetStreamAck) {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            cluster.acknowledge(ack);
        }
        #[cfg(not(feature = "cluster"))]
        let _ = ack;
    }

    /// Called when a connection ends: publishes or schedules the will,
    /// and ends the session now or arms its expiry timer.
    pub fn detach(self: &Arc<Self>, attached: Attached, will: Option<Will>, expiry_s: u32) {
        let session = attached.session.clone();
        let generation = attached.generation;
        let timers = CancellationToken::new();
        let (kept, expiry_changed) = {
            let mut state = session.lock();
            state.online = false;
            state.kickable = false;
            state.connected_since = None;
            session.forget_connection();
            let expiry_changed = std::mem::replace(&mut state.expiry_s, expiry_s) != expiry_s;
            state.timers = Some(timers.clone());
            if let Some(feeding) = state.feeding.take() {
                feeding.cancel();
            }
            (state.kept, expiry_changed)
        };
        // Publishers holding deliveries for it offer them again: offline,
        // a full queue drops rather than holds.
        session.release_waiting();
        // A will that waits for its delay is stored while this connection
        // still holds the session, so a reconnect's cancel comes after it.
        let mut delayed = None;
        let mut now = None;
        if let Some(will) = will {
            let delay = will.properties.will_delay_interval.unwrap_or(0);
            let mut message = Message::new(will.topic, will.payload, will.qos, will.retain, &will.properties);
            if delay == 0 || expiry_s == 0 {
                now = Some(message);
            } else {
                // The will waits for the delay or the session's end, whichever
                // comes first, and is cancelled by a reconnect [MQTT-3.1.3-9].
                // Its expiry starts when it is published.
                message.expires_at = None;
                let wait_s = delay.min(expiry_s);
                let pending = PendingWill {
                    message: Arc::new(message),
                    expiry_s: will.properties.message_expiry_interval,
                    due_ms: crate::store::now_ms() + u64::from(wait_s) * 1000,
                };
                session.lock().will_pending = true;
                self.store.will(session.client_id(), Some(&pending));
                delayed = Some((pending, Duration::from_secs(u64::from(wait_s))));
            }
        }
        if expiry_s == 0 {
            // End the session while this connection still holds it, so a
            // client taking over waits for the end and then starts afresh.
            self.discard(&session);
            self.forget_kept(&session, kept);
        } else {
            self.save_messages(&session);
            self.hold_shared(session.clone(), generation, timers.clone());
            self.arm_expiry(session.clone(), generation, expiry_s, timers.clone());
            // The consumer records the expiry: rewritten only if the
            // DISCONNECT changed it.
            #[cfg(feature = "cluster")]
            if let Some(cluster) = self.cluster.as_ref().filter(|_| kept && expiry_changed) {
                cluster.park(session.clone(), self);
            }
            #[cfg(not(feature = "cluster"))]
            let _ = expiry_changed;
        }
        drop(attached);
        if let Some(message) = now {
            self.publish(message, Some(&session));
        }
        if let Some((will, wait)) = delayed {
            self.schedule_will(session, generation, will, wait, timers);
        }
    }

    /// Publishes a will after `wait` unless a connection attached to
    /// `session` since `generation` (which cancels `timers`); then forgets
    /// it in the store.
    fn schedule_will(
        self: &Arc<Self>,
        session: Arc<Session>,
        generation: u64,
        will: PendingWill,
        wait: Duration,
        timers: CancellationToken,
    ) {
        let broker = self.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = broker.shutdown.cancelled() => {}
                () = timers.cancelled() => return,
            }
            let due = {
                let mut state = session.lock();
                let due = state.generation == generation && !state.online && state.will_pending;
                if due {
                    state.will_pending = false;
                }
                due
            };
            if due {
                // Published before it is forgotten: a crash in between
                // publishes it twice rather than never.
                broker.publish_will(will, Some(&session));
                broker.store.will(session.client_id(), None);
            }
        });
    }

    /// Publishes `will` now, its expiry counting from now.
    fn publish_will(&self, will: PendingWill, session: Option<&Arc<Session>>) {
        let mut message = Arc::unwrap_or_clone(will.message);
        message.expires_at = will.expiry_s.map(|s| std::time::Instant::now() + Duration::from_secs(u64::from(s)));
        self.publish(message, session);
    }

    /// Publishes the will of a client whose node died when it is due (or
    /// at once at shutdown, since nothing else would publish it).
    #[cfg(feature = "cluster")]
    pub(crate) fn publish_will_later(self: &Arc<Self>, will: PendingWill) {
        let broker = self.clone();
        self.tasks.spawn(async move {
            let wait = Duration::from_millis(will.due_ms.saturating_sub(crate::store::now_ms()));
            let _ = broker.shutdown.run_until_cancelled(tokio::time::sleep(wait)).await;
            broker.publish_will(will, None);
        });
    }

    /// Ends `session` after `expiry_s` unless a connection attaches first
    /// (which cancels `timers`).
    fn arm_expiry(self: &Arc<Self>, session: Arc<Session>, generation: u64, expiry_s: u32, timers: CancellationToken) {
        if expiry_s == u32::MAX {
            return;
        }
        let broker = self.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(u64::from(expiry_s))) => {}
                () = broker.shutdown.cancelled() => return,
                () = timers.cancelled() => return,
            }
            let expired = {
                let state = session.lock();
                state.generation == generation && !state.online
            };
            if expired {
                broker.discard(&session);
                let kept = session.lock().kept;
                broker.forget_kept(&session, kept);
            }
        });
    }
}
