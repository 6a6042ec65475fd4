//! Quiet connections parked without a task (issue 25; the lot they wait
//! in: [`crate::parking`]).
//!
//! The keep-alive sweep asks every connection not parked to park, once
//! per `limits.park_after_s` ([`signal::PARK`](crate::session::signal::PARK));
//! a connection that had an event since the last ask (a packet other
//! than PINGREQ, a wake for deliveries) only notes the ask,
//! so a connection parks one to two periods after its last event, and a
//! busy one never does. Parking takes the socket off the reactor into
//! the lot, moves the connection's state into a [`Slot`], makes the slot
//! the session's waker, and ends the task. The first wake (the socket, or
//! anything signalled to the session) spawns a task that puts the socket
//! back on the reactor and goes on where the old one stopped; later ones
//! find the slot empty.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Wake, Waker};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use super::Connection;
use crate::parking::{Lot, Sleeper};

/// A stream a connection is served over, and whether and how it can be
/// parked: its socket taken off the runtime's reactor while the
/// connection waits in the lot. Only a plain TCP stream parks (a TLS or
/// WebSocket one keeps state around its socket); the defaults say a
/// stream cannot.
pub trait Park: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether the stream can be parked now.
    fn parkable(&self) -> bool {
        false
    }

    /// Takes the socket off the reactor (freeing its registration);
    /// `None`, and nothing changed, if the stream cannot be parked. On
    /// failure the socket is gone, and reads and writes fail.
    fn park(&mut self) -> Option<io::Result<()>> {
        None
    }

    /// The socket of a parked stream: the lot watches it, and a ping is
    /// answered on it without a task.
    fn parked(&mut self) -> Option<&mut std::net::TcpStream> {
        None
    }

    /// Puts a parked socket back on the reactor (on a runtime thread); on
    /// failure the socket is gone, and reads and writes fail.
    fn unpark(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// In-memory streams (tests, fuzzing) have no socket to park.
impl Park for tokio::io::DuplexStream {}

/// A parked connection, and the waker that stands for its task.
///
/// The connection is held here, not in its box: the box shares a size
/// class (256 bytes) with the task cell and socket registration that
/// parking frees, so boxes left among them would keep every page of that
/// class in use; in the slot (a 320-byte class, with the sessions) the
/// pages a batch of parked connections left are whole, and go back.
struct Slot<S> {
    /// [`SETTING_UP`], [`PARKED`] or [`WOKEN`].
    state: AtomicU8,
    connection: Mutex<Option<Connection<S>>>,
    lot: Arc<Lot>,
}

/// Being parked: a wake now is remembered, and the parking resumes it.
const SETTING_UP: u8 = 0;
/// Parked: the first wake resumes it.
const PARKED: u8 = 1;
/// Woken: resumed, or about to be.
const WOKEN: u8 = 2;

impl<S: Park> Sleeper for Slot<S> {
    fn wake_up(&self) {
        if self.state.swap(WOKEN, Ordering::AcqRel) == PARKED {
            self.resume();
        }
    }

    fn readable(&self) {
        // A ping is most of what an idle fleet sends: answered here, the
        // connection stays parked (no task, no registration, no park
        // again), as Mosquitto answers it from its event loop.
        if self.state.load(Ordering::Acquire) == PARKED {
            let mut connection = self.connection.lock();
            if let Some(conn) = connection.as_mut()
                && conn.answer_ping()
                && conn.stream.parked().is_some_and(|socket| self.lot.rearm(socket.as_fd()).is_ok())
            {
                return;
            }
        }
        self.wake_up();
    }
}

impl<S: Park> Wake for Slot<S> {
    fn wake(self: Arc<Self>) {
        self.wake_up();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_up();
    }
}

impl<S: Park> Slot<S> {
    /// Gives the connection a task (and a box) again.
    fn resume(&self) {
        let Some(conn) = self.connection.lock().take() else { return };
        let span = tracing::debug_span!(
            "conn",
            peer = %conn.client.peer_address,
            listener = %conn.client.listener,
            client_id = %conn.client.client_id,
        );
        self.lot.spawn(Box::new(conn).resumed(self.lot.clone()).instrument(span));
    }
}

/// Parks a quiet connection, its task to end; gives it back when it
/// cannot be parked now (a signal came meanwhile, or no lot), to go on
/// serving in its task. If the socket could not be taken off the reactor
/// it is gone, and the connection's next read finds it lost.
pub(super) fn park<S: Park>(mut conn: Box<Connection<S>>) -> Result<(), Box<Connection<S>>> {
    let Some(lot) = conn.broker.parking.lot(&conn.broker.shutdown) else { return Err(conn) };
    match conn.stream.park() {
        Some(Ok(())) => {}
        None | Some(Err(_)) => return Err(conn),
    }
    let slot = Arc::new(Slot { state: AtomicU8::new(SETTING_UP), connection: Mutex::new(None), lot: lot.clone() });
    let Some(socket) = conn.stream.parked() else { return Err(conn) };
    let sleeper: Weak<dyn Sleeper> = Arc::downgrade(&slot) as Weak<Slot<S>>;
    if lot.watch_socket(socket.as_fd(), sleeper).is_err() {
        let _ = conn.stream.unpark();
        return Err(conn);
    }
    if conn.attached.session.park(&Waker::from(slot.clone())) {
        // A signal came meanwhile: the task goes on (its next poll
        // registers its own waker again).
        unwatch(&lot, &mut conn);
        return Err(conn);
    }
    conn.broker.metrics.connection_parked(true);
    *slot.connection.lock() = Some(*conn);
    if slot.state.compare_exchange(SETTING_UP, PARKED, Ordering::AcqRel, Ordering::Acquire).is_err() {
        // Woken while being parked.
        slot.resume();
    }
    Ok(())
}

/// Takes a parked connection's socket out of the lot and puts it back on
/// the reactor (on failure it is gone, and the next read finds it lost).
fn unwatch<S: Park>(lot: &Lot, conn: &mut Connection<S>) {
    conn.attached.session.unparked();
    if let Some(socket) = conn.stream.parked() {
        lot.forget(socket.as_fd());
    }
    let _ = conn.stream.unpark();
}

impl<S: Park> Connection<S> {
    /// While parked: answers a PINGREQ that is all the client sent, on the
    /// socket, without a task; whether it did. If the answer could not be
    /// written whole (the socket's buffer is full), the rest waits in the
    /// write buffer, and the connection resumes to send it.
    fn answer_ping(&mut self) -> bool {
        const PINGREQ: [u8; 2] = [0xC0, 0];
        const PINGRESP: [u8; 2] = [0xD0, 0];
        let Some(socket) = self.stream.parked() else { return false };
        let mut peek = [0; 3];
        if !matches!(socket.peek(&mut peek), Ok(2)) || peek[..2] != PINGREQ {
            return false;
        }
        let mut ping = [0; 2];
        if !matches!(socket.read(&mut ping), Ok(2)) {
            return false;
        }
        let written = socket.write(&PINGRESP).unwrap_or(0);
        self.wbuf.extend_from_slice(&PINGRESP[written..]);
        self.counts.read(PINGREQ.len());
        self.counts.wrote(written);
        self.broker.metrics.flush(&mut self.counts);
        self.move_keep_alive();
        written == PINGRESP.len()
    }

    /// The task of a parked connection that was woken: the socket back on
    /// the reactor (from the task: whatever woke it may run on a thread
    /// without one), then on as before. Counts as an event, so the
    /// connection stays at least one period before parking again.
    async fn resumed(mut self: Box<Self>, lot: Arc<Lot>) {
        unwatch(&lot, &mut self);
        self.broker.metrics.connection_parked(false);
        self.stirred = true;
        self.serve(false).await;
    }
}

/// The size of a parked connection's slot, for a test where the stream
/// type is known (transport).
#[cfg(test)]
pub(crate) const fn size_of_slot<S>() -> usize {
    std::mem::size_of::<Slot<S>>()
}
