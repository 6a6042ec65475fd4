//! The compiled-plugin cache through the broker: on by default, never
//! trusting what it did not write (a forged or moved entry, a symbolic
//! link), and off, with a warning naming the directory, when others could
//! write to it.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use moat::config::Config;
use moat::plugin::CompileCounts;
use rumqttc::v5::mqttbytes::v5::PubAckReason;

use crate::harness::TestBroker;
use crate::plugin_support::stage;
use crate::reload::publish;

/// The authorizer's sidecar: everything allowed except `deny/`.
const DENY: &str = "[config]\nprefix = \"\"\ndeny_prefix = \"deny/\"\n";

/// The compiled-component entries in `dir`.
fn entries(dir: &Path) -> HashSet<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else { return HashSet::new() };
    read.map(|e| e.expect("entry").path()).filter(|p| p.extension().is_some_and(|x| x == "cwasm")).collect()
}

/// A broker with the plugins of `plugins` and its compiled ones in `cache`.
async fn started(plugins: &Path, cache: &Path) -> (TestBroker, CompileCounts) {
    let broker = TestBroker::with(|c: &mut Config| {
        c.plugins.dir = Some(plugins.to_owned());
        c.plugins.cache_dir = Some(cache.to_owned());
    })
    .await;
    let counts = broker.reloader.plugin_compile_counts().expect("plugins loaded");
    (broker, counts)
}

/// Whether the `deny/` authorizer is in force: `deny/t` refused, `open/t`
/// allowed.
async fn authorizer_in_force(broker: &TestBroker) -> bool {
    let mut client = broker.v5("checker").await;
    let denied = publish(&mut client, "deny/t").await == PubAckReason::NotAuthorized;
    denied && publish(&mut client, "open/t").await == PubAckReason::Success
}

/// The cache of a first start with the authorizer `acl`: its directory and
/// the one entry written.
async fn first_start(plugins: &Path, cache: &Path) -> PathBuf {
    let (broker, counts) = started(plugins, cache).await;
    assert_eq!((counts.compiled, counts.disk), (1, 0), "{counts:?}");
    broker.stop().await;
    let entries = entries(cache);
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries.into_iter().next().expect("one entry")
}

/// Someone who could write the cache replaces the authorizer's compiled
/// code with another plugin's (one that authorizes nothing), fixing the
/// SHA-256 an entry used to carry, or copying that plugin's whole genuine
/// entry. Either would turn the policy off; neither is loaded.
#[tokio::test]
async fn a_forged_or_moved_cache_entry_is_not_loaded() {
    let acl = stage(&[("acl", "topic-prefix", DENY)]);
    let other = stage(&[("acl", "allow-list", "")]);
    let cache = tempfile::tempdir().expect("tempdir");
    let cache = cache.path().join("compiled");
    let entry = first_start(acl.path(), &cache).await;
    let (broker, _) = started(other.path(), &cache).await;
    broker.stop().await;
    let other_entry = entries(&cache).into_iter().find(|e| *e != entry).expect("the other plugin's entry");
    let genuine = std::fs::read(&other_entry).expect("read");

    let mut forged = genuine.clone();
    let sum = ring::digest::digest(&ring::digest::SHA256, &forged[40..]);
    forged[8..40].copy_from_slice(sum.as_ref());
    for (what, bytes) in [("forged checksum", &forged), ("moved genuine entry", &genuine)] {
        std::fs::write(&entry, bytes).expect("plant");
        let (broker, counts) = started(acl.path(), &cache).await;
        assert_eq!((counts.compiled, counts.disk, counts.refused), (1, 0, 1), "{what}: {counts:?}");
        assert!(authorizer_in_force(&broker).await, "{what}: the real plugin runs");
        broker.stop().await;
        assert_ne!(std::fs::read(&entry).expect("rewritten"), *bytes, "{what}: the entry was written anew");
    }
    // The rewritten entry is trusted again.
    let (broker, counts) = started(acl.path(), &cache).await;
    assert_eq!((counts.compiled, counts.disk, counts.refused), (0, 1, 0), "{counts:?}");
    broker.stop().await;
}

/// An entry that is a symbolic link, even to a genuine entry, is not
/// followed: it is removed and replaced by a file, and its target is left
/// alone.
#[tokio::test]
async fn a_symlinked_cache_entry_is_not_followed() {
    let acl = stage(&[("acl", "topic-prefix", DENY)]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("compiled");
    let entry = first_start(acl.path(), &cache).await;
    let aside = tmp.path().join("elsewhere.cwasm");
    std::fs::rename(&entry, &aside).expect("move the entry out");
    std::os::unix::fs::symlink(&aside, &entry).expect("link it back");
    let target = std::fs::read(&aside).expect("read");

    let (broker, counts) = started(acl.path(), &cache).await;
    assert_eq!((counts.compiled, counts.disk, counts.refused), (1, 0, 1), "{counts:?}");
    assert!(authorizer_in_force(&broker).await);
    broker.stop().await;
    assert!(std::fs::symlink_metadata(&entry).expect("entry").is_file(), "the link was replaced by a file");
    assert_eq!(std::fs::read(&aside).expect("target"), target, "the link's target is untouched");
}

/// `moat` run as a child, with its stderr read line by line on a thread.
struct Moat {
    child: Child,
    lines: mpsc::Receiver<String>,
}

/// How long a test waits for a line: a debug build compiles a plugin in
/// seconds, more on a loaded machine.
const LINE_WAIT: Duration = Duration::from_secs(120);

impl Moat {
    /// Starts the broker with `config` (a `[[listeners]]` is added) and the
    /// environment `env` (`None` removes a variable).
    fn start(dir: &Path, config: &str, env: &[(&str, Option<&Path>)]) -> Moat {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let path = dir.join("moat.toml");
        std::fs::write(&path, format!("[[listeners]]\nbind = \"127.0.0.1:{port}\"\n\n{config}")).expect("config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_moat"));
        cmd.arg("--config").arg(&path).env_remove("RUST_LOG").current_dir(dir).stderr(Stdio::piped());
        for (name, value) in env {
            match value {
                Some(value) => cmd.env(name, value),
                None => cmd.env_remove(name),
            };
        }
        let mut child = cmd.spawn().expect("start moat");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Moat { child, lines }
    }

    /// Lines up to and including the first containing `part` (bounded).
    fn until(&self, part: &str) -> Vec<String> {
        let deadline = Instant::now() + LINE_WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(part);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("no log line with {part:?}; saw:\n{}", seen.join("\n")),
            }
        }
    }

    /// Starts, waits until it listens, stops; returns the start-up's log.
    fn run_once(dir: &Path, config: &str, env: &[(&str, Option<&Path>)]) -> Vec<String> {
        let moat = Moat::start(dir, config, env);
        let log = moat.until("listening");
        drop(moat);
        log
    }
}

impl Drop for Moat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `plugins compiled` line of a start-up's log.
fn compiled_line(log: &[String]) -> &str {
    log.iter().find(|l| l.contains("plugins compiled")).unwrap_or_else(|| panic!("no `plugins compiled` in {log:#?}"))
}

fn plugins_config(plugins: &Path, extra: &str) -> String {
    format!("[plugins]\ndir = \"{}\"\n{extra}", plugins.display())
}

/// With no cache setting at all, compiled plugins go to
/// `$XDG_CACHE_HOME/moat`, else `~/.cache/moat`, and the next start
/// compiles nothing; `cache = false` keeps nothing.
#[test]
fn the_default_cache_needs_no_configuration() {
    let acl = stage(&[("acl", "topic-prefix", DENY)]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).expect("home");
    let config = plugins_config(acl.path(), "");
    let env = [("HOME", Some(home.as_path())), ("XDG_CACHE_HOME", None)];

    let log = Moat::run_once(tmp.path(), &config, &env);
    let default = home.join(".cache").join("moat");
    let line = compiled_line(&log);
    assert!(line.contains("compiled=1 from_disk_cache=0"), "{line}");
    assert!(line.contains(&format!("cache_dir=\"{}\"", default.display())), "{line}");
    assert_eq!(entries(&default).len(), 1);
    let log = Moat::run_once(tmp.path(), &config, &env);
    assert!(compiled_line(&log).contains("compiled=0 from_disk_cache=1"), "{log:#?}");

    let xdg = tmp.path().join("xdg");
    let env = [("HOME", Some(home.as_path())), ("XDG_CACHE_HOME", Some(xdg.as_path()))];
    let log = Moat::run_once(tmp.path(), &config, &env);
    assert!(compiled_line(&log).contains("compiled=1"), "{log:#?}");
    assert_eq!(entries(&xdg.join("moat")).len(), 1, "XDG_CACHE_HOME wins over HOME");

    let off = plugins_config(acl.path(), "cache = false\n");
    for _ in 0..2 {
        let log = Moat::run_once(tmp.path(), &off, &env);
        let line = compiled_line(&log);
        assert!(line.contains("compiled=1 from_disk_cache=0") && !line.contains("cache_dir"), "{line}");
    }
}

/// A cache directory others may write to, or owned by another user, is
/// not used: the broker says which directory and why, and runs (compiling)
/// without it.
#[test]
fn a_cache_directory_others_could_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let acl = stage(&[("acl", "topic-prefix", DENY)]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o770)).expect("chmod");
    let config = plugins_config(acl.path(), &format!("cache_dir = \"{}\"\n", shared.display()));
    let mut cases = vec![(config, shared.clone(), shared.clone(), "group-writable (mode 770)")];

    let theirs = tmp.path().join("theirs");
    std::fs::create_dir(&theirs).expect("mkdir");
    if std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).is_ok() {
        let dir = theirs.join("cache");
        let config = plugins_config(acl.path(), &format!("cache_dir = \"{}\"\n", dir.display()));
        cases.push((config, dir, theirs.clone(), "owned by uid 65534"));
    } else {
        eprintln!("skipped the other user's directory: changing an owner needs root");
    }
    for (config, cache, at_fault, why) in cases {
        let log = Moat::run_once(tmp.path(), &config, &[]);
        let warning = log
            .iter()
            .find(|l| l.contains("WARN") && l.contains("compiled plugins will not be cached on disk"))
            .unwrap_or_else(|| panic!("no warning in {log:#?}"));
        assert!(warning.contains(&format!("{}: {why}", at_fault.display())), "{warning}");
        let line = compiled_line(&log);
        assert!(line.contains("compiled=1 from_disk_cache=0") && !line.contains("cache_dir"), "{line}");
        assert!(entries(&cache).is_empty() && !cache.join("hmac-key").exists(), "nothing written");
    }
}
