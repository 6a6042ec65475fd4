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
