//! Hostile guests: refused at load, or failing closed at call time with
//! the next call served by a fresh instance.

use std::time::{Duration, Instant};

use bytes::Bytes;
use moat::auth::{Action, AuthnOutcome, PluginMessage, Policy, TransformOutcome};
use moat::codec::{QoS, TopicName};
use moat::plugin::LoadError;

use crate::plugin_support::{client, load, login, policy, stats};

#[test]
fn forbidden_import_is_refused_naming_the_import() {
    let err = load(&[("forbidden-import", "forbidden-import", "")]).expect_err("must not load");
    let text = err.to_string();
    match &err {
        LoadError::ForbiddenImport { import, .. } => {
            assert!(import.starts_with("wasi:http/"), "{text}")
        }
        other => panic!("expected a forbidden import, got {other}"),
    }
    assert!(text.contains("forbidden-import.wasm"), "{text}");
}

#[tokio::test]
async fn wrong_contract_version_is_refused_naming_the_version() {
    let err = load(&[("wrong-version", "wrong-version", "")]).expect_err("must not load");
    let text = err.to_string();
    assert!(matches!(&err, LoadError::Version { found, .. } if found == "1.0.0"), "{text}");
    assert!(text.contains("moat:plugin@1.0.0") && text.contains("moat:plugin@0.1.0"), "{text}");
}

/// Asks every hook to misbehave once, checks each fails closed, and checks
/// the plugin then answers normally again.
async fn fails_closed_and_recovers(p: &Policy, name: &str) {
    let before = stats(p, name);
    let c = client(Some("u"));
    let started = Instant::now();
    assert!(!p.authorize(&c, Action::Publish, "evil/1", QoS::AtMostOnce, false).await.allowed);
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "{name}: the failing call took {elapsed:?}");
    assert!(p.authorize(&c, Action::Publish, "good/1", QoS::AtMostOnce, false).await.allowed, "{name}: recovered");
    assert!(matches!(p.authenticate(&c, &login("evil")).await, AuthnOutcome::Deny { .. }), "{name}");
    assert!(matches!(p.authenticate(&c, &login("good")).await, AuthnOutcome::Allow(_)), "{name}");
    let evil = PluginMessage::new(TopicName::new("evil/x").expect("valid"), Bytes::new(), QoS::AtMostOnce, false);
    assert!(matches!(p.transform(&c, &evil).await, TransformOutcome::Drop { .. }), "{name}: on_error defaults to drop");
    let good = PluginMessage::new(TopicName::new("good/x").expect("valid"), Bytes::new(), QoS::AtMostOnce, false);
    assert_eq!(p.transform(&c, &good).await, TransformOutcome::Pass, "{name}");
    let after = stats(p, name);
    assert_eq!(after.calls - before.calls, 6, "{name}: {after:?}");
    assert_eq!(after.denials - before.denials, 2, "{name}: {after:?}");
}

#[tokio::test]
async fn infinite_loop_times_out_at_the_deadline() {
    // 100 ms rather than the 10 ms default, so that the well-behaved calls
    // in between are not cut short on a loaded machine; the default deadline
    // is shown by `default_deadline_is_about_10_ms`.
    let p = policy(&[("infinite-loop", "infinite-loop", "[limits]\ntimeout_ms = 100\n")]);
    let started = Instant::now();
    assert!(!p.authorize(&client(None), Action::Subscribe, "evil/#", QoS::AtMostOnce, false).await.allowed);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(99) && elapsed < Duration::from_millis(1000), "took {elapsed:?}");
    fails_closed_and_recovers(&p, "infinite-loop").await;
    assert_eq!(stats(&p, "infinite-loop").timeouts, 4);
}

#[tokio::test]
async fn default_deadline_is_about_10_ms() {
    let p = policy(&[("infinite-loop", "infinite-loop", "[limits]\ninstances = 1\n")]);
    let started = Instant::now();
    assert!(!p.authorize(&client(None), Action::Publish, "evil/1", QoS::AtMostOnce, false).await.allowed);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(10) && elapsed < Duration::from_millis(300), "took {elapsed:?}");
    assert_eq!(stats(&p, "infinite-loop").timeouts, 1);
}

#[tokio::test]
async fn memory_bomb_hits_the_cap() {
    // A generous deadline: filling 16 MiB must end at the cap, not the clock.
    let p = policy(&[("memory-bomb", "memory-bomb", "[limits]\nmemory_mb = 16\ntimeout_ms = 2000\n")]);
    fails_closed_and_recovers(&p, "memory-bomb").await;
    let s = stats(&p, "memory-bomb");
    assert_eq!(s.out_of_memory, 3, "{s:?}");
}

#[tokio::test]
async fn panic_traps_and_the_instance_is_replaced() {
    let p = policy(&[("panic", "panic", "")]);
    fails_closed_and_recovers(&p, "panic").await;
    assert_eq!(stats(&p, "panic").traps, 3);
}

#[tokio::test]
async fn huge_answer_is_refused() {
    let p = policy(&[("huge-answer", "huge-answer", "")]);
    fails_closed_and_recovers(&p, "huge-answer").await;
    let s = stats(&p, "huge-answer");
    assert_eq!(s.bad_answers, 3, "{s:?}");
}

#[tokio::test]
async fn transform_failure_can_pass_instead() {
    let p = policy(&[("panic", "panic", "on_error = \"pass\"\n")]);
    let evil = PluginMessage::new(TopicName::new("evil/x").expect("valid"), Bytes::new(), QoS::AtMostOnce, false);
    assert_eq!(p.transform(&client(None), &evil).await, TransformOutcome::Pass);
    assert_eq!(stats(&p, "panic").traps, 1);
}
