//! The cluster plugged into the broker: [`Replication`] implemented by
//! [`Cluster`], and the way back from the replication plugged into a
//! broker to its cluster.

use std::any::Any;
use std::sync::Arc;

use super::Cluster;
use super::SessionReplica;
use crate::broker::{BoxFuture, Claim, Forwarded, Node, Replication};
use crate::message::{JetStreamAck, Message};
use crate::session::{Session, SessionState};
use crate::store::StoredSession;

impl Replication for Cluster {
    fn start(&self, node: Node) {
        Cluster::start(self, node);
    }

    fn forward(&self, message: &Arc<Message>, publisher: Option<&Arc<str>>, retained: bool) -> Forwarded {
        Cluster::forward(self, message, publisher, retained)
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

    fn claimed(&self, state: &mut SessionState, revision: u64) {
        SessionReplica::of(state).claimed = Some(revision);
    }

    fn keep_elsewhere(&self, state: &mut SessionState) {
        SessionReplica::of(state).kept = true;
    }

    fn release(&self, client_id: &str, revision: u64) {
        Cluster::release(self, client_id, revision);
    }

    fn forget_session(&self, client_id: &str) {
        Cluster::forget_session(self, client_id);
    }

    fn park(&self, session: Arc<Session>, window: usize) {
        Cluster::park(self, session, window);
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

impl Cluster {
    /// The cluster, if it is the replication plugged in (a broker's or a
    /// node's `replication()`).
    pub fn plugged(replication: Option<&Arc<dyn Replication>>) -> Option<&Cluster> {
        replication?.as_any().downcast_ref::<Cluster>()
    }
}
