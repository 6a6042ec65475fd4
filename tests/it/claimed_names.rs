//! A user name nobody verified does not count (issue 23, item 1): a client
//! admitted without a deciding authenticator (anonymous listener, or a
//! certificate without `use_identity_as_username`) is anonymous to the
//! authorizers, whatever name it claims; an authenticator's `allow` makes
//! the name count; `trust_claimed_username` restores Mosquitto's behaviour.

use std::path::PathBuf;

use moat::config::{Anonymous, ClientAuth, Config, ListenerProtocol};
use moat::plugin::fixtures::StagedDir;
use rumqttc::v5::mqttbytes::v5::PubAckReason;
use rumqttc::{TlsConfiguration, Transport};

use crate::acl_plugin::{granted, publish_qos1};
use crate::harness::{TestBroker, V5};
use crate::pki::{ServerPki, client_config};
use crate::plugin_support::stage;

/// The issue's rules: `admin` may use `admin/#`, anonymous clients only
/// read `public/#`.
const ACL: &str = r##"
order = 2
[config]
[[config.rules]]
user = "admin"
access = "readwrite"
topic = "admin/#"
[[config.rules]]
anonymous = true
access = "read"
topic = "public/#"
"##;

/// A broker with the acl (and `more` plugins) whose one listener admits
/// anyone, adjusted by `tweak`.
async fn open_broker(more: &[(&str, &str, &str)], tweak: impl FnOnce(&mut Config)) -> (TestBroker, StagedDir) {
    let mut plugins = vec![("acl", "acl", ACL)];
    plugins.extend_from_slice(more);
    let dir = stage(&plugins);
    let path: PathBuf = dir.path().to_owned();
    let broker = TestBroker::with(|c| {
        c.plugins.dir = Some(path);
        c.listeners[0].allow_anonymous = Anonymous::Always;
        tweak(c);
    })
    .await;
    (broker, dir)
}

/// A v5 client claiming `user` with any password.
async fn claiming(broker: &TestBroker, id: &str, user: &str) -> V5 {
    broker
        .v5_with(id, |o| {
            o.set_credentials(user, "any password");
        })
        .await
}

#[tokio::test]
async fn an_impostor_claiming_admin_on_an_anonymous_listener_is_anonymous_to_the_acl() {
    let (broker, _dir) = open_broker(&[], |_| {}).await;
    let mut impostor = claiming(&broker, "impostor", "admin").await;
    assert!(!granted(&mut impostor, "admin/#").await, "subscribing to admin/#");
    assert_eq!(publish_qos1(&mut impostor, "admin/config", false).await, PubAckReason::NotAuthorized);
    assert!(granted(&mut impostor, "public/#").await, "an anonymous client's rights remain");
}

#[tokio::test]
async fn a_name_an_authenticator_accepted_counts() {
    // allow-list verifies `admin` (and lets it keep its CONNECT name).
    let allow_list = "order = 1\n[config]\nusers = [\"admin\"]\n";
    let (broker, _dir) = open_broker(&[("allow-list", "allow-list", allow_list)], |_| {}).await;
    let mut admin = claiming(&broker, "admin-1", "admin").await;
    assert!(granted(&mut admin, "admin/#").await);
    assert_eq!(publish_qos1(&mut admin, "admin/config", false).await, PubAckReason::Success);
    // Anonymous (no name): the authenticator ignores, the listener admits,
    // the acl sees an anonymous client.
    let mut anonymous = broker.v5("nobody").await;
    assert!(!granted(&mut anonymous, "admin/#").await);
}

#[tokio::test]
async fn trust_claimed_username_restores_mosquittos_behaviour() {
    let (broker, _dir) = open_broker(&[], |c| c.listeners[0].trust_claimed_username = true).await;
    let mut claimed = claiming(&broker, "claimed", "admin").await;
    assert!(granted(&mut claimed, "admin/#").await);
    assert_eq!(publish_qos1(&mut claimed, "admin/config", false).await, PubAckReason::Success);
}

#[tokio::test]
async fn a_certificate_without_identity_as_username_does_not_verify_the_claimed_name() {
    let pki = ServerPki::new("claimed-name-cert", ClientAuth::Required);
    let (broker, _dir) = open_broker(&[], |c| {
        pki.apply(&mut c.listeners[0], ListenerProtocol::Tls);
        c.listeners[0].allow_anonymous = Anonymous::Never;
    })
    .await;
    // Any holder of a certificate from the CA: admitted by it, but its
    // CONNECT user name is only a claim.
    let cert = pki.ca.client("device-7", &[]);
    let tls = Transport::tls_with_config(TlsConfiguration::Rustls(client_config(&pki.ca.pem(), Some(&cert), &[])));
    let mut holder = broker
        .v5_with("device-7", |o| {
            o.set_transport(tls);
            o.set_credentials("admin", "");
        })
        .await;
    assert!(!granted(&mut holder, "admin/#").await, "subscribing to admin/#");
    assert_eq!(publish_qos1(&mut holder, "admin/config", false).await, PubAckReason::NotAuthorized);
    assert!(granted(&mut holder, "public/#").await);
}
