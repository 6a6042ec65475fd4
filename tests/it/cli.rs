//! The `moat` binary: configuration errors and signals.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn moat() -> Command {
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

fn free_port() -> u16 {
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

/// Collects the lines a child writes to stderr, on a thread.
fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
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
fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, parts: &[&str]) -> String {
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
