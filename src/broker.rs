//! The broker's shared state and the routing of publishes; the session
//! lifecycle around connections is in `sessions`, the timers of sessions
//! without a connection in `timers`, share groups' members leaving in
//! `share`, and the operators' snapshot in `gauges`.

mod gauges;
mod node;
mod replication;
mod sessions;
mod share;
#[cfg(test)]
mod tests;
mod timers;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use node::{Node, WeakNode};
pub use replication::{BoxFuture, Claim, Forwarded, Plug, Replication};

use crate::auth::{InForce, Policy};
use crate::config::Config;
use crate::message::Message;
use crate::metrics::{DropReason, Metrics};
use crate::router::{Router, Scope};
use crate::session::{Flags, Held, Registry, Session};
use crate::store::{Recovered, Store};

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
    policy: InForce,
    /// Failed logins and logins in progress per client address (`[auth]`),
    /// checked before the authentication chain runs.
    pub(crate) logins: crate::auth::LoginThrottle,
    next_assigned_id: AtomicU64,
    /// Replication across nodes, when the server plugged one in (the
    /// cluster, with a `[cluster]` section).
    replication: Option<Arc<dyn Replication>>,
    /// Where quiet connections wait without a task.
    pub(crate) parking: crate::parking::Parking,
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
    /// A broker of one node whose state starts as what `store` recovered.
    pub fn new(config: Config, store: Arc<dyn Store>, recovered: Recovered, policy: Policy) -> Arc<Broker> {
        Broker::plugged(config, store, recovered, policy, None)
    }

    /// A broker whose state starts as what `store` recovered, with `plug`'s
    /// replication across nodes, if any.
    pub fn plugged(
        config: Config,
        store: Arc<dyn Store>,
        recovered: Recovered,
        policy: Policy,
        plug: Option<Plug>,
    ) -> Arc<Broker> {
        let (replication, router) = match plug {
            Some(plug) => (Some(plug.replication), Router::with_interest(plug.interest)),
            None => (None, Router::default()),
        };
        router.set_share_bound(config.limits.queue_bound());
        let broker = Arc::new(Broker {
            config: ArcSwap::from_pointee(config),
            router,
            sessions: Registry::default(),
            metrics: Metrics::default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            store,
            policy: InForce::new(policy),
            logins: crate::auth::LoginThrottle::default(),
            next_assigned_id: AtomicU64::new(1),
            replication,
            parking: crate::parking::Parking::default(),
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
            session.lock().flags.set(Flags::WILL_PENDING, will.is_some());
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

    /// The replication plugged in, if this node is part of a cluster.
    pub fn replication(&self) -> Option<&Arc<dyn Replication>> {
        self.replication.as_ref()
    }

    /// Whether publishes also go to other nodes (so no local subscriber
    /// does not mean nobody receives them).
    pub fn is_clustered(&self) -> bool {
        self.replication.is_some()
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
        self.policy.get()
    }

    /// Puts a new policy in force (start-up, reload) and returns the one it
    /// replaces. The caller drops that one: dropping the last handle tears
    /// down its warm instances and memories, which must not happen on a
    /// runtime thread.
    #[must_use = "drop the previous policy off the runtime"]
    pub fn set_policy(&self, policy: Policy) -> Policy {
        self.policy.replace(policy)
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
        if let Some(cluster) = &self.replication {
            let forwarded = cluster.forward(&message, publisher.map(|p| p.client_id()), retained);
            if forwarded != Forwarded::Yes {
                self.metrics.dropped(DropReason::Cluster, 1);
            }
            match forwarded {
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
        Ok(self.router.route_scoped(&message, publisher, self.local_scope(), &*self.store, &self.metrics, held))
    }

    /// Which local subscriptions a message that went through NATS (or is
    /// published here without a cluster) reaches here: all, or, while the
    /// cluster serves share groups across nodes, all but the share groups
    /// (their members get it from the node NATS picks). With sessions kept
    /// in JetStream, the queue stream holds it for them.
    fn local_scope(&self) -> Scope<'static> {
        if let Some(cluster) = &self.replication {
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
}
