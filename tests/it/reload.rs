//! Hot reload under load: a plugin is replaced ten times (four of them with
//! broken files) while QoS 1 publishers and subscribers run, and the
//! configuration is reloaded with an invalid and then a valid file.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use moat::config::{Config, ConfigError};
use moat::reload::{ConfigSource, PluginReport};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, PubAckReason, SubscribeReasonCode};
use tokio::sync::watch;

use crate::harness::{TestBroker, V4, V5, WAIT};
use crate::plugin_support::{built, stage};

/// The authorizer's sidecar: everything allowed except topics under
/// `deny`/. The long deadline is the test one of [`stage`].
fn sidecar(deny: &str) -> String {
    format!("[config]\nprefix = \"\"\ndeny_prefix = \"{deny}/\"\n\n[limits]\ntimeout_ms = 1000\n")
}

/// How long a test waits for a plugin reload to finish.
const RELOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(90);

/// Replaces `dir/name` in one step (write aside, then rename), as a careful
/// operator or a deployment tool does.
fn replace(dir: &Path, name: &str, bytes: &[u8]) {
    let aside = dir.join(format!(".{name}.tmp"));
    std::fs::write(&aside, bytes).expect("write");
    std::fs::rename(&aside, dir.join(name)).expect("rename");
}

/// Waits for the next reload report that `wanted` accepts (skipping others,
/// such as a reload that saw only one of two files written), bounded in
/// time.
async fn next_report(
    reports: &mut watch::Receiver<Option<PluginReport>>,
    wanted: impl Fn(&PluginReport) -> bool,
) -> PluginReport {
    // Generous: a component not compiled before (the broken ones) takes
    // seconds to compile in an unoptimised test build on a busy machine.
    let deadline = tokio::time::Instant::now() + RELOAD_WAIT;
    loop {
        tokio::time::timeout_at(deadline, reports.changed())
            .await
            .expect("a plugin reload in time")
            .expect("broker alive");
        if let Some(report) = reports.borrow_and_update().clone()
            && wanted(&report)
        {
            return report;
        }
    }
}

/// Publishes at QoS 1 and returns the PUBACK reason, with "no matching
/// subscribers" (also a success) as `Success`.
pub(crate) async fn publish(client: &mut V5, topic: &str) -> PubAckReason {
    client.client.publish(topic, Q5::AtLeastOnce, false, "x").await.expect("publish");
    loop {
        match client.next().await {
            Some(V5Packet::PubAck(ack)) if ack.reason == PubAckReason::NoMatchingSubscribers => {
                return PubAckReason::Success;
            }
            Some(V5Packet::PubAck(ack)) => return ack.reason,
            Some(_) => {}
            None => panic!("{topic}: connection lost"),
        }
    }
}

/// Publishes 1, 2, 3... at QoS 1 on `topic`, one at a time, until told to
/// stop, then `end`. Returns the last sequence number acknowledged.
async fn publisher(mut client: V4, topic: String, stop: watch::Receiver<bool>) -> u32 {
    let mut acked = 0u32;
    let mut last = false;
    loop {
        last = last || *stop.borrow();
        let payload = if last { "end".to_owned() } else { (acked + 1).to_string() };
        client.client.publish(&topic, rumqttc::QoS::AtLeastOnce, false, payload).await.expect("publish");
        loop {
            match client.next().await {
                Some(rumqttc::Packet::PubAck(_)) => break,
                Some(_) => {}
                None => panic!("publisher {topic} lost its connection"),
            }
        }
        if last {
            return acked;
        }
        acked += 1;
    }
}

/// Collects what arrives on `load/#` until `end` came from `publishers`
/// topics; returns the sequence numbers by topic.
async fn subscriber(mut client: V4, publishers: usize) -> HashMap<String, HashSet<u32>> {
    let mut seen: HashMap<String, HashSet<u32>> = HashMap::new();
    let mut ended = 0;
    while ended < publishers {
        let publish = client.publish().await;
        let payload = String::from_utf8_lossy(&publish.payload).into_owned();
        if payload == "end" {
            ended += 1;
        } else {
            let n = payload.parse().expect("sequence number");
            seen.entry(publish.topic.clone()).or_default().insert(n);
        }
    }
    seen
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Good,
    Truncated,
    WrongVersion,
    BadSidecar,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_replaced_ten_times_under_qos1_load() {
    const PUBLISHERS: usize = 2;
    const SUBSCRIBERS: usize = 2;
    let dir = stage(&[("acl", "topic-prefix", &sidecar("deny-init"))]);
    let path = dir.path().to_owned();
    let broker = TestBroker::with(|c| c.plugins.dir = Some(path.clone())).await;
    let mut reports = broker.reloader.plugin_reloads();
    let good_wasm = std::fs::read(built().wasm("topic-prefix")).expect("fixture");

    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut sub = broker.v4(&format!("sub{i}")).await;
        let granted = sub.subscribe("load/#", rumqttc::QoS::AtLeastOnce).await;
        assert_eq!(granted.return_codes, [rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)]);
        subscribers.push(tokio::spawn(subscriber(sub, PUBLISHERS)));
    }
    let (stop, stopped) = watch::channel(false);
    let mut publishers = Vec::new();
    for i in 0..PUBLISHERS {
        let client = broker.v4(&format!("pub{i}")).await;
        publishers.push((format!("load/{i}"), tokio::spawn(publisher(client, format!("load/{i}"), stopped.clone()))));
    }
    let mut checker = broker.v5("checker").await;
    let mut probe = broker.v5("probe").await;
    probe.subscribe("ctl/#", Q5::AtLeastOnce).await;

    use Step::*;
    let steps = [Good, Truncated, Good, WrongVersion, Good, BadSidecar, Good, Good, Truncated, Good];
    let mut denied = "deny-init".to_owned();
    let mut swaps = 0;
    for (i, step) in steps.into_iter().enumerate() {
        reports.borrow_and_update();
        let written = Instant::now();
        match step {
            Good => {
                // The probe subscribes to what the next policy forbids.
                let next = format!("deny{i}");
                let granted = probe.subscribe(&format!("{next}/#"), Q5::AtLeastOnce).await;
                assert_eq!(granted.return_codes, [SubscribeReasonCode::Success(Q5::AtLeastOnce)]);
                replace(&path, "acl.wasm", &good_wasm);
                replace(&path, "acl.toml", sidecar(&next).as_bytes());
                // Only the probe's subscription is forbidden by the new policy.
                let report = next_report(
                    &mut reports,
                    |r| matches!(r, PluginReport::Swapped { subscriptions_removed, .. } if *subscriptions_removed > 0),
                )
                .await;
                eprintln!("step {i}: {step:?} swapped {:?} after {:?}", report, written.elapsed());
                let PluginReport::Swapped { subscriptions_removed, .. } = report else { unreachable!() };
                assert_eq!(subscriptions_removed, 1, "step {i}: the probe's {next}/# is removed");
                assert_eq!(publish(&mut checker, &format!("{next}/t")).await, PubAckReason::NotAuthorized, "step {i}");
                // The previously forbidden prefix is allowed again, but the
                // probe's subscription to it was removed: it gets only the
                // control message published after it.
                assert_eq!(publish(&mut checker, &format!("{denied}/t")).await, PubAckReason::Success, "step {i}");
                assert_eq!(publish(&mut checker, &format!("ctl/{i}")).await, PubAckReason::Success, "step {i}");
                assert_eq!(probe.publish().await.topic, format!("ctl/{i}"), "step {i}: removed subscription is gone");
                denied = next;
                swaps += 1;
            }
            Truncated | WrongVersion | BadSidecar => {
                match step {
                    Truncated => replace(&path, "acl.wasm", &good_wasm[..good_wasm.len() / 2]),
                    WrongVersion => {
                        let hostile = std::fs::read(built().wasm("wrong-version")).expect("fixture");
                        replace(&path, "acl.wasm", &hostile);
                    }
                    _ => replace(&path, "acl.toml", b"[config]\nprefix = \"\"\n\n[limits]\ntimeout_milliseconds = 5\n"),
                }
                let report = next_report(&mut reports, |r| !r.swapped()).await;
                eprintln!("step {i}: {step:?} refused {:?} after {:?}", report, written.elapsed());
                let PluginReport::Refused { reason } = report else { unreachable!() };
                assert!(reason.contains("acl."), "step {i}: the reason names the plugin: {reason}");
                // The old policy keeps serving, never a weaker one.
                assert_eq!(
                    publish(&mut checker, &format!("{denied}/t")).await,
                    PubAckReason::NotAuthorized,
                    "step {i}"
                );
            }
        }
    }
    assert_eq!(swaps, 6);

    stop.send_replace(true);
    let mut acked = HashMap::new();
    for (topic, task) in publishers {
        acked.insert(topic, tokio::time::timeout(WAIT * 2, task).await.expect("publisher ends").expect("publisher"));
    }
    for task in subscribers {
        let seen = tokio::time::timeout(WAIT * 2, task).await.expect("subscriber ends").expect("subscriber");
        for (topic, last) in &acked {
            assert!(*last > 0, "{topic} published during the reloads");
            let got = seen.get(topic).map_or(0, HashSet::len);
            let missing: Vec<u32> = (1..=*last).filter(|n| !seen.get(topic).is_some_and(|s| s.contains(n))).collect();
            assert!(missing.is_empty(), "{topic}: {} PUBACKed messages lost of {last} (got {got})", missing.len());
        }
    }
    // Nobody was disconnected: every client is still counted, and the
    // probe still works.
    assert_eq!(broker.broker.metrics.connections_current(), 6);
    assert_eq!(publish(&mut checker, "ctl/last").await, PubAckReason::Success);
    assert_eq!(probe.publish().await.topic, "ctl/last");
    drop(dir);
}

#[tokio::test]
async fn removing_the_only_plugin_and_adding_it_back_reloads() {
    let dir = stage(&[("acl", "topic-prefix", &sidecar("deny"))]);
    let path = dir.path().to_owned();
    let broker = TestBroker::with(|c| c.plugins.dir = Some(path.clone())).await;
    let mut checker = broker.v5("checker").await;
    assert_eq!(publish(&mut checker, "deny/t").await, PubAckReason::NotAuthorized);

    // Called directly, as SIGHUP or an admin endpoint would.
    std::fs::remove_file(path.join("acl.wasm")).expect("remove");
    let report = broker.reloader.reload_plugins().await;
    assert!(matches!(&report, PluginReport::Swapped { removed, .. } if removed == &["acl"]), "{report:?}");
    assert_eq!(publish(&mut checker, "deny/t").await, PubAckReason::Success);

    std::fs::copy(built().wasm("topic-prefix"), path.join("acl.wasm")).expect("copy");
    let report = broker.reloader.reload_plugins().await;
    assert!(matches!(&report, PluginReport::Swapped { added, .. } if added == &["acl"]), "{report:?}");
    assert_eq!(publish(&mut checker, "deny/t").await, PubAckReason::NotAuthorized);
}

/// The configuration file a test broker reloads from.
struct File(PathBuf);

impl ConfigSource for File {
    fn load(&self) -> Result<Config, ConfigError> {
        Config::load(&self.0)
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.0)
    }
}

#[tokio::test]
async fn config_reload_refuses_an_invalid_file_and_applies_a_valid_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("moat.toml");
    let listener = "[[listeners]]\nname = \"test\"\nbind = \"127.0.0.1:0\"\n\n";
    std::fs::write(&file, format!("{listener}[limits]\nmax_topic_levels = 3\n")).expect("write");
    let loaded = Config::load(&file).expect("valid");
    let broker = TestBroker::with(|c| *c = loaded).await;
    broker.reloader.set_hooks(Some(Arc::new(File(file.clone()))), None);
    let mut client = broker.v5("c").await;
    let deep = "a/b/c/d";
    assert_eq!(client.subscribe(deep, Q5::AtMostOnce).await.return_codes, [SubscribeReasonCode::TopicFilterInvalid]);

    std::fs::write(&file, format!("{listener}[limits]\nmax_topic_levels = 0\n")).expect("write");
    let refused = broker.reloader.reload().await.expect_err("invalid file");
    let expected = format!("{}:6: `limits.max_topic_levels`: must be greater than 0", file.display());
    assert!(refused.0.contains(&expected), "{refused}");
    assert_eq!(broker.broker.config().limits.max_topic_levels, 3, "the running config stays");
    assert_eq!(client.subscribe(deep, Q5::AtMostOnce).await.return_codes, [SubscribeReasonCode::TopicFilterInvalid]);

    let moved = "[[listeners]]\nname = \"test\"\nbind = \"127.0.0.1:1\"\n\n";
    std::fs::write(&file, format!("{moved}[limits]\nmax_topic_levels = 5\n")).expect("write");
    let report = broker.reloader.reload().await.expect("valid file");
    assert_eq!(report.applied, ["limits.max_topic_levels = 5"]);
    assert_eq!(report.needs_restart.len(), 1, "{:?}", report.needs_restart);
    assert!(report.needs_restart[0].contains("bind"), "{:?}", report.needs_restart);
    assert_eq!(
        client.subscribe(deep, Q5::AtMostOnce).await.return_codes,
        [SubscribeReasonCode::Success(Q5::AtMostOnce)]
    );
    // The listener still serves where it was bound.
    broker.v5("after").await;
}

/// The rate limits follow a reload: a connected client's publish rate and
/// the connection rate shared by all listeners.
#[tokio::test]
async fn config_reload_changes_the_rate_limits_in_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("moat.toml");
    let listener = "[[listeners]]\nname = \"test\"\nbind = \"127.0.0.1:0\"\n\n";
    std::fs::write(&file, listener).expect("write");
    let loaded = Config::load(&file).expect("valid");
    let broker = TestBroker::with(|c| *c = loaded).await;
    broker.reloader.set_hooks(Some(Arc::new(File(file.clone()))), None);
    let mut client = broker.v5("rated").await;
    for _ in 0..10 {
        assert_eq!(publish(&mut client, "rate/x").await, PubAckReason::Success, "no limit yet");
    }

    std::fs::write(&file, format!("{listener}[limits]\nmax_publish_rate = 2\nmax_connection_rate = 1\n"))
        .expect("write");
    let report = broker.reloader.reload().await.expect("valid file");
    assert_eq!(report.applied, ["limits.max_connection_rate = 1", "limits.max_publish_rate = 2"]);
    // A full bucket of 2, then refused (refilling at one per 500 ms).
    let mut reasons = Vec::new();
    for _ in 0..6 {
        reasons.push(publish(&mut client, "rate/x").await);
    }
    assert!(reasons.contains(&PubAckReason::QuotaExceeded), "{reasons:?}");
    assert!(reasons[..2].iter().all(|r| *r == PubAckReason::Success), "{reasons:?}");
    // One connection per second now: of a burst of 3, at least one refused.
    let mut burst = Vec::new();
    for _ in 0..3 {
        burst.push(broker.raw().await);
    }
    let mut refused = 0;
    for raw in &mut burst {
        if crate::limits::closed_unread(raw).await {
            refused += 1;
        }
    }
    assert!(refused >= 1, "no connection refused after the reload");
    assert_eq!(broker.broker.metrics.refusals(moat::metrics::Refusal::ConnectionRate), refused);
}

/// `POST /api/reload` on the admin listener reads the file again, like
/// SIGHUP: a shipped plugin's changed `[plugins.NAME]` table is in force
/// for connected clients, and the report names the table without its
/// contents.
#[tokio::test]
async fn admin_reload_applies_a_changed_shipped_plugin_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("moat.toml");
    let config = |topic: &str| {
        format!(
            "[[listeners]]\nname = \"test\"\nbind = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             token = \"{}\"\n\n[plugins.acl.config]\ncache_ms = 0\n[[plugins.acl.config.rules]]\n\
             pattern = \"{topic}/#\"\naccess = \"readwrite\"\n",
            crate::ops::TOKEN
        )
    };
    std::fs::write(&file, config("a")).expect("write");
    let loaded = Config::load(&file).expect("valid");
    let broker = TestBroker::with(|c| *c = loaded).await;
    broker.reloader.set_hooks(Some(Arc::new(File(file.clone()))), None);
    let admin = broker.admin.expect("admin listener");
    let mut client = broker.v5("c").await;
    assert_eq!(publish(&mut client, "a/1").await, PubAckReason::Success);
    assert_eq!(publish(&mut client, "b/1").await, PubAckReason::NotAuthorized);

    std::fs::write(&file, config("b")).expect("write");
    let (status, body) = crate::ops::http(admin, "POST", "/api/reload", Some(crate::ops::TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(report["applied"], serde_json::json!(["plugins.acl changed"]), "{body}");
    assert_eq!(report["plugins"]["swapped"], true, "{body}");
    assert_eq!(publish(&mut client, "b/1").await, PubAckReason::Success);
    assert_eq!(publish(&mut client, "a/1").await, PubAckReason::NotAuthorized);

    let (status, _) = crate::ops::http(admin, "POST", "/api/reload", None).await;
    assert_eq!(status, 401, "reload needs the token");
}

/// The compiled-component files in `dir`.
fn cache_entries(dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir).expect("cache dir exists");
    entries.map(|e| e.expect("entry").path()).filter(|p| p.extension().is_some_and(|x| x == "cwasm")).collect()
}

#[tokio::test]
async fn a_restart_takes_compiled_plugins_from_the_disk_cache() {
    let dir = stage(&[("acl", "topic-prefix", &sidecar("deny"))]);
    let cache = tempfile::tempdir().expect("tempdir");
    let cache_dir = cache.path().join("compiled");
    let tweak = |c: &mut Config| {
        c.plugins.dir = Some(dir.path().to_owned());
        c.plugins.cache_dir = Some(cache_dir.clone());
    };

    // First start: compiled, and kept.
    let broker = TestBroker::with(tweak).await;
    let counts = broker.reloader.plugin_compile_counts().expect("plugins loaded");
    assert_eq!((counts.compiled, counts.disk), (1, 0), "{counts:?}");
    let entries = cache_entries(&cache_dir);
    assert_eq!(entries.len(), 1, "{entries:?}");
    broker.stop().await;

    // A restart (a new engine) compiles nothing, and the policy is in force.
    let broker = TestBroker::with(tweak).await;
    let counts = broker.reloader.plugin_compile_counts().expect("plugins loaded");
    assert_eq!((counts.compiled, counts.disk), (0, 1), "{counts:?}");
    let mut checker = broker.v5("checker").await;
    assert_eq!(publish(&mut checker, "deny/t").await, PubAckReason::NotAuthorized);
    assert_eq!(publish(&mut checker, "open/t").await, PubAckReason::Success);
    // Neither does a reload of the unchanged plugin.
    let report = broker.reloader.reload_plugins().await;
    assert!(matches!(report, PluginReport::Swapped { compiled: 0, .. }), "{report:?}");
    broker.stop().await;

    // A damaged entry is not trusted: the plugin is compiled again, works,
    // and the entry is written anew.
    let mut bytes = std::fs::read(&entries[0]).expect("entry");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entries[0], &bytes).expect("damage the entry");
    let broker = TestBroker::with(tweak).await;
    let counts = broker.reloader.plugin_compile_counts().expect("plugins loaded");
    assert_eq!((counts.compiled, counts.disk), (1, 0), "{counts:?}");
    let mut checker = broker.v5("checker").await;
    assert_eq!(publish(&mut checker, "deny/t").await, PubAckReason::NotAuthorized);
    assert_ne!(std::fs::read(&entries[0]).expect("entry rewritten"), bytes);
    broker.stop().await;
}
