//! Sessions: the state that outlives a network connection.
//!
//! A [`Session`] holds a client's subscriptions, the messages queued for it
//! and its QoS 1/2 state in both directions. Publishers push into it through
//! [`Session::enqueue`] under a short per-session lock (never a global one);
//! the connection that owns it drains the queue when notified. Because the
//! state lives here rather than in the connection task, a takeover or a
//! reconnect simply attaches a new connection to the same session.

pub mod keep_alive;
mod registry;
mod replica;
mod state;
pub mod wakes;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::Notify;

pub use registry::{Attached, Registry};
pub use replica::Replica;
pub use state::{ConnectionInfo, Flags, Keyed, PacketIds, QueueBound, Room, SessionState};

/// Why [`Session::offer`] did not queue a delivery.
#[derive(Debug)]
pub enum Refusal {
    /// Dropped and counted in the session, for this reason.
    Dropped(DropReason),
    /// The queue is full and the session online: the delivery is handed
    /// back for the publisher to hold until [`Session::room`].
    Full(Delivery),
    /// A share group's delivery, and the session is no longer connected
    /// (it left after the group picked it): handed back for another
    /// member ([`crate::router::Router::redispatch`]).
    Away(Delivery),
}

/// A delivery a full queue handed back, held by its publisher.
#[derive(Debug)]
pub struct Held {
    /// Whose queue refused it.
    pub session: Arc<Session>,
    /// The delivery, to offer again.
    pub delivery: Delivery,
}

impl Held {
    /// Offers `delivery` to `session` ([`Session::offer`]): queued, or
    /// dropped and counted in `metrics`, or, when the full queue hands it
    /// back, added to `held`. Returns a share group's delivery that its
    /// member, gone away, handed back ([`Refusal::Away`]).
    #[must_use = "a share group's delivery handed back goes to another member"]
    pub fn offer(
        session: &Arc<Session>,
        delivery: Delivery,
        covered: bool,
        store: &dyn Store,
        metrics: &Metrics,
        held: &mut Vec<Held>,
    ) -> Option<Delivery> {
        match session.offer(delivery, Some(store), covered) {
            Ok(evicted) => metrics.dropped(DropReason::QueueFull, evicted as u64),
            Err(Refusal::Dropped(reason)) => metrics.dropped(reason, 1),
            Err(Refusal::Full(delivery)) => held.push(Held { session: session.clone(), delivery }),
            Err(Refusal::Away(delivery)) => return Some(delivery),
        }
        None
    }
}

use crate::codec::QoS;
use crate::message::Delivery;
use crate::metrics::{DropReason, Metrics};
use crate::store::Store;

/// What the attached connection is asked to notice: bits of
/// [`Session::signals`](Session::poll_signals), set by others, taken by
/// the connection's task, which they wake.
pub mod signal {
    /// Deliveries may be waiting (queued, or the in-flight window opened).
    /// Taken when seen.
    pub const WAKE: u8 = 1;
    /// Leave: another connection takes the session over, or an operator
    /// kicked the client (`SessionState::kicked_by_admin` says which).
    /// Stays set until the next connection attaches.
    pub const KICK: u8 = 2;
    /// Leave: the broker is shutting down.
    pub const SHUTDOWN: u8 = 4;
    /// Either way of being told to leave.
    pub const LEAVE: u8 = KICK | SHUTDOWN;
    /// The keep-alive sweep found the connection's deadline passed
    /// ([`super::keep_alive`]): it checks its own clock. Taken when seen.
    pub const KEEP_ALIVE: u8 = 8;
    /// The keep-alive sweep asks connections to park if they have been
    /// quiet since it last asked (`limits.park_after_s`,
    /// `connection::parking`). Taken when seen.
    pub const PARK: u8 = 16;
    /// The signals [`super::Session::poll_signals`] takes when it sees them.
    pub const TAKEN: u8 = WAKE | KEEP_ALIVE | PARK;
}

/// A client session, shared by the registry, the subscription index and the
/// connection currently attached to it.
#[derive(Debug)]
pub struct Session {
    client_id: Arc<str>,
    state: Mutex<SessionState>,
    /// [`signal`] bits for the attached connection. With `waker`, this is
    /// all an idle connection waits on besides its socket and keep alive:
    /// 25 bytes per session, instead of a `Notify` and a waiter future for
    /// deliveries plus a cancellation token and two waiters for takeover
    /// and shutdown (issue 25).
    signals: AtomicU8,
    /// Whether a connection holds the session (attached to it, or taking
    /// it over for another node): while one does, no other attaches
    /// ([`Registry`]). A flag here rather than a mutex per registry entry
    /// (issue 25).
    held: AtomicBool,
    /// The sweep does not ask the attached connection to park
    /// (`connection::parked`): it is parked, and the ask would wake it, or
    /// its stream cannot park (TLS, WebSocket), and the ask would only
    /// wake it. In padding.
    unasked: AtomicBool,
    /// The attached connection's keep-alive deadline, a second of
    /// [`keep_alive`]'s clock; 0 for none (issue 25: in the padding after
    /// `signals` and `held`, so free).
    keep_alive_due: AtomicU32,
    /// The attached connection's task, woken when a signal is set.
    waker: AtomicWaker,
    /// Wakes publishers holding deliveries this session's full queue
    /// refused, once it has drained to half (see [`Session::offer`]), and
    /// newcomers waiting for the connection that holds the session to let
    /// go ([`Session::released`]). Both look again when woken, so a wake
    /// meant for the other costs one look.
    room: Notify,
    /// Messages dropped because the queue was full or the client offline.
    dropped: AtomicU64,
}

impl Session {
    /// Whether a connection as `user` (a verified user name, `None` for
    /// an anonymous client) may take this session over: it belongs to that
    /// user, or its owner is not known.
    pub fn may_be_taken_by(&self, user: Option<&str>) -> bool {
        self.lock().owner.as_ref().is_none_or(|owner| owner.0.as_deref() == user)
    }

    /// A new, empty session.
    pub fn new(client_id: Arc<str>, bound: QueueBound) -> Session {
        Session {
            client_id,
            state: Mutex::new(SessionState::new(bound)),
            signals: AtomicU8::new(0),
            held: AtomicBool::new(false),
            unasked: AtomicBool::new(false),
            keep_alive_due: AtomicU32::new(0),
            waker: AtomicWaker::new(),
            room: Notify::new(),
            dropped: AtomicU64::new(0),
        }
    }

    /// The client identifier this session belongs to.
    pub fn client_id(&self) -> &Arc<str> {
        &self.client_id
    }

    /// Locks the session state. Callers keep the guard for a few field
    /// updates only and never across an `.await` (it is a sync mutex, which
    /// is why that is enforced by the type: the guard is not `Send`).
    pub fn lock(&self) -> parking_lot::MutexGuard<'_, SessionState> {
        self.state.lock()
    }

    /// Queues a delivery for this session and wakes its connection.
    ///
    /// QoS 0 messages are dropped while no connection is attached. When the
    /// queue is full (`limits.max_queued_messages` or `max_queued_bytes`),
    /// queued QoS 0 messages are evicted, oldest first, to make room; if
    /// that is not enough the new message is dropped (as Mosquitto's
    /// `max_queued_messages` does). Drops are counted, not silent.
    /// Returns how many queued QoS 0 messages were evicted.
    ///
    /// # Errors
    /// Why the delivery was dropped; a share group's delivery for a
    /// session no longer connected counts as [`DropReason::OfflineQos0`]
    /// here (the router hands it to another member instead).
    pub fn enqueue(&self, delivery: Delivery) -> Result<usize, DropReason> {
        self.enqueue_and_store(delivery, None, false).map_err(|refusal| match refusal {
            Refusal::Dropped(reason) => reason,
            Refusal::Away(_) => DropReason::OfflineQos0,
            Refusal::Full(_) => DropReason::QueueFull,
        })
    }

    /// [`Session::enqueue`], and a QoS 1/2 message for a session that
    /// outlives its connection (online or offline) is also given to `store`
    /// (under the session lock, so the store sees it in queue order with the
    /// snapshot taken when the connection ended). Clean sessions never
    /// reach the store. A QoS 1/2 delivery that JetStream has for the
    /// session (`covered`: the cluster's queue stream holds the message
    /// and a plain subscription matched it) is left to JetStream while the
    /// session is [kept](crate::session::SessionState::kept).
    ///
    /// # Errors
    /// Why the delivery was dropped ([`Refusal::Dropped`]), or a share
    /// group's delivery handed back ([`Refusal::Away`]); never
    /// [`Refusal::Full`].
    pub fn enqueue_and_store(
        &self,
        delivery: Delivery,
        store: Option<&dyn Store>,
        covered: bool,
    ) -> Result<usize, Refusal> {
        match self.offer_inner(delivery, store, false, covered) {
            // Not asked to hold it back: a drop like any other.
            Err(Refusal::Full(_)) => Err(Refusal::Dropped(DropReason::QueueFull)),
            other => other,
        }
    }

    /// [`Session::enqueue_and_store`], except that a delivery the full
    /// queue of an online session has no room for comes back
    /// ([`Refusal::Full`]) instead of being dropped, so that its publisher
    /// can hold it (and a QoS 1/2 acknowledgement) until the subscriber
    /// catches up ([`Session::room`]): a QoS 1/2 one once evicting queued
    /// QoS 0 would not make room, a QoS 0 one without evicting any. Not
    /// while the session is [marked slow](Session::mark_slow): a
    /// subscriber that does not catch up costs each publisher one wait,
    /// not one per message.
    ///
    /// # Errors
    /// Why the delivery was not queued.
    pub fn offer(&self, delivery: Delivery, store: Option<&dyn Store>, covered: bool) -> Result<usize, Refusal> {
        self.offer_inner(delivery, store, true, covered)
    }

    fn offer_inner(
        &self,
        mut delivery: Delivery,
        store: Option<&dyn Store>,
        hold: bool,
        covered: bool,
    ) -> Result<usize, Refusal> {
        let qos = delivery.qos;
        let accepted = {
            let mut state = self.state.lock();
            if covered && delivery.qos != QoS::AtMostOnce && state.kept() {
                // JetStream keeps it for the session (`cluster::queue`).
                return Ok(0);
            }
            if delivery.share.is_some() && !state.online && delivery.qos != QoS::AtMostOnce {
                // Left since its group picked it: a connected member takes
                // it, or the group keeps it, rather than a session that
                // may never come back (or has already ended).
                return Err(Refusal::Away(delivery));
            }
            if hold
                && delivery.qos == QoS::AtMostOnce
                && state.online
                && !state.flags.contains(Flags::SLOW)
                && !state.fits(&delivery)
            {
                // Issue 25: a QoS 0 message waits with its publisher too,
                // rather than pushing out an older one. A full queue
                // mostly means the publisher's task routed a burst before
                // this session's task ran, not that its client stopped
                // reading; one that did is marked slow when the wait runs
                // out, and from then on QoS 0 is evicted and dropped.
                state.flags.set(Flags::PUBLISHERS_WAITING, true);
                return Err(Refusal::Full(delivery));
            }
            if !state.online && delivery.qos == QoS::AtMostOnce {
                Err(DropReason::OfflineQos0)
            } else {
                // Only QoS 1/2 messages of a session that outlives its
                // connection are kept.
                let keep = store.filter(|_| state.expiry_s > 0 && delivery.qos != QoS::AtMostOnce);
                // Room is made before storing: a dropped message must not be
                // kept, and an evicted one that was kept is forgotten.
                let forget = |old: &Delivery| {
                    if let (Some(store), Some(key)) = (store, old.stored) {
                        store.delivered(&self.client_id, key);
                    }
                };
                match state.make_room(&delivery, |old| forget(&old)) {
                    None if hold
                        && state.online
                        && !state.flags.contains(Flags::SLOW)
                        && delivery.qos != QoS::AtMostOnce =>
                    {
                        // Kept although not queued: it belongs to a publish
                        // whose other copies (and QoS 2 packet id) are stored
                        // in the same commit (`HeldPublish`), so after a crash
                        // it comes back from the store, while the publisher's
                        // QoS 2 resend is acknowledged, not routed again.
                        if let Some(store) = keep {
                            delivery.stored = store.queued(&self.client_id, &delivery);
                        }
                        state.flags.set(Flags::PUBLISHERS_WAITING, true);
                        return Err(Refusal::Full(delivery));
                    }
                    None => {
                        // A held delivery offered again, which no longer waits.
                        forget(&delivery);
                        Err(DropReason::QueueFull)
                    }
                    Some(evicted) => {
                        if let Some(store) = keep {
                            delivery.stored = store.queued(&self.client_id, &delivery);
                        }
                        // What JetStream holds too, in case the session is
                        // becoming kept (`cluster::queue::Taken`).
                        let routed = (covered && delivery.qos == QoS::ExactlyOnce).then_some(delivery.message.id);
                        if state.push(delivery) {
                            if let (Some(id), Some(replica)) = (routed, state.replica.as_mut()) {
                                replica.routed(id);
                            }
                            Ok(evicted)
                        } else {
                            Err(DropReason::QueueFull)
                        }
                    }
                }
            }
        };
        match accepted {
            Ok(evicted) => {
                self.wake_for(qos);
                if evicted > 0 {
                    self.dropped.fetch_add(evicted as u64, Ordering::Relaxed);
                }
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        accepted.map_err(Refusal::Dropped)
    }

    /// Resolves when this session's queue has drained to half after
    /// refusing a delivery to a publisher, or the session went offline or
    /// was marked slow: the time to offer it again. Create the future
    /// before the offer, so a wake in between is not missed.
    pub fn room(&self) -> tokio::sync::futures::Notified<'_> {
        self.room.notified()
    }

    /// Wakes the publishers waiting for room if the queue has drained to
    /// half; called under the session lock by whoever takes from the queue.
    pub fn notify_room(&self, state: &mut SessionState) {
        if state.flags.contains(Flags::PUBLISHERS_WAITING) && state.half_empty() {
            state.flags.set(Flags::PUBLISHERS_WAITING, false);
            state.flags.set(Flags::SLOW, false);
            self.room.notify_waiters();
        }
    }

    /// A publisher waited `limits.queue_full_wait_ms` for room in vain and
    /// dropped the delivery it held: until the queue drains to half,
    /// deliveries that do not fit are dropped at once.
    pub fn mark_slow(&self) {
        self.state.lock().flags.set(Flags::SLOW, true);
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.room.notify_waiters();
    }

    /// Wakes every waiting publisher (the session went offline, or its
    /// queue was emptied), so they offer again and learn the outcome.
    pub fn release_waiting(&self) {
        self.room.notify_waiters();
    }

    /// Wakes the attached connection (deliveries were queued, or an
    /// acknowledgement opened the in-flight window). Once per batch: while
    /// an earlier wake is not yet taken, this is one atomic operation, so
    /// a publisher fanning out to many sessions wakes each connection
    /// task once, not once per message.
    pub fn wake(&self) {
        self.signal(signal::WAKE);
    }

    /// [`Session::wake`] for a queued QoS 0 delivery: inside
    /// [`wakes::once_per_poll`] the task is woken at the end of the poll,
    /// so it writes the publisher's whole batch at once. QoS 1/2 wake at
    /// once: the client's window bounds what goes out, and the sooner it
    /// goes the sooner the window opens again.
    fn wake_for(&self, qos: QoS) {
        if qos != QoS::AtMostOnce {
            self.wake();
        } else if self.signals.fetch_or(signal::WAKE, Ordering::AcqRel) & signal::WAKE == 0 {
            wakes::wake(&self.waker);
        }
    }

    /// Sets `bits` for the attached connection and wakes its task if they
    /// were not already set.
    pub fn signal(&self, bits: u8) {
        if self.signals.fetch_or(bits, Ordering::AcqRel) & bits != bits {
            self.waker.wake();
        }
    }

    /// The signals set for the attached connection, taking
    /// [`signal::TAKEN`] out of them; `Pending` (after arranging for the
    /// task in `cx` to be woken) when there are none. Only the attached
    /// connection's task calls this: the session remembers one waker.
    pub fn poll_signals(&self, cx: &mut Context<'_>) -> Poll<u8> {
        // Registered before looking, so a signal set in between wakes us.
        self.waker.register(cx.waker());
        if self.signals.load(Ordering::Acquire) == 0 {
            return Poll::Pending;
        }
        // Taken and read in one step: a wake set meanwhile is either
        // among these bits or left for the next poll, never lost.
        Poll::Ready(self.signals.fetch_and(!signal::TAKEN, Ordering::AcqRel))
    }

    /// Resolves when the attached connection is told to leave
    /// ([`signal::LEAVE`]), leaving a pending [`signal::WAKE`] for
    /// [`Session::poll_signals`]. Cancel-safe.
    pub async fn leaving(&self) -> u8 {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            match self.signals.load(Ordering::Acquire) & signal::LEAVE {
                0 => Poll::Pending,
                bits => Poll::Ready(bits),
            }
        })
        .await
    }

    /// The attached connection parks: `waker` stands for its task until
    /// it runs again ([`Session::unparked`]). Returns whether a signal is
    /// already waiting, in which case the caller wakes it at once (the
    /// waker is registered before looking, so none is missed).
    pub(crate) fn park(&self, waker: &std::task::Waker) -> bool {
        self.unasked.store(true, Ordering::Relaxed);
        self.waker.register(waker);
        self.signals.load(Ordering::Acquire) != 0
    }

    /// The attached connection runs again after being parked.
    pub(crate) fn unparked(&self) {
        self.unasked.store(false, Ordering::Relaxed);
    }

    /// A connection attached whose stream can park (`can`), or cannot:
    /// the sweep asks only the first kind.
    pub(crate) fn can_park(&self, can: bool) {
        self.unasked.store(!can, Ordering::Relaxed);
    }

    /// Asks the attached connection to park if it has been quiet (the
    /// sweep, every `limits.park_after_s`); not one parked or that cannot
    /// park ([`Session::can_park`]). A session without a connection has
    /// no waker to wake, and its next connection clears the signal.
    pub(super) fn ask_to_park(&self) {
        if !self.unasked.load(Ordering::Relaxed) {
            self.signal(signal::PARK);
        }
    }

    /// Tells the attached connection to leave: taken over (`by_admin`
    /// false; the first takeover only, as a newcomer then waits for the
    /// attachment) or kicked by an operator. Returns whether a connection
    /// was attached to be told.
    pub fn kick(&self, by_admin: bool) -> bool {
        let mut state = self.lock();
        if !(state.flags.contains(Flags::KICKABLE) && state.online) {
            return false;
        }
        if by_admin {
            state.flags.set(Flags::KICKED_BY_ADMIN, true);
        } else {
            state.flags.set(Flags::KICKABLE, false);
        }
        self.signal(signal::KICK);
        true
    }

    /// A new connection attached: what was signalled to the previous one
    /// is not for it. Called with the session's attachment held.
    pub(crate) fn clear_signals(&self) {
        self.signals.store(0, Ordering::Release);
    }

    /// The attached connection left: its keep-alive deadline goes, and its
    /// task's waker is let go, as it holds the finished task's memory (the
    /// whole future's cell) for as long as the session lasts. Called under
    /// the state lock, like
    /// [`Session::kick`].
    pub(crate) fn forget_connection(&self) {
        self.set_keep_alive_due(0);
        drop(self.waker.take());
    }

    /// Holds the session for a connection if none holds it; whether it
    /// did.
    pub(crate) fn try_hold(&self) -> bool {
        !self.held.swap(true, Ordering::AcqRel)
    }

    /// The connection holding the session lets go of it, and whoever waits
    /// for it ([`Session::released`]) looks again.
    pub(crate) fn let_go(&self) {
        self.held.store(false, Ordering::Release);
        self.room.notify_waiters();
    }

    /// Resolves after the next [`Session::let_go`] (or a publisher's wake:
    /// look again). Make it before looking, so a let-go in between is not
    /// missed.
    pub(crate) fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.room.notified()
    }

    /// Messages dropped for this session so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
