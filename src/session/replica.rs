//! The one slot a session has for replication across nodes
//! ([`SessionState::replica`](super::SessionState::replica)): what a
//! cluster keeps per session (its claim on the session, whether JetStream
//! keeps its messages, the task feeding it from there) is the cluster's
//! own type, behind this trait. The session and the broker below the
//! cluster see only what they act on; a session that never met a cluster
//! pays one empty pointer.

use std::any::Any;

use crate::message::MessageId;

/// What replication keeps for one session, as the session and the broker
/// use it. Implemented by `cluster::SessionReplica`, which the cluster
/// reaches again by downcasting (`Any`).
pub trait Replica: Any + Send + std::fmt::Debug {
    /// Whether the session's QoS 1/2 messages are kept elsewhere
    /// (JetStream), so that the router queues none of them here
    /// ([`Session::offer`](super::Session::offer)).
    fn kept(&self) -> bool;
    /// Stops feeding the session from what is kept elsewhere: its
    /// connection ended, or the session did.
    fn stop_feeding(&mut self);
    /// The session leaves this node for another, which takes over what is
    /// kept for it: nothing here updates that any more, and none of its
    /// messages are left to it.
    fn leave(&mut self);
    /// The claim on the session this node made when its connection
    /// attached (a revision), to release now that the session ends here.
    fn take_claim(&mut self) -> Option<u64>;
    /// The router queued QoS 2 message `id` here for the session, which
    /// what is kept elsewhere may hold too: while the session is becoming
    /// kept, a copy from there must not reach the client again.
    fn routed(&mut self, id: MessageId);
}
