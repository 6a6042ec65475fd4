//! Chain semantics through `Policy` with well-behaved fixture plugins.

use std::time::{Duration, Instant};

use bytes::Bytes;
use moat::auth::{Action, AuthnOutcome, AuthzCache, PluginMessage, Policy, TransformOutcome};
use moat::codec::{QoS, TopicName};
use moat::plugin::LoadError;

use crate::plugin_support::{client, load, login, policy, stats};

const ALLOW_ALICE: &str = "[config]\nusers = [\"alice\"]\n";

#[tokio::test]
async fn allow_list_allows_listed_users_and_denies_others() {
    let p = policy(&[("allow-list", "allow-list", ALLOW_ALICE)]);
    let c = client(None);
    match p.authenticate(&c, &login("alice")).await {
        AuthnOutcome::Allow(grant) => {
            assert_eq!(&*grant.plugin, "allow-list");
            assert_eq!(grant.attributes, vec![("role".to_owned(), "listed".to_owned())]);
        }
        other => panic!("alice should be allowed, got {other:?}"),
    }
    assert!(matches!(p.authenticate(&c, &login("mallory")).await, AuthnOutcome::Deny { .. }));
    assert_eq!(p.authenticate(&c, &Default::default()).await, AuthnOutcome::NoDecision);
    assert_eq!(stats(&p, "allow-list").denials, 1);
}

#[tokio::test]
async fn no_plugins_means_no_opinion_allow_and_no_transform() {
    let p = Policy::none();
    let c = client(Some("u"));
    assert_eq!(p.authenticate(&c, &login("u")).await, AuthnOutcome::NoDecision);
    assert!(p.authorize(&c, Action::Publish, "any/topic", QoS::AtMostOnce, false).await.allowed);
    assert!(!p.wants_transform("any/topic"));
    // An authn-only set still authorizes everything: nobody implements authz.
    let p = policy(&[("allow-list", "allow-list", ALLOW_ALICE)]);
    assert!(p.authorize(&c, Action::Subscribe, "x/#", QoS::AtLeastOnce, false).await.allowed);
}

#[tokio::test]
async fn prefix_authorizer_substitutes_the_user_and_all_ignore_denies() {
    let p = policy(&[("topic-prefix", "topic-prefix", "[config]\nprefix = \"users/%u/\"\n")]);
    let alice = client(Some("alice"));
    let verdict = p.authorize(&alice, Action::Publish, "users/alice/temp", QoS::AtLeastOnce, false).await;
    assert!(verdict.allowed);
    assert_eq!(verdict.cache_ttl, Some(Duration::from_secs(60)));
    assert!(!p.authorize(&alice, Action::Publish, "users/bob/temp", QoS::AtMostOnce, false).await.allowed);
    assert!(!p.authorize(&client(None), Action::Subscribe, "users//x", QoS::AtMostOnce, false).await.allowed);
}

#[tokio::test]
async fn first_decision_wins_in_configured_order() {
    let first = "order = 1\n[config]\nprefix = \"a/\"\ndeny_prefix = \"b/\"\n";
    let second = "order = 2\n[config]\nprefix = \"b/\"\n";
    let p = policy(&[("z-first", "topic-prefix", first), ("a-second", "topic-prefix", second)]);
    let c = client(Some("u"));
    let ask = async |topic| p.authorize(&c, Action::Publish, topic, QoS::AtMostOnce, false).await.allowed;
    assert!(!ask("b/1").await, "the earlier plugin's deny wins over the later allow");
    assert_eq!(stats(&p, "a-second").calls, 0, "a decided chain asks no further");
    assert!(ask("a/1").await);
    assert!(!ask("c/1").await, "every plugin ignored: deny");
    assert_eq!(stats(&p, "a-second").calls, 1);

    // Same plugins, order swapped: now the allow comes first.
    let p = policy(&[
        ("z-first", "topic-prefix", &first.replace("order = 1", "order = 3")),
        ("a-second", "topic-prefix", second),
    ]);
    assert!(p.authorize(&c, Action::Publish, "b/1", QoS::AtMostOnce, false).await.allowed);

    // Without `order`, file names decide.
    let p = policy(&[
        ("b", "topic-prefix", "[config]\nprefix = \"x/\"\n"),
        ("a", "topic-prefix", "[config]\ndeny_prefix = \"x/\"\n"),
    ]);
    assert!(!p.authorize(&c, Action::Publish, "x/1", QoS::AtMostOnce, false).await.allowed);
}

#[tokio::test]
async fn transform_runs_only_on_declared_filters() {
    let p = policy(&[("payload-upper", "payload-upper", "[config]\nfilters = [\"upper/#\", \"+/shout\"]\n")]);
    assert!(p.wants_transform("upper/a/b"));
    assert!(p.wants_transform("room/shout"));
    assert!(!p.wants_transform("lower/a"));
    let topic = TopicName::new("upper/x").expect("valid topic");
    let message = PluginMessage::new(topic, Bytes::from_static(b"hello, world"), QoS::AtLeastOnce, true);
    match p.transform(&client(Some("u")), &message).await {
        TransformOutcome::Replace(m) => {
            assert_eq!(&m.payload[..], b"HELLO, WORLD");
            assert_eq!(m.topic.as_str(), "upper/x");
            assert_eq!(m.qos, QoS::AtLeastOnce);
            assert!(m.retain);
            assert_eq!(m.user_properties, vec![("transformed-by".to_owned(), "payload-upper".to_owned())]);
        }
        other => panic!("expected a replacement, got {other:?}"),
    }
    let other = PluginMessage::new(TopicName::new("lower/x").expect("valid"), Bytes::new(), QoS::AtMostOnce, false);
    assert_eq!(p.transform(&client(None), &other).await, TransformOutcome::Pass);
    assert_eq!(stats(&p, "payload-upper").calls, 1, "the undeclared topic never entered wasm");
}

#[tokio::test]
async fn cache_honours_ttl_and_policy_generation() {
    let set = load(&[("topic-prefix", "topic-prefix", "[config]\nprefix = \"a/\"\ncache_ms = 50\n")]).expect("loads");
    let p = Policy::new(set.clone());
    let c = client(Some("u"));
    let mut cache = AuthzCache::new(16);
    let t0 = Instant::now();
    let calls = |p: &Policy| stats(p, "topic-prefix").calls;
    assert!(cache.check_at(t0, &p, &c, Action::Publish, "a/1", QoS::AtMostOnce, false).await);
    assert!(
        cache.check_at(t0 + Duration::from_millis(40), &p, &c, Action::Publish, "a/1", QoS::AtMostOnce, false).await
    );
    assert_eq!(calls(&p), 1, "second check answered from the cache");
    assert!(
        cache.check_at(t0 + Duration::from_millis(60), &p, &c, Action::Publish, "a/1", QoS::AtMostOnce, false).await
    );
    assert_eq!(calls(&p), 2, "expired entry asked again");
    // Denials carry no lifetime: never cached.
    assert!(!cache.check_at(t0, &p, &c, Action::Publish, "b/1", QoS::AtMostOnce, false).await);
    assert!(!cache.check_at(t0, &p, &c, Action::Publish, "b/1", QoS::AtMostOnce, false).await);
    assert_eq!(calls(&p), 4);
    // A new policy (a reload) empties the cache on the next check.
    let reloaded = Policy::new(set);
    assert_ne!(reloaded.generation(), p.generation());
    assert!(
        cache
            .check_at(t0 + Duration::from_millis(61), &reloaded, &c, Action::Publish, "a/1", QoS::AtMostOnce, false)
            .await
    );
    assert_eq!(calls(&reloaded), 5, "the reloaded policy was asked");
    assert_eq!(cache.len(), 1);
}

#[tokio::test]
async fn cache_is_bounded() {
    let p = policy(&[("topic-prefix", "topic-prefix", "[config]\nprefix = \"\"\n")]);
    let c = client(Some("u"));
    let mut cache = AuthzCache::new(4);
    for i in 0..10 {
        assert!(cache.check(&p, &c, Action::Subscribe, &format!("t/{i}"), QoS::AtMostOnce, false).await);
    }
    assert_eq!(cache.len(), 4);
}

#[test]
fn sidecar_and_init_errors_name_the_file() {
    let err = load(&[("allow-list", "allow-list", "order = 1\norder_by = \"name\"\n")]).expect_err("unknown key");
    let text = err.to_string();
    assert!(matches!(err, LoadError::Sidecar { .. }), "{text}");
    assert!(text.contains("allow-list.toml") && text.contains("line 2"), "{text}");

    let err = load(&[("allow-list", "allow-list", "[config]\nusers = 5\n")]).expect_err("init refuses");
    let text = err.to_string();
    assert!(matches!(err, LoadError::Init { .. }), "{text}");
    assert!(text.contains("allow-list.wasm") && text.contains("users"), "{text}");
}

/// A refusal carries who decided and why, which the connection logs: a
/// plugin's `deny` with its reason, a failed call with its failure, or no
/// plugin at all when every one ignored the question.
#[tokio::test]
async fn a_refusal_says_which_plugin_refused_and_why() {
    use moat::auth::Denial;
    let p = policy(&[
        ("gate", "topic-prefix", "order = 1\n[config]\nprefix = \"ok/\"\ndeny_prefix = \"no/\"\n"),
        ("boom", "panic", "order = 2\n"),
    ]);
    let c = client(Some("alice"));
    let ask = |topic: &'static str| p.authorize(&c, Action::Publish, topic, QoS::AtMostOnce, false);
    let allowed = ask("ok/1").await;
    assert!(allowed.allowed && allowed.denial.is_none());
    let denied = ask("no/1").await;
    assert!(!denied.allowed && denied.cache_ttl.is_none());
    assert_eq!(
        denied.denial.as_deref(),
        Some(&Denial::Denied { plugin: "gate".into(), reason: "no/1 is under no/".into() })
    );
    match ask("evil/1").await.denial.as_deref() {
        Some(Denial::Failed { plugin, failure }) => {
            assert_eq!((&**plugin, failure.kind()), ("boom", "trap"), "{failure}");
        }
        other => panic!("a failed call, not {other:?}"),
    }
    let only_gate = policy(&[("gate", "topic-prefix", "[config]\nprefix = \"ok/\"\n")]);
    let unanswered = only_gate.authorize(&c, Action::Publish, "x/1", QoS::AtMostOnce, false).await;
    assert_eq!(unanswered.denial.as_deref(), Some(&Denial::Unanswered));
}
