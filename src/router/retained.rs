//! Retained messages: the last retained message per topic.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::codec::{TopicFilter, TopicName};

use super::Message;

/// The retained message store.
#[derive(Debug, Default)]
pub struct Retained {
    messages: RwLock<HashMap<TopicName, Arc<Message>>>,
}

impl Retained {
    /// Stores `message` as the retained message of its topic, or deletes the
    /// retained message when the payload is empty [MQTT-3.3.1-10].
    pub fn set(&self, message: &Arc<Message>) {
        let mut map = self.messages.write();
        if message.payload.is_empty() {
            map.remove(&message.topic);
        } else {
            map.insert(message.topic.clone(), message.clone());
        }
    }

    /// Every unexpired retained message whose topic matches `filter`.
    pub fn matching(&self, filter: &TopicFilter) -> Vec<Arc<Message>> {
        let now = std::time::Instant::now();
        self.messages.read().values().filter(|m| !m.is_expired(now) && filter.matches(&m.topic)).cloned().collect()
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.messages.read().len()
    }

    /// Whether there are no retained messages.
    pub fn is_empty(&self) -> bool {
        self.messages.read().is_empty()
    }
}
