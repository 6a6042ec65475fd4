//! What holds back a connection's acknowledgements: the durable store
//! and, in a cluster, JetStream, which must have what they acknowledge
//! first; and a publish held for room in full subscriber queues, which
//! holds back the reading of the client's next packets.

use std::time::Duration;

use super::{Close, Connection, Park, inbound, leave_reason};
use crate::codec::ReasonCode;

/// What holds back the acknowledgements in the write buffer (and, for a
/// held publish, the reading of the client's next packets).
#[derive(Default)]
pub(super) struct Withheld {
    /// Durable store (issue 9): acknowledgements in `wbuf` are sent only
    /// once this resolves, i.e. once what they acknowledge is durable.
    pub(super) durable: Option<crate::store::Barrier>,
    /// In a cluster, the same for JetStream: see `Cluster::stored`.
    pub(super) replicated: Option<crate::store::Barrier>,
    /// A publish waiting for room in full subscriber queues; while it is,
    /// nothing more is read from the client.
    pub(super) held: Option<Box<inbound::HeldPublish>>,
}

impl<S> Connection<S>
where
    S: Park,
{
    /// What holds back acknowledgements, made now if need be.
    pub(super) fn withheld(&mut self) -> &mut Withheld {
        self.withheld.get_or_insert_with(Box::default)
    }

    /// The publish held for room in full queues, if any.
    pub(super) fn held(&self) -> Option<&inbound::HeldPublish> {
        self.withheld.as_ref().and_then(|w| w.held.as_deref())
    }

    /// Takes the held publish out, if any (it is done with).
    pub(super) fn take_held(&mut self) -> Option<Box<inbound::HeldPublish>> {
        self.withheld.as_mut().and_then(|w| w.held.take())
    }

    /// Durable store (issue 9): what is in `wbuf` now is sent only once
    /// every change reported to the store so far is durable. A barrier
    /// already passed replaces none: no [`Withheld`] is made for it.
    pub(super) fn await_store(&mut self) {
        let barrier = self.broker.store.barrier();
        let durable = (!barrier.is_ready()).then_some(barrier);
        if durable.is_some() || self.withheld.is_some() {
            self.withheld().durable = durable;
        }
        #[cfg(feature = "cluster")]
        if let Some(cluster) = crate::cluster::Cluster::plugged(self.broker.replication()) {
            let replicated = cluster.stored();
            if replicated.is_some() || self.withheld.is_some() {
                self.withheld().replicated = replicated;
            }
        }
    }

    /// Durable store (issue 9): waits until the PUBACKs/PUBRECs queued in
    /// `wbuf` acknowledge durable messages. When the store has failed they
    /// are dropped unsent and the connection closes, so the client resends.
    pub(super) async fn await_durable(&mut self) -> Result<(), Close> {
        let Some(withheld) = &mut self.withheld else { return Ok(()) };
        let (replicated, durable) = (withheld.replicated.take(), withheld.durable.take());
        if let Some(barrier) = replicated
            && !barrier.is_ready()
        {
            self.await_replicated(barrier).await?;
        }
        let Some(barrier) = durable else { return Ok(()) };
        if barrier.wait().await.is_err() {
            self.wbuf.clear();
            return Err(Close::Protocol(ReasonCode::UNSPECIFIED_ERROR, "store failed"));
        }
        Ok(())
    }

    /// In a cluster: waits until JetStream has stored what the
    /// acknowledgements in `wbuf` acknowledge (`Cluster::stored`), at most
    /// `[cluster] store_timeout_s`, and no longer than the connection
    /// lasts. Otherwise they are dropped unsent and the connection closes,
    /// so the client publishes again: nothing is acknowledged that
    /// JetStream may not have.
    pub(super) async fn await_replicated(&mut self, barrier: crate::store::Barrier) -> Result<(), Close> {
        let session = self.attached.session.clone();
        let close = tokio::select! {
            biased;
            stored = tokio::time::timeout(self.store_timeout(), barrier.wait()) => match stored {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(_)) => Close::Shutdown,
                Err(_) => Close::Protocol(ReasonCode::SERVER_BUSY, "the cluster did not store a message in time"),
            },
            bits = session.leaving() => leave_reason(bits, &session).unwrap_or(Close::Shutdown),
        };
        self.wbuf.clear();
        Err(close)
    }

    /// `[cluster] store_timeout_s`; never waited for without a cluster.
    pub(super) fn store_timeout(&self) -> Duration {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = crate::cluster::Cluster::plugged(self.broker.replication()) {
            return cluster.store_timeout();
        }
        Duration::ZERO
    }
}
