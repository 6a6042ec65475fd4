//! The Python and JavaScript example plugins of `plugins/examples` in the
//! broker, with real clients: the Python ACL (`py_acl`) and redacting
//! transformer (`py_redact`), the JavaScript authenticator (`js_auth`) and
//! enveloping transformer (`js_envelope`).
//!
//! The components are built by `plugins/examples/build` (componentize-py and
//! jco), which `scripts/test` runs before `cargo test`; a missing component
//! fails these tests with that instruction. Each plugin runs with the limits
//! of its shipped sidecar, so the tests also show those limits suffice.
//!
//! A Python component is ~18 MB: compiling it takes far longer than loading
//! it compiled (20 s against 0.1 s in release), so every broker here shares one
//! disk cache of compiled components under the test target directory, and
//! the first test to need the components compiles them once for the others.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use moat::config::{Anonymous, Config};
use moat::plugin::PluginHost;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, PubAckReason, PublishProperties};
use tempfile::TempDir;

use crate::acl_plugin::{as_user, granted, publish_qos1};
use crate::harness::{TestBroker, V5, WAIT};

/// The example components, as `plugins/examples/build` leaves them.
fn built_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/examples/target")
}

/// The compiled-component cache every broker of these tests shares. Its own,
/// not the harness's `plugin-cache`: that one keeps at most 64 entries and
/// the other tests write many, and evicting a Python component would cost
/// another 20 s compile.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("polyglot-plugin-cache")
}

/// The component `name`; panics naming the build script when it is missing.
fn component(name: &str) -> PathBuf {
    let wasm = built_dir().join(format!("{name}.wasm"));
    assert!(
        wasm.is_file(),
        "{} is missing: build the example plugins with `plugins/examples/build` \
         (scripts/test does this before `cargo test`)",
        wasm.display()
    );
    wasm
}

/// Compiles the component `name` into the shared cache once per test run,
/// one component at a time, so concurrent tests do not compile the same
/// 18 MB component side by side on a 2-core machine.
fn warm_cache(name: &'static str) {
    static WARM: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut warm = WARM.lock().unwrap_or_else(PoisonError::into_inner);
    if !warm.contains(&name) {
        let host = PluginHost::with_disk_cache(&cache_dir()).expect("plugin engine");
        let dir = stage(name, None);
        host.load_dir(dir.path()).unwrap_or_else(|e| panic!("{name} loads with its shipped sidecar: {e}"));
        warm.push(name);
    }
}

/// A fresh plugin directory holding the component `name` with its shipped
/// sidecar, whose `[config]` is replaced by `config` when given.
fn stage(name: &str, config: Option<&str>) -> TempDir {
    let wasm = component(name);
    let shipped = std::fs::read_to_string(built_dir().join(format!("{name}.toml"))).expect("shipped sidecar");
    let mut sidecar: toml::Table = toml::from_str(&shipped).expect("shipped sidecar parses");
    if let Some(config) = config {
        sidecar.insert("config".into(), toml::Value::Table(toml::from_str(config).expect("test config parses")));
    }
    let dir = tempfile::Builder::new().prefix("moat-polyglot-").tempdir().expect("temp dir");
    std::fs::copy(&wasm, dir.path().join(format!("{name}.wasm"))).expect("copy component");
    let sidecar = toml::to_string(&sidecar).expect("sidecar serialises");
    std::fs::write(dir.path().join(format!("{name}.toml")), sidecar).expect("write sidecar");
    dir
}

/// A broker running the example plugin `name` (see [`stage`]).
async fn broker_with(
    name: &'static str,
    config: Option<&str>,
    tweak: impl FnOnce(&mut Config),
) -> (TestBroker, TempDir) {
    warm_cache(name);
    let dir = stage(name, config);
    let path = dir.path().to_owned();
    let broker = TestBroker::with(|c| {
        c.plugins.dir = Some(path);
        c.plugins.cache_dir = Some(cache_dir());
        tweak(c);
    })
    .await;
    (broker, dir)
}

/// The CONNACK code a v5 client gets with these credentials.
async fn connack(broker: &TestBroker, user: &str, password: &str) -> ConnectReturnCode {
    let mut opts = rumqttc::v5::MqttOptions::new("js-auth-client", "127.0.0.1", broker.addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_credentials(user, password);
    let (_client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
    match tokio::time::timeout(WAIT, eventloop.poll()).await.expect("CONNACK in time") {
        Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(ack))) => ack.code,
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => code,
        other => panic!("expected a CONNACK, got {other:?}"),
    }
}

/// Publishes `payload` at QoS 1 on `topic` and waits for the PUBACK.
async fn publish(client: &mut V5, topic: &str, payload: impl Into<Bytes>) {
    client.client.publish(topic, Q5::AtLeastOnce, false, payload.into()).await.expect("publish");
    loop {
        match client.next().await {
            Some(rumqttc::v5::mqttbytes::v5::Packet::PubAck(ack)) => {
                assert_eq!(ack.reason, PubAckReason::Success, "PUBACK of {topic}");
                return;
            }
            Some(_) => {}
            None => panic!("closed while waiting for PUBACK"),
        }
    }
}

fn properties(p: &rumqttc::v5::mqttbytes::v5::Publish) -> PublishProperties {
    p.properties.clone().unwrap_or_default()
}

#[tokio::test]
async fn python_acl_allows_and_denies_publishes_by_user_and_pattern() {
    // The user names are claimed, and trusted as in Mosquitto.
    let (broker, _dir) = broker_with("py_acl", None, |c| c.listeners[0].trust_claimed_username = true).await;
    // Nobody subscribes: an allowed publish is acknowledged as such.
    const ALLOWED: PubAckReason = PubAckReason::NoMatchingSubscribers;
    let mut alice = as_user(&broker, "alice-1", "alice").await;
    let mut bob = as_user(&broker, "bob-1", "bob").await;
    assert_eq!(publish_qos1(&mut alice, "sensors/kitchen/temp", false).await, ALLOWED);
    assert_eq!(publish_qos1(&mut alice, "sensors/secret", false).await, PubAckReason::NotAuthorized);
    assert_eq!(publish_qos1(&mut alice, "actuators/door", false).await, PubAckReason::NotAuthorized);
    assert_eq!(publish_qos1(&mut bob, "sensors/kitchen/temp", false).await, PubAckReason::NotAuthorized);
    // `devices/%c/#`: every client in its own subtree only, with or without
    // a user name; a client id that would widen the pattern matches nothing.
    assert_eq!(publish_qos1(&mut bob, "devices/bob-1/state", false).await, ALLOWED);
    assert_eq!(publish_qos1(&mut bob, "devices/alice-1/state", false).await, PubAckReason::NotAuthorized);
    let mut anonymous = broker.v5("gateway-7").await;
    assert_eq!(publish_qos1(&mut anonymous, "devices/gateway-7/up", false).await, ALLOWED);
    assert_eq!(publish_qos1(&mut anonymous, "sensors/kitchen/temp", false).await, PubAckReason::NotAuthorized);
    let mut sly = broker.v5("x/y").await;
    assert_eq!(publish_qos1(&mut sly, "devices/x/y/up", false).await, PubAckReason::NotAuthorized);
}

#[tokio::test]
async fn python_acl_judges_subscriptions_and_withholds_denied_topics() {
    let rules = r##"
        rules = [
            { user = "alice", access = "readwrite", topic = "sensors/#" },
            { user = "alice", access = "deny", topic = "sensors/secret" },
            { user = "root", access = "readwrite", topic = "#" },
            { pattern = "devices/%c/#", access = "readwrite" },
        ]
    "##;
    let (broker, _dir) = broker_with("py_acl", Some(rules), |c| c.listeners[0].trust_claimed_username = true).await;
    let mut alice = as_user(&broker, "alice-1", "alice").await;
    let mut bob = as_user(&broker, "bob-1", "bob").await;
    assert!(granted(&mut alice, "sensors/+/temp").await);
    assert!(!granted(&mut alice, "sensors/secret").await, "a deny rule refuses the subscription it covers");
    assert!(!granted(&mut alice, "#").await, "no rule covers the whole filter");
    assert!(!granted(&mut bob, "sensors/#").await);
    assert!(granted(&mut bob, "$share/workers/devices/bob-1/#").await, "judged by the inner filter");
    // A wider subscription is granted; the denied topic is withheld at delivery.
    assert!(granted(&mut alice, "sensors/#").await);
    let mut root = as_user(&broker, "root-1", "root").await;
    publish(&mut root, "sensors/secret", "s").await;
    publish(&mut root, "sensors/open", "o").await;
    let p = alice.publish().await;
    assert_eq!(&p.topic[..], b"sensors/open");
    alice.no_publish().await;
}

#[tokio::test]
async fn python_acl_keeps_a_deny_pattern_whose_names_cannot_be_substituted() {
    let rules = r##"
        rules = [
            { pattern = "#", access = "readwrite" },
            { pattern = "vault/%u/#", access = "deny" },
        ]
    "##;
    let (broker, _dir) = broker_with("py_acl", Some(rules), |_| {}).await;
    // No user name: the deny covers every user's vault.
    let mut anonymous = broker.v5("anon").await;
    assert_eq!(publish_qos1(&mut anonymous, "vault/alice/keys", false).await, PubAckReason::NotAuthorized);
    assert!(!granted(&mut anonymous, "vault/alice/#").await);
    assert_eq!(publish_qos1(&mut anonymous, "open/x", false).await, PubAckReason::NoMatchingSubscribers);
}

#[tokio::test]
async fn python_transformer_redacts_json_on_its_filter_only() {
    let (broker, _dir) = broker_with("py_redact", None, |_| {}).await;
    let mut sub = broker.v5("sub").await;
    sub.subscribe("#", Q5::AtLeastOnce).await;
    let mut publisher = broker.v5("pub").await;
    let secret = r#"{"temp":21.5,"password":"hunter2","nested":{"token":"t0k","ok":[1,{"token":"x"}]}}"#;

    publish(&mut publisher, "telemetry/kitchen", secret).await;
    let p = sub.publish().await;
    assert_eq!(&p.topic[..], b"telemetry/kitchen");
    assert_eq!(&p.payload[..], br#"{"temp":21.5,"nested":{"ok":[1,{}]}}"#);
    assert_eq!(properties(&p).user_properties, vec![("redacted-by".to_owned(), "py_redact".to_owned())]);

    // Outside the filter the plugin is never called: the payload is untouched.
    publish(&mut publisher, "other/kitchen", secret).await;
    let p = sub.publish().await;
    assert_eq!(&p.payload[..], secret.as_bytes());
    assert!(properties(&p).user_properties.is_empty());

    // On the filter, payloads with nothing to remove pass unchanged.
    for payload in [&b"not json"[..], b"[1,2]", br#"{"temp":1}"#, b"\xff\xfe"] {
        publish(&mut publisher, "telemetry/raw", Bytes::copy_from_slice(payload)).await;
        let p = sub.publish().await;
        assert_eq!(&p.payload[..], payload);
        assert!(properties(&p).user_properties.is_empty());
    }
    let redact = crate::plugin_support::stats(&broker.broker.policy(), "py_redact");
    assert_eq!(redact.calls, 5, "one call per publish on telemetry/#");
    assert_eq!(redact.traps + redact.timeouts + redact.out_of_memory + redact.bad_answers, 0);
}

#[tokio::test]
async fn js_authenticator_accepts_listed_users_with_their_password_only() {
    let (broker, _dir) = broker_with("js_auth", None, |c| c.listeners[0].allow_anonymous = Anonymous::Never).await;
    assert_eq!(connack(&broker, "alice", "wonderland").await, ConnectReturnCode::Success);
    assert_eq!(connack(&broker, "bob", "builder").await, ConnectReturnCode::Success);
    assert_eq!(connack(&broker, "alice", "wonderlan").await, ConnectReturnCode::BadUserNamePassword);
    assert_eq!(connack(&broker, "alice", "wonderland!").await, ConnectReturnCode::BadUserNamePassword);
    assert_eq!(connack(&broker, "alice", "Wonderland").await, ConnectReturnCode::BadUserNamePassword);
    assert_eq!(connack(&broker, "bob", "wonderland").await, ConnectReturnCode::BadUserNamePassword);
    assert_eq!(connack(&broker, "mallory", "wonderland").await, ConnectReturnCode::BadUserNamePassword);
}

#[tokio::test]
async fn js_authenticator_reads_users_from_its_config() {
    let config = r#"users = { "zoë" = "pässwörd" }"#;
    let (broker, _dir) =
        broker_with("js_auth", Some(config), |c| c.listeners[0].allow_anonymous = Anonymous::Never).await;
    assert_eq!(connack(&broker, "zoë", "pässwörd").await, ConnectReturnCode::Success);
    assert_eq!(connack(&broker, "zoë", "passwort").await, ConnectReturnCode::BadUserNamePassword);
    assert_eq!(connack(&broker, "alice", "wonderland").await, ConnectReturnCode::BadUserNamePassword);
}

#[tokio::test]
async fn js_transformer_wraps_payloads_in_an_envelope_on_its_filter_only() {
    let (broker, _dir) = broker_with("js_envelope", None, |_| {}).await;
    let mut sub = broker.v5("sub").await;
    sub.subscribe("#", Q5::AtLeastOnce).await;
    let mut publisher = broker
        .v5_with("sensor-9", |o| {
            o.set_credentials("dev", "");
        })
        .await;
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();

    publish(&mut publisher, "ingest/kitchen", "21.5 °C").await;
    let p = sub.publish().await;
    assert_eq!(&p.topic[..], b"ingest/kitchen");
    assert_eq!(properties(&p).content_type.as_deref(), Some("application/json"));
    let envelope: serde_json::Value = serde_json::from_slice(&p.payload).expect("JSON envelope");
    assert_eq!(envelope["topic"], "ingest/kitchen");
    assert_eq!(envelope["client"], "sensor-9");
    assert_eq!(envelope["user"], serde_json::Value::Null, "nobody verified the name `dev`");
    assert_eq!(envelope["payload"], "21.5 °C");
    let received = envelope["received_ms"].as_u64().expect("received_ms") as u128;
    assert!(received >= before && received < before + 60_000, "host clock: {received} vs {before}");

    // Bytes that are not UTF-8 travel as base64.
    publish(&mut publisher, "ingest/raw", Bytes::from_static(b"\xff\x00\x01")).await;
    let p = sub.publish().await;
    let envelope: serde_json::Value = serde_json::from_slice(&p.payload).expect("JSON envelope");
    assert_eq!(envelope["payload_base64"], "/wAB");
    assert!(envelope.get("payload").is_none());

    publish(&mut publisher, "other/kitchen", "21.5").await;
    let p = sub.publish().await;
    assert_eq!(&p.payload[..], b"21.5");
    assert_eq!(properties(&p).content_type, None);
}

/// What a Python plugin `print`s and a JavaScript plugin `console.log`s
/// reaches the broker's log: each example says how much it loaded in its
/// `init`, counted as a line of output logged.
#[tokio::test]
async fn python_print_and_javascript_console_log_reach_the_log() {
    for name in ["py_acl", "js_auth"] {
        warm_cache(name);
        let host = PluginHost::with_disk_cache(&cache_dir()).expect("plugin engine");
        let set = host.load_dir(stage(name, None).path()).expect("loads");
        let stats = set.plugins()[0].stats().snapshot();
        assert_eq!((stats.output_lines, stats.output_dropped), (1, 0), "{name}: {stats:?}");
    }
}
