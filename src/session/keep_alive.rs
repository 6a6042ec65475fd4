//! Keep alive without a timer per connection (issue 25).
//!
//! A connection's keep-alive deadline (1.5 times the negotiated keep
//! alive after its last read) is a second on this module's clock, kept in
//! its session ([`Session::set_keep_alive_due`]); [`sweep`] looks at every
//! session once a second and signals [`signal::KEEP_ALIVE`] to the
//! connections whose deadline has passed, which check their own clock and
//! close. As Mosquitto does, one pass over the sessions a second instead
//! of a timer in each connection: an idle connection's task holds no timer
//! (112 bytes, enough to keep its cell in tokio's 384-byte class), and a
//! connect does not insert one into the timer wheel nor remove it at the
//! end. A client is closed within a second after its deadline, never
//! before it.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use tokio_util::sync::CancellationToken;

use super::{Registry, Session, signal};

/// How often [`sweep`] looks: the keep alive's resolution.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The clock's start: the first time it is read.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The second of the clock at or after `deadline`, at least 1 (0 stands
/// for no deadline).
pub fn due(deadline: Instant) -> u32 {
    let ms = deadline.saturating_duration_since(epoch()).as_millis();
    u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX).max(1)
}

/// The clock's current second (rounded down, so a deadline rounded up
/// by [`due`] has passed when it is at most this).
fn now() -> u32 {
    u32::try_from(Instant::now().saturating_duration_since(epoch()).as_secs()).unwrap_or(u32::MAX)
}

/// Signals, once a second until `shutdown`, the connections whose keep
/// alive ran out, and every `park_after()` seconds (0: never) asks the
/// connections to park if they were quiet since it last asked
/// ([`Registry::signal_overdue`]): a connection parks between one and two
/// such periods after its last event.
pub async fn sweep(sessions: &Registry, shutdown: &CancellationToken, park_after: impl Fn() -> u32) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut since_asked = 0u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        since_asked = since_asked.saturating_add(1);
        let every = park_after();
        let park = every != 0 && since_asked >= every;
        if park {
            since_asked = 0;
        }
        sessions.signal_overdue(now(), park);
    }
}

impl Session {
    /// The attached connection's keep-alive deadline moved to `due` (a
    /// second of this clock, [`due`]); 0 when it has none or left.
    pub fn set_keep_alive_due(&self, due: u32) {
        self.keep_alive_due.store(due, std::sync::atomic::Ordering::Relaxed);
    }

    /// Signals [`signal::KEEP_ALIVE`] if the attached connection's
    /// deadline is at or before `now`.
    pub(super) fn signal_if_overdue(&self, now: u32) {
        if self.overdue_at(now) {
            self.signal(signal::KEEP_ALIVE);
        }
    }

    /// Whether the attached connection's keep-alive deadline has passed
    /// by the clock now: what the connection checks when the sweep
    /// signalled it, as its last read may have moved the deadline since.
    /// Never before the deadline ([`due`] rounds up, the clock down).
    pub fn keep_alive_overdue(&self) -> bool {
        self.overdue_at(now())
    }

    /// Whether a deadline is set and is at or before `now`.
    fn overdue_at(&self, now: u32) -> bool {
        let due = self.keep_alive_due.load(std::sync::atomic::Ordering::Relaxed);
        due != 0 && due <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deadline is rounded up to a whole second and is never 0 (no
    /// deadline), so a sweep that finds it passed finds it passed by the
    /// connection's own clock too.
    #[test]
    fn a_due_second_is_never_before_its_deadline() {
        let start = epoch();
        assert_eq!(due(start), 1);
        assert_eq!(due(start + Duration::from_millis(1)), 1);
        assert_eq!(due(start + Duration::from_millis(1001)), 2);
        assert_eq!(due(start + Duration::from_secs(5)), 5);
    }

    /// The sweep signals a connection whose deadline has come, not one
    /// whose deadline is ahead or that has none (keep alive 0, or left).
    #[test]
    fn only_a_deadline_passed_is_signalled() {
        let session = Session::new("c".into(), super::super::QueueBound::messages(10));
        let signalled = |s: &Session| s.signals.load(std::sync::atomic::Ordering::Acquire) & signal::KEEP_ALIVE != 0;
        session.signal_if_overdue(100);
        assert!(!signalled(&session), "no deadline, yet signalled");
        session.set_keep_alive_due(5);
        session.signal_if_overdue(4);
        assert!(!signalled(&session), "signalled a second early");
        session.signal_if_overdue(5);
        assert!(signalled(&session), "not signalled at its deadline");
        session.clear_signals();
        session.forget_connection();
        session.signal_if_overdue(100);
        assert!(!signalled(&session), "signalled after its connection left");
    }

    /// The sweep asks a connection to park only if it can park and is not
    /// parked: the ask would wake a parked one, and only wake one whose
    /// stream cannot park (TLS, WebSocket) for nothing.
    #[test]
    fn only_a_connection_that_can_park_and_has_not_is_asked_to() {
        let session = Session::new("c".into(), super::super::QueueBound::messages(10));
        let asked = |s: &Session| s.signals.swap(0, std::sync::atomic::Ordering::AcqRel) & signal::PARK != 0;
        session.can_park(true);
        session.ask_to_park();
        assert!(asked(&session), "a connection that can park was not asked");
        session.can_park(false);
        session.ask_to_park();
        assert!(!asked(&session), "a connection that cannot park was asked");
        session.can_park(true);
        let waker = std::task::Waker::noop();
        assert!(!session.park(waker), "no signal was waiting");
        session.ask_to_park();
        assert!(!asked(&session), "a parked connection was asked (and so woken)");
        session.unparked();
        session.ask_to_park();
        assert!(asked(&session), "a connection running again was not asked");
    }
}
