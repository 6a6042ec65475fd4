//! Guests that block in WASI calls (a sleep, `poll` on a pollable that is
//! never ready, stdin) or print: every hook is held to its deadline,
//! whatever the guest calls, and a blocked guest holds neither a runtime
//! worker nor the threads other plugins' clients need. Output goes to the
//! log and never fails the call. Fixture: `plugins/hostile/wasi-calls`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use moat::auth::{Action, AuthnOutcome, PluginMessage, TransformOutcome};
use moat::codec::{QoS, TopicName};
use moat::config::Anonymous;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode;

use crate::harness::TestBroker;
use crate::plugin_support::{client, load, login, policy, stage, stats};

/// The deadline the blocking guests get here: long enough that the
/// well-behaved calls beside them never miss it on a loaded machine, short
/// enough to wait for.
const DEADLINE: Duration = Duration::from_millis(300);

fn sidecar() -> String {
    format!("[limits]\ntimeout_ms = {}\n", DEADLINE.as_millis())
}

/// Ends within the deadline and a scheduling margin, never after an hour.
fn ended_at_the_deadline(started: Instant, what: &str) {
    let took = started.elapsed();
    assert!(took >= DEADLINE - Duration::from_millis(5), "{what}: ended early, after {took:?}");
    assert!(took < DEADLINE + Duration::from_secs(2), "{what}: took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hook_is_held_to_its_deadline_whatever_the_guest_waits_on() {
    let p = policy(&[("wasi-calls", "wasi-calls", &sidecar())]);
    let c = client(Some("u"));
    for how in ["sleep", "poll"] {
        let started = Instant::now();
        let topic = format!("{how}/1");
        assert!(!p.authorize(&c, Action::Publish, &topic, QoS::AtMostOnce, false).await.allowed, "{how}");
        ended_at_the_deadline(started, &format!("authorize, {how}"));

        let started = Instant::now();
        assert!(matches!(p.authenticate(&c, &login(how)).await, AuthnOutcome::Deny { .. }), "{how}");
        ended_at_the_deadline(started, &format!("authenticate, {how}"));

        let started = Instant::now();
        let message = PluginMessage::new(TopicName::new(&topic).expect("valid"), Bytes::new(), QoS::AtMostOnce, false);
        assert!(matches!(p.transform(&c, &message).await, TransformOutcome::Drop { .. }), "{how}");
        ended_at_the_deadline(started, &format!("transform, {how}"));
    }
    assert_eq!(stats(&p, "wasi-calls").timeouts, 6);
    // Reading stdin is not blocking: it is empty, and the call answers.
    assert!(p.authorize(&c, Action::Publish, "stdin/1", QoS::AtMostOnce, false).await.allowed);
    // And the plugin still answers once its stuck instances are gone.
    assert!(p.authorize(&c, Action::Publish, "good/1", QoS::AtMostOnce, false).await.allowed);
    assert!(matches!(p.authenticate(&c, &login("good")).await, AuthnOutcome::Allow(_)));
}

#[tokio::test]
async fn an_init_that_blocks_is_refused_at_its_deadline_naming_the_plugin() {
    // Compiled once first, so the time below is the init's alone.
    load(&[("warm", "wasi-calls", "")]).expect("loads");
    for how in ["sleep", "poll"] {
        let started = Instant::now();
        let err = load(&[("stuck", "wasi-calls", &format!("[config]\ninit = \"{how}\"\n{}", sidecar()))])
            .expect_err("a stuck init must not load");
        let took = started.elapsed();
        // `init` gets at least one second.
        assert!(took < Duration::from_secs(4), "{how}: refusing took {took:?}");
        let text = err.to_string();
        assert!(text.contains("stuck.wasm") && text.contains("deadline exceeded"), "{how}: {text}");
    }
}

#[tokio::test]
async fn printing_never_fails_a_call() {
    let p = policy(&[("printer", "wasi-calls", "[config]\ninit = \"print\"\n")]);
    let c = client(Some("u"));
    assert!(p.authorize(&c, Action::Publish, "print/1", QoS::AtMostOnce, false).await.allowed);
    assert!(matches!(p.authenticate(&c, &login("print")).await, AuthnOutcome::Allow(_)));
    let message = PluginMessage::new(TopicName::new("print/x").expect("valid"), Bytes::new(), QoS::AtMostOnce, false);
    assert_eq!(p.transform(&c, &message).await, TransformOutcome::Pass);
    let s = stats(&p, "printer");
    assert_eq!((s.traps, s.denials), (0, 0), "{s:?}");
    // Two lines from init and two from each of the three calls.
    assert_eq!((s.output_lines, s.output_dropped), (8, 0));
}

/// Clients whose CONNECT never reaches a stuck authenticator connect as
/// fast as without it, while that plugin's clients pile up: here `alice`
/// is decided by the allow-list ahead of it, and the anonymous `sleep-N`
/// clients reach the blocking guest, which sleeps until its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_authenticator_delays_only_the_clients_that_reach_it() {
    let plugins = [
        ("a-allow", "allow-list", "order = 1\n[config]\nusers = [\"alice\"]\n"),
        ("b-blocking", "wasi-calls", "order = 2\n[limits]\ntimeout_ms = 1500\n"),
    ];
    let dir = stage(&plugins);
    let path = dir.path().to_owned();
    let broker = TestBroker::with(|c| {
        c.plugins.dir = Some(path);
        c.listeners[0].allow_anonymous = Anonymous::Always;
    })
    .await;
    // More stuck CONNECTs than runtime workers, and as many as the
    // blocking plugin's permits (one per core) allow at once, twice over
    // on this 2-core machine.
    let mut stuck = Vec::new();
    for i in 0..4 {
        let mut raw = broker.raw().await;
        raw.send(&crate::harness::connect_v5(&format!("sleep-{i}"))).await;
        stuck.push(raw);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let alice = broker.v5_with("alice-client", |o| {
        o.set_credentials("alice", "any");
    });
    let _alice = alice.await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1000), "alice waited {took:?} behind the stuck authenticator");
    // The stuck ones are refused at their deadline, not admitted (two
    // rounds of 1.5 s behind the plugin's permits at most).
    for mut raw in stuck {
        let answer = raw.read_to_close().await;
        assert_eq!(answer.get(..4), Some(&[0x20, 3, 0, 0x87][..]), "{answer:?}");
    }
}

/// A subscriber whose authorization sleeps waits for its own answer; the
/// runtime's workers keep serving everyone else meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_authorizer_holds_no_runtime_worker() {
    let dir = stage(&[("wasi-calls", "wasi-calls", "[limits]\ntimeout_ms = 3000\n")]);
    let path = dir.path().to_owned();
    let broker = TestBroker::with(|c| c.plugins.dir = Some(path)).await;
    // Four subscribers (twice the workers) whose SUBSCRIBE sleeps 3 s.
    let mut sleepers = Vec::new();
    for i in 0..4 {
        let sleeper = broker.v5(&format!("sleeper-{i}")).await;
        sleeper.client.subscribe("sleep/#", Q5::AtMostOnce).await.expect("subscribe");
        sleepers.push(sleeper);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let mut sub = broker.v5("sub").await;
    sub.subscribe("fine/#", Q5::AtMostOnce).await;
    let publisher = broker.v5("pub").await;
    publisher.client.publish("fine/1", Q5::AtMostOnce, false, "ok").await.expect("publish");
    assert_eq!(sub.publish().await.payload, Bytes::from("ok"));
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "the round trip took {took:?} beside the sleepers");
    for mut sleeper in sleepers {
        let suback = sleeper.suback().await;
        assert_eq!(suback.return_codes, [SubscribeReasonCode::NotAuthorized], "a timed-out authorizer denies");
    }
}

/// A guest's panic is reported as the guest's panic, by `moat plugin
/// check` and in the broker's log alike: its message, one line, no host
/// panic and no backtrace (even with `RUST_BACKTRACE=1`); a guest's
/// `println!` reaches the log tagged with the plugin and the hook.
#[test]
fn a_guest_panic_and_guest_output_reach_the_log_as_the_guests_words() {
    use std::process::Stdio;

    use crate::cli::{free_port, moat, stderr_lines};

    let dir = tempfile::tempdir().expect("tempdir");
    let vectors = dir.path().join("vectors.toml");
    std::fs::write(
        &vectors,
        "[[vector]]\nhook = \"authorize\"\naction = \"publish\"\ntopic = \"evil/1\"\nexpect = \"fail\"\n",
    )
    .expect("vectors");
    let out = moat()
        .args(["plugin", "check"])
        .arg(crate::plugin_support::built().wasm("panic"))
        .arg("--vectors")
        .arg(&vectors)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run moat plugin check");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("panicked at") && stdout.contains("hostile guest panics on purpose"), "{stdout}");
    for text in [&stdout, &stderr] {
        assert!(!text.contains("backtrace") && !text.contains("host function panicked"), "{text}");
    }

    let plugins = crate::plugin_support::stage(&[("boom", "panic", ""), ("printer", "wasi-calls", "")]);
    let port = free_port();
    let config = dir.path().join("moat.toml");
    let plugin_dir = plugins.path().to_str().expect("utf-8 path");
    std::fs::write(&config, format!("[[listeners]]\nbind = \"127.0.0.1:{port}\"\n\n[plugins]\ndir = {plugin_dir:?}\n"))
        .expect("config");
    let mut child = Killed(
        moat()
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "1")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start moat"),
    );
    let lines = stderr_lines(&mut child.0);
    let mut seen = Vec::new();
    until(&lines, &["listening"], &mut seen);
    // A worker of its own, so the clients keep talking while this thread
    // waits for log lines.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let opts = rumqttc::v5::MqttOptions::new("guest-words", "127.0.0.1", port);
        let mut client = crate::harness::V5::connect(opts).await;
        // Authorization stops at `boom`, which allows it; every transform
        // runs, and the printer's prints.
        client.client.publish("print/x", Q5::AtMostOnce, false, "hi").await.expect("publish");
        until(&lines, &["hello from the guest's stdout", "printer", "transform"], &mut seen);
        let refused = client.subscribe("evil/x", Q5::AtMostOnce).await;
        assert_eq!(refused.return_codes, [SubscribeReasonCode::NotAuthorized]);
        until(&lines, &["plugin call failed", "boom", "authorize", "hostile guest panics on purpose"], &mut seen);
    });
    drop(child);
    seen.extend(lines.try_iter());
    let bad = seen.iter().find(|l| l.contains("backtrace") || l.contains("host function panicked"));
    assert!(bad.is_none(), "{bad:?}");
}

/// A broker process, killed when the test ends, passed or not.
pub(crate) struct Killed(pub(crate) std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded) for a line holding all of `parts`, keeping every line
/// read in `seen`.
pub(crate) fn until(lines: &std::sync::mpsc::Receiver<String>, parts: &[&str], seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).unwrap_or_else(|_| panic!("no log line with {parts:?} in {seen:#?}"));
        let found = parts.iter().all(|p| line.contains(p));
        seen.push(line);
        if found {
            return;
        }
    }
}

/// The socket interfaces are linked (CPython's standard library imports
/// them) but give a plugin no network: a connection to a listening port on
/// this machine is refused inside the guest and never reaches the port.
#[tokio::test]
async fn every_socket_a_plugin_opens_is_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let port = listener.local_addr().expect("address").port();
    let set = load(&[("dialer", "wasi-calls", "")]).expect("a plugin importing wasi:sockets loads");
    let vectors = moat::plugin::vectors::Vectors::parse(&format!(
        "[[vector]]\nhook = \"authorize\"\naction = \"publish\"\ntopic = \"dial/{port}\"\nexpect = \"deny\"\n"
    ))
    .expect("vectors");
    let result = &vectors.run(&set.plugins()[0])[0];
    assert!(result.passed(), "{result:?}");
    assert!(result.observed.contains("could not connect"), "{}", result.observed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let accepted = listener.accept();
    assert!(matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock), "{accepted:?}");
}
