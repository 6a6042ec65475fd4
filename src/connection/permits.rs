//! What a connection holds from its accept to its end: its places in the
//! connection limits and in the broker's task tracker, given back when it
//! ends however it ends.

use std::sync::Arc;

/// What a connection holds until it ends, from its accept on.
#[derive(Debug)]
pub struct Permits {
    /// Its place in the global connection limit (`max_connections`).
    pub global: Permit,
    /// Its place in its listener's, if the listener has one.
    pub listener: Option<Permit>,
    /// It counts in the broker's task tracker, which shutdown waits on:
    /// a token here rather than a `TrackedFuture` around the task, whose
    /// 8 bytes would push the task's future past tokio's 256-byte cell
    /// class (issue 25).
    pub task: tokio_util::task::task_tracker::TaskTrackerToken,
}

/// One place in a connection limit, given back to its semaphore when
/// dropped: a tokio `OwnedSemaphorePermit` in 8 bytes instead of 16 (it
/// also counts how many places it holds, and a connection holds one;
/// issue 25).
#[derive(Debug)]
pub struct Permit(Arc<tokio::sync::Semaphore>);

impl From<tokio::sync::OwnedSemaphorePermit> for Permit {
    /// Holds one place of the permit's semaphore; any more it held go back
    /// at once.
    fn from(permit: tokio::sync::OwnedSemaphorePermit) -> Permit {
        let (semaphore, held) = (permit.semaphore().clone(), permit.num_permits());
        permit.forget();
        if held > 1 {
            semaphore.add_permits(held - 1);
        }
        Permit(semaphore)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.add_permits(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    /// A connection's place goes back to its limit when it ends, once; a
    /// permit of more places gives the rest back at once.
    #[test]
    fn a_permit_holds_one_place_until_dropped() {
        let limit = Arc::new(Semaphore::new(3));
        let one = Permit::from(limit.clone().try_acquire_owned().expect("a free place"));
        assert_eq!(limit.available_permits(), 2);
        let two = Permit::from(limit.clone().try_acquire_many_owned(2).expect("two free places"));
        assert_eq!(limit.available_permits(), 1, "a permit of two keeps one place");
        drop((one, two));
        assert_eq!(limit.available_permits(), 3);
        assert_eq!(std::mem::size_of::<Permits>(), 24);
    }
}
