use std::os::unix::fs::PermissionsExt;

use super::*;

/// The smallest component: no imports, no exports.
const WASM: &[u8] = b"\0asm\x0d\0\x01\0";
/// Another small component (an empty core module inside), compiled to
/// different code.
const OTHER: &[u8] = b"\0asm\x0d\0\x01\0\x01\x08\0asm\x01\0\0\0";

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("metadata").permissions().mode() & 0o7777
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn found(lookup: Lookup) -> bool {
    matches!(lookup, Lookup::Found(_))
}

fn refused(lookup: Lookup) -> bool {
    matches!(lookup, Lookup::Refused)
}

/// A cache in a fresh owner-only directory, with `WASM` stored.
fn stored() -> (tempfile::TempDir, Engine, DiskCache, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::default();
    let cache = DiskCache::open(&dir.path().join("cache"), &engine).expect("open");
    cache.store(WASM, &Component::new(&engine, WASM).expect("compiles"));
    let path = cache.path(&cache.id(WASM));
    (dir, engine, cache, path)
}

#[test]
fn entries_survive_and_damage_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache_dir = dir.path().join("a").join("cache");
    let engine = Engine::default();
    let cache = DiskCache::open(&cache_dir, &engine).expect("open");
    assert_eq!(mode(&cache_dir), 0o700, "created owner-only");
    assert_eq!(mode(&dir.path().join("a")), 0o700, "missing parents too");
    assert_eq!(mode(&cache_dir.join(trust::KEY_FILE)), 0o600);
    assert!(matches!(cache.load(&engine, WASM), Lookup::Missing), "empty cache");
    let component = Component::new(&engine, WASM).expect("compiles");
    cache.store(WASM, &component);
    let path = cache.path(&cache.id(WASM));
    assert_eq!(mode(&path), 0o600);
    assert!(found(cache.load(&engine, WASM)), "stored entry loads");
    assert!(found(DiskCache::open(&cache_dir, &engine).expect("again").load(&engine, WASM)), "the key is kept");

    // Another engine configuration does not find it.
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    let other = Engine::new(&config).expect("engine");
    let other_cache = DiskCache::open(&cache_dir, &other).expect("open");
    assert_ne!(other_cache.path(&other_cache.id(WASM)), path);

    // A flipped byte: refused, deleted.
    let mut bytes = fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&path, &bytes).expect("write");
    assert!(refused(cache.load(&engine, WASM)), "damaged entry refused");
    assert!(!path.exists(), "damaged entry deleted");

    // A truncated one, too.
    cache.store(WASM, &component);
    let bytes = fs::read(&path).expect("read");
    fs::write(&path, &bytes[..HEADER + 3]).expect("write");
    assert!(refused(cache.load(&engine, WASM)), "truncated entry refused");
    assert!(!path.exists());
}

#[test]
fn a_forged_or_moved_entry_is_refused() {
    let (_dir, engine, cache, path) = stored();
    let other = Component::new(&engine, OTHER).expect("compiles").serialize().expect("serialize");

    // Someone who knows the format but not the key: other code, with the
    // SHA-256 a checksum would have.
    let mut sum = Context::new(&SHA256);
    sum.update(&other);
    fs::write(&path, [MAGIC.as_slice(), &digest(sum), &other].concat()).expect("forge");
    assert!(refused(cache.load(&engine, WASM)), "forged entry refused");
    assert!(!path.exists(), "and deleted");

    // A genuine entry of another component, under this one's name.
    cache.store(OTHER, &Component::new(&engine, OTHER).expect("compiles"));
    fs::copy(cache.path(&cache.id(OTHER)), &path).expect("copy");
    assert!(refused(cache.load(&engine, WASM)), "moved entry refused");

    // An entry of another cache (another key).
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let foreign = DiskCache::open(elsewhere.path(), &engine).expect("open");
    foreign.store(WASM, &Component::new(&engine, WASM).expect("compiles"));
    fs::copy(foreign.path(&foreign.id(WASM)), &path).expect("copy");
    assert!(refused(cache.load(&engine, WASM)), "another cache's entry refused");
}

#[test]
fn a_symlinked_entry_is_not_followed() {
    let (dir, engine, cache, path) = stored();
    let genuine = dir.path().join("genuine.cwasm");
    fs::rename(&path, &genuine).expect("move aside");
    std::os::unix::fs::symlink(&genuine, &path).expect("symlink");
    assert!(refused(cache.load(&engine, WASM)), "a link is refused even to a genuine entry");
    assert!(fs::symlink_metadata(&path).is_err(), "the link is deleted");
    assert!(genuine.is_file(), "its target is left alone");

    // Storing over a link replaces the link, never writes through it.
    std::os::unix::fs::symlink(&genuine, &path).expect("symlink");
    let before = fs::read(&genuine).expect("read");
    cache.store(WASM, &Component::new(&engine, WASM).expect("compiles"));
    assert!(fs::symlink_metadata(&path).expect("entry").is_file());
    assert_eq!(fs::read(&genuine).expect("read"), before);
    assert!(found(cache.load(&engine, WASM)));
}

#[test]
fn entries_others_could_read_or_write_are_refused() {
    let (_dir, engine, cache, path) = stored();
    set_mode(&path, 0o644);
    assert!(refused(cache.load(&engine, WASM)));
    assert!(!path.exists());
}

#[test]
fn a_directory_others_can_write_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::default();
    let cache_dir = dir.path().join("cache");
    fs::create_dir(&cache_dir).expect("mkdir");
    for (mode, says) in [(0o770, "group-writable"), (0o707, "world-writable"), (0o1777, "world-writable")] {
        set_mode(&cache_dir, mode);
        let err = DiskCache::open(&cache_dir, &engine).expect_err("refused");
        assert!(err.to_string().contains(says), "{mode:o}: {err}");
        assert!(err.to_string().starts_with(&cache_dir.canonicalize().expect("real").display().to_string()));
    }
    set_mode(&cache_dir, 0o755);
    assert!(DiskCache::open(&cache_dir, &engine).is_ok(), "others may read the directory, not write it");

    // A parent others can write: anyone could rename the cache away and
    // put their own in its place.
    let parent = dir.path().join("shared");
    fs::create_dir(&parent).expect("mkdir");
    set_mode(&parent, 0o777);
    let err = DiskCache::open(&parent.join("cache"), &engine).expect_err("refused");
    assert!(err.to_string().contains("shared: world-writable"), "{err}");
    // A sticky one (like /tmp) lets no one else rename what is ours.
    set_mode(&parent, 0o1777);
    assert!(DiskCache::open(&parent.join("cache"), &engine).is_ok());
}

#[test]
fn a_directory_of_another_user_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::default();
    let theirs = dir.path().join("theirs");
    fs::create_dir(&theirs).expect("mkdir");
    set_mode(&theirs, 0o755);
    if std::os::unix::fs::chown(&theirs, Some(65534), None).is_err() {
        eprintln!("skipped: changing a directory's owner needs root");
        return;
    }
    for dir in [theirs.clone(), theirs.join("cache")] {
        let err = DiskCache::open(&dir, &engine).expect_err("refused");
        assert!(err.to_string().contains("theirs: owned by uid 65534"), "{err}");
    }
}

#[test]
fn a_key_that_is_not_private_or_the_wrong_size_disables_the_cache() {
    let (dir, engine, cache, _) = stored();
    let key = dir.path().join("cache").join(trust::KEY_FILE);
    drop(cache);
    set_mode(&key, 0o640);
    let err = DiskCache::open(&dir.path().join("cache"), &engine).expect_err("refused");
    assert!(err.to_string().contains("hmac-key: open to other users (mode 640)"), "{err}");
    set_mode(&key, 0o600);
    fs::write(&key, b"short").expect("write");
    let err = DiskCache::open(&dir.path().join("cache"), &engine).expect_err("refused");
    assert!(err.to_string().contains("5 bytes, not a 32-byte key"), "{err}");
    fs::remove_file(&key).expect("rm");
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), &key).expect("symlink");
    let err = DiskCache::open(&dir.path().join("cache"), &engine).expect_err("refused");
    assert!(err.to_string().contains("hmac-key: a symbolic link"), "{err}");
}

#[test]
fn old_entries_are_pruned_and_the_key_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::default();
    let cache = DiskCache::open(dir.path(), &engine).expect("open");
    for i in 0..MAX_ENTRIES + 5 {
        fs::write(dir.path().join(format!("{i}.{EXTENSION}")), b"x").expect("write");
    }
    cache.store(WASM, &Component::new(&engine, WASM).expect("compiles"));
    assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), MAX_ENTRIES + 1);
    assert!(dir.path().join(trust::KEY_FILE).is_file());
}

/// Log lines written through a `tracing` subscriber, kept for a test.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_slow_compile_is_announced_when_it_starts_and_ends() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let log = || String::from_utf8_lossy(&captured.0.lock()).into_owned();
    tracing::subscriber::with_default(subscriber, || {
        announced("quick", 1, Duration::from_secs(60), || ());
        // A compile that lasts until its start was announced (bounded).
        announced("slow", 18_048, Duration::from_millis(10), || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !log().contains("compiling plugin") && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
        });
    });
    let log = log();
    assert!(!log.contains("quick"), "{log}");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].contains(" INFO ") && lines[0].contains("compiling plugin"), "{log}");
    assert!(lines[0].contains("plugin=\"slow\" size_kib=18048"), "{log}");
    assert!(lines[1].contains("plugin compiled plugin=\"slow\" took_ms="), "{log}");
}
