//! Compiled components kept on disk, so a restart or a reload of an
//! unchanged plugin does not compile it again (compiling the shipped plugins
//! takes seconds; loading them from here takes milliseconds).
//!
//! Loading machine code from a file is the one `unsafe` operation in Moat,
//! so what this cache reads is never trusted blindly:
//! - the directory is made owner-only (0700) when the cache opens, and files
//!   are written owner-only (0600), atomically (a temporary file renamed
//!   into place), so no other user can plant or alter an entry and no reader
//!   sees a half-written one;
//! - an entry's name is the SHA-256 of the component's bytes together with
//!   the engine's compilation settings and wasmtime's version, so a changed
//!   plugin, engine configuration or wasmtime never finds an old entry;
//! - an entry carries the SHA-256 of its contents, checked before use, and
//!   wasmtime checks its own header (version, target, settings) again;
//! - an entry that fails any check is deleted and the component compiled
//!   again: the cache can make a load faster, never make it fail.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ring::digest::{Context, SHA256};
use tracing::{debug, warn};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The first bytes of every entry; the number changes with the format.
const MAGIC: &[u8; 8] = b"MOATCC01";
/// Length of the header: magic, then the SHA-256 of the rest.
const HEADER: usize = MAGIC.len() + 32;
/// An entry larger than this is not ours (compiled plugins are a few MiB).
const MAX_ENTRY: u64 = 256 << 20;
/// Most entries kept; past this the oldest are deleted, so plugins replaced
/// over months do not fill the disk.
const MAX_ENTRIES: usize = 64;
/// Extension of entries; temporary files have another one.
const EXTENSION: &str = "cwasm";

/// Compiled components under one owner-only directory.
#[derive(Debug)]
pub(crate) struct DiskCache {
    dir: PathBuf,
    /// Digest of what makes compiled code usable by this engine.
    engine: [u8; 32],
}

impl DiskCache {
    /// Creates `dir` if needed and makes it owner-only. Changing the mode
    /// succeeds only for the directory's owner (or root), so an open cache
    /// is one no other user can write to.
    ///
    /// # Errors
    /// The directory cannot be created or its mode changed.
    pub(crate) fn open(dir: &Path, engine: &Engine) -> io::Result<DiskCache> {
        fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        let mut hasher = DigestHasher(Context::new(&SHA256));
        hasher.write(MAGIC);
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(DiskCache { dir: dir.to_owned(), engine: digest(hasher.0) })
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the component compiled from `wasm` is kept.
    fn entry(&self, wasm: &[u8]) -> PathBuf {
        let mut key = Context::new(&SHA256);
        key.update(&self.engine);
        key.update(wasm);
        self.dir.join(format!("{}.{EXTENSION}", hex(&digest(key))))
    }

    /// The component compiled from `wasm` before, if an intact entry for it
    /// and this engine exists. A damaged or incompatible entry is deleted.
    pub(crate) fn load(&self, engine: &Engine, wasm: &[u8]) -> Option<Component> {
        let path = self.entry(wasm);
        let contents = match read_entry(&path) {
            Ok(Some(contents)) => contents,
            Ok(None) => return None,
            Err(reason) => {
                warn!(path = %path.display(), reason, "compiled plugin cache entry ignored; compiling again");
                let _ = fs::remove_file(&path);
                return None;
            }
        };
        match deserialize(engine, &contents[HEADER..]) {
            Ok(component) => Some(component),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "compiled plugin cache entry refused; compiling again");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Keeps `component`, compiled from `wasm`, for later loads. Failing to
    /// write costs only a compilation later, so it is logged, not returned.
    pub(crate) fn store(&self, wasm: &[u8], component: &Component) {
        let path = self.entry(wasm);
        let written = component.serialize().map_err(|e| io::Error::other(e.to_string())).and_then(|code| {
            let mut sum = Context::new(&SHA256);
            sum.update(&code);
            write_atomically(&path, &[MAGIC.as_slice(), &digest(sum), &code])
        });
        match written {
            Ok(()) => {
                debug!(path = %path.display(), "compiled plugin cached");
                self.prune();
            }
            Err(e) => warn!(path = %path.display(), error = %e, "cannot cache a compiled plugin"),
        }
    }

    /// Deletes the oldest files past [`MAX_ENTRIES`] (leftover temporary
    /// files count too, so they go first).
    fn prune(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        let mut files: Vec<_> = entries
            .filter_map(|e| {
                let e = e.ok()?;
                let meta = e.metadata().ok()?;
                meta.is_file().then(|| (meta.modified().ok(), e.path()))
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

/// Reads an entry and checks its header and checksum: `Ok(None)` when there
/// is none, `Err` with the reason when it cannot be used.
fn read_entry(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err("readable or writable by other users".into());
        }
    }
    if meta.len() > MAX_ENTRY || meta.len() < HEADER as u64 {
        return Err(format!("unexpected size {}", meta.len()));
    }
    let contents = fs::read(path).map_err(|e| e.to_string())?;
    if contents.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err("not a Moat cache entry".into());
    }
    let mut sum = Context::new(&SHA256);
    sum.update(&contents[HEADER..]);
    if digest(sum).as_slice() != &contents[MAGIC.len()..HEADER] {
        return Err("checksum mismatch".into());
    }
    Ok(Some(contents))
}

/// Turns compiled code back into a component.
///
/// `code` must be the unmodified output of [`Component::serialize`]: it is
/// machine code that will run. Every caller passes the payload of an entry
/// that [`read_entry`] checked.
#[allow(unsafe_code, reason = "wasmtime's deserialization is unsafe; the one place Moat needs it")]
fn deserialize(engine: &Engine, code: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires bytes produced by `Component::serialize`.
    // These come from a file written by `DiskCache::store` (this program):
    // its directory was made 0700 by its owner and the file is 0600, so no
    // other user could have written it; it was renamed into place whole, so
    // it is not partial; its SHA-256 matched the one stored with it, so it
    // was not truncated or damaged since; and its name commits to the
    // component's bytes and this engine's settings. A compatible but
    // different wasmtime build is refused by wasmtime's own header check.
    // `deserialize` (not `deserialize_file`) copies the bytes, so nothing
    // done to the file after this check can reach the loaded code.
    unsafe { Component::deserialize(engine, code) }
}

/// Writes `parts` to a temporary file next to `path` (owner-only, created
/// anew), then renames it over `path`.
fn write_atomically(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let temporary = path.with_extension(format!("tmp.{}.{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = options.open(&temporary).and_then(|mut file| {
        for part in parts {
            file.write_all(part)?;
        }
        drop(file);
        fs::rename(&temporary, path)
    });
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_and_damage_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache_dir = dir.path().join("cache");
        let engine = Engine::default();
        let cache = DiskCache::open(&cache_dir, &engine).expect("open");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&cache_dir).expect("dir").permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        // The smallest component: no imports, no exports.
        let wasm = b"\0asm\x0d\0\x01\0";
        assert!(cache.load(&engine, wasm).is_none(), "empty cache");
        let component = Component::new(&engine, wasm).expect("compiles");
        cache.store(wasm, &component);
        let path = cache.entry(wasm);
        assert!(path.is_file());
        assert!(cache.load(&engine, wasm).is_some(), "stored entry loads");

        // Another engine configuration does not find it.
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let other = Engine::new(&config).expect("engine");
        let other_cache = DiskCache::open(&cache_dir, &other).expect("open");
        assert_ne!(other_cache.entry(wasm), path);

        // A flipped byte: refused, deleted.
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).expect("write");
        assert!(cache.load(&engine, wasm).is_none(), "damaged entry refused");
        assert!(!path.exists(), "damaged entry deleted");

        // A truncated one, too.
        cache.store(wasm, &component);
        let bytes = fs::read(&path).expect("read");
        fs::write(&path, &bytes[..HEADER + 3]).expect("write");
        assert!(cache.load(&engine, wasm).is_none(), "truncated entry refused");
        assert!(!path.exists());
    }

    #[cfg(unix)]
    #[test]
    fn entries_others_could_write_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::default();
        let cache = DiskCache::open(dir.path(), &engine).expect("open");
        let wasm = b"\0asm\x0d\0\x01\0";
        cache.store(wasm, &Component::new(&engine, wasm).expect("compiles"));
        let path = cache.entry(wasm);
        assert_eq!(fs::metadata(&path).expect("entry").permissions().mode() & 0o777, 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).expect("chmod");
        assert!(cache.load(&engine, wasm).is_none());
        assert!(!path.exists());
    }

    #[test]
    fn old_entries_are_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::default();
        let cache = DiskCache::open(dir.path(), &engine).expect("open");
        for i in 0..MAX_ENTRIES + 5 {
            fs::write(dir.path().join(format!("{i}.{EXTENSION}")), b"x").expect("write");
        }
        let wasm = b"\0asm\x0d\0\x01\0";
        cache.store(wasm, &Component::new(&engine, wasm).expect("compiles"));
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), MAX_ENTRIES);
    }
}
