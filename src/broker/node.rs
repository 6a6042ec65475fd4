//! The local node as replication sees it ([`Node`]): what a plugged-in
//! [`Replication`] may do to this broker, as methods, and nothing else.
//!
//! The cluster gets a [`Node`] when it starts ([`Replication::start`]) and
//! hands clones to its tasks; it never holds the [`Broker`], so it reads
//! without the broker's fields in view, and the broker can change them
//! without reading the cluster. Holding a `Node` keeps the broker alive
//! (as the cluster's tasks, which end at shutdown, should); what lives as
//! long as the broker itself keeps a [`WeakNode`].

use std::future::Future;
use std::sync::{Arc, Weak};

use tokio_util::sync::CancellationToken;

use super::{Broker, Replication};
use crate::message::Message;
use crate::metrics::DropReason;
use crate::router::{Match, Scope};
use crate::session::Session;
use crate::store::{PendingWill, StoredSession};

/// A handle to the local node for replication: cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct Node {
    broker: Arc<Broker>,
}

/// A [`Node`] that does not keep the broker alive: for what the broker
/// itself holds (the replication plugged into it, its clients' callbacks).
#[derive(Debug, Clone, Default)]
pub struct WeakNode {
    broker: Weak<Broker>,
}

impl Broker {
    /// The handle replication gets to this node.
    pub fn node(self: &Arc<Self>) -> Node {
        Node { broker: self.clone() }
    }
}

impl WeakNode {
    /// The node, unless the broker is gone.
    pub fn upgrade(&self) -> Option<Node> {
        self.broker.upgrade().map(|broker| Node { broker })
    }
}

impl Node {
    /// A handle that does not keep the broker alive.
    pub fn downgrade(&self) -> WeakNode {
        WeakNode { broker: Arc::downgrade(&self.broker) }
    }

    /// Cancelled when the broker shuts down: every replication task ends
    /// with it.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.broker.shutdown
    }

    /// Runs `task` among the broker's tasks, so shutdown waits for it.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.broker.tasks.spawn(task);
    }

    /// Counts `n` messages dropped for `reason`.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.broker.metrics.dropped(reason, n);
    }

    /// The Receive Maximum a client gets when it asks for none
    /// (`limits.max_inflight`), as the running configuration says now.
    pub fn max_inflight(&self) -> usize {
        usize::from(self.broker.config().limits.max_inflight)
    }

    /// The replication plugged into this node.
    pub fn replication(&self) -> Option<&Arc<dyn Replication>> {
        self.broker.replication()
    }

    /// The session of `client_id` on this node, if any.
    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.broker.sessions.get(client_id)
    }

    /// Every session on this node now.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.broker.sessions.all()
    }

    /// The sessions of this node in the share group `group` of `filter`.
    pub fn share_members(&self, filter: &str, group: &str) -> Vec<Arc<Session>> {
        self.broker.router.share_members(filter, group)
    }

    /// The member of this node that the share group `group` of `filter`
    /// would pick next, if it has one.
    pub fn share_member(&self, filter: &str, group: &str) -> Option<Match> {
        self.broker.router.share_member(filter, group)
    }

    /// Routes a message another node of the cluster published to the
    /// local sessions, never forwarded again. A retained one is retained
    /// here too only while the cluster's retained stream is not watched
    /// (best effort: a node that was not up misses it); otherwise the
    /// stream sets the store, in its one order.
    pub fn deliver_remote(&self, message: Arc<Message>) -> usize {
        let broker = &*self.broker;
        if message.retain && !broker.replication().is_some_and(|r| r.retained_watched()) {
            broker.retain(&message);
        }
        broker.router.route_scoped(&message, None, broker.local_scope(), &*broker.store, &broker.metrics, None)
    }

    /// Routes a message NATS handed to this node for one share group: to
    /// one member of `group` with exactly `filter`.
    pub fn deliver_shared(&self, message: Arc<Message>, filter: &str, group: &str) -> usize {
        let broker = &*self.broker;
        broker.router.route_scoped(
            &message,
            None,
            Scope::Group { filter, group },
            &*broker.store,
            &broker.metrics,
            None,
        )
    }

    /// Sets the retained message of a topic from the cluster's retained
    /// stream (an empty payload clears it), within the retained limits.
    pub fn retain(&self, message: &Arc<Message>) {
        self.broker.retain(message);
    }

    /// Ends the session of `client_id` here for another node, which takes
    /// it over (see `Broker::hand_over`); the session to move, unless
    /// `keep` is false or there is none.
    pub async fn hand_over(&self, client_id: &str, keep: bool) -> Option<StoredSession> {
        self.broker.hand_over(client_id, keep).await
    }

    /// Publishes the will of a client whose node died when it is due (or
    /// at once at shutdown, since nothing else would publish it).
    pub fn publish_will_later(&self, will: PendingWill) {
        self.broker.publish_will_later(will);
    }
}
