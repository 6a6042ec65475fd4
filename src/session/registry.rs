//! The session registry: client id -> session, with takeover.
//!
//! Touched only when clients connect and sessions end, never on the publish
//! path, so one mutex over the map is enough. An entry is the session
//! alone: which connection holds it is the session's own
//! [`Session::try_hold`] flag, not a mutex of its own per entry (issue 25:
//! 80 bytes per session).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

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
    pub generation: u32,
}

impl Drop for Attached {
    /// Lets go of the session: a newcomer waiting for it goes on.
    fn drop(&mut self) {
        self.session.let_go();
    }
}

/// A hold on a session that is not an attachment ([`Registry::take`]).
struct Hold<'a>(&'a Session);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.0.let_go();
    }
}

/// Sessions by client id.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
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
        // One lookup for the common case, a client id without a session:
        // its new session is registered by the same lookup (issue 25).
        let (old, fresh) = match self.sessions.lock().entry(client_id.clone()) {
            Entry::Occupied(entry) => (entry.get().clone(), false),
            Entry::Vacant(entry) => (entry.insert(Arc::new(Session::new(client_id.clone(), bound))).clone(), true),
        };
        if fresh {
            return hold(&old).await.then(|| Self::finish(old, false));
        }
        old.kick(false);
        if !hold(&old).await {
            return None;
        }
        if clean_start {
            old.let_go();
            discard(&old);
        } else if self.is_registered(&old) {
            return Some(Self::finish(old, true));
        } else {
            old.let_go();
        }
        // A new session: the old one was discarded (clean start) or ended
        // while we waited (its connection had no session expiry).
        let session = self.insert_new(client_id, bound, &old);
        if !hold(&session).await {
            return None;
        }
        Some(Self::finish(session, false))
    }

    fn is_registered(&self, session: &Arc<Session>) -> bool {
        self.sessions.lock().get(session.client_id()).is_some_and(|s| Arc::ptr_eq(s, session))
    }

    fn insert_new(&self, client_id: &Arc<str>, bound: QueueBound, replacing: &Arc<Session>) -> Arc<Session> {
        let session = Arc::new(Session::new(client_id.clone(), bound));
        let mut map = self.sessions.lock();
        // If someone else raced us to a new session for this id, replace it
        // only if it is the one we meant to replace (or there is none).
        match map.entry(client_id.clone()) {
            Entry::Occupied(current) if !Arc::ptr_eq(current.get(), replacing) => current.get().clone(),
            Entry::Occupied(mut current) => {
                current.insert(session.clone());
                session
            }
            Entry::Vacant(entry) => entry.insert(session).clone(),
        }
    }

    /// Attaches the connection that holds `session` ([`hold`]).
    fn finish(session: Arc<Session>, present: bool) -> Attached {
        let generation = {
            let mut state = session.lock();
            state.online = true;
            state.generation = state.generation.wrapping_add(1);
            if let Some(timers) = state.timers.take() {
                timers.cancel();
            }
            state.flags.set(super::Flags::KICKABLE, true);
            state.flags.set(super::Flags::KICKED_BY_ADMIN, false);
            // Under the state lock, like `kick`: a kick meant for the
            // previous connection (gone: we hold the attachment) is not
            // for this one.
            session.clear_signals();
            state.generation
        };
        Attached { session, present, generation }
    }

    /// Makes the connection attached to the session of `client_id` (if
    /// any) leave, waits until it has let go, and calls `take` with the
    /// session while holding it, so no connection attaches meanwhile.
    /// `None` when there is no such session, it ended while the old
    /// connection left, or that connection did not let go in time.
    pub async fn take<R>(&self, client_id: &str, take: impl FnOnce(&Arc<Session>) -> R) -> Option<R> {
        let session = self.sessions.lock().get(client_id).cloned()?;
        session.kick(false);
        if !hold(&session).await {
            return None;
        }
        let _hold = Hold(&session);
        self.is_registered(&session).then(|| take(&session))
    }

    /// Registers a session recovered from the store, offline.
    pub fn restore(&self, client_id: Arc<str>, bound: QueueBound) -> Arc<Session> {
        let session = Arc::new(Session::new(client_id.clone(), bound));
        self.sessions.lock().insert(client_id, session.clone());
        session
    }

    /// Removes `session` from the registry if it is still the registered
    /// session for its client id.
    pub fn remove(&self, session: &Arc<Session>) -> bool {
        // One lookup: the entry is looked at and removed in place.
        match self.sessions.lock().entry(session.client_id().clone()) {
            Entry::Occupied(entry) if Arc::ptr_eq(entry.get(), session) => {
                entry.remove();
                true
            }
            _ => false,
        }
    }

    /// The session registered for `client_id`.
    pub fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        self.sessions.lock().get(client_id).cloned()
    }

    /// Signals [`signal::KEEP_ALIVE`](super::signal::KEEP_ALIVE) to every
    /// attached connection whose keep-alive deadline is at or before
    /// `now` ([`super::keep_alive`]). One pass under the lock: an atomic
    /// load per session, about a millisecond for 100,000 (1.1-1.3 ms in a
    /// release build here), once a second. With `park`, also asks every
    /// connection that can park and is not parked to park if it has been
    /// quiet
    /// ([`signal::PARK`](super::signal::PARK)).
    pub fn signal_overdue(&self, now: u32, park: bool) {
        for session in self.sessions.lock().values() {
            session.signal_if_overdue(now);
            if park {
                session.ask_to_park();
            }
        }
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
        self.sessions.lock().values().cloned().collect()
    }
}

/// Waits, at most [`TAKEOVER_WAIT`], until the connection attached to
/// `session` (if any) has let go, and holds the session then; whether it
/// did. The caller lets go ([`Session::let_go`]) or attaches.
async fn hold(session: &Session) -> bool {
    // Nobody holds it (a new session, a client back after its connection
    // ended): no timer to make (issue 25).
    if session.try_hold() {
        return true;
    }
    let wait = async {
        loop {
            // Made before looking, so a let-go in between wakes it.
            let released = session.released();
            if session.try_hold() {
                return;
            }
            released.await;
        }
    };
    tokio::time::timeout(TAKEOVER_WAIT, wait).await.is_ok()
}
