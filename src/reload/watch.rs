//! Watching the plugin directory, the directories granted to plugins, and
//! the config file.
//!
//! `notify` reports file events on its own thread; they are filtered (only
//! `*.wasm` and `*.toml` in the plugin directory, files not hidden in a
//! granted directory, only the config file's name in its directory) and
//! passed to a task that waits for a quiet moment before reloading, so a
//! file written in several steps, or a plugin and its sidecar copied
//! together, cause one reload. The directories are watched without
//! recursion: nothing below them (such as a cache directory) triggers a
//! reload.
//!
//! Granted directories are watched so that the instances of one plugin
//! set all read the same files: a plugin reads them in `init`, once per
//! instance, so without a reload a fresh instance would see an edited file
//! while warm ones keep the old contents. An edit reloads the whole set
//! instead, and every instance of the new set reads the new file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Reloader;
use crate::broker::Broker;

/// How long the directory must stay quiet before a reload starts.
pub const DEBOUNCE: Duration = Duration::from_millis(300);
/// A directory that never stays quiet still reloads this often.
const MAX_DELAY: Duration = Duration::from_secs(3);

/// Which files of a watched directory matter.
#[derive(Clone)]
enum Interest {
    /// Plugin components and sidecars.
    Plugins,
    /// Any file that is not hidden (a plugin's data).
    Data,
    /// One file, by name.
    File(OsString),
}

impl Interest {
    fn matches(&self, path: &Path) -> bool {
        let Some(name) = path.file_name() else { return false };
        match self {
            Interest::Plugins => {
                let hidden = name.to_string_lossy().starts_with('.');
                !hidden && path.extension().is_some_and(|e| e == "wasm" || e == "toml")
            }
            Interest::Data => !name.to_string_lossy().starts_with('.'),
            Interest::File(wanted) => name == wanted,
        }
    }
}

/// Starts a `notify` watcher on `dir` that sends `()` on `tx` for every
/// event on a file of interest. `None` (logged) if the directory cannot be
/// watched.
fn watch_dir(dir: &Path, interest: Interest, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(event) => {
            let relevant =
                !matches!(event.kind, EventKind::Access(_)) && event.paths.iter().any(|p| interest.matches(p));
            if relevant {
                let _ = tx.send(());
            }
        }
        Err(e) => warn!(error = %e, "file watcher error"),
    };
    let started = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match started {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot watch for changes; reload with SIGHUP");
            None
        }
    }
}

/// Waits until no event arrived for [`DEBOUNCE`] (or [`MAX_DELAY`] passed).
/// Returns false if the sender is gone.
async fn settle(rx: &mut mpsc::UnboundedReceiver<()>) -> bool {
    let deadline = tokio::time::Instant::now() + MAX_DELAY;
    loop {
        let quiet = tokio::time::Instant::now() + DEBOUNCE;
        match tokio::time::timeout_at(quiet.min(deadline), rx.recv()).await {
            Ok(Some(())) if tokio::time::Instant::now() < deadline => {}
            Ok(None) => return false,
            Ok(Some(())) | Err(_) => return true,
        }
    }
}

/// Reloads the plugins whenever the plugin directory changes, following the
/// directory when a config reload moves it, until the broker shuts down.
/// Does nothing while `[plugins] watch = false` or no directory is set.
pub async fn plugins(reloader: Arc<Reloader>) {
    let broker = reloader.broker().clone();
    let mut dirs = reloader.dir.subscribe();
    loop {
        let dir = dirs.borrow_and_update().clone();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let watcher = match &dir {
            Some(dir) if broker.config().plugins.watch() => watch_dir(dir, Interest::Plugins, tx),
            _ => None,
        };
        if let (Some(_), Some(dir)) = (&watcher, &dir) {
            debug!(dir = %dir.display(), "watching the plugin directory");
        }
        loop {
            tokio::select! {
                () = broker.shutdown.cancelled() => return,
                moved = dirs.changed() => {
                    if moved.is_err() {
                        return;
                    }
                    break;
                }
                event = rx.recv(), if watcher.is_some() => {
                    if event.is_none() || !settle(&mut rx).await {
                        break;
                    }
                    if broker.config().plugins.watch() {
                        reloader.reload_plugins().await;
                    }
                }
            }
        }
    }
}

/// The directories granted to the plugins of the set in force.
fn granted_dirs(broker: &Broker) -> std::collections::BTreeSet<PathBuf> {
    let policy = broker.policy();
    policy.plugins().plugins().iter().flat_map(|p| p.settings().grants.read.iter().cloned()).collect()
}

/// Reloads the plugins whenever a file in a directory granted to one of
/// them changes (see the module documentation), following the plugin set
/// as reloads change it, until the broker shuts down. Off with
/// `[plugins] watch = false`.
pub async fn granted(reloader: Arc<Reloader>) {
    let broker = reloader.broker().clone();
    let mut reloads = reloader.plugin_reloads();
    loop {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let watchers: Vec<_> = if broker.config().plugins.watch() {
            granted_dirs(&broker).iter().filter_map(|dir| watch_dir(dir, Interest::Data, tx.clone())).collect()
        } else {
            Vec::new()
        };
        drop(tx);
        for dir in granted_dirs(&broker).iter().filter(|_| !watchers.is_empty()) {
            debug!(dir = %dir.display(), "watching a directory granted to a plugin");
        }
        loop {
            tokio::select! {
                () = broker.shutdown.cancelled() => return,
                reloaded = reloads.changed() => {
                    if reloaded.is_err() {
                        return;
                    }
                    // Another set may grant other directories.
                    break;
                }
                event = rx.recv(), if !watchers.is_empty() => {
                    if event.is_none() || !settle(&mut rx).await {
                        break;
                    }
                    if broker.config().plugins.watch() {
                        reloader.reload_plugins().await;
                    }
                }
            }
        }
    }
}

/// Reloads the configuration whenever the file at `path` changes (watched
/// through its directory, so editors that replace the file are followed),
/// until the broker shuts down.
pub async fn config_file(reloader: Arc<Reloader>, path: PathBuf) {
    let broker = reloader.broker().clone();
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let Some(_watcher) = watch_dir(dir, Interest::File(name.to_owned()), tx) else { return };
    loop {
        tokio::select! {
            () = broker.shutdown.cancelled() => return,
            event = rx.recv() => {
                if event.is_none() || !settle(&mut rx).await {
                    return;
                }
                // A refusal is logged by `reload`; the running config stays.
                let _ = reloader.reload().await;
            }
        }
    }
}
