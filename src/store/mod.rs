//! Persistence: what must survive the broker process.
//!
//! The broker's live state (sessions, the subscription index, retained
//! messages) is in memory; a [`Store`] keeps a copy it can hand back at
//! start-up through [`Store::recover`]. The broker reports changes to the
//! store as they happen: retained messages, sessions and subscriptions
//! immediately, QoS 1/2 messages queued for a session with expiry (online
//! or offline) as they are queued, their QoS 2 handshake state as it moves,
//! their removal once acknowledged, and a session's queued and
//! unacknowledged messages again when its connection ends and at shutdown,
//! the QoS 2 packet ids received from its client until released, a
//! will waiting for its delay, and the QoS 1/2 messages a share group
//! keeps while none of its members is connected.
//!
//! [`MemoryStore`] is the default (`durability = "none"` without a
//! directory). [`DiskStore`] keeps the copy in a `fjall` database, written
//! by one group-committing thread; in `sync` mode [`Store::barrier`] lets
//! the connection send PUBACK/PUBREC only once the message is durable.

mod disk;
mod memory;
mod queue;
mod record;
mod syncer;
#[cfg(feature = "cluster")]
mod transfer;
mod writer;

use std::sync::Arc;

pub use disk::DiskStore;
pub use memory::MemoryStore;
pub(crate) use record::now_ms;
#[cfg(feature = "cluster")]
pub(crate) use transfer::{decode_session, decode_will, encode_session, encode_will};
pub use writer::Durability;

use crate::codec::{PacketId, TopicFilter};
use crate::message::Message;
use crate::message::{Delivery, Inflight, Owner, Subscription};

/// A store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stored data cannot be read back (the message names the path).
    #[error("store is corrupt: {0}; start with --repair to move it aside and start empty")]
    Corrupt(String),
    /// The store could not be opened.
    #[error("cannot open the store in {}: {message}; if it is corrupt, start with --repair to move it aside and start empty", path.display())]
    Open {
        /// The store directory.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The store stopped writing after a disk error.
    #[error("the store stopped writing after a disk error")]
    Closed,
    /// An I/O error.
    #[error("store I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A session as stored.
#[derive(Debug, Clone)]
pub struct StoredSession {
    /// Client identifier.
    pub client_id: Arc<str>,
    /// Session expiry interval in seconds (`u32::MAX`: never).
    pub expiry_s: u32,
    /// Subscriptions by filter.
    pub subscriptions: Vec<(TopicFilter, Subscription)>,
    /// Messages queued and not yet sent.
    pub pending: Vec<Delivery>,
    /// Messages sent and not yet acknowledged.
    pub inflight: Vec<Inflight>,
    /// Packet ids of QoS 2 PUBLISHes received from the client and not yet
    /// released (PUBREL).
    pub incoming_qos2: Vec<PacketId>,
    /// The will waiting for its Will Delay Interval when the connection
    /// ended, and when it is due (ms since the Unix epoch).
    pub will: Option<PendingWill>,
    /// Whom the session belongs to, if known.
    pub owner: Option<Owner>,
}

/// A will waiting for its delay, as stored.
#[derive(Debug, Clone)]
pub struct PendingWill {
    /// The will message, without expiry: its Message Expiry Interval
    /// starts when it is published.
    pub message: Arc<Message>,
    /// The will's Message Expiry Interval, seconds.
    pub expiry_s: Option<u32>,
    /// When it is due, ms since the Unix epoch.
    pub due_ms: u64,
}

/// Everything recovered at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Retained messages.
    pub retained: Vec<Arc<Message>>,
    /// Sessions that had not ended.
    pub sessions: Vec<StoredSession>,
    /// Messages waiting in share groups for a member, by shared
    /// subscription (`$share/{group}/{filter}`), oldest first, each with
    /// its key.
    pub shared: Vec<(TopicFilter, Vec<Delivery>)>,
}

/// Durable storage for sessions and retained messages.
///
/// Methods are called from connection tasks and must not block for long;
/// an implementation that writes to disk batches internally.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// A retained message was set, or deleted (empty payload).
    fn retain(&self, message: &Arc<Message>);
    /// A session was created or its expiry changed.
    fn session_opened(&self, client_id: &Arc<str>, expiry_s: u32);
    /// A session that outlives its connection now belongs to `owner`
    /// (reported after [`Store::session_opened`]), so its binding to its
    /// user survives a restart.
    fn session_owner(&self, client_id: &Arc<str>, owner: &Owner) {
        let _ = (client_id, owner);
    }
    /// A session ended: forget it and everything it held.
    fn session_ended(&self, client_id: &str);
    /// A subscription was added or replaced.
    fn subscribed(&self, client_id: &str, filter: &TopicFilter, subscription: &Subscription);
    /// A subscription was removed.
    fn unsubscribed(&self, client_id: &str, filter: &TopicFilter);
    /// The messages a session holds, replacing what was stored before.
    fn session_messages(&self, client_id: &str, pending: Vec<Delivery>, inflight: Vec<Inflight>);
    /// A QoS 1/2 message was queued for a session that outlives its
    /// connection (online or not), or is held by its publisher for the
    /// session's full queue: keep it with the session's messages.
    /// Returns the key it is kept under (for [`Store::delivery_state`] and
    /// [`Store::delivered`]): `delivery.stored` if it has one (a held
    /// delivery now queued, written again since the session's messages may
    /// have been replaced meanwhile), or `None` if this store does not keep
    /// messages one by one. Called under the session's lock, so it is
    /// ordered with [`Store::session_messages`].
    fn queued(&self, client_id: &Arc<str>, delivery: &Delivery) -> Option<u64> {
        let _ = (client_id, delivery);
        None
    }
    /// A fresh key for a message handed over by
    /// [`Store::session_messages`] that has none yet, or `None` if this
    /// store does not keep messages one by one.
    fn message_key(&self) -> Option<u64> {
        None
    }
    /// A stored delivery was sent or moved on in its QoS 2 handshake
    /// (`inflight.delivery.stored` is its key). The connection awaits a
    /// barrier before the client sees the packet that this state implies,
    /// so a resend after a crash carries the packet id the client knows.
    fn delivery_state(&self, client_id: &Arc<str>, inflight: &Inflight) {
        let _ = (client_id, inflight);
    }
    /// The client finished acknowledging (or the broker dropped) the stored
    /// delivery with key `stored`: forget it.
    fn delivered(&self, client_id: &Arc<str>, stored: u64) {
        let _ = (client_id, stored);
    }
    /// The client of a session that outlives its connection sent a QoS 2
    /// PUBLISH with `packet_id` (`received`), or released it with PUBREL
    /// (`!received`). The connection awaits a barrier before PUBREC and
    /// PUBCOMP, so after a crash a resent PUBLISH with that id is known
    /// (acknowledged, not routed twice) and a released id is free again.
    fn incoming_qos2(&self, client_id: &Arc<str>, packet_id: PacketId, received: bool) {
        let _ = (client_id, packet_id, received);
    }
    /// A QoS 1/2 message waits in share group `share` (its shared
    /// subscription) for a member to connect: keep it. Returns the key it
    /// is kept under (for [`Store::share_taken`]), or `None` if this store
    /// does not keep messages one by one. Called under the group queue's
    /// lock, so keys follow the queue's order.
    fn share_queued(&self, share: &TopicFilter, delivery: &Delivery) -> Option<u64> {
        let _ = (share, delivery);
        None
    }
    /// The message kept under `key` for share group `share` left the
    /// group's queue (to a member, which keeps it its own way): forget it.
    fn share_taken(&self, share: &TopicFilter, key: u64) {
        let _ = (share, key);
    }
    /// A will now waits for its delay (`Some`), or no longer does (`None`:
    /// published, or cancelled by a reconnect), so a crash in between
    /// neither loses it nor publishes a cancelled one.
    fn will(&self, client_id: &Arc<str>, will: Option<&PendingWill>) {
        let _ = (client_id, will);
    }
    /// Keeps the changes reported until the returned guard drops in one
    /// atomic commit (with whatever else is reported meanwhile), so a
    /// crash keeps all of them or none: the copies of a QoS 2 message
    /// routed to persistent sessions and its packet id. The caller reports
    /// those changes without awaiting anything in between.
    fn group(&self) -> Group {
        Group(None)
    }
    /// A future that resolves once every change reported so far is durable
    /// (in `sync` mode; otherwise at once). The connection awaits it before
    /// acknowledging a QoS 1/2 PUBLISH.
    fn barrier(&self) -> Barrier {
        Barrier::ready()
    }
    /// Everything stored.
    ///
    /// # Errors
    /// [`StoreError`] when stored data cannot be read back.
    fn recover(&self) -> Result<Recovered, StoreError>;
}

/// Holds changes in one atomic commit while it lives. See [`Store::group`].
#[derive(Debug)]
#[must_use = "a group ends when it is dropped"]
pub struct Group(Option<std::sync::mpsc::Sender<queue::Command>>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(queue::Command::GroupEnd);
        }
    }
}

/// Waits until the store has made durable everything reported before it was
/// taken. See [`Store::barrier`].
#[derive(Debug)]
#[must_use = "a barrier does nothing unless waited on"]
pub struct Barrier(Option<Waiting>);

/// What a barrier waits for: the durable count to reach `target`. `nudge`
/// tells the writer someone is waiting for the tickets below `target`, so
/// it commits once they are in.
#[derive(Debug)]
struct Waiting {
    durable: tokio::sync::watch::Receiver<u64>,
    target: u64,
    nudge: Option<std::sync::mpsc::Sender<queue::Command>>,
}

impl Barrier {
    /// A barrier with nothing to wait for.
    pub fn ready() -> Barrier {
        Barrier(None)
    }

    /// Waits until the durable count in `durable` reaches `target`.
    fn waiting(
        durable: tokio::sync::watch::Receiver<u64>,
        target: u64,
        nudge: Option<std::sync::mpsc::Sender<queue::Command>>,
    ) -> Barrier {
        Barrier(Some(Waiting { durable, target, nudge }))
    }

    /// Waits until the count in `done` reaches `target`: the same wait for
    /// durability somewhere other than this store (a cluster's JetStream).
    #[cfg(feature = "cluster")]
    pub(crate) fn until(done: tokio::sync::watch::Receiver<u64>, target: u64) -> Barrier {
        Barrier::waiting(done, target, None)
    }

    /// Whether there is nothing to wait for.
    pub fn is_ready(&self) -> bool {
        self.0.as_ref().is_none_or(|w| *w.durable.borrow() >= w.target)
    }

    /// Resolves when the changes are durable.
    ///
    /// # Errors
    /// [`StoreError::Closed`] when the store stopped writing (after a disk
    /// error, which the store has logged): the changes may not be durable.
    pub async fn wait(self) -> Result<(), StoreError> {
        let Some(Waiting { mut durable, target, nudge }) = self.0 else { return Ok(()) };
        if *durable.borrow() >= target {
            return Ok(());
        }
        if let Some(nudge) = nudge {
            let _ = nudge.send(queue::Command::Flush(target));
        }
        durable.wait_for(|done| *done >= target).await.map(|_| ()).map_err(|_| StoreError::Closed)
    }
}

#[cfg(test)]
mod tests;
