//! Persistence: what must survive the broker process.
//!
//! The broker's live state (sessions, the subscription index, retained
//! messages) is in memory; a [`Store`] keeps a copy it can hand back at
//! start-up through [`Store::recover`]. The broker reports changes to the
//! store as they happen: retained messages and subscriptions immediately,
//! a session's queued and unacknowledged messages when its connection ends
//! and at shutdown. [`MemoryStore`] is the default; the embedded on-disk
//! store implements the same trait.

mod memory;

use std::sync::Arc;

pub use memory::MemoryStore;

use crate::codec::TopicFilter;
use crate::router::Message;
use crate::session::{Delivery, Inflight, Subscription};

/// A store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stored data cannot be read back.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
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
}

/// Everything recovered at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Retained messages.
    pub retained: Vec<Arc<Message>>,
    /// Sessions that had not ended.
    pub sessions: Vec<StoredSession>,
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
    /// A session ended: forget it and everything it held.
    fn session_ended(&self, client_id: &str);
    /// A subscription was added or replaced.
    fn subscribed(&self, client_id: &str, filter: &TopicFilter, subscription: &Subscription);
    /// A subscription was removed.
    fn unsubscribed(&self, client_id: &str, filter: &TopicFilter);
    /// The messages a session holds, replacing what was stored before.
    fn session_messages(&self, client_id: &str, pending: Vec<Delivery>, inflight: Vec<Inflight>);
    /// Everything stored.
    ///
    /// # Errors
    /// [`StoreError`] when stored data cannot be read back.
    fn recover(&self) -> Result<Recovered, StoreError>;
}
