//! Members leaving share groups: the group's messages a member's client
//! has not received go to the other members (`router::share`) when its
//! session ends, or when it stays away past `limits.share_hold_ms`, and
//! a member that connects or subscribes takes what waited in its groups.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Broker;
use crate::codec::TopicFilter;
use crate::message::Delivery;
use crate::session::Session;

impl Broker {
    /// Sends on the share groups' messages `from` gave up (taken out of it
    /// with [`crate::session::SessionState::take_shared`]): JetStream's
    /// back to JetStream, at once, to go to a member on any node; the
    /// others to this node's members or groups' queues. The store sees
    /// the move as one commit, so a crash neither loses nor doubles them.
    pub(super) fn redispatch(&self, from: &Session, deliveries: Vec<Delivery>) {
        if deliveries.is_empty() {
            return;
        }
        self.metrics.redispatched(deliveries.len() as u64);
        let group = self.store.group();
        let mut gone = Vec::new();
        let mut local = Vec::with_capacity(deliveries.len());
        for mut delivery in deliveries {
            gone.extend(delivery.stored.take());
            match delivery.jetstream.take() {
                Some(ack) => self.give_back(&ack),
                None => local.push(delivery),
            }
        }
        self.router.redispatch(local, &*self.store, &self.metrics);
        for key in gone {
            self.store.delivered(from.client_id(), key);
        }
        drop(group);
    }

    /// Gives a message JetStream delivered back to it, to deliver again
    /// soon (to a member of its share group on any node).
    fn give_back(&self, ack: &crate::message::JetStreamAck) {
        if let Some(cluster) = &self.replication {
            cluster.give_back(ack);
        }
    }

    /// `session`'s connection ended (`generation`) and its session stays:
    /// if it is a member of a share group, the group's messages it holds
    /// go to the others after `limits.share_hold_ms` unless a connection
    /// attaches first (which cancels `timers`) or the broker shuts down
    /// (they stay with the session, in the store).
    pub(super) fn hold_shared(self: &Arc<Self>, session: Arc<Session>, generation: u32, timers: CancellationToken) {
        let member = {
            let state = session.lock();
            state.holds_shared() || state.subscriptions.keys().any(|f| f.share_group().is_some())
        };
        if !member {
            return;
        }
        let hold = self.config().limits.share_hold();
        if hold.is_zero() {
            self.release_shared(&session, generation);
            return;
        }
        let broker = self.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(hold) => {}
                () = broker.shutdown.cancelled() => return,
                () = timers.cancelled() => return,
            }
            broker.release_shared(&session, generation);
        });
    }

    /// The hold of an absent member ran out: what it holds of its share
    /// groups goes to the other members, unless it came back meanwhile.
    fn release_shared(&self, session: &Session, generation: u32) {
        let taken = {
            let mut state = session.lock();
            if state.online || state.generation != generation {
                return;
            }
            state.take_shared()
        };
        self.redispatch(session, taken);
    }

    /// Hands `session`, connected now, what waited in its share groups
    /// (only `share`'s, for a new subscription).
    pub fn serve_waiting(&self, session: &Arc<Session>, share: Option<&TopicFilter>) {
        self.router.serve_waiting(session, share, &*self.store, &self.metrics);
    }
}
