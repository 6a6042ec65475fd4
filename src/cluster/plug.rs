//! The cluster plugged into the broker: [`Replication`] implemented by
//! [`Cluster`], and the way back from a broker to its cluster.

use std::any::Any;
use std::sync::Arc;

use super::Cluster;
use crate::broker::{BoxFuture, Broker, Claim, Forwarded, Replication};
use crate::message::{JetStreamAck, Message};
use crate::session::Session;
use crate::store::StoredSession;

impl Replication for Cluster {
    fn forward(
        &self,
        message: &Arc<Message>,
        publisher: Option<&Arc<str>>,
        retained: bool,
        broker: &Broker,
    ) -> Forwarded {
        Cluster::forward(self, message, publisher, retained, broker)
    }

    fn waits_for_jetstream(&self) -> bool {
        Cluster::waits_for_jetstream(self)
    }

    fn keeps_sessions(&self) -> bool {
        Cluster::keeps_sessions(self)
    }

    fn shares_across_nodes(&self) -> bool {
        Cluster::shares_across_nodes(self)
    }

    fn retained_watched(&self) -> bool {
        Cluster::retained_watched(self)
    }

    fn claim<'a>(&'a self, client_id: &'a str, clean_start: bool) -> BoxFuture<'a, Claim> {
        Box::pin(Cluster::claim(self, client_id, clean_start))
    }

    fn recover<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, Option<StoredSession>> {
        Box::pin(Cluster::recover(self, client_id))
    }

    fn release(&self, client_id: &str, revision: u64, broker: &Broker) {
        Cluster::release(self, client_id, revision, broker);
    }

    fn forget_session(&self, client_id: &str, broker: &Broker) {
        Cluster::forget_session(self, client_id, broker);
    }

    fn park(&self, session: Arc<Session>, broker: &Broker) {
        Cluster::park(self, session, broker);
    }

    fn acknowledge(&self, ack: &JetStreamAck) {
        Cluster::acknowledge(self, ack);
    }

    fn give_back(&self, ack: &JetStreamAck) {
        Cluster::give_back(self, ack);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Broker {
    /// The link to the other nodes, when this node is part of a cluster:
    /// the replication plugged into the broker, if it is the cluster.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.replication()?.as_any().downcast_ref::<Cluster>()
    }
}
