//! The in-memory store: survives a broker restart inside one process (an
//! embedding application, the tests), not a process restart.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{PendingWill, Recovered, Store, StoreError, StoredSession};
use crate::codec::{PacketId, TopicFilter};
use crate::message::{ByTopic, Message};
use crate::message::{Delivery, Inflight, Owner, Subscription};

/// A [`Store`] that keeps its copy in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    retained: HashSet<ByTopic>,
    sessions: BTreeMap<Arc<str>, StoredSession>,
    /// Share groups' waiting messages by key (keys grow, so in order).
    shared: BTreeMap<TopicFilter, BTreeMap<u64, Delivery>>,
    next_key: u64,
}

impl Inner {
    fn session(&mut self, client_id: &str) -> Option<&mut StoredSession> {
        self.sessions.get_mut(client_id)
    }
}

impl Store for MemoryStore {
    fn retain(&self, message: &Arc<Message>) {
        let mut inner = self.inner.lock();
        if message.payload.is_empty() {
            inner.retained.remove(message.topic.as_str());
        } else {
            inner.retained.replace(ByTopic(message.clone()));
        }
    }

    fn session_opened(&self, client_id: &Arc<str>, expiry_s: u32) {
        let mut inner = self.inner.lock();
        let entry = inner.sessions.entry(client_id.clone()).or_insert_with(|| StoredSession {
            client_id: client_id.clone(),
            expiry_s,
            subscriptions: Vec::new(),
            pending: Vec::new(),
            inflight: Vec::new(),
            incoming_qos2: Vec::new(),
            will: None,
            owner: None,
        });
        entry.expiry_s = expiry_s;
    }

    fn session_owner(&self, client_id: &Arc<str>, owner: &Owner) {
        if let Some(s) = self.inner.lock().session(client_id) {
            s.owner = Some(owner.clone());
        }
    }

    fn session_ended(&self, client_id: &str) {
        self.inner.lock().sessions.remove(client_id);
    }

    fn subscribed(&self, client_id: &str, filter: &TopicFilter, subscription: &Subscription) {
        if let Some(s) = self.inner.lock().session(client_id) {
            s.subscriptions.retain(|(f, _)| f != filter);
            s.subscriptions.push((filter.clone(), subscription.clone()));
        }
    }

    fn unsubscribed(&self, client_id: &str, filter: &TopicFilter) {
        if let Some(s) = self.inner.lock().session(client_id) {
            s.subscriptions.retain(|(f, _)| f != filter);
        }
    }

    fn session_messages(&self, client_id: &str, pending: Vec<Delivery>, inflight: Vec<Inflight>) {
        if let Some(s) = self.inner.lock().session(client_id) {
            s.pending = pending;
            s.inflight = inflight;
        }
    }

    fn incoming_qos2(&self, client_id: &Arc<str>, packet_id: PacketId, received: bool) {
        if let Some(s) = self.inner.lock().session(client_id) {
            s.incoming_qos2.retain(|id| *id != packet_id);
            if received {
                s.incoming_qos2.push(packet_id);
            }
        }
    }

    fn share_queued(&self, share: &TopicFilter, delivery: &Delivery) -> Option<u64> {
        let mut inner = self.inner.lock();
        let key = inner.next_key;
        inner.next_key += 1;
        inner.shared.entry(share.clone()).or_default().insert(key, Delivery { stored: Some(key), ..delivery.clone() });
        Some(key)
    }

    fn share_taken(&self, share: &TopicFilter, key: u64) {
        let mut inner = self.inner.lock();
        if let Some(group) = inner.shared.get_mut(share) {
            group.remove(&key);
            if group.is_empty() {
                inner.shared.remove(share);
            }
        }
    }

    fn will(&self, client_id: &Arc<str>, will: Option<&PendingWill>) {
        if let Some(s) = self.inner.lock().session(client_id) {
            s.will = will.cloned();
        }
    }

    fn recover(&self) -> Result<Recovered, StoreError> {
        let inner = self.inner.lock();
        Ok(Recovered {
            retained: inner.retained.iter().map(|entry| entry.0.clone()).collect(),
            sessions: inner.sessions.values().cloned().collect(),
            shared: inner
                .shared
                .iter()
                .map(|(share, group)| (share.clone(), group.values().cloned().collect()))
                .collect(),
        })
    }
}
