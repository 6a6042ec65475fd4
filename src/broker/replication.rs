//! What the broker needs from replication across nodes, as a trait it
//! defines and a cluster implements ([`Replication`]): forwarding a
//! publish, claiming and releasing sessions, what JetStream keeps and
//! acknowledges. The broker does not know who plugs in; the server plugs
//! the cluster in (feature `cluster`, with a `[cluster]` section), and
//! without one the broker holds `None` and the publish path pays one
//! branch.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use super::Node;
use crate::message::{JetStreamAck, Message};
use crate::router::Interest;
use crate::session::{Session, SessionState};
use crate::store::StoredSession;

/// A future a [`Replication`] returns: sent across tasks, borrowing its
/// arguments.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whether [`Replication::forward`] handed a message on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// Queued towards the other nodes.
    Yes,
    /// Its topic makes a subject longer than the link takes: it never
    /// leaves this node.
    TooLong,
    /// The queue towards the other nodes is full (slow or away): it could
    /// go later.
    Full,
}

/// The outcome of [`Replication::claim`].
#[derive(Debug, Default)]
pub struct Claim {
    /// The revision this node wrote, `None` when the claim could not be
    /// recorded (the session is then this node's alone).
    pub revision: Option<u64>,
    /// The session the previous owner handed over.
    pub moved: Option<StoredSession>,
    /// Whether the session was kept in JetStream when this claim replaced
    /// the previous one.
    pub kept: bool,
}

/// Replication across nodes, as the broker uses it. Implemented by
/// `cluster::Cluster`; the broker calls it on its publish path, at attach
/// and at a session's end.
pub trait Replication: Any + Send + Sync + std::fmt::Debug {
    /// Starts replicating for `node`, the broker this is plugged into
    /// (once; later calls do nothing). What the replication does to the
    /// local node later, it does through `node`.
    fn start(&self, node: Node);
    /// Hands a message published here to the other nodes (and, when this
    /// node `retained` it, to the replicated retained store). Never waits.
    /// The broker counts a message not handed on as dropped.
    fn forward(&self, message: &Arc<Message>, publisher: Option<&Arc<str>>, retained: bool) -> Forwarded;
    /// Whether QoS 1/2 publishes here are acknowledged only once the other
    /// side stored them.
    fn waits_for_jetstream(&self) -> bool;
    /// Whether sessions that outlive their connection are kept there now.
    fn keeps_sessions(&self) -> bool;
    /// Whether share groups are served across nodes now.
    fn shares_across_nodes(&self) -> bool;
    /// Whether the replicated retained store, rather than messages from
    /// other nodes, sets the local one.
    fn retained_watched(&self) -> bool;
    /// Claims the session of `client_id` for this node before a connection
    /// attaches to it, bringing it over from the node that held it.
    fn claim<'a>(&'a self, client_id: &'a str, clean_start: bool) -> BoxFuture<'a, Claim>;
    /// The kept session of `client_id` whose node is gone, if one is kept.
    fn recover<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, Option<StoredSession>>;
    /// A connection attached to the session whose state is `state`, which
    /// this node claimed as `revision` ([`Replication::claim`]): the
    /// session's end releases that claim (`SessionState::replica`).
    fn claimed(&self, state: &mut SessionState, revision: u64);
    /// The session whose state is `state` is kept elsewhere: its claim
    /// said so. None of its QoS 1/2 messages are queued here until its
    /// connection feeds from there.
    fn keep_elsewhere(&self, state: &mut SessionState);
    /// The session of `client_id`, claimed with `revision`, ended here.
    fn release(&self, client_id: &str, revision: u64);
    /// What was kept for the session of `client_id` goes (it ended, or a
    /// clean start replaces it).
    fn forget_session(&self, client_id: &str);
    /// The connection of kept `session` ended with a new expiry; its
    /// client's next connection may take `window` messages at once.
    fn park(&self, session: Arc<Session>, window: usize);
    /// A kept message reached its client (or never will).
    fn acknowledge(&self, ack: &JetStreamAck);
    /// A kept message goes back, to be delivered again at once (to
    /// another member of its share group).
    fn give_back(&self, ack: &JetStreamAck);
    /// The implementation, for the code that plugged it in.
    fn as_any(&self) -> &dyn Any;
}

/// A replication plugged into a new broker, with the sender its router
/// reports subscriptions added and removed on.
#[derive(Debug)]
pub struct Plug {
    /// The implementation.
    pub replication: Arc<dyn Replication>,
    /// Where the router reports interest changes.
    pub interest: UnboundedSender<Interest>,
}
