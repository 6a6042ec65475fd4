//! The shipped `acl` plugin in the broker: inline rules per user, client id
//! and pattern, deny rules, retained messages and wills to topics a client
//! may not use, and user names / client ids built to widen a pattern.

use std::path::PathBuf;

use bytes::Bytes;
use moat::config::Config;
use moat::plugin::fixtures::StagedDir;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet as V5Packet, PubAckReason, SubscribeReasonCode};

use crate::harness::{TestBroker, V5};
use crate::plugin_support::stage;

/// Stages `(name, fixture, sidecar)` plugins and starts a broker on them.
/// Its listener trusts claimed user names (`trust_claimed_username`), so
/// these tests speak about the rules and not about who verified a name
/// (`claimed_names.rs` does).
pub async fn broker_with(plugins: &[(&str, &str, &str)], tweak: impl FnOnce(&mut Config)) -> (TestBroker, StagedDir) {
    let dir = stage(plugins);
    let path: PathBuf = dir.path().to_owned();
    let broker = TestBroker::with(|c| {
        c.plugins.dir = Some(path);
        c.listeners[0].trust_claimed_username = true;
        tweak(c);
    })
    .await;
    (broker, dir)
}

/// A v5 client logged in as `user` (no authenticator: the loopback
/// listener admits it and trusts the name it claims).
pub async fn as_user(broker: &TestBroker, id: &str, user: &str) -> V5 {
    broker
        .v5_with(id, |o| {
            o.set_credentials(user, "");
        })
        .await
}

/// Publishes at QoS 1 and returns the PUBACK's reason.
pub async fn publish_qos1(client: &mut V5, topic: &str, retain: bool) -> PubAckReason {
    client.client.publish(topic, Q5::AtLeastOnce, retain, "m").await.expect("publish");
    loop {
        match client.next().await {
            Some(V5Packet::PubAck(ack)) => return ack.reason,
            Some(_) => {}
            None => panic!("closed while waiting for PUBACK"),
        }
    }
}

/// Whether the broker granted a subscription to `filter`.
pub async fn granted(client: &mut V5, filter: &str) -> bool {
    match client.subscribe(filter, Q5::AtLeastOnce).await.return_codes[..] {
        [SubscribeReasonCode::Success(_)] => true,
        [SubscribeReasonCode::NotAuthorized] => false,
        ref other => panic!("unexpected SUBACK {other:?} for {filter}"),
    }
}

const SIDECAR: &str = r##"
[config]
[[config.rules]]
user = "root"
access = "readwrite"
topic = "#"

[[config.rules]]
user = "alice"
access = "readwrite"
topic = "sensors/#"

[[config.rules]]
user = "alice"
access = "deny"
topic = "sensors/secret"

[[config.rules]]
user = "bob"
access = "read"
topic = "sensors/+/temp"

[[config.rules]]
pattern = "devices/%c/#"
access = "readwrite"

[[config.rules]]
pattern = "users/%u/#"
access = "readwrite"
"##;

async fn acl_broker() -> (TestBroker, StagedDir) {
    broker_with(&[("acl", "acl", SIDECAR)], |_| {}).await
}

#[tokio::test]
async fn acl_grants_per_user_client_id_and_pattern() {
    let (broker, _dir) = acl_broker().await;
    let mut alice = as_user(&broker, "alice-1", "alice").await;
    let mut bob = as_user(&broker, "bob-1", "bob").await;
    assert!(granted(&mut alice, "sensors/#").await);
    assert!(granted(&mut bob, "sensors/+/temp").await);
    assert!(!granted(&mut bob, "sensors/#").await, "bob's read rule does not cover sensors/#");
    assert!(!granted(&mut bob, "$share/g/sensors/#").await, "nor as a shared subscription");
    assert_eq!(publish_qos1(&mut bob, "sensors/kitchen/temp", false).await, PubAckReason::NotAuthorized);
    assert_eq!(publish_qos1(&mut alice, "sensors/kitchen/temp", false).await, PubAckReason::Success);
    assert_eq!(bob.publish().await.topic, Bytes::from("sensors/kitchen/temp"));

    let mut device = broker.v5("dev-1").await;
    assert!(granted(&mut device, "devices/dev-1/#").await);
    assert!(!granted(&mut device, "devices/dev-2/#").await);
    assert!(!granted(&mut device, "users/alice/#").await, "%u needs a user name");
    assert!(granted(&mut alice, "users/alice/inbox").await);
    assert!(!granted(&mut alice, "users/bob/inbox").await);
}

#[tokio::test]
async fn acl_deny_rule_hides_a_topic_from_a_granted_wildcard() {
    let (broker, _dir) = acl_broker().await;
    let mut alice = as_user(&broker, "alice-1", "alice").await;
    assert!(granted(&mut alice, "sensors/#").await);
    assert!(!granted(&mut alice, "sensors/secret").await);
    let mut root = as_user(&broker, "root-1", "root").await;
    publish_qos1(&mut root, "sensors/secret", false).await;
    publish_qos1(&mut root, "sensors/open", false).await;
    assert_eq!(alice.publish().await.topic, Bytes::from("sensors/open"));
    alice.no_publish().await;
    assert_eq!(publish_qos1(&mut alice, "sensors/secret", false).await, PubAckReason::NotAuthorized);
}

#[tokio::test]
async fn acl_names_built_to_widen_a_pattern_get_nothing() {
    let (broker, _dir) = acl_broker().await;
    let mut root = as_user(&broker, "root-1", "root").await;
    for (i, evil) in ["#", "+", "a/#", "%u"].into_iter().enumerate() {
        let mut by_name = as_user(&broker, &format!("evil-user-{i}"), evil).await;
        for filter in ["users/#", "users/+/inbox", "users/alice/#", "users/a/#"] {
            assert!(!granted(&mut by_name, filter).await, "user {evil:?} subscribing {filter}");
        }
        assert_eq!(publish_qos1(&mut by_name, "users/alice/inbox", false).await, PubAckReason::NotAuthorized);
        let mut by_id = broker.v5(evil).await;
        for filter in ["devices/#", "devices/+/x", "devices/dev-1/#", "devices/a/#"] {
            assert!(!granted(&mut by_id, filter).await, "client id {evil:?} subscribing {filter}");
        }
        assert_eq!(publish_qos1(&mut by_id, "devices/dev-1/cmd", false).await, PubAckReason::NotAuthorized);
    }
    // `%u` as a user name reaches its own literal level and nothing else.
    let mut literal = as_user(&broker, "literal", "%u").await;
    assert!(granted(&mut literal, "users/%u/#").await);
    publish_qos1(&mut root, "users/alice/inbox", false).await;
    literal.no_publish().await;
}

#[tokio::test]
async fn acl_retained_messages_follow_read_rights() {
    let (broker, _dir) = acl_broker().await;
    let mut root = as_user(&broker, "root-1", "root").await;
    // Nobody subscribes yet: v5 acknowledges with "no matching subscribers".
    assert_eq!(publish_qos1(&mut root, "sensors/secret", true).await, PubAckReason::NoMatchingSubscribers);
    assert_eq!(publish_qos1(&mut root, "sensors/a/temp", true).await, PubAckReason::NoMatchingSubscribers);
    // A retained publish to a topic bob may not write is refused and never stored.
    let mut bob = as_user(&broker, "bob-1", "bob").await;
    assert_eq!(publish_qos1(&mut bob, "sensors/b/temp", true).await, PubAckReason::NotAuthorized);

    let mut alice = as_user(&broker, "alice-1", "alice").await;
    assert!(granted(&mut alice, "sensors/#").await);
    let got = alice.publish().await;
    assert_eq!((got.topic, got.retain), (Bytes::from("sensors/a/temp"), true));
    alice.no_publish().await;
}

#[tokio::test]
async fn acl_wills_to_topics_the_client_may_not_publish_are_dropped() {
    let (broker, _dir) = acl_broker().await;
    let mut root = as_user(&broker, "root-1", "root").await;
    assert!(granted(&mut root, "#").await);
    let will = |topic: &str| LastWill::new(topic, "gone", Q5::AtLeastOnce, false, None);
    let bob = broker
        .v5_with("bob-1", |o| {
            o.set_credentials("bob", "");
            o.set_last_will(will("sensors/x/temp"));
        })
        .await;
    bob.kill();
    let device = broker
        .v5_with("dev-1", |o| {
            o.set_last_will(will("devices/dev-1/status"));
        })
        .await;
    device.kill();
    // The device's will (allowed) arrives; bob's (read-only topic) never does.
    let got = root.publish().await;
    assert_eq!(got.topic, Bytes::from("devices/dev-1/status"));
    root.no_publish().await;
}

/// A directory with `name` holding `text`, and the sidecar lines that point
/// `key` at that file and grant the plugin read access to the directory.
pub fn granted_file(name: &str, text: &str, key: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let canonical = dir.path().canonicalize().expect("canonical temp dir");
    let path = canonical.join(name);
    std::fs::write(&path, text).expect("write the file");
    let path = path.to_str().expect("utf-8 temp path").to_owned();
    let dir_text = canonical.to_str().expect("utf-8 temp path").to_owned();
    (dir, format!("[config]\n{key} = {path:?}\n[grants]\nread = [{dir_text:?}]\n"))
}

/// Mosquitto's `aclfile.example` with a deployment's rules, unchanged.
const MOSQUITTO_ACL: &str = "\
# This affects access control for clients with no username.
topic read $SYS/#

# This only affects clients with username \"roger\".
user roger
topic foo/bar

# This affects all clients.
pattern write $SYS/broker/connection/%c/state

user sensor-hub
topic write sensors/#
topic read commands/sensor-hub/#
topic deny sensors/forbidden

pattern readwrite devices/%c/#
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_reads_a_mosquitto_acl_file_unchanged() {
    let (_files, sidecar) = granted_file("mosquitto.acl", MOSQUITTO_ACL, "acl_file");
    let (broker, _dir) = broker_with(&[("acl", "acl", &sidecar)], |_| {}).await;
    let mut roger = as_user(&broker, "roger-1", "roger").await;
    assert!(granted(&mut roger, "foo/bar").await);
    assert!(!granted(&mut roger, "foo/#").await);
    assert!(!granted(&mut roger, "$SYS/#").await, "anonymous rules are not roger's");
    let mut hub = as_user(&broker, "hub-1", "sensor-hub").await;
    assert_eq!(publish_qos1(&mut hub, "sensors/forbidden", false).await, PubAckReason::NotAuthorized);
    assert_eq!(publish_qos1(&mut hub, "foo/bar", false).await, PubAckReason::NotAuthorized);
    assert_eq!(publish_qos1(&mut hub, "sensors/a", false).await, PubAckReason::NoMatchingSubscribers);
    let mut anonymous = broker.v5("dev-9").await;
    assert!(granted(&mut anonymous, "$SYS/#").await);
    assert!(granted(&mut anonymous, "devices/dev-9/#").await);
    assert!(!granted(&mut anonymous, "devices/+/#").await);
    assert_eq!(publish_qos1(&mut roger, "foo/bar", false).await, PubAckReason::Success);
    assert_eq!(roger.publish().await.topic, Bytes::from("foo/bar"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_file_without_a_grant_or_malformed_stops_start_up() {
    let (_files, sidecar) = granted_file("bad.acl", "user roger\ntopic foo/bar\nsubscribe foo/#\n", "acl_file");
    let staged = stage(&[("acl", "acl", &sidecar)]);
    let err = crate::plugin_support::host().load_dir(staged.path()).expect_err("malformed line");
    assert!(err.to_string().contains("line 3"), "{err}");

    let (_files, sidecar) = granted_file("ok.acl", MOSQUITTO_ACL, "acl_file");
    let ungranted = sidecar.split("[grants]").next().expect("config part");
    let staged = stage(&[("acl", "acl", ungranted)]);
    let err = crate::plugin_support::host().load_dir(staged.path()).expect_err("no grant, no file");
    assert!(err.to_string().contains("grant"), "{err}");
}

#[tokio::test]
async fn acl_a_deny_pattern_that_cannot_be_substituted_still_denies() {
    let sidecar = r##"
[config]
[[config.rules]]
pattern = "#"
access = "readwrite"
[[config.rules]]
pattern = "vault/%u/#"
access = "deny"
"##;
    let (broker, _dir) = broker_with(&[("acl", "acl", sidecar)], |_| {}).await;
    // No user name: `%u` cannot be filled, so the deny covers every name.
    let mut anonymous = broker.v5("anon").await;
    assert!(!granted(&mut anonymous, "vault/alice/#").await);
    assert_eq!(publish_qos1(&mut anonymous, "vault/alice/keys", false).await, PubAckReason::NotAuthorized);
    assert!(granted(&mut anonymous, "open/#").await);
    // A name that cannot stand for one level does not switch it off either.
    let mut plus = as_user(&broker, "plus", "+").await;
    assert_eq!(publish_qos1(&mut plus, "vault/alice/keys", false).await, PubAckReason::NotAuthorized);
    // A substituted deny stays with its own name.
    let mut bob = as_user(&broker, "bob-1", "bob").await;
    assert_eq!(publish_qos1(&mut bob, "vault/bob/keys", false).await, PubAckReason::NotAuthorized);
    assert!(granted(&mut bob, "vault/alice/#").await);
}
