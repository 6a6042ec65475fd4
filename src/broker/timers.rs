//! Timers of sessions without a connection: wills waiting for their delay
//! and sessions waiting to expire.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Broker;
use crate::session::{Flags, Session};
use crate::store::PendingWill;

impl Broker {
    /// Publishes a will after `wait` unless a connection attached to
    /// `session` since `generation` (which cancels `timers`); then forgets
    /// it in the store.
    pub(super) fn schedule_will(
        self: &Arc<Self>,
        session: Arc<Session>,
        generation: u32,
        will: PendingWill,
        wait: Duration,
        timers: CancellationToken,
    ) {
        let broker = self.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = broker.shutdown.cancelled() => {}
                () = timers.cancelled() => return,
            }
            let due = {
                let mut state = session.lock();
                let due = state.generation == generation && !state.online && state.flags.contains(Flags::WILL_PENDING);
                if due {
                    state.flags.set(Flags::WILL_PENDING, false);
                }
                due
            };
            if due {
                // Published before it is forgotten: a crash in between
                // publishes it twice rather than never.
                broker.publish_will(will, Some(&session));
                broker.store.will(session.client_id(), None);
            }
        });
    }

    /// Publishes `will` now, its expiry counting from now.
    pub(super) fn publish_will(&self, will: PendingWill, session: Option<&Arc<Session>>) {
        let mut message = Arc::unwrap_or_clone(will.message);
        message.expires_at = will.expiry_s.map(|s| std::time::Instant::now() + Duration::from_secs(u64::from(s)));
        self.publish(message, session);
    }

    /// Publishes the will of a client whose node died when it is due (or
    /// at once at shutdown, since nothing else would publish it).
    pub(super) fn publish_will_later(self: &Arc<Self>, will: PendingWill) {
        let broker = self.clone();
        self.tasks.spawn(async move {
            let wait = Duration::from_millis(will.due_ms.saturating_sub(crate::store::now_ms()));
            let _ = broker.shutdown.run_until_cancelled(tokio::time::sleep(wait)).await;
            broker.publish_will(will, None);
        });
    }

    /// Ends `session` after `expiry_s` unless a connection attaches first
    /// (which cancels `timers`).
    pub(super) fn arm_expiry(
        self: &Arc<Self>,
        session: Arc<Session>,
        generation: u32,
        expiry_s: u32,
        timers: CancellationToken,
    ) {
        if expiry_s == u32::MAX {
            return;
        }
        let broker = self.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(u64::from(expiry_s))) => {}
                () = broker.shutdown.cancelled() => return,
                () = timers.cancelled() => return,
            }
            let expired = {
                let state = session.lock();
                state.generation == generation && !state.online
            };
            if expired {
                broker.discard(&session);
                let kept = session.lock().kept();
                broker.forget_kept(&session, kept);
            }
        });
    }
}
