//! The `moat` binary: configuration errors and signals.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn moat() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moat"))
}

#[test]
fn bad_config_exits_64_naming_file_line_and_key() {
    let mut file = tempfile_in_target("bad.toml");
    writeln!(file.1, "[limits]\nmax_inflight = 0").expect("write config");
    let out = moat().arg("--config").arg(&file.0).output().expect("run moat");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:2: `limits.max_inflight`: must be greater than 0"), "{stderr}");
}

#[test]
fn unknown_key_is_an_error() {
    let mut file = tempfile_in_target("typo.toml");
    writeln!(file.1, "[[listeners]]\nbind = \"127.0.0.1:0\"\nallow_anonymus = true").expect("write config");
    let out = moat().arg("--config").arg(&file.0).output().expect("run moat");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("typo.toml:3:") && stderr.contains("allow_anonymus"), "{stderr}");
}

#[test]
fn missing_config_file_is_an_error() {
    let out = moat().args(["--config", "/nonexistent/moat.toml"]).output().expect("run moat");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/moat.toml"));
}

#[cfg(unix)]
#[test]
fn sigterm_shuts_down_gracefully() {
    let port = free_port();
    let mut child =
        moat().args(["--listen", &format!("127.0.0.1:{port}")]).stderr(Stdio::piped()).spawn().expect("start moat");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "moat did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "moat did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// A fresh file under the target directory (no temp-file crate needed).
fn tempfile_in_target(name: &str) -> (std::path::PathBuf, std::fs::File) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    let file = std::fs::File::create(&path).expect("create config");
    (path, file)
}

#[test]
fn passwd_adds_updates_and_deletes_users_keeping_other_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passwd");
    std::fs::write(&file, "# operators\nbob:$6$c2FsdHNhbHQ=$x\n").expect("write");
    let out = moat().arg("passwd").arg(&file).args(["alice", "--password", "s3cret"]).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Not a terminal: the password is one line of standard input.
    let mut child =
        moat().arg("passwd").arg(&file).arg("carol").stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run");
    child.stdin.take().expect("stdin").write_all(b"from stdin\n").expect("write password");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let text = std::fs::read_to_string(&file).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..2], ["# operators", "bob:$6$c2FsdHNhbHQ=$x"]);
    assert!(lines[2].starts_with("alice:$argon2id$v=19$m=19456,t=2,p=1$"), "{text}");
    assert!(lines[3].starts_with("carol:$argon2id$"), "{text}");
    assert_eq!(lines.len(), 4);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).expect("stat").permissions().mode() & 0o777, 0o600);
    }

    let out = moat().arg("passwd").arg("--delete").arg(&file).arg("bob").output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(!text.contains("bob:") && text.contains("alice:") && text.contains("carol:"), "{text}");

    let out = moat().arg("passwd").arg("--delete").arg(&file).arg("bob").output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user \"bob\""));
}

#[test]
fn passwd_scram_writes_postgres_format_credentials() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("scram");
    let out = moat()
        .arg("passwd")
        .arg("--scram")
        .args(["--iterations", "5000"])
        .arg(&file)
        .args(["alice", "--password", "pencil"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&file).expect("read");
    let rest = text.trim_end().strip_prefix("alice:SCRAM-SHA-256$5000:").expect("scram entry");
    let (salt, keys) = rest.split_once('$').expect("salt$keys");
    let (stored, server) = keys.split_once(':').expect("stored:server");
    assert_eq!(salt.len(), 24, "16-byte salt in base64");
    assert_eq!((stored.len(), server.len()), (44, 44), "32-byte keys in base64");
}

#[test]
fn passwd_refuses_empty_passwords_and_bad_user_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passwd");
    let out = moat().arg("passwd").arg(&file).arg("alice").stdin(Stdio::null()).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must not be empty"));
    let out = moat().arg("passwd").arg(&file).args(["a:b", "--password", "x"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid user name"));
    assert!(!file.exists(), "nothing written");
    // The broker's flags and the subcommand do not mix.
    let out = moat().args(["--listen", "127.0.0.1:1", "passwd"]).arg(&file).arg("alice").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn passwd_into_a_missing_directory_says_why_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-dir");
    let file = missing.join("passwd");
    let out = moat().arg("passwd").arg(&file).args(["alice", "--password", "s3cret"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let expected = format!("the directory {} does not exist", missing.display());
    assert_eq!(stderr.matches(&expected).count(), 1, "{stderr}");
    assert!(!stderr.contains("os error"), "{stderr}");
}

/// Collects the lines a child writes to stderr, on a thread.
pub(crate) fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits (bounded) for a line containing all of `parts`; returns it.
pub(crate) fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, parts: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).unwrap_or_else(|_| panic!("no log line with {parts:?}"));
        if parts.iter().all(|p| line.contains(p)) {
            return line;
        }
    }
}

#[cfg(unix)]
#[test]
fn sighup_and_config_file_changes_reload_and_an_invalid_file_is_refused() {
    let port = free_port();
    let (path, _) = tempfile_in_target("reload.toml");
    let listener = format!("[[listeners]]\nbind = \"127.0.0.1:{port}\"\n\n");
    std::fs::write(&path, format!("{listener}[limits]\nmax_inflight = 10\n")).expect("write config");
    let mut child =
        moat().arg("--config").arg(&path).env_remove("RUST_LOG").stderr(Stdio::piped()).spawn().expect("start moat");
    let lines = stderr_lines(&mut child);
    wait_for_line(&lines, &["listening"]);

    let status = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    wait_for_line(&lines, &["SIGHUP"]);
    wait_for_line(&lines, &["configuration reloaded"]);

    // An invalid file (noticed by the watcher) is refused with file, line
    // and key; the broker keeps serving.
    std::fs::write(&path, format!("{listener}[limits]\nmax_inflight = 0\n")).expect("write config");
    let refused = wait_for_line(&lines, &["configuration reload refused"]);
    assert!(refused.contains("reload.toml:5: `limits.max_inflight`"), "{refused}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "still listening");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "moat did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
