//! The session registry: client id -> session, with takeover.
//!
//! Touched only when clients connect and sessions end, never on the publish
//! path, so one mutex over the map is enough.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::OwnedMutexGuard;

use super::{QueueBound, Session};

/// A connection's hold on a session. While it exists no other connection is
/// attached to the same session: a newcomer must first kick this one out
/// and wait for it to drop.
#[derive(Debug)]
pub struct Attached {
    /// The session.
    pub session: Arc<Session>,
    /// Whether an existing session was resumed (CONNACK Session Present).
    pub present: bool,
    /// The generation of this attachment, for timers armed at detach.
    pub generation: u64,
    _exclusive: OwnedMutexGuard<()>,
}

/// Sessions by client id.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<Arc<str>, Entry>>,
}

#[derive(Debug, Clone)]
struct Entry {
    session: Arc<Session>,
    /// Held by the attached connection; see [`Attached`].
    exclusive: Arc<tokio::sync::Mutex<()>>,
}

/// How long a newcomer waits for a kicked connection to let go.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

impl Registry {
    /// Attaches a connection to the session of `client_id`, taking it over
    /// from any connection already attached. With `clean_start` any stored
    /// session is discarded through `discard` (which unsubscribes it) and a
    /// new one is created.
    ///
    /// Returns `None` if the previous connection did not let go in time.
    pub async fn attach(
        &self,
        client_id: &Arc<str>,
        clean_start: bool,
        bound: QueueBound,
        discard: impl FnOnce(&Arc<Session>),
    ) -> Option<Attached> {
        let existing = self.sessions.lock().get(client_id).cloned();
        let mut replacing = None;
        if let Some(old) = existing {
            old.session.kick(false);
            let guard = tokio::time::timeout(TAKEOVER_WAIT, old.exclusive.clone().lock_owned()).await.ok()?;
            if clean_start {
                drop(guard);
                discard(&old.session);
            } else if self.is_registered(&old.session) {
                return Some(Self::finish(old.session, true, guard));
            }
            // Otherwise the session ended while we waited (the old
            // connection had no session expiry): start a new one.
            replacing = Some(old.session);
        }
        let entry = self.insert_new(client_id, bound, replacing.as_ref());
        let guard = tokio::time::timeout(TAKEOVER_WAIT, entry.exclusive.clone().lock_owned()).await.ok()?;
        Some(Self::finish(entry.session, false, guard))
    }

    fn is_registered(&self, session: &Arc<Session>) -> bool {
        self.sessions.lock().get(session.client_id()).is_some_and(|e| Arc::ptr_eq(&e.session, session))
    }

    fn insert_new(&self, client_id: &Arc<str>, bound: QueueBound, replacing: Option<&Arc<Session>>) -> Entry {
        let entry = Entry {
            session: Arc::new(Session::new(client_id.clone(), bound)),
            exclusive: Arc::new(tokio::sync::Mutex::new(())),
        };
        let mut map = self.sessions.lock();
        // If someone else raced us to a new session for this id, replace it
        // only if it is the one we meant to replace (or there was none).
        match map.get(client_id) {
            Some(current) if replacing.is_none_or(|r| !Arc::ptr_eq(&current.session, r)) => current.clone(),
            _ => {
                map.insert(client_id.clone(), entry.clone());
                entry
            }
        }
    }

    fn finish(session: Arc<Session>, present: bool, guard: OwnedMutexGuard<()>) -> Attached {
        let generation = {
            let mut state = session.lock();
            state.online = true;
            state.generation += 1;
            if let Some(timers) = state.timers.take() {
                timers.cancel();
            }
            state.kickable = true;
            state.kicked_by_admin = false;
            // Under the state lock, like `kick`: a kick meant for the
            // previous connection (gone: we hold the attachment) is not
            // for this one.
            session.clear_signals();
            state.generation
        };
        Attached { session, present, generation, _exclusive: guard }
    }

    /// Makes the connection attached to the session of `client_id` (if
    /// any) leave, waits until it has let go, and calls `take` with the
    /// session while holding it, so no connection attaches meanwhile.
    /// `None` when there is no such session, it ended while the old
    /// connection left, or that connection did not let go in time.
    pub async fn take<R>(&self, client_id: &str, take: impl FnOnce(&Arc<Session>) -> R) -> Option<R> {
        let entry = self.sessions.lock().get(client_id).cloned()?;
        entry.session.kick(false);
        let _guard = tokio::time::timeout(TAKEOVER_WAIT, entry.exclusive.lock_owned()).await.ok()?;
        self.is_registered(&entry.session).then(|| take(&entry.session))
    }

    /// Registers a session recovered from the store, offline.
    pub fn restore(&self, client_id: Arc<str>, bound: QueueBound) -> Arc<Session> {
        let entry = Entry {
            session: Arc::new(Session::new(client_id.clone(), bound)),
            exclusive: Arc::new(tokio::sync::Mutex::new(())),
        };
        let session = entry.session.clone();
        self.sessions.lock().insert(client_id, entry);
        session
    }

    /// Removes `session` from the registry if it is still the registered
    /// session for its client id.
    pub fn remove(&self, session: &Arc<Session>) -> bool {
        let mut map = self.sessions.lock();
        match map.get(session.client_id()) {
            Some(e) if Arc::ptr_eq(&e.session, session) => {
                map.remove(session.client_id());
                true
            }
            _ => false,
        }
    }

    /// The session registered for `client_id`.
    pub fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        self.sessions.lock().get(client_id).map(|e| e.session.clone())
    }

    /// Number of sessions, connected or not.
    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Whether there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.sessions.lock().is_empty()
    }

    /// Every session (for shutdown and administration).
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.sessions.lock().values().map(|e| e.session.clone()).collect()
    }
}
