//! What the broker's log says about refusals and about itself: one `info`
//! line per authorization refusal naming the client, the user, the action,
//! the topic, the deciding plugin and its reason (a failed plugin call said
//! apart), rate-limited per client; and `level = "debug"` giving Moat's
//! debug lines rather than the plugin compiler's. Read from the stderr of
//! a real `moat` process.

use std::process::Stdio;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::PubAckReason;

use crate::acl_plugin::publish_qos1;
use crate::cli::{free_port, moat, stderr_lines};
use crate::harness::V5;
use crate::plugin_sandbox::{Killed, until};

/// A broker process on `config` (written into `dir`), its stderr lines,
/// and the lines read so far, once it listens.
fn start(dir: &std::path::Path, config: &str) -> (Killed, std::sync::mpsc::Receiver<String>, Vec<String>) {
    let path = dir.join("moat.toml");
    std::fs::write(&path, config).expect("config");
    let mut child = Killed(
        moat().arg("--config").arg(&path).env_remove("RUST_LOG").stderr(Stdio::piped()).spawn().expect("start moat"),
    );
    let lines = stderr_lines(&mut child.0);
    let mut seen = Vec::new();
    until(&lines, &["listening"], &mut seen);
    (child, lines, seen)
}

/// The value of `key=` in a text log line, quoted or not.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[at..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next(),
        None => rest.split(' ').next(),
    }
}

#[test]
fn a_refusal_logs_one_info_line_with_who_what_which_plugin_and_why() {
    let plugins = crate::plugin_support::stage(&[
        ("gate", "topic-prefix", "order = 1\n[config]\nprefix = \"ok/\"\ndeny_prefix = \"no/\"\n"),
        ("boom", "panic", "order = 2\n"),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = format!(
        "[[listeners]]\nbind = \"127.0.0.1:{port}\"\ntrust_claimed_username = true\n\n[plugins]\ndir = {:?}\n",
        plugins.path().to_str().expect("utf-8 path")
    );
    let (child, lines, mut seen) = start(dir.path(), &config);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let mut client = runtime.block_on(async {
        let mut opts = rumqttc::v5::MqttOptions::new("sensor-7", "127.0.0.1", port);
        opts.set_credentials("alice", "");
        let mut client = V5::connect(opts).await;
        assert_ne!(publish_qos1(&mut client, "ok/1", false).await, PubAckReason::NotAuthorized);
        assert_eq!(publish_qos1(&mut client, "no/secret", false).await, PubAckReason::NotAuthorized);
        client
    });
    until(&lines, &["not authorized: denied by plugin"], &mut seen);
    let denied = seen.last().expect("the line").clone();
    assert!(denied.contains(" INFO "), "{denied}");
    assert_eq!(field(&denied, "client_id"), Some("sensor-7"), "{denied}");
    assert_eq!(field(&denied, "username"), Some("alice"), "{denied}");
    assert_eq!(field(&denied, "action"), Some("publish"), "{denied}");
    assert_eq!(field(&denied, "topic"), Some("no/secret"), "{denied}");
    assert_eq!(field(&denied, "plugin"), Some("gate"), "{denied}");
    assert_eq!(field(&denied, "reason"), Some("no/secret is under no/"), "{denied}");
    assert!(!seen.iter().any(|l| l.contains("not authorized") && l.contains("ok/1")), "an allow logs nothing");

    // A burst of refusals, then one more past the interval: every refusal
    // is either a line or counted as unlogged in the next one. The last one
    // is a failed call (the guest panics), said apart from a denial.
    runtime.block_on(async {
        for n in 0..4 {
            assert_eq!(publish_qos1(&mut client, &format!("no/{n}"), false).await, PubAckReason::NotAuthorized);
        }
        tokio::time::sleep(moat::auth::DenialLog::EVERY + Duration::from_millis(100)).await;
        assert_eq!(publish_qos1(&mut client, "evil/1", false).await, PubAckReason::NotAuthorized);
    });
    until(&lines, &["not authorized: the plugin's call failed"], &mut seen);
    let failed = seen.last().expect("the line").clone();
    assert_eq!(field(&failed, "plugin"), Some("boom"), "{failed}");
    assert_eq!(field(&failed, "failure"), Some("trap"), "{failed}");
    assert_eq!(field(&failed, "topic"), Some("evil/1"), "{failed}");
    assert!(failed.contains("hostile guest panics on purpose"), "the cause: {failed}");
    let refusals: Vec<&String> = seen.iter().filter(|l| l.contains("not authorized:")).collect();
    let accounted: u64 =
        refusals.iter().map(|l| 1 + field(l, "unlogged").map_or(0, |n| n.parse::<u64>().expect("a count"))).sum();
    assert_eq!(accounted, 6, "{refusals:#?}");
    drop(child);
}

/// The target of a text log line (`2026-01-01T00:00:00Z DEBUG target: ...`).
fn target(line: &str) -> &str {
    line.split_whitespace().nth(2).unwrap_or("").trim_end_matches(':')
}

fn from_the_compiler(line: &&String) -> bool {
    moat::config::QUIET_TARGETS.iter().any(|t| target(line).starts_with(t))
}

#[test]
fn level_debug_gives_moats_debug_lines_not_the_plugin_compilers() {
    let plugins = crate::plugin_support::stage(&[("gate", "topic-prefix", "")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // A fresh compile cache, so the plugin is compiled at start-up.
    let config = format!(
        "[[listeners]]\nbind = \"127.0.0.1:{port}\"\n\n[log]\nlevel = \"debug\"\n\n[plugins]\ndir = {:?}\ncache_dir = {:?}\n",
        plugins.path().to_str().expect("utf-8 path"),
        dir.path().join("cache").to_str().expect("utf-8 path"),
    );
    let (child, _lines, seen) = start(dir.path(), &config);
    drop(child);
    assert!(seen.iter().any(|l| l.contains(" DEBUG ") && target(l).starts_with("moat")), "{seen:#?}");
    let noise: Vec<_> = seen.iter().filter(from_the_compiler).take(3).collect();
    assert!(noise.is_empty(), "{noise:#?}");

    // Named explicitly, the compiler's lines are there (and only those).
    let out = moat()
        .args(["plugin", "check", "--no-cache"])
        .arg(crate::plugin_support::built().wasm("topic-prefix"))
        .env("RUST_LOG", "debug,wasmtime=debug")
        .output()
        .expect("run moat plugin check");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<String> = stderr.lines().map(str::to_owned).collect();
    assert!(lines.iter().any(|l| target(l).starts_with("wasmtime")), "{stderr}");
    assert!(!lines.iter().any(|l| target(l).starts_with("cranelift")), "cranelift stays at warn");
}
