//! The broker's snapshot for operators: what the admin layer renders as
//! Prometheus text and `$SYS` topics, read here so that it does not reach
//! into the router and the session registry.

use super::Broker;
use crate::metrics::{Gauges, QueueTotals};

impl Broker {
    /// Counts the broker keeps anyway: sessions, share groups' waiting
    /// messages, retained messages, subscriptions.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            sessions: self.sessions.len(),
            share_waiting: self.router.share_waiting(),
            retained: self.router.retained().len(),
            subscriptions: self.router.subscription_count(),
        }
    }

    /// Messages queued and in flight over every session, taking each
    /// session's lock in turn (briefly, never two at once).
    pub fn queue_totals(&self) -> QueueTotals {
        let mut totals = QueueTotals::default();
        for session in &self.sessions.all() {
            let state = session.lock();
            totals.queued += state.pending.len();
            totals.inflight += state.inflight.len();
        }
        totals
    }
}
