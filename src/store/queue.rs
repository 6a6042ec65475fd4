//! The sending side of the store's writer: what callers use to queue
//! changes and take barriers, without a lock (see [`super::writer`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;

use tokio::sync::watch;

use super::writer::{Durability, Op};

/// What the writer's channel carries: changes, each with its ticket, and
/// the signals that steer the batching (no ticket).
#[derive(Debug)]
pub(crate) enum Command {
    /// A change and its ticket (see [`Queue::send`]).
    Op(u64, Op),
    /// Opens a group: no commit until its [`Command::GroupEnd`] (see
    /// [`super::Store::group`]).
    GroupBegin,
    /// Closes a group.
    GroupEnd,
    /// Someone awaits a barrier for the tickets below this one: commit as
    /// soon as they have all arrived.
    Flush(u64),
    /// The store is closing: commit, sync and exit.
    Close,
}

/// The sending side, shared by every caller. Lock-free: it is used under
/// session locks, by every publisher at once.
#[derive(Debug)]
pub(super) struct Queue {
    tx: Sender<Command>,
    /// Tickets handed out so far: changes are numbered in the order they
    /// take one, which is the order they are sent in for one caller and
    /// for callers ordered by a lock, but not across racing callers.
    tickets: AtomicU64,
    /// [`Queue::close`] was called.
    closed: AtomicBool,
    /// The next message key, shared with the writer: keys are handed out
    /// when a message is queued, in queue order per session.
    next_seq: Arc<AtomicU64>,
    durable: watch::Receiver<u64>,
    /// In `none` and `periodic` modes: the changes the writer has written
    /// (the count `durable` carries, without its lock).
    written: Arc<AtomicU64>,
    mode: Durability,
}

/// How many changes the writer may be behind in `none` and `periodic`
/// modes before acknowledgements wait for it: without a sync to wait for,
/// publishers faster than the disk would otherwise grow the writer's
/// channel without bound (issue 25: under `pairs` it did). About 64k
/// changes: a moment of the writer's work, and a bounded amount of memory.
pub(super) const BACKLOG: u64 = 65_536;

impl Queue {
    /// The sending side of the writer's channel `tx`.
    pub(super) fn new(
        tx: Sender<Command>,
        next_seq: Arc<AtomicU64>,
        (durable, written): (watch::Receiver<u64>, Arc<AtomicU64>),
        mode: Durability,
    ) -> Queue {
        Queue { tx, tickets: AtomicU64::new(0), closed: AtomicBool::new(false), next_seq, durable, written, mode }
    }

    /// Queues `op`. After the writer stopped (a fatal disk error, already
    /// logged) it is dropped; its ticket is never durable, and as the
    /// writer is gone, barriers fail.
    pub(super) fn send(&self, op: Op) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        // The ticket is taken before the send: a barrier taken after this
        // call returns (in this thread, or in one that synchronised with it)
        // counts it, and waits until it is committed, even if a racing
        // sender's change overtakes it in the channel.
        let ticket = self.tickets.fetch_add(1, Ordering::AcqRel);
        let _ = self.tx.send(Command::Op(ticket, op));
    }

    /// A fresh message key.
    pub(super) fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Opens a group of changes committed together.
    pub(super) fn group(&self) -> super::Group {
        if !self.closed.load(Ordering::Acquire) && self.tx.send(Command::GroupBegin).is_ok() {
            super::Group(Some(self.tx.clone()))
        } else {
            super::Group(None)
        }
    }

    /// Resolves once everything queued so far is durable (`sync`); in the
    /// other modes at once, unless the writer is more than [`BACKLOG`]
    /// changes behind: then once it is back within it.
    pub(super) fn barrier(&self) -> super::Barrier {
        let target = self.tickets.load(Ordering::Acquire);
        if self.mode != Durability::Sync {
            let behind = target.saturating_sub(self.written.load(Ordering::Acquire));
            if behind <= BACKLOG {
                return super::Barrier::ready();
            }
            // The writer commits whatever it gathers here: nothing to nudge.
            return super::Barrier::waiting(self.durable.clone(), target - BACKLOG, None);
        }
        let nudge = (!self.closed.load(Ordering::Acquire)).then(|| self.tx.clone());
        super::Barrier::waiting(self.durable.clone(), target, nudge)
    }

    /// Stops taking operations; the writer writes and syncs what is
    /// queued, then exits (even while a barrier still holds a sender).
    pub(super) fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Command::Close);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::writer::Op;

    /// Without a sync to wait for, an acknowledgement waits only when the
    /// writer is more than [`BACKLOG`] changes behind, and goes on once it
    /// is back within it.
    #[tokio::test]
    async fn acknowledgements_wait_for_a_writer_too_far_behind() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let (durable_tx, durable) = watch::channel(0);
        let written = Arc::new(AtomicU64::new(0));
        let queue = Queue::new(tx, Arc::new(AtomicU64::new(0)), (durable, written.clone()), Durability::None);
        for _ in 0..BACKLOG {
            queue.send(Op::SessionEnded("c".into()));
        }
        assert!(queue.barrier().is_ready(), "BACKLOG changes behind: no wait");
        queue.send(Op::SessionEnded("c".into()));
        let held = queue.barrier();
        assert!(!held.is_ready(), "one more: the acknowledgement waits");
        // The writer writes one change.
        written.store(1, Ordering::Release);
        durable_tx.send_replace(1);
        assert!(queue.barrier().is_ready());
        let waited = tokio::time::timeout(std::time::Duration::from_secs(5), held.wait()).await;
        assert!(matches!(waited, Ok(Ok(()))), "{waited:?}");
    }
}
