//! The broker's shared state and the session lifecycle around connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Policy;
use crate::codec::Will;
use crate::config::Config;
use crate::reload::Reloader;
use crate::router::{Message, Router};
use crate::session::{Attached, Registry, Session};
use crate::store::{Recovered, Store};

/// Broker-wide counters, read by operators and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections currently open (after CONNACK).
    pub clients_connected: AtomicU64,
    /// PUBLISH packets received from clients.
    pub messages_received: AtomicU64,
    /// PUBLISH packets sent to clients.
    pub messages_sent: AtomicU64,
}

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
    /// Counters.
    pub stats: Stats,
    /// Cancelled when the broker shuts down.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks and timers so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Durable copy of sessions and retained messages.
    pub store: Arc<dyn Store>,
    /// The plugin chain in force; replaced whole on reload. A sync lock is
    /// right here: readers clone an `Arc` and let go at once.
    policy: parking_lot::RwLock<Policy>,
    /// What hot reload needs: the plugin host, the watched directory, the
    /// handles of run-time settings, and the last outcome.
    pub(crate) reload: Reloader,
    next_assigned_id: AtomicU64,
}

impl Broker {
    /// A broker whose state starts as what `store` recovered.
    pub fn new(config: Config, store: Arc<dyn Store>, recovered: Recovered, policy: Policy) -> Arc<Broker> {
        let plugin_dir = crate::reload::plugin_dir(&config);
        let broker = Arc::new(Broker {
            config: ArcSwap::from_pointee(config),
            router: Router::default(),
            sessions: Registry::default(),
            stats: Stats::default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            store,
            policy: parking_lot::RwLock::new(policy),
            reload: Reloader::new(plugin_dir),
            next_assigned_id: AtomicU64::new(1),
        });
        for message in recovered.retained {
            broker.router.retained().set(&message);
        }
        for stored in recovered.sessions {
            let session = broker.sessions.restore(stored.client_id.clone(), broker.config().limits.max_queued_messages);
            {
                let mut state = session.lock();
                state.expiry_s = stored.expiry_s;
                state.pending.extend(stored.pending);
                state.inflight.extend(stored.inflight);
            }
            for (filter, subscription) in stored.subscriptions {
                broker.router.subscribe(&session, &filter, &subscription);
                session.lock().subscriptions.insert(filter, subscription);
            }
            broker.arm_expiry(session, 0, stored.expiry_s);
        }
        broker
    }

    /// The configuration in force now. A reload replaces it whole, so read
    /// it once per decision rather than field by field across an `.await`.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Replaces the configuration (config reload).
    pub(crate) fn set_config(&self, config: Config) {
        self.config.store(Arc::new(config));
    }

    /// The policy in force now. Calls in flight keep the one they took.
    pub fn policy(&self) -> Policy {
        self.policy.read().clone()
    }

    /// Puts a new policy in force (start-up, reload).
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write() = policy;
    }

    /// A fresh client identifier for a client that sent an empty one.
    pub fn assign_client_id(&self) -> Arc<str> {
        let n = self.next_assigned_id.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        format!("moat-{nanos:08x}-{n}").into()
    }

    /// Publishes a message: stores it if retained, then routes it.
    /// Returns the number of sessions it was delivered to.
    pub fn publish(&self, message: Message, publisher: Option<&Arc<Session>>) -> usize {
        let message = Arc::new(message);
        if message.retain {
            self.router.retained().set(&message);
            self.store.retain(&message);
        }
        self.router.route(&message, publisher, &*self.store)
    }

    /// Attaches a connection to the session of `client_id`.
    pub async fn attach(&self, client_id: &Arc<str>, clean_start: bool) -> Option<Attached> {
        let max_queued = self.config().limits.max_queued_messages;
        self.sessions.attach(client_id, clean_start, max_queued, |old| self.discard(old)).await
    }

    /// Ends a session: removes its subscriptions and forgets it.
    pub fn discard(&self, session: &Arc<Session>) {
        let filters: Vec<_> = {
            let mut state = session.lock();
            state.pending.clear();
            state.inflight.clear();
            state.subscriptions.drain().map(|(f, _)| f).collect()
        };
        for filter in &filters {
            self.router.unsubscribe(session, filter);
        }
        if self.sessions.remove(session) {
            self.store.session_ended(session.client_id());
        }
    }

    /// Saves every session's messages to the store (at shutdown).
    pub fn persist_sessions(&self) {
        for session in self.sessions.all() {
            self.save_messages(&session);
        }
    }

    fn save_messages(&self, session: &Arc<Session>) {
        // Under the lock, so messages queued to the store while offline
        // (`Store::queued_offline`) come after this snapshot, never before.
        let state = session.lock();
        let (pending, inflight) = (state.pending.iter().cloned().collect(), state.inflight.iter().cloned().collect());
        self.store.session_messages(session.client_id(), pending, inflight);
    }

    /// Called when a connection ends: publishes or schedules the will,
    /// and ends the session now or arms its expiry timer.
    pub fn detach(self: &Arc<Self>, attached: Attached, will: Option<Will>, expiry_s: u32) {
        let session = attached.session.clone();
        let generation = attached.generation;
        {
            let mut state = session.lock();
            state.online = false;
            state.kick = None;
            state.expiry_s = expiry_s;
        }
        if expiry_s == 0 {
            // End the session while this connection still holds it, so a
            // client taking over waits for the end and then starts afresh.
            self.discard(&session);
        } else {
            self.save_messages(&session);
            self.arm_expiry(session.clone(), generation, expiry_s);
        }
        drop(attached);
        if let Some(will) = will {
            let delay = will.properties.will_delay_interval.unwrap_or(0);
            if delay == 0 || expiry_s == 0 {
                self.publish_will(will, &session);
            } else {
                // The will waits for the delay or the session's end, whichever
                // comes first, and is cancelled by a reconnect [MQTT-3.1.3-9].
                let wait = Duration::from_secs(u64::from(delay.min(expiry_s)));
                let broker = self.clone();
                let session = session.clone();
                self.tasks.spawn(async move {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = broker.shutdown.cancelled() => {}
                    }
                    let stale = {
                        let state = session.lock();
                        state.generation != generation || state.online
                    };
                    if !stale {
                        broker.publish_will(will, &session);
                    }
                });
            }
        }
    }

    /// Ends `session` after `expiry_s` unless a connection attaches first.
    fn arm_expiry(self: &Arc<Self>, session: Arc<Session>, generation: u64, expiry_s: u32) {
        if expiry_s == u32::MAX {
            return;
        }
        let broker = self.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(u64::from(expiry_s))) => {}
                () = broker.shutdown.cancelled() => return,
            }
            let expired = {
                let state = session.lock();
                state.generation == generation && !state.online
            };
            if expired {
                broker.discard(&session);
            }
        });
    }

    fn publish_will(&self, will: Will, session: &Arc<Session>) {
        let message = Message::new(will.topic, will.payload, will.qos, will.retain, &will.properties);
        self.publish(message, Some(session));
    }
}
