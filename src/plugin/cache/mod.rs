//! Compiled components kept on disk, so a restart or a reload of an
//! unchanged plugin does not compile it again (compiling an 18 MB Python
//! component takes seconds; loading it from here, about 0.1 s).
//!
//! Loading machine code from a file is the one `unsafe` operation in Moat:
//! whoever can write an entry can run code as the broker. So:
//! - the cache is used only if its directory and every parent belong to
//!   this user or root and no one else may write them ([`trust`]); otherwise
//!   the broker warns, naming the directory and why, and compiles without it;
//! - entries are opened without following symbolic links and must be
//!   regular files of this user, open to no one else, checked on the opened
//!   descriptor;
//! - an entry carries an HMAC-SHA256 of its code under a key derived from a
//!   random 32-byte key in the directory (`hmac-key`, 0600, made on first
//!   use) and from the entry's name, so an entry cannot be forged without
//!   the key, nor moved to another name;
//! - an entry's name is the SHA-256 of the component's bytes together with
//!   the engine's compilation settings and wasmtime's version, so a changed
//!   plugin, engine configuration or wasmtime never finds an old entry, and
//!   wasmtime checks its own header (version, target, settings) again;
//! - files are written owner-only (0600), atomically (a temporary file
//!   renamed into place), so no reader sees a half-written one;
//! - an entry that fails any check is counted, logged, deleted and never
//!   deserialized; the component is compiled again and the entry rewritten:
//!   the cache can make a load faster, never make it fail.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use ring::digest::{Context, SHA256};
use ring::hmac;
use tracing::{debug, info, warn};
use wasmtime::Engine;
use wasmtime::component::Component;

#[cfg(all(test, unix))]
mod tests;
#[cfg(unix)]
mod trust;

/// The first bytes of every entry; the number changes with the format.
const MAGIC: &[u8; 8] = b"MOATCC02";
/// Length of the header: magic, then the entry's HMAC-SHA256.
const HEADER: usize = MAGIC.len() + 32;
/// An entry larger than this is not ours (compiled plugins are tens of MiB
/// at most).
const MAX_ENTRY: u64 = 256 << 20;
/// Most entries kept; past this the oldest are deleted, so plugins replaced
/// over months do not fill the disk.
const MAX_ENTRIES: usize = 64;
/// Extension of entries; temporary files add to it.
const EXTENSION: &str = "cwasm";
/// A compilation still running after this long is announced in the log.
pub(crate) const SLOW_COMPILE: Duration = Duration::from_secs(1);

/// Why the cache, or one of its files, is not trusted; names the path.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub(crate) struct Untrusted {
    /// The directory or file at fault.
    pub(crate) path: PathBuf,
    /// Why, in words an operator can act on.
    pub(crate) reason: String,
}

fn untrusted(path: &Path, reason: impl Into<String>) -> Untrusted {
    Untrusted { path: path.to_owned(), reason: reason.into() }
}

/// Where compiled plugins are kept when the configuration names no place:
/// `$XDG_CACHE_HOME/moat`, else `$HOME/.cache/moat` (the XDG base
/// directory convention; a relative value is ignored, as it says). `None`
/// when neither is set, as for a service started without a home.
pub fn default_dir() -> Option<PathBuf> {
    let absolute = |name: &str| std::env::var_os(name).map(PathBuf::from).filter(|p| p.is_absolute());
    absolute("XDG_CACHE_HOME").map(|d| d.join("moat")).or_else(|| Some(absolute("HOME")?.join(".cache").join("moat")))
}

/// What [`DiskCache::load`] found.
pub(crate) enum Lookup {
    /// An intact entry: the component, ready.
    Found(Component),
    /// No entry for this component.
    Missing,
    /// An entry that failed a check: logged and deleted, not loaded.
    Refused,
}

/// Compiled components under one directory that only this user can write.
pub(crate) struct DiskCache {
    /// Canonical: resolved once, when it was checked.
    dir: PathBuf,
    /// Digest of what makes compiled code usable by this engine.
    engine: [u8; 32],
    /// Authenticates entries; see [`DiskCache::entry_key`].
    key: hmac::Key,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl DiskCache {
    /// Creates `dir` (owner-only) if needed, checks that it and its parents
    /// can be trusted, and reads or creates its key.
    ///
    /// # Errors
    /// The directory cannot be created, or it, a parent or the key file is
    /// not trusted: the error names which and why.
    #[cfg(unix)]
    pub(crate) fn open(dir: &Path, engine: &Engine) -> Result<DiskCache, Untrusted> {
        let dir = trust::prepare_dir(dir)?;
        let key = trust::key(&dir)?;
        let mut hasher = DigestHasher(Context::new(&SHA256));
        hasher.write(MAGIC);
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(DiskCache { dir, engine: digest(hasher.0), key })
    }

    /// Without Unix ownership and modes nothing here can be checked, so
    /// there is no disk cache.
    ///
    /// # Errors
    /// Always.
    #[cfg(not(unix))]
    pub(crate) fn open(dir: &Path, _engine: &Engine) -> Result<DiskCache, Untrusted> {
        Err(untrusted(dir, "the compiled-plugin cache needs Unix file ownership, which this system lacks"))
    }

    /// The directory (canonical).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry's name for the component compiled from `wasm`.
    fn id(&self, wasm: &[u8]) -> [u8; 32] {
        let mut key = Context::new(&SHA256);
        key.update(&self.engine);
        key.update(wasm);
        digest(key)
    }

    fn path(&self, id: &[u8; 32]) -> PathBuf {
        self.dir.join(format!("{}.{EXTENSION}", hex(id)))
    }

    /// The key of one entry: the cache key's HMAC of the entry's name, so a
    /// valid entry copied under another name does not verify.
    fn entry_key(&self, id: &[u8; 32]) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&self.key, id).as_ref())
    }

    /// The component compiled from `wasm` before, if an intact entry for it
    /// and this engine exists. An entry failing a check is deleted.
    pub(crate) fn load(&self, engine: &Engine, wasm: &[u8]) -> Lookup {
        let id = self.id(wasm);
        let path = self.path(&id);
        let contents = match self.read(&path, &id) {
            Ok(Some(contents)) => contents,
            Ok(None) => return Lookup::Missing,
            Err(reason) => {
                warn!(path = %path.display(), reason, "compiled plugin cache entry refused, not loaded; compiling again");
                let _ = fs::remove_file(&path);
                return Lookup::Refused;
            }
        };
        match deserialize(engine, &contents[HEADER..]) {
            Ok(component) => Lookup::Found(component),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "compiled plugin cache entry refused by wasmtime; compiling again");
                let _ = fs::remove_file(&path);
                Lookup::Refused
            }
        }
    }

    /// Reads the entry at `path` and checks it: `Ok(None)` when there is
    /// none, `Err` with the reason when it cannot be used.
    #[cfg(unix)]
    fn read(&self, path: &Path, id: &[u8; 32]) -> Result<Option<Vec<u8>>, String> {
        let Some((file, len)) = trust::open_private(path).map_err(|e| e.reason)? else { return Ok(None) };
        if len > MAX_ENTRY || len < HEADER as u64 {
            return Err(format!("unexpected size {len}"));
        }
        let mut contents = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.take(MAX_ENTRY).read_to_end(&mut contents).map_err(|e| e.to_string())?;
        if contents.len() < HEADER || contents[..MAGIC.len()] != *MAGIC {
            return Err("not a Moat cache entry".into());
        }
        let (tag, code) = (&contents[MAGIC.len()..HEADER], &contents[HEADER..]);
        hmac::verify(&self.entry_key(id), code, tag)
            .map_err(|_| "not authenticated by this cache's key: altered, or not written by this cache".to_owned())?;
        Ok(Some(contents))
    }

    #[cfg(not(unix))]
    fn read(&self, _path: &Path, _id: &[u8; 32]) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }

    /// Keeps `component`, compiled from `wasm`, for later loads. Failing to
    /// write costs only a compilation later, so it is logged, not returned.
    pub(crate) fn store(&self, wasm: &[u8], component: &Component) {
        let id = self.id(wasm);
        let path = self.path(&id);
        let written = component.serialize().map_err(|e| io::Error::other(e.to_string())).and_then(|code| {
            let tag = hmac::sign(&self.entry_key(&id), &code);
            write_atomically(&path, &[MAGIC.as_slice(), tag.as_ref(), &code])
        });
        match written {
            Ok(()) => {
                debug!(path = %path.display(), "compiled plugin cached");
                self.prune();
            }
            Err(e) => warn!(path = %path.display(), error = %e, "cannot cache a compiled plugin"),
        }
    }

    /// Deletes the oldest entries past [`MAX_ENTRIES`] (leftover temporary
    /// files count too, so they go first). The key is never pruned.
    fn prune(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        let ours = format!(".{EXTENSION}");
        let mut files: Vec<_> = entries
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name();
                let name = name.to_str()?;
                if !(name.ends_with(&ours) || name.contains(&format!("{ours}.tmp."))) {
                    return None;
                }
                // `DirEntry::metadata` does not follow links.
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok(), e.path()))
            })
            .collect();
        if files.len() <= MAX_ENTRIES {
            return;
        }
        files.sort();
        for (_, path) in &files[..files.len() - MAX_ENTRIES] {
            let _ = fs::remove_file(path);
        }
    }
}

/// Compiles `wasm`, the component of plugin `name`. A compilation still
/// running after [`SLOW_COMPILE`] is logged at `info` then, and again when
/// it ends with the time it took, so a start-up that compiles a large
/// component (an 18 MB Python one: about 10 s) does not pass in silence.
pub(crate) fn compile(engine: &Engine, name: &str, wasm: &[u8]) -> wasmtime::Result<Component> {
    announced(name, wasm.len() / 1024, SLOW_COMPILE, || Component::new(engine, wasm))
}

/// Runs `compile` (of plugin `name`, `size_kib` large), logging its start
/// if it is still running after `after`, and then its end.
fn announced<T>(name: &str, size_kib: usize, after: Duration, compile: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let slow = AtomicBool::new(false);
    let (finished, done) = mpsc::channel::<()>();
    // The watcher logs where the caller would (a test's subscriber, say).
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let result = thread::scope(|scope| {
        let slow = &slow;
        let watch = move || {
            if done.recv_timeout(after) == Err(RecvTimeoutError::Timeout) {
                slow.store(true, Ordering::Relaxed);
                tracing::dispatcher::with_default(&dispatch, || {
                    info!(plugin = name, size_kib, "compiling plugin (not found compiled in a cache)");
                });
            }
        };
        // Without a thread (none left), the compile simply goes unannounced.
        let _ = thread::Builder::new().name("moat-compile-log".into()).spawn_scoped(scope, watch);
        let result = compile();
        drop(finished);
        result
    });
    if slow.load(Ordering::Relaxed) {
        info!(plugin = name, took_ms = started.elapsed().as_millis(), "plugin compiled");
    }
    result
}

/// Turns compiled code back into a component.
///
/// `code` must be the unmodified output of [`Component::serialize`]: it is
/// machine code that will run. Every caller passes the code of an entry
/// that [`DiskCache::read`] checked.
#[allow(unsafe_code, reason = "wasmtime's deserialization is unsafe; the one place Moat needs it")]
fn deserialize(engine: &Engine, code: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires bytes produced by `Component::serialize`.
    // These carry an HMAC-SHA256, verified just before, under a key derived
    // from the entry's name and a random key that only this user can read
    // (a 0600 file of this user, opened without following links, in a
    // directory that only this user or root can write, as can only they its
    // every parent). So they were written by `DiskCache::store` of a broker
    // running as this user, for this component and engine, and were not
    // altered since. They were renamed into place whole, so they are not
    // partial. A compatible but different wasmtime build is refused by
    // wasmtime's own header check. `deserialize` (not `deserialize_file`)
    // copies the bytes, so nothing done to the file after the check can
    // reach the loaded code.
    unsafe { Component::deserialize(engine, code) }
}

/// Writes `parts` to a temporary file next to `path` (owner-only, created
/// anew, never through a link), then renames it over `path` (replacing
/// whatever is there, a link included, never writing through it).
#[cfg(unix)]
fn write_atomically(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let aside = trust::temporary(path);
    let result = trust::create_private(&aside).and_then(|mut file| {
        for part in parts {
            file.write_all(part)?;
        }
        drop(file);
        fs::rename(&aside, path)
    });
    if result.is_err() {
        let _ = fs::remove_file(&aside);
    }
    result
}

#[cfg(not(unix))]
fn write_atomically(_path: &Path, _parts: &[&[u8]]) -> io::Result<()> {
    Err(io::Error::other("no disk cache on this system"))
}

fn digest(context: Context) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Feeds a [`Hash`] into SHA-256, so the engine's compatibility hash gives
/// the same key across runs and Rust versions (`DefaultHasher` promises
/// neither).
struct DigestHasher(Context);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Unused: the digest is read from the context.
    fn finish(&self) -> u64 {
        0
    }
}
