//! A connection's memory of authorization verdicts.

use std::collections::HashMap;
use std::time::Instant;

use super::{Action, ClientInfo, Policy};
use crate::codec::QoS;

/// Verdicts one connection already obtained, keyed by what was asked.
///
/// Owned by the connection task (no lock). Bounded: when full, expired
/// entries go first, then an arbitrary one. It remembers the policy
/// generation it was filled under and empties itself when the policy
/// changes, so a reload is honoured on the very next check.
#[derive(Debug)]
pub struct AuthzCache {
    capacity: usize,
    generation: u64,
    entries: HashMap<Key, Entry>,
}

/// QoS and retain are part of the key because a plugin may decide on them
/// (allow QoS 0 but not QoS 2, say).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    action: Action,
    topic: Box<str>,
    qos: QoS,
    retain: bool,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    allowed: bool,
    expires: Instant,
}

impl AuthzCache {
    /// An empty cache holding at most `capacity` verdicts.
    pub fn new(capacity: usize) -> AuthzCache {
        AuthzCache { capacity, generation: 0, entries: HashMap::new() }
    }

    /// Number of verdicts held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Answers from the cache when it can, else asks `policy` and remembers
    /// the verdict for as long as the plugin allowed.
    pub fn check(
        &mut self,
        policy: &Policy,
        client: &ClientInfo,
        action: Action,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> bool {
        self.check_at(Instant::now(), policy, client, action, topic, qos, retain)
    }

    /// [`AuthzCache::check`] at a given instant (for tests and for callers
    /// that already read the clock).
    #[allow(clippy::too_many_arguments, reason = "the question has six parts plus the clock")]
    pub fn check_at(
        &mut self,
        now: Instant,
        policy: &Policy,
        client: &ClientInfo,
        action: Action,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> bool {
        if self.generation != policy.generation() {
            self.entries.clear();
            self.generation = policy.generation();
        }
        let key = Key { action, topic: topic.into(), qos, retain };
        if let Some(entry) = self.entries.get(&key) {
            if entry.expires > now {
                return entry.allowed;
            }
            self.entries.remove(&key);
        }
        let verdict = policy.authorize(client, action, topic, qos, retain);
        if let Some(ttl) = verdict.cache_ttl.filter(|ttl| !ttl.is_zero())
            && let Some(expires) = now.checked_add(ttl)
            && self.capacity > 0
        {
            self.make_room(now);
            self.entries.insert(key, Entry { allowed: verdict.allowed, expires });
        }
        verdict.allowed
    }

    fn make_room(&mut self, now: Instant) {
        if self.entries.len() < self.capacity {
            return;
        }
        self.entries.retain(|_, e| e.expires > now);
        if self.entries.len() >= self.capacity
            && let Some(key) = self.entries.keys().next().cloned()
        {
            self.entries.remove(&key);
        }
    }
}
