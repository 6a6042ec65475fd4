//! The thread that makes the writer's commits durable in `sync` mode.
//!
//! A data sync takes the journal's lock for its whole length, but the
//! writer's next batch needs that lock only to be written: decoding and
//! staging the changes (most of the writer's time under load) can run
//! meanwhile. So in `sync` mode the writer commits a batch to the journal
//! and hands the sync to this thread, then gathers the next batch while the
//! disk works. The durable count barriers wait on is published from here.

use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;

use fjall::{Database, PersistMode};
use tokio::sync::watch;
use tracing::error;

/// The sync thread, seen from the writer.
pub(super) struct Syncer {
    /// Sync requests: each makes the tickets below it durable.
    tx: Option<Sender<u64>>,
    handle: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread; it publishes the durable count in `durable`.
    pub(super) fn start(db: Database, durable: watch::Sender<u64>) -> std::io::Result<Syncer> {
        let (tx, rx) = std::sync::mpsc::channel();
        let handle =
            std::thread::Builder::new().name("moat-store-sync".to_owned()).spawn(move || run(&db, &durable, &rx))?;
        Ok(Syncer { tx: Some(tx), handle: Some(handle) })
    }

    /// Asks for a sync of everything committed to the journal so far, which
    /// makes the tickets below `target` durable. `false` when the thread
    /// stopped after a disk error (which it logged).
    pub(super) fn request(&self, target: u64) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(target).is_ok())
    }
}

impl Drop for Syncer {
    /// Waits for the syncs asked for so far.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Syncs once for all the requests that queued up during the last sync.
/// On a disk error it stops, dropping `durable`: waiting barriers fail.
fn run(db: &Database, durable: &watch::Sender<u64>, rx: &Receiver<u64>) {
    while let Ok(mut target) = rx.recv() {
        while let Ok(next) = rx.try_recv() {
            target = target.max(next);
        }
        if let Err(e) = db.persist(PersistMode::SyncData) {
            error!(error = %e, "store sync failed; the store stops taking writes (restart to recover)");
            return;
        }
        durable.send_replace(target);
    }
}
