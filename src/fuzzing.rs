//! Hooks for the cargo-fuzz targets in `fuzz/`; compiled only with
//! `--cfg fuzzing`, so they are no part of the library's API.
//!
//! The subscription trie is crate-private; the `trie` target drives it
//! through this wrapper, which names sessions by index.

use std::sync::Arc;

use crate::codec::SubscriptionOptions;
use crate::router::{FuzzTrie, Subscriber};
use crate::session::Session;

/// The subscription trie over `n` sessions named `0..n`.
#[derive(Debug)]
pub struct Trie {
    inner: FuzzTrie,
    sessions: Vec<Arc<Session>>,
}

impl Trie {
    /// An empty trie and `n` sessions, all connected (a share group
    /// picks among its connected members only).
    pub fn new(n: usize) -> Trie {
        let online = |i: usize| {
            let session = Arc::new(Session::new(i.to_string().into(), crate::session::QueueBound::messages(1)));
            session.lock().online = true;
            session
        };
        let sessions = (0..n).map(online).collect();
        Trie { inner: FuzzTrie::default(), sessions }
    }

    /// Subscribes session `s`; returns whether it already had this filter.
    pub fn insert(&mut self, filter: &str, group: Option<&str>, s: usize) -> bool {
        let sub = Subscriber {
            session: self.sessions[s].clone(),
            options: SubscriptionOptions::default(),
            id: None,
            share: None,
        };
        self.inner.insert(filter, group, sub)
    }

    /// Unsubscribes session `s`; returns whether the subscription existed.
    pub fn remove(&mut self, filter: &str, group: Option<&str>, s: usize) -> bool {
        self.inner.remove(filter, group, &self.sessions[s])
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether no node is left in the trie (empty levels are pruned).
    pub fn is_empty(&self) -> bool {
        self.inner.is_pruned_empty()
    }

    /// The session index of each match for `topic`.
    pub fn matches(&self, topic: &str) -> Vec<usize> {
        let mut out = Vec::new();
        self.inner.matches(topic, &mut out);
        out.iter().filter_map(|m| m.session.client_id().parse().ok()).collect()
    }
}
