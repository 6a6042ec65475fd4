//! Retained messages: the last retained message per topic.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::codec::TopicFilter;

use crate::message::{ByTopic, Message};

/// The retained message store.
#[derive(Debug, Default)]
pub struct Retained {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Keyed by each message's own topic.
    messages: HashSet<ByTopic>,
    /// Messages the bounds count (all but the broker's own `$SYS`).
    counted: usize,
    /// Topic and payload bytes of those, as the byte bound counts.
    bytes: usize,
}

/// What a retained message counts against `limits.max_retained_bytes`:
/// topic and payload, or nothing for the broker's own `$SYS` messages,
/// which the bounds leave alone.
fn size(message: &Message) -> usize {
    if is_system(message) { 0 } else { message.topic.as_str().len() + message.payload.len() }
}

fn is_system(message: &Message) -> bool {
    let topic = message.topic.as_str();
    topic == "$SYS" || topic.starts_with("$SYS/")
}

impl Retained {
    /// Stores `message` as the retained message of its topic, or deletes the
    /// retained message when the payload is empty [MQTT-3.3.1-10]. No bound
    /// applies (recovery, `$SYS`).
    pub fn set(&self, message: &Arc<Message>) {
        self.set_within(message, 0, 0);
    }

    /// [`Retained::set`] within bounds: a new or larger message that would
    /// take the store past `max_messages` messages or `max_bytes` bytes
    /// (0: no limit) is not stored, and `false` is returned. Deleting and
    /// shrinking always succeed.
    pub fn set_within(&self, message: &Arc<Message>, max_messages: usize, max_bytes: usize) -> bool {
        let system = is_system(message);
        let mut inner = self.inner.write();
        let old = inner.messages.get(message.topic.as_str()).map_or(0, |m| size(&m.0));
        if message.payload.is_empty() {
            if inner.messages.remove(message.topic.as_str()) {
                inner.bytes -= old;
                inner.counted -= usize::from(!system);
            }
            return true;
        }
        let new = size(message);
        let is_new = !inner.messages.contains(message.topic.as_str());
        let over_count = is_new && !system && max_messages > 0 && inner.counted >= max_messages;
        let over_bytes = new > old && max_bytes > 0 && inner.bytes - old + new > max_bytes;
        if over_count || over_bytes {
            return false;
        }
        inner.bytes = inner.bytes - old + new;
        inner.counted += usize::from(is_new && !system);
        inner.messages.replace(ByTopic(message.clone()));
        true
    }

    /// Topic and payload bytes of the retained messages (but `$SYS`).
    pub fn bytes(&self) -> usize {
        self.inner.read().bytes
    }

    /// Every unexpired retained message whose topic matches `filter`.
    pub fn matching(&self, filter: &TopicFilter) -> Vec<Arc<Message>> {
        let now = std::time::Instant::now();
        self.inner
            .read()
            .messages
            .iter()
            .map(|entry| &entry.0)
            .filter(|m| !m.is_expired(now) && filter.matches(&m.topic))
            .cloned()
            .collect()
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.inner.read().messages.len()
    }

    /// Whether there are no retained messages.
    pub fn is_empty(&self) -> bool {
        self.inner.read().messages.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::TopicName;
    use crate::codec::{Properties, QoS};

    fn retained(topic: &str, payload: &'static [u8]) -> Arc<Message> {
        let topic = TopicName::new(topic).expect("valid");
        Arc::new(Message::new(topic, bytes::Bytes::from_static(payload), QoS::AtMostOnce, true, &Properties::default()))
    }

    #[test]
    fn bounds_refuse_growth_but_never_deletes_or_shrinks() {
        let r = Retained::default();
        // Each: 1 byte of topic + 4 of payload.
        assert!(r.set_within(&retained("a", b"aaaa"), 2, 12));
        assert!(r.set_within(&retained("b", b"bbbb"), 2, 12));
        assert!(!r.set_within(&retained("c", b"cccc"), 2, 0), "a third topic");
        assert!(!r.set_within(&retained("a", b"aaaaaaa"), 2, 12), "a larger message past the bytes");
        assert!(r.set_within(&retained("a", b"aa"), 2, 12), "a smaller one");
        assert_eq!(r.bytes(), 8);
        assert!(r.set_within(&retained("a", b""), 2, 12), "a delete");
        assert!(r.set_within(&retained("c", b"cccc"), 2, 12));
        assert_eq!((r.len(), r.bytes()), (2, 10));
        assert!(r.set_within(&retained("$SYS/broker/uptime", b"1"), 2, 12), "$SYS is not counted");
        r.set(&retained("d", b"dddd"));
        assert_eq!(r.len(), 4, "no bound without one");
    }
}
