//! Plugins in the broker, exercised by real clients: authentication,
//! authorization of every action, transforms, and hostile guests failing
//! closed while the broker keeps serving.

use bytes::Bytes;
use moat::config::{Anonymous, Config};
use moat::plugin::fixtures::StagedDir;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet as V5Packet, PubAckReason, SubscribeReasonCode};

use crate::harness::TestBroker;
use crate::plugin_support::{built, stage};

/// Stages `(name, fixture, sidecar)` plugins (with the test deadline of
/// [`stage`]) and starts a broker on them.
async fn broker_with(plugins: &[(&str, &str, &str)], tweak: impl FnOnce(&mut Config)) -> (TestBroker, StagedDir) {
    let dir = stage(plugins);
    let path = dir.path().to_owned();
    let broker = TestBroker::with(|c| {
        c.plugins.dir = Some(path);
        tweak(c);
    })
    .await;
    (broker, dir)
}

#[tokio::test]
async fn allow_list_authenticates_and_denies_with_bad_credentials() {
    let (broker, _dir) = broker_with(&[("allow", "allow-list", "[config]\nusers = [\"alice\"]\n")], |c| {
        c.listeners[0].allow_anonymous = Anonymous::Never;
    })
    .await;
    let alice = broker.v5_with("a", |o| {
        o.set_credentials("alice", "any");
    });
    assert_eq!(alice.await.connack.code, ConnectReturnCode::Success);

    let mut raw = broker.raw().await;
    // v5 CONNECT, user name "mallory", password "x".
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02 | 0x80 | 0x40, 0, 30, 0];
    for field in ["m", "mallory", "x"] {
        body.extend((field.len() as u16).to_be_bytes());
        body.extend(field.as_bytes());
    }
    raw.send(&crate::harness::frame(0x10, &body)).await;
    assert_eq!(raw.read_to_close().await, [0x20, 3, 0, 0x86, 0], "bad user name or password");

    // Anonymous: the plugin ignores, the listener forbids anonymous clients.
    let mut raw = broker.raw().await;
    raw.send(&crate::harness::connect_v4("anon")).await;
    assert_eq!(raw.read_to_close().await, [0x20, 2, 0, 5], "3.1.1 not authorized");
}

/// A plugin reads files only from directories its operator granted, and
/// only for reading: without the grant the same file does not exist for it,
/// so `init` fails and the broker refuses to start on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_reads_only_granted_directories() {
    let auth = tempfile::tempdir().expect("tempdir");
    std::fs::write(auth.path().join("users"), "carol\n").expect("users file");
    let file = auth.path().join("users");
    let config = format!("[config]\nusers_file = {:?}\n", file.to_str().expect("utf-8 temp path"));

    let granted = format!("{config}[grants]\nread = [{:?}]\n", auth.path().to_str().expect("utf-8"));
    // Several instances, so calls also create instances (and read the file)
    // on the runtime's threads, not only at load.
    let sidecar = format!("{granted}[limits]\ninstances = 1\ntimeout_ms = 1000\n");
    let (broker, _dir) = broker_with(&[("allow", "allow-list", &sidecar)], |c| {
        c.listeners[0].allow_anonymous = Anonymous::Never;
    })
    .await;
    let login = |id: &'static str| {
        broker.v5_with(id, |o| {
            o.set_credentials("carol", "any");
        })
    };
    // `v5_with` asserts the CONNACK is a success.
    let _clients = tokio::join!(login("c0"), login("c1"), login("c2"), login("c3"));

    let staged = stage(&[("allow", "allow-list", &config)]);
    let err = crate::plugin_support::host().load_dir(staged.path()).expect_err("no grant, no file");
    assert!(err.to_string().contains("users_file"), "{err}");
}

/// An edit of a file in a granted directory reloads the plugin set, so
/// every instance of a set has read the same file: warm instances do not
/// keep the old list while fresh ones read the new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_granted_file_reloads_the_plugins_so_all_instances_read_it() {
    let auth = tempfile::tempdir().expect("tempdir");
    let file = auth.path().join("users");
    std::fs::write(&file, "carol\n").expect("users file");
    let sidecar = format!(
        "[config]\nusers_file = {:?}\n[grants]\nread = [{:?}]\n[limits]\ninstances = 2\ntimeout_ms = 1000\n",
        file.to_str().expect("utf-8 temp path"),
        auth.path().to_str().expect("utf-8")
    );
    let (broker, _dir) = broker_with(&[("allow", "allow-list", &sidecar)], |c| {
        c.listeners[0].allow_anonymous = Anonymous::Never;
    })
    .await;
    let code = |user: &'static str| async move {
        let mut opts = rumqttc::v5::MqttOptions::new(format!("{user}-id"), "127.0.0.1", broker.addr.port());
        opts.set_credentials(user, "any");
        let (_client, mut events) = rumqttc::v5::AsyncClient::new(opts, 10);
        match tokio::time::timeout(crate::harness::WAIT, events.poll()).await.expect("CONNACK in time") {
            Ok(rumqttc::v5::Event::Incoming(V5Packet::ConnAck(ack))) => ack.code,
            Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => code,
            other => panic!("expected a CONNACK, got {other:?}"),
        }
    };
    assert_eq!(code("carol").await, ConnectReturnCode::Success);
    assert_eq!(code("dave").await, ConnectReturnCode::BadUserNamePassword);

    let mut reloads = broker.reloader.plugin_reloads();
    reloads.borrow_and_update();
    // Replaced atomically, as an operator should.
    let next = auth.path().join(".users.new");
    std::fs::write(&next, "carol\ndave\n").expect("new users file");
    std::fs::rename(&next, &file).expect("replace");
    tokio::time::timeout(crate::harness::WAIT, reloads.changed()).await.expect("a reload in time").expect("reload");
    assert!(reloads.borrow().as_ref().is_some_and(|r| r.swapped()), "{:?}", reloads.borrow());
    for _ in 0..4 {
        assert_eq!(code("dave").await, ConnectReturnCode::Success, "every instance has read the new list");
    }
}

#[tokio::test]
async fn topic_prefix_authorizes_publish_subscribe_and_retained() {
    let sidecar = "[config]\nprefix = \"public/\"\n";
    let (broker, _dir) = broker_with(&[("acl", "topic-prefix", sidecar)], |_| {}).await;
    let mut sub = broker.v5("sub").await;
    let granted = sub.subscribe("public/#", Q5::AtLeastOnce).await;
    assert_eq!(granted.return_codes, [SubscribeReasonCode::Success(Q5::AtLeastOnce)]);
    let refused = sub.subscribe("private/#", Q5::AtLeastOnce).await;
    assert_eq!(refused.return_codes, [SubscribeReasonCode::NotAuthorized]);

    let mut publisher = broker.v5("pub").await;
    publisher.client.publish("private/x", Q5::AtLeastOnce, false, "secret").await.expect("publish");
    loop {
        match publisher.next().await {
            Some(V5Packet::PubAck(ack)) => {
                assert_eq!(ack.reason, PubAckReason::NotAuthorized);
                break;
            }
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    publisher.client.publish("public/x", Q5::AtLeastOnce, true, "open").await.expect("publish");
    assert_eq!(sub.publish().await.payload, Bytes::from("open"));

    // A wildcard subscription the policy allows still only gets retained
    // messages the policy lets this client receive.
    let mut late = broker.v5("late").await;
    late.subscribe("public/#", Q5::AtMostOnce).await;
    assert_eq!(late.publish().await.payload, Bytes::from("open"));
}

#[tokio::test]
async fn receive_side_authorization_hides_topics_from_wildcard_subscribers() {
    // Allows everything under public/, denies under public/hidden/ for all.
    let sidecar = "[config]\nprefix = \"public/\"\ndeny_prefix = \"public/hidden/\"\n";
    let (broker, _dir) = broker_with(&[("acl", "topic-prefix", sidecar)], |_| {}).await;
    let mut sub = broker.v5("sub").await;
    sub.subscribe("public/#", Q5::AtMostOnce).await;
    let publisher = broker.v5("pub").await;
    publisher.client.publish("public/hidden/x", Q5::AtMostOnce, false, "no").await.expect("publish");
    publisher.client.publish("public/seen", Q5::AtMostOnce, false, "yes").await.expect("publish");
    assert_eq!(sub.publish().await.payload, Bytes::from("yes"));
    sub.no_publish().await;
}

#[tokio::test]
async fn transform_rewrites_only_declared_topics() {
    let (broker, _dir) =
        broker_with(&[("upper", "payload-upper", "[config]\nfilters = [\"upper/#\"]\n")], |_| {}).await;
    let mut sub = broker.v5("sub").await;
    sub.subscribe("#", Q5::AtMostOnce).await;
    let publisher = broker.v5("pub").await;
    publisher.client.publish("upper/a", Q5::AtMostOnce, false, "hello").await.expect("publish");
    let got = sub.publish().await;
    assert_eq!(got.payload, Bytes::from("HELLO"));
    let props = got.properties.expect("properties");
    assert!(props.user_properties.contains(&("transformed-by".into(), "payload-upper".into())));
    publisher.client.publish("other", Q5::AtMostOnce, false, "hello").await.expect("publish");
    assert_eq!(sub.publish().await.payload, Bytes::from("hello"));
}

#[tokio::test]
async fn a_looping_plugin_fails_closed_and_the_broker_keeps_serving() {
    let sidecar = "[limits]\ntimeout_ms = 50\n";
    let (broker, _dir) = broker_with(&[("loop", "infinite-loop", sidecar)], |_| {}).await;
    let mut sub = broker.v5("sub").await;
    sub.subscribe("#", Q5::AtMostOnce).await;
    let refused = sub.subscribe("evil/#", Q5::AtMostOnce).await;
    assert_eq!(refused.return_codes, [SubscribeReasonCode::NotAuthorized], "a timed-out authorizer denies");
    let publisher = broker.v5("pub").await;
    publisher.client.publish("fine", Q5::AtMostOnce, false, "ok").await.expect("publish");
    assert_eq!(sub.publish().await.payload, Bytes::from("ok"));

    // Authentication that never returns is refused, not allowed.
    let mut raw = broker.raw().await;
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02 | 0x80, 0, 30];
    for field in ["e", "evil"] {
        body.extend((field.len() as u16).to_be_bytes());
        body.extend(field.as_bytes());
    }
    raw.send(&crate::harness::frame(0x10, &body)).await;
    assert_eq!(raw.read_to_close().await, [0x20, 2, 0, 5], "timed-out authenticator denies");
}

#[tokio::test]
async fn a_broken_plugin_stops_start_up_naming_it() {
    let dir = built().stage(&[("old", "wrong-version", "")]).expect("stage");
    let mut config = Config::default();
    config.listeners[0].bind = "127.0.0.1:0".parse().expect("address");
    config.plugins.dir = Some(dir.path().to_owned());
    let err = moat::Server::bind(config).await.expect_err("a broken plugin refuses start-up");
    let message = err.to_string();
    assert!(message.contains("old.wasm") && message.contains("moat:plugin@"), "{message}");
    // As the binary prints it (the whole chain): the reason once.
    let shown = format!("{:#}", anyhow::Error::from(err));
    assert_eq!(shown.matches("old.wasm").count(), 1, "{shown}");
}

#[tokio::test]
async fn certificate_identity_is_the_user_name_an_acl_sees() {
    use moat::config::{ClientAuth, IdentityAsUsername, ListenerProtocol};
    use rumqttc::{TlsConfiguration, Transport};

    let mut pki = crate::pki::ServerPki::new("identity-acl", ClientAuth::Required);
    pki.tls.use_identity_as_username = IdentityAsUsername::CommonName;
    let (broker, _dir) = broker_with(&[("acl", "topic-prefix", "[config]\nprefix = \"%u/\"\n")], |c| {
        pki.apply(&mut c.listeners[0], ListenerProtocol::Tls);
        c.listeners[0].allow_anonymous = Anonymous::Never;
    })
    .await;
    let cert = pki.ca.client("device-1", &[]);
    let tls = crate::pki::client_config(&pki.ca.pem(), Some(&cert), &[]);
    let mut device = broker
        .v5_with("any-client-id", |o| {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        })
        .await;
    let own = device.subscribe("device-1/#", Q5::AtMostOnce).await;
    assert_eq!(own.return_codes, [SubscribeReasonCode::Success(Q5::AtMostOnce)]);
    let other = device.subscribe("device-2/#", Q5::AtMostOnce).await;
    assert_eq!(other.return_codes, [SubscribeReasonCode::NotAuthorized]);
}

/// The `topic-prefix` fixture fills `%u` with the verified user name only
/// when the name is one safe level: the user `+` does not get `users/+/#`,
/// and a prefix ends at a level boundary.
#[tokio::test]
async fn topic_prefix_escapes_names_that_would_widen_the_prefix() {
    let plugins = [
        ("allow", "allow-list", "order = 1\n[config]\nusers = [\"+\", \"#\", \"al\", \"alice\"]\n"),
        ("prefix", "topic-prefix", "order = 2\n[config]\nprefix = \"users/%u\"\n"),
    ];
    let (broker, _dir) = broker_with(&plugins, |_| {}).await;
    let login = |user: &'static str| {
        broker.v5_with(user, move |o| {
            o.set_credentials(user, "any");
        })
    };
    let subscribe = |filter: &'static str| (filter, rumqttc::v5::mqttbytes::QoS::AtMostOnce);
    for user in ["+", "#"] {
        let mut evil = login(user).await;
        for filter in ["users/+/#", "users/#", "users/alice/#"] {
            let (f, q) = subscribe(filter);
            assert_eq!(evil.subscribe(f, q).await.return_codes, [SubscribeReasonCode::NotAuthorized], "{user} {f}");
        }
    }
    let mut al = login("al").await;
    assert_eq!(al.subscribe("users/alice/#", Q5::AtMostOnce).await.return_codes, [SubscribeReasonCode::NotAuthorized]);
    assert_eq!(
        al.subscribe("users/al/#", Q5::AtMostOnce).await.return_codes,
        [SubscribeReasonCode::Success(Q5::AtMostOnce)]
    );
    let mut alice = login("alice").await;
    assert_eq!(
        alice.subscribe("users/alice/#", Q5::AtMostOnce).await.return_codes,
        [SubscribeReasonCode::Success(Q5::AtMostOnce)]
    );
}
