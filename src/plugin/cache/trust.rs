//! Whether the cache's directory and files can be trusted with machine code,
//! and the key that authenticates entries.
//!
//! Whoever can write the directory, or any directory above it, can make
//! the broker run native code of their choosing. So the directory and each
//! of its parents must belong to this user or root and be writable by no
//! one else; a parent such as `/tmp` that others may write but not rename
//! in (the sticky bit) is accepted. Files are opened without following a
//! symbolic link and checked through the opened descriptor, so what was
//! checked is what is read. Entries carry an HMAC under a random key kept
//! in the directory, readable by this user only.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The file holding the key, in the cache directory.
pub(crate) const KEY_FILE: &str = "hmac-key";
/// Bytes of key: SHA-256's block-size-safe output length.
const KEY_LEN: usize = 32;

use super::{Untrusted, untrusted};

/// The user this process runs as: the owner of every file it creates.
fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Creates `dir` and missing parents (owner-only), then checks it and every
/// parent; returns its canonical path, which the cache uses from then on
/// so a symbolic link on the way cannot be swapped later.
///
/// # Errors
/// The directory cannot be created or resolved, or it or a parent is not
/// owned by this user or root, or may be written by others.
pub(crate) fn prepare_dir(dir: &Path) -> Result<PathBuf, Untrusted> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| untrusted(dir, format!("cannot create it: {e}")))?;
    let real = fs::canonicalize(dir).map_err(|e| untrusted(dir, format!("cannot resolve it: {e}")))?;
    let me = me();
    for (depth, ancestor) in real.ancestors().enumerate() {
        let meta = fs::symlink_metadata(ancestor).map_err(|e| untrusted(ancestor, e.to_string()))?;
        check_directory(ancestor, &meta, me, depth == 0)?;
    }
    Ok(real)
}

/// One directory on the way: a directory, owned by `me` or root, writable
/// by no one else (a parent, not the cache itself, may be a sticky
/// directory such as `/tmp`, where others cannot rename what is ours).
fn check_directory(path: &Path, meta: &fs::Metadata, me: u32, is_cache: bool) -> Result<(), Untrusted> {
    if !meta.is_dir() {
        return Err(untrusted(path, "not a directory"));
    }
    let owner = meta.uid();
    if owner != me && owner != 0 {
        return Err(untrusted(
            path,
            format!("owned by uid {owner}, not by this user (uid {me}) or root, who could plant compiled code"),
        ));
    }
    let mode = meta.mode();
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && (is_cache || !sticky) {
        let who = if mode & 0o002 != 0 { "world" } else { "group" };
        return Err(untrusted(
            path,
            format!("{who}-writable (mode {:o}), so another user could plant compiled code", mode & 0o7777),
        ));
    }
    Ok(())
}

/// Opens `path` for reading if it is a regular file of this user that no
/// other user may read or write, without following a symbolic link (and
/// without blocking on a FIFO). `Ok(None)` when there is no such file.
///
/// # Errors
/// The file exists but is a link, not a regular file, someone else's,
/// open to others, or unreadable.
pub(crate) fn open_private(path: &Path) -> Result<Option<(File, u64)>, Untrusted> {
    use rustix::fs::OFlags;
    let flags = (OFlags::NOFOLLOW | OFlags::NONBLOCK).bits();
    let file = match fs::OpenOptions::new().read(true).custom_flags(flags as i32).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            let link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            return Err(untrusted(path, if link { "a symbolic link".to_owned() } else { e.to_string() }));
        }
    };
    let meta = file.metadata().map_err(|e| untrusted(path, e.to_string()))?;
    if !meta.is_file() {
        return Err(untrusted(path, "not a regular file"));
    }
    let me = me();
    if meta.uid() != me {
        return Err(untrusted(path, format!("owned by uid {}, not by this user (uid {me})", meta.uid())));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(untrusted(path, format!("open to other users (mode {:o})", meta.mode() & 0o7777)));
    }
    Ok(Some((file, meta.len())))
}

/// Creates `path` anew (never through a link, never over a file),
/// owner-only, for writing.
pub(crate) fn create_private(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// A name for a temporary file beside `path`, unique in this process and
/// among processes.
pub(crate) fn temporary(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp.{}.{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    path.with_file_name(name)
}

/// The cache's key, created on first use: 32 random bytes in
/// [`KEY_FILE`], readable by this user only.
///
/// # Errors
/// The key file is not trusted ([`open_private`]), has the wrong size, or
/// cannot be created.
pub(crate) fn key(dir: &Path) -> Result<hmac::Key, Untrusted> {
    let path = dir.join(KEY_FILE);
    if let Some(key) = read_key(&path)? {
        return Ok(key);
    }
    create_key(&path)?;
    read_key(&path)?.ok_or_else(|| untrusted(&path, "vanished after it was created"))
}

fn read_key(path: &Path) -> Result<Option<hmac::Key>, Untrusted> {
    let Some((file, len)) = open_private(path)? else { return Ok(None) };
    let mut bytes = Vec::with_capacity(KEY_LEN);
    // One byte more than a key, to tell a longer file from a key.
    file.take(KEY_LEN as u64 + 1).read_to_end(&mut bytes).map_err(|e| untrusted(path, e.to_string()))?;
    if bytes.len() != KEY_LEN || len != KEY_LEN as u64 {
        return Err(untrusted(
            path,
            format!("{} bytes, not a {KEY_LEN}-byte key (delete the cache directory to start a new one)", len),
        ));
    }
    Ok(Some(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
}

/// Writes a new key to a temporary file, then links it into place: if
/// another process made one meanwhile, theirs stays and both use it.
fn create_key(path: &Path) -> Result<(), Untrusted> {
    let mut bytes = [0u8; KEY_LEN];
    SystemRandom::new().fill(&mut bytes).map_err(|_| untrusted(path, "no random bytes for a key"))?;
    let aside = temporary(path);
    let written = create_private(&aside).and_then(|mut file| {
        file.write_all(&bytes)?;
        file.sync_all()
    });
    let placed = written.and_then(|()| match fs::hard_link(&aside, path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        // A file system without hard links: a rename may replace a key a
        // racing process just made, which costs that process's entries a
        // compilation, nothing more.
        Err(_) => fs::rename(&aside, path),
        Ok(()) => Ok(()),
    });
    let _ = fs::remove_file(&aside);
    placed.map_err(|e| untrusted(path, format!("cannot create the key: {e}")))
}
