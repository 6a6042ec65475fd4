//! Wake-ups of connection tasks, deferred to the end of a publisher's poll.
//!
//! A publisher's connection routes a batch of packets in one poll. Waking
//! each subscriber's task at its first delivery lets an idle worker thread
//! steal that task and drain it while the batch is still being routed, so
//! every subscriber writes a few messages per wake-up, many times over
//! (issue 25: 38 deliveries per socket write in a QoS 0 fan-out, against
//! rumqttd's 200). Inside [`once_per_poll`], a session's wake-up for a
//! QoS 0 delivery is collected instead and given at the end of the poll,
//! so each subscriber is woken once per batch and writes it in one go.
//! (QoS 1/2 deliveries wake at once: the client's window, not the
//! batch, bounds what goes out, and the overlap gets it back sooner.)
//!
//! Only within one poll, on one thread: the collector is a thread-local
//! that exists while the poll runs, so a task that moves between threads
//! between polls takes nothing with it, and a poll that waits (a plugin's
//! verdict, room in a queue) gives its wake-ups before returning.

use std::cell::RefCell;
use std::pin::pin;
use std::task::Waker;

use futures_util::task::AtomicWaker;

thread_local! {
    /// The wake-ups collected in the poll under way on this thread, if a
    /// [`once_per_poll`] poll is under way; the vector is kept between
    /// polls for its room.
    static DEFERRED: RefCell<Deferred> = const { RefCell::new(Deferred { active: false, wakers: Vec::new() }) };
}

struct Deferred {
    active: bool,
    wakers: Vec<Waker>,
}

/// Runs `future`, holding back the wake-ups its polls give sessions for
/// QoS 0 deliveries until the end of each poll.
pub async fn once_per_poll<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    std::future::poll_fn(|cx| {
        let _scope = Scope::enter();
        future.as_mut().poll(cx)
    })
    .await
}

/// Runs `f`, holding back the wake-ups it gives sessions for QoS 0
/// deliveries until it returns: for a batch routed in one go (the cluster's inbound messages).
pub fn in_one_go<R>(f: impl FnOnce() -> R) -> R {
    let _scope = Scope::enter();
    f()
}

/// Wakes the task registered in `waker`, or, inside a
/// [`once_per_poll`] poll, at its end.
pub(super) fn wake(waker: &AtomicWaker) {
    let deferred = DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        if !d.active {
            return false;
        }
        d.wakers.extend(waker.take());
        true
    });
    if !deferred {
        waker.wake();
    }
}

/// One poll's collection of wake-ups: the outermost scope on a thread
/// collects, and gives them when it ends (also when the poll panics).
struct Scope {
    outermost: bool,
}

impl Scope {
    fn enter() -> Scope {
        let outermost = DEFERRED.with(|d| !std::mem::replace(&mut d.borrow_mut().active, true));
        Scope { outermost }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if !self.outermost {
            return;
        }
        // Taken out before waking: a waker may run code that wakes again.
        let mut wakers = DEFERRED.with(|d| {
            let mut d = d.borrow_mut();
            d.active = false;
            std::mem::take(&mut d.wakers)
        });
        for waker in wakers.drain(..) {
            waker.wake();
        }
        DEFERRED.with(|d| {
            let mut d = d.borrow_mut();
            if d.wakers.is_empty() && wakers.capacity() <= 1024 {
                d.wakers = wakers;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Poll, Wake};

    use super::*;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn registered() -> (Arc<Count>, AtomicWaker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = AtomicWaker::new();
        waker.register(&Waker::from(count.clone()));
        (count, waker)
    }

    #[tokio::test]
    async fn a_wake_inside_a_poll_is_given_when_the_poll_ends() {
        let (count, waker) = registered();
        let seen_inside = once_per_poll(async {
            wake(&waker);
            count.0.load(Ordering::SeqCst)
        })
        .await;
        assert_eq!((seen_inside, count.0.load(Ordering::SeqCst)), (0, 1));
    }

    #[tokio::test]
    async fn a_poll_that_waits_gives_its_wakes_before_it_returns() {
        let (count, waker) = registered();
        let mut polls = 0;
        once_per_poll(std::future::poll_fn(|cx| {
            polls += 1;
            if polls == 1 {
                wake(&waker);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // The first poll's wake was given when it returned Pending.
            assert_eq!(count.0.load(Ordering::SeqCst), 1);
            Poll::Ready(())
        }))
        .await;
        assert_eq!(polls, 2);
    }

    #[test]
    fn a_batch_in_one_go_wakes_once_at_its_end() {
        let (count, waker) = registered();
        let seen_inside = in_one_go(|| {
            wake(&waker);
            count.0.load(Ordering::SeqCst)
        });
        assert_eq!((seen_inside, count.0.load(Ordering::SeqCst)), (0, 1));
    }

    #[test]
    fn outside_a_poll_a_wake_is_immediate() {
        let (count, waker) = registered();
        wake(&waker);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_nested_scope_leaves_the_wakes_to_the_outermost() {
        let (count, waker) = registered();
        let held = once_per_poll(async {
            once_per_poll(async { wake(&waker) }).await;
            count.0.load(Ordering::SeqCst)
        })
        .await;
        assert_eq!((held, count.0.load(Ordering::SeqCst)), (0, 1));
    }
}
