//! Who may take over a session (issue 23, item 7): a session belongs to
//! the user that attached it (`[auth] bind_sessions`, on with an
//! authenticator), also across a restart; and a takeover that is allowed
//! resends the in-flight messages only where the new connection may
//! receive them.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use moat::config::{BindSessions, Config};
use moat::metrics::{DropReason, Refusal};
use moat::plugin::fixtures::StagedDir;
use moat::store::{DiskStore, Durability, Store};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, DisconnectReasonCode, Packet as V5Packet};

use crate::harness::{TestBroker, V5, WAIT};
use crate::plugin_support::stage;

/// Logs in alice and mallory (any password); anonymous clients come in
/// through the loopback default.
const USERS: &str = "order = 1\n[config]\nusers = [\"alice\", \"mallory\"]\n";

/// Stages `plugins` and starts a broker on `store` with them.
async fn broker_with(
    plugins: &[(&str, &str, &str)],
    store: Arc<dyn Store>,
    tweak: impl FnOnce(&mut Config),
) -> (TestBroker, StagedDir) {
    let dir = stage(plugins);
    let path: PathBuf = dir.path().to_owned();
    let broker = TestBroker::with_store(store, |c| {
        c.plugins.dir = Some(path);
        tweak(c);
    })
    .await;
    (broker, dir)
}

/// Options of a persistent v5 session logged in as `user` (none:
/// anonymous) that acknowledges nothing by itself.
fn persistent(user: Option<&'static str>, clean_start: bool) -> impl FnOnce(&mut rumqttc::v5::MqttOptions) {
    move |o| {
        o.set_clean_start(clean_start);
        o.set_session_expiry_interval(Some(600));
        o.set_manual_acks(true);
        if let Some(user) = user {
            o.set_credentials(user, "any");
        }
    }
}

/// The CONNACK code a v5 client with `tweak`ed options gets for `id`.
async fn connack(
    broker: &TestBroker,
    id: &str,
    tweak: impl FnOnce(&mut rumqttc::v5::MqttOptions),
) -> ConnectReturnCode {
    let mut opts = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", broker.addr.port());
    tweak(&mut opts);
    let (_client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
    match tokio::time::timeout(WAIT, eventloop.poll()).await.expect("CONNACK in time") {
        Ok(rumqttc::v5::Event::Incoming(V5Packet::ConnAck(ack))) => ack.code,
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => code,
        other => panic!("expected a CONNACK, got {other:?}"),
    }
}

/// `client` subscribes to `filter`, then a fresh publisher sends one QoS 1
/// message to `topic`, which `client` receives.
async fn receive_one(broker: &TestBroker, client: &mut V5, filter: &str, topic: &str) -> Bytes {
    client.subscribe(filter, Q5::AtLeastOnce).await;
    let publisher = broker.v5_with("publisher", |o| {
        o.set_credentials("alice", "any");
    });
    let publisher = publisher.await;
    publisher.client.publish(topic, Q5::AtLeastOnce, false, "for alice only").await.expect("publish");
    client.publish().await.payload
}

#[tokio::test]
async fn a_session_belongs_to_its_user_while_it_exists() {
    let memory = Arc::new(moat::store::MemoryStore::default());
    let (broker, _dir) = broker_with(&[("users", "allow-list", USERS)], memory, |_| {}).await;
    let mut alice = broker.v5_with("dev-1", persistent(Some("alice"), false)).await;
    alice.subscribe("inbox/#", Q5::AtLeastOnce).await;
    for (user, clean_start) in [(Some("mallory"), false), (Some("mallory"), true), (None, false)] {
        let code = connack(&broker, "dev-1", persistent(user, clean_start)).await;
        assert_eq!(code, ConnectReturnCode::NotAuthorized, "{user:?}, clean start {clean_start}");
    }
    assert_eq!(broker.broker.metrics.refusals(Refusal::SessionOwner), 3);
    // Alice was not disturbed: still connected, still subscribed.
    let publisher = broker.v5("p").await;
    publisher.client.publish("inbox/1", Q5::AtLeastOnce, false, "still here").await.expect("publish");
    assert_eq!(alice.publish().await.payload, Bytes::from("still here"));
    // Offline, the session is still hers.
    alice.client.disconnect().await.expect("disconnect");
    assert_eq!(connack(&broker, "dev-1", persistent(Some("mallory"), false)).await, ConnectReturnCode::NotAuthorized);
    let back = broker.v5_with("dev-1", persistent(Some("alice"), false)).await;
    assert!(back.connack.session_present);
}

#[tokio::test]
async fn a_takeover_resends_in_flight_messages_only_where_the_new_user_may_receive_them() {
    let acl = "order = 2\n[config]\n\
               [[config.rules]]\nuser = \"alice\"\naccess = \"readwrite\"\ntopic = \"secret/#\"\n\
               [[config.rules]]\nuser = \"mallory\"\naccess = \"readwrite\"\ntopic = \"mallory/#\"\n";
    let memory = Arc::new(moat::store::MemoryStore::default());
    let plugins = [("users", "allow-list", USERS), ("acl", "acl", acl)];
    // Unbound sessions, as in Mosquitto: mallory may take alice's over.
    let (broker, _dir) = broker_with(&plugins, memory, |c| c.auth.bind_sessions = BindSessions::Never).await;
    let mut alice = broker.v5_with("shared", persistent(Some("alice"), false)).await;
    assert_eq!(receive_one(&broker, &mut alice, "secret/#", "secret/plan").await, Bytes::from("for alice only"));
    alice.kill(); // never acknowledged: in flight in the session

    let mut mallory = broker.v5_with("shared", persistent(Some("mallory"), false)).await;
    assert!(mallory.connack.session_present, "the session was taken over");
    mallory.no_publish().await;
    assert_eq!(broker.broker.metrics.drops(DropReason::NotAuthorized), 1, "dropped, counted");
    // Dropped from the session for good: nobody gets it later either.
    mallory.client.disconnect().await.expect("disconnect");
    let mut alice = broker.v5_with("shared", persistent(Some("alice"), false)).await;
    alice.no_publish().await;
}

#[tokio::test]
async fn without_binding_another_user_takes_the_session_over() {
    let memory = Arc::new(moat::store::MemoryStore::default());
    let (broker, _dir) =
        broker_with(&[("users", "allow-list", USERS)], memory, |c| c.auth.bind_sessions = BindSessions::Never).await;
    let mut alice = broker.v5_with("dev-1", persistent(Some("alice"), false)).await;
    let mallory = broker.v5_with("dev-1", persistent(Some("mallory"), false)).await;
    assert!(mallory.connack.session_present);
    assert_eq!(alice.disconnect_reason().await, DisconnectReasonCode::SessionTakenOver);
}

#[tokio::test]
async fn the_owner_of_a_session_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || Arc::new(DiskStore::open(&dir.path().join("store"), Durability::Sync).expect("store opens"));
    let store = open();
    let (broker, staged) = broker_with(&[("users", "allow-list", USERS)], store.clone(), |_| {}).await;
    let alice = broker.v5_with("dev-1", persistent(Some("alice"), false)).await;
    alice.client.disconnect().await.expect("disconnect");
    broker.stop().await;
    store.close();
    drop(staged);

    let (broker, _staged) = broker_with(&[("users", "allow-list", USERS)], open(), |_| {}).await;
    assert_eq!(connack(&broker, "dev-1", persistent(Some("mallory"), false)).await, ConnectReturnCode::NotAuthorized);
    let back = broker.v5_with("dev-1", persistent(Some("alice"), false)).await;
    assert!(back.connack.session_present);
}
