//! What the cluster keeps per session ([`SessionReplica`]), in the
//! session's one replication slot ([`SessionState::replica`]): made when
//! the cluster first deals with the session (its claim, or keeping it in
//! JetStream), so a session of a node without a cluster holds an empty
//! pointer and nothing else.

use std::any::Any;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::queue::Taken;
use crate::message::MessageId;
use crate::session::{Replica, SessionState};

/// The cluster's state of one session, under the session's lock.
#[derive(Debug, Default)]
pub struct SessionReplica {
    /// The revision of the ownership entry this node wrote when the
    /// connection attached ([`super::ownership`]), so the session's end can
    /// remove that entry unless another claim (on any node) came after it.
    pub(crate) claimed: Option<u64>,
    /// JetStream keeps this session's QoS 1/2 messages ([`super::queue`]),
    /// online or not, so the router queues none here; they come from the
    /// session's consumer while a connection is attached.
    pub(crate) kept: bool,
    /// Cancelled to stop taking messages from the session's consumer (the
    /// connection ended, or the session left this node).
    pub(crate) feeding: Option<CancellationToken>,
    /// Bumped when the session's consumer is set up or its connection
    /// ends, so an update of the consumer that was overtaken by another
    /// knows it came too late.
    pub(crate) parking: u64,
    /// The QoS 2 messages the session took from its consumer lately, so
    /// that one JetStream hands over again is not delivered twice. Boxed,
    /// and made on the first: most sessions never take a QoS 2 message from
    /// JetStream.
    pub(crate) taken: Option<Box<Taken>>,
    /// Set-ups of the session's consumer under way (`Queue::keep`), and
    /// how long JetStream may hand a message over again: while one is,
    /// QoS 2 messages routed to the session are remembered in `taken`, as
    /// the consumer may have them too.
    pub(crate) setting_up: (u16, Duration),
}

impl SessionReplica {
    /// The cluster's state of the session whose state is `state`, made
    /// now if the cluster never dealt with it.
    pub(crate) fn of(state: &mut SessionState) -> &mut SessionReplica {
        let ours = state.replica.as_deref().is_some_and(|r| (r as &dyn Any).is::<SessionReplica>());
        if !ours {
            state.replica = Some(Box::<SessionReplica>::default());
        }
        let replica: &mut dyn Any = state.replica.as_deref_mut().expect("invariant: filled just above");
        replica.downcast_mut().expect("invariant: a SessionReplica, checked or made just above")
    }

    /// The cluster's state of the session whose state is `state`, if the
    /// cluster dealt with it.
    pub(crate) fn get(state: &SessionState) -> Option<&SessionReplica> {
        (state.replica.as_deref()? as &dyn Any).downcast_ref()
    }

    /// JetStream keeps the session's messages no more: its node queues
    /// them, and the feeder stops.
    pub(crate) fn unkeep(&mut self) {
        self.kept = false;
        self.stop();
    }

    /// Stops the feeder, if one runs.
    fn stop(&mut self) {
        if let Some(feeding) = self.feeding.take() {
            feeding.cancel();
        }
    }
}

impl Replica for SessionReplica {
    fn kept(&self) -> bool {
        self.kept
    }

    fn stop_feeding(&mut self) {
        self.stop();
    }

    fn leave(&mut self) {
        // An update of its consumer by the connection that just left is
        // called off; the new node takes the consumer over.
        self.parking += 1;
        self.kept = false;
    }

    fn take_claim(&mut self) -> Option<u64> {
        self.claimed.take()
    }

    fn routed(&mut self, id: MessageId) {
        let (under_way, window) = self.setting_up;
        if under_way > 0 && !id.is_none() {
            self.taken.get_or_insert_default().remember_copy(id, Instant::now(), window);
        }
    }
}
