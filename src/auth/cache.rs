//! A connection's memory of authorization verdicts.

use std::collections::HashMap;
use std::time::Instant;

use super::{Action, ClientInfo, Policy, Verdict};
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
    len: usize,
    /// Keyed by topic first so a lookup borrows the caller's `&str` instead
    /// of allocating a key on every publish; the few questions asked about
    /// one topic sit in a short vector. Hashed with foldhash, not SipHash:
    /// every publish and delivery looks a topic up here, and a client
    /// crafting colliding topics slows only its own cache, which holds a
    /// few dozen entries.
    entries: HashMap<Box<str>, Vec<(Question, Entry)>, foldhash::fast::RandomState>,
}

/// What was asked about a topic. QoS and retain are part of it because a
/// plugin may decide on them (allow QoS 0 but not QoS 2, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Question {
    action: Action,
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
        AuthzCache { capacity, generation: 0, len: 0, entries: HashMap::default() }
    }

    /// Number of verdicts held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every verdict: the client's identity changed (MQTT 5
    /// re-authentication), so verdicts about the old one no longer hold.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.len = 0;
    }

    /// Answers from the cache when it can, else asks `policy` and remembers
    /// the verdict for as long as the plugin allowed.
    pub async fn check(
        &mut self,
        policy: &Policy,
        client: &ClientInfo,
        action: Action,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> bool {
        self.check_at(Instant::now(), policy, client, action, topic, qos, retain).await
    }

    /// [`AuthzCache::check`] at a given instant (for tests and for callers
    /// that already read the clock).
    #[allow(clippy::too_many_arguments, reason = "the question has six parts plus the clock")]
    pub async fn check_at(
        &mut self,
        now: Instant,
        policy: &Policy,
        client: &ClientInfo,
        action: Action,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> bool {
        if let Some(allowed) = self.cached(now, policy, action, topic, qos, retain) {
            return allowed;
        }
        let verdict = policy.authorize(client, action, topic, qos, retain).await;
        self.remember(now, action, topic, qos, retain, &verdict);
        verdict.allowed
    }

    /// The live verdict held for the question, if any: what a caller that
    /// cannot wait for a plugin (one holding a lock) asks first.
    pub fn cached(
        &mut self,
        now: Instant,
        policy: &Policy,
        action: Action,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> Option<bool> {
        if self.generation != policy.generation() {
            self.clear();
            self.generation = policy.generation();
        }
        let question = Question { action, qos, retain };
        let answers = self.entries.get_mut(topic)?;
        let i = answers.iter().position(|(q, _)| *q == question)?;
        let entry = answers[i].1;
        if entry.expires > now {
            return Some(entry.allowed);
        }
        answers.swap_remove(i);
        self.len -= 1;
        None
    }

    /// Keeps `verdict` for as long as the plugin allowed it to be reused.
    /// The caller asked [`AuthzCache::cached`] under the same policy.
    pub fn remember(&mut self, now: Instant, action: Action, topic: &str, qos: QoS, retain: bool, verdict: &Verdict) {
        if let Some(ttl) = verdict.cache_ttl.filter(|ttl| !ttl.is_zero())
            && let Some(expires) = now.checked_add(ttl)
            && self.capacity > 0
        {
            self.make_room(now);
            let question = Question { action, qos, retain };
            self.entries.entry(topic.into()).or_default().push((question, Entry { allowed: verdict.allowed, expires }));
            self.len += 1;
        }
    }

    /// Drops expired verdicts when full, then an arbitrary topic's verdicts
    /// if that was not enough.
    fn make_room(&mut self, now: Instant) {
        if self.len < self.capacity {
            return;
        }
        self.entries.retain(|_, answers| {
            answers.retain(|(_, e)| e.expires > now);
            !answers.is_empty()
        });
        self.len = self.entries.values().map(Vec::len).sum();
        if self.len >= self.capacity
            && let Some(topic) = self.entries.keys().next().cloned()
            && let Some(dropped) = self.entries.remove(&topic)
        {
            self.len -= dropped.len();
        }
    }
}
