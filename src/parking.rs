//! Where quiet connections wait without a task (issue 25).
//!
//! A task per connection costs each idle client the task's cell (256
//! bytes) and its socket's registration with the runtime's reactor (256
//! more), a third of what it holds. So a connection quiet for
//! `limits.park_after_s` is *parked* (`connection::parked`): its task
//! ends, its socket leaves the reactor for the [`Lot`]'s own epoll set,
//! and a [`Sleeper`] stands for it. As Mosquitto holds every client: a
//! struct and an entry in one epoll set. Bytes or a hang-up on the socket
//! wake its sleeper (this module's watcher task); everything else that
//! would have woken the task (a delivery, the keep-alive sweep, a kick, a
//! takeover, shutdown) reaches it through its session's waker.
//!
//! Linux only (epoll): elsewhere there is no lot, and nothing parks.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

/// A parked connection as the lot sees it.
pub trait Sleeper: Send + Sync {
    /// Resumes the connection, if it is still parked.
    fn wake_up(&self);

    /// Its socket has bytes or hung up: the sleeper answers a ping itself
    /// (and [rearms](Lot::rearm) the socket), or wakes up.
    fn readable(&self);
}

/// The broker's parking: its [`Lot`], opened at the first park (on the
/// runtime, which its watcher needs).
#[derive(Default)]
pub struct Parking {
    lot: OnceLock<Option<Arc<Lot>>>,
}

impl std::fmt::Debug for Parking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parking").field("open", &self.lot.get().is_some_and(Option::is_some)).finish()
    }
}

impl Parking {
    /// The lot, opened now (on the current runtime, its watcher ending at
    /// `shutdown`) if it was not; `None` where there cannot be one (the
    /// error logged once).
    pub fn lot(&self, shutdown: &CancellationToken) -> Option<Arc<Lot>> {
        if cfg!(not(target_os = "linux")) {
            return None;
        }
        self.lot
            .get_or_init(|| match Lot::open(shutdown) {
                Ok(lot) => Some(lot),
                Err(e) => {
                    tracing::error!(error = %e, "quiet connections will not be parked: no epoll set");
                    None
                }
            })
            .clone()
    }
}

/// Where parked sockets wait: one epoll set, and the sleeper each socket
/// wakes.
pub struct Lot {
    epoll: AsyncFd<OwnedFd>,
    /// By descriptor: what the epoll set reports. A sleeper resumed
    /// meanwhile (or a descriptor another connection took since) costs a
    /// spurious wake at most, which a sleeper no longer parked ignores.
    sleepers: Mutex<HashMap<RawFd, Weak<dyn Sleeper>>>,
    /// Where resumed connections get their task.
    runtime: tokio::runtime::Handle,
}

/// Events taken from the epoll set at once.
#[cfg(target_os = "linux")]
const EVENTS: usize = 256;

/// What a parked socket is watched for: bytes or a hang-up, reported
/// once (level-triggered, so bytes already there count), until it is
/// rearmed or its connection resumes.
#[cfg(target_os = "linux")]
const WATCHED: rustix::event::epoll::EventFlags = rustix::event::epoll::EventFlags::IN
    .union(rustix::event::epoll::EventFlags::RDHUP)
    .union(rustix::event::epoll::EventFlags::ONESHOT);

impl Lot {
    /// Spawns `task` (a resumed connection) on the lot's runtime, from
    /// any thread.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.runtime.spawn(task);
    }

    /// Stops watching `socket` (its connection resumed).
    pub fn forget(&self, socket: BorrowedFd<'_>) {
        #[cfg(target_os = "linux")]
        let _ = rustix::event::epoll::delete(self.epoll.get_ref(), socket);
        self.sleepers.lock().remove(&socket.as_raw_fd());
    }
}

#[cfg(target_os = "linux")]
impl Lot {
    fn open(shutdown: &CancellationToken) -> std::io::Result<Arc<Lot>> {
        let epoll = register(rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC)?)?;
        let lot = Arc::new(Lot { epoll, sleepers: Mutex::default(), runtime: tokio::runtime::Handle::current() });
        tokio::spawn(lot.clone().watch(shutdown.clone()));
        Ok(lot)
    }

    /// Watches `socket` for bytes or a hang-up, which wake `sleeper`
    /// (once: the socket leaves the set when its connection resumes).
    pub fn watch_socket(&self, socket: BorrowedFd<'_>, sleeper: Weak<dyn Sleeper>) -> std::io::Result<()> {
        self.sleepers.lock().insert(socket.as_raw_fd(), sleeper);
        rustix::event::epoll::add(self.epoll.get_ref(), socket, event_data(socket), WATCHED)
            .inspect_err(|_| self.forget(socket))
            .map_err(Into::into)
    }

    /// Watches `socket` again after its sleeper answered what it read.
    pub fn rearm(&self, socket: BorrowedFd<'_>) -> std::io::Result<()> {
        rustix::event::epoll::modify(self.epoll.get_ref(), socket, event_data(socket), WATCHED).map_err(Into::into)
    }

    /// Tells the sleepers of sockets that became readable or hung up,
    /// until `shutdown` (which wakes every parked connection through its
    /// session).
    async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let mut ready = tokio::select! {
                ready = self.epoll.readable() => match ready {
                    Ok(ready) => ready,
                    Err(e) => return tracing::error!(error = %e, "parked connections' epoll set failed"),
                },
                () = shutdown.cancelled() => return,
            };
            let (woken, more) = match self.ready_sleepers() {
                Ok(ready) => ready,
                Err(e) => return tracing::error!(error = %e, "parked connections' epoll set failed"),
            };
            if !more {
                ready.clear_ready();
            }
            for sleeper in woken {
                sleeper.readable();
            }
        }
    }

    /// The sleepers of the sockets the epoll set reports now, without
    /// waiting, and whether it may have more (it reported [`EVENTS`], or
    /// was interrupted).
    fn ready_sleepers(&self) -> std::io::Result<(Vec<Arc<dyn Sleeper>>, bool)> {
        use rustix::event::epoll;
        let mut events = [std::mem::MaybeUninit::<epoll::Event>::uninit(); EVENTS];
        let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
        let (events, _) = match epoll::wait(self.epoll.get_ref(), &mut events, Some(&zero)) {
            Ok(read) => read,
            Err(rustix::io::Errno::INTR) => return Ok((Vec::new(), true)),
            Err(e) => return Err(e.into()),
        };
        let sleepers = self.sleepers.lock();
        let socket = |e: &epoll::Event| RawFd::try_from(e.data.u64()).ok();
        let woken = events.iter().filter_map(|e| sleepers.get(&socket(e)?)?.upgrade()).collect();
        Ok((woken, events.len() == EVENTS))
    }
}

/// What the epoll set reports for `socket`: its descriptor, the key of
/// its sleeper.
#[cfg(target_os = "linux")]
fn event_data(socket: BorrowedFd<'_>) -> rustix::event::epoll::EventData {
    rustix::event::epoll::EventData::new_u64(u64::try_from(socket.as_raw_fd()).unwrap_or(u64::MAX))
}

/// Elsewhere: no lot.
#[cfg(not(target_os = "linux"))]
impl Lot {
    fn open(_: &CancellationToken) -> std::io::Result<Arc<Lot>> {
        Err(std::io::ErrorKind::Unsupported.into())
    }

    /// Never called: there is no lot.
    pub fn watch_socket(&self, _: BorrowedFd<'_>, _: Weak<dyn Sleeper>) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }

    /// Never called: there is no lot.
    pub fn rearm(&self, _: BorrowedFd<'_>) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// The epoll set, registered with the runtime's reactor (readable when
/// it has events).
#[cfg(target_os = "linux")]
#[allow(unsafe_code, reason = "tokio's registration of a descriptor is unsafe (I/O safety); here it owns it")]
fn register(epoll: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` owns the `OwnedFd`, which stays open and the
    // same descriptor until the `AsyncFd` drops it.
    unsafe { AsyncFd::register_with_interest(epoll, tokio::io::Interest::READABLE) }.map_err(Into::into)
}
