//! The shipped `rbac` plugin in the broker: a TOML document read through a
//! read grant, users and client ids in groups and roles, priorities,
//! retained messages and wills, and roles granted by `cert-identity`.

use bytes::Bytes;
use moat::config::ClientAuth;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5::{LastWill, PubAckReason};

use crate::acl_plugin::{as_user, broker_with, granted, granted_file, publish_qos1};
use crate::cert_identity_plugin::{device, mtls_broker};
use crate::pki::ServerPki;

const DOCUMENT: &str = r##"
anonymous_group = "guests"

[defaults]
publish = "deny"
subscribe = "deny"
receive = "deny"

[[roles]]
name = "sensor"
permissions = [
  { action = "publish", topic = "sensors/%c/#", allow = true },
  { action = "read", topic = "commands/%c/#", allow = true },
]

[[roles]]
name = "operator"
permissions = [
  { action = "read", topic = "sensors/#", allow = true },
  { action = "publish", topic = "commands/#", allow = true },
  { action = "all", topic = "sensors/restricted/#", allow = false, priority = 10 },
]

[[roles]]
name = "admin"
permissions = [{ action = "all", topic = "#", allow = true }]

[[roles]]
name = "guest"
permissions = [{ action = "read", topic = "public/#", allow = true }]

[[groups]]
name = "fleet"
roles = ["sensor"]

[[groups]]
name = "ops"
roles = ["operator"]

[[groups]]
name = "guests"
roles = ["guest"]

[[clients]]
username = "alice"
groups = ["ops"]

[[clients]]
client_id = "sensor-1"
groups = ["fleet"]

[[clients]]
username = "root"
roles = ["admin"]
"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_document_through_the_broker() {
    let (_files, sidecar) = granted_file("rbac.toml", DOCUMENT, "file");
    let (broker, _dir) = broker_with(&[("rbac", "rbac", &sidecar)], |_| {}).await;
    let mut root = as_user(&broker, "root-1", "root").await;
    assert_eq!(publish_qos1(&mut root, "sensors/restricted/r", true).await, PubAckReason::NoMatchingSubscribers);
    assert_eq!(publish_qos1(&mut root, "sensors/open/r", true).await, PubAckReason::NoMatchingSubscribers);

    // alice: the ops group's operator role; the priority deny comes first.
    let mut alice = as_user(&broker, "alice-1", "alice").await;
    assert!(!granted(&mut alice, "sensors/restricted/#").await);
    assert!(granted(&mut alice, "sensors/#").await);
    let retained = alice.publish().await;
    assert_eq!((retained.topic, retained.retain), (Bytes::from("sensors/open/r"), true));
    alice.no_publish().await;
    publish_qos1(&mut root, "sensors/restricted/live", false).await;
    publish_qos1(&mut root, "sensors/k/live", false).await;
    assert_eq!(alice.publish().await.topic, Bytes::from("sensors/k/live"));
    alice.no_publish().await;
    assert_eq!(publish_qos1(&mut alice, "sensors/k/live", false).await, PubAckReason::NotAuthorized);

    // sensor-1: by client id, whatever its user name; `%c` in the role.
    let mut sensor = as_user(&broker, "sensor-1", "anyone").await;
    assert_eq!(publish_qos1(&mut sensor, "sensors/sensor-1/t", false).await, PubAckReason::Success);
    assert_eq!(alice.publish().await.topic, Bytes::from("sensors/sensor-1/t"));
    assert_eq!(publish_qos1(&mut sensor, "sensors/sensor-2/t", false).await, PubAckReason::NotAuthorized);
    assert!(granted(&mut sensor, "commands/sensor-1/#").await);
    assert!(!granted(&mut sensor, "commands/#").await);

    // Anonymous clients get the guests group; others get the default.
    let mut guest = broker.v5("guest").await;
    assert!(granted(&mut guest, "public/#").await);
    let mut stranger = as_user(&broker, "stranger", "stranger").await;
    assert!(!granted(&mut stranger, "public/#").await);
    assert_eq!(publish_qos1(&mut stranger, "public/x", false).await, PubAckReason::NotAuthorized);
}

#[tokio::test]
async fn rbac_drops_a_will_the_client_may_not_publish() {
    let sidecar = format!("[config]\n{}", DOCUMENT.replace("[defaults]", "[config.defaults]"));
    let sidecar = sidecar
        .replace("[[roles]]", "[[config.roles]]")
        .replace("[[groups]]", "[[config.groups]]")
        .replace("[[clients]]", "[[config.clients]]");
    let (broker, _dir) = broker_with(&[("rbac", "rbac", &sidecar)], |_| {}).await;
    let mut root = as_user(&broker, "root-1", "root").await;
    assert!(granted(&mut root, "#").await);
    let will = |topic: &str| LastWill::new(topic, "gone", Q5::AtLeastOnce, false, None);
    let alice = broker
        .v5_with("alice-1", |o| {
            o.set_credentials("alice", "");
            o.set_last_will(will("sensors/alice/status"));
        })
        .await;
    alice.kill();
    let sensor = broker
        .v5_with("sensor-1", |o| {
            o.set_last_will(will("sensors/sensor-1/status"));
        })
        .await;
    sensor.kill();
    assert_eq!(root.publish().await.topic, Bytes::from("sensors/sensor-1/status"));
    root.no_publish().await;
}

#[tokio::test]
async fn rbac_honours_roles_granted_by_cert_identity() {
    let pki = ServerPki::new("cert-identity-rbac", ClientAuth::Required);
    let cert_sidecar = "order = 1\n[config]\nrole = \"operator\"\n";
    let rbac_sidecar = format!(
        "order = 2\n[config]\n{}",
        DOCUMENT
            .replace("[defaults]", "[config.defaults]")
            .replace("[[roles]]", "[[config.roles]]")
            .replace("[[groups]]", "[[config.groups]]")
            .replace("[[clients]]", "[[config.clients]]")
    );
    let plugins = [("cert", "cert-identity", cert_sidecar), ("rbac", "rbac", rbac_sidecar.as_str())];
    let (broker, _dir) = mtls_broker(&pki, &plugins).await;
    // The certificate's user is unknown to the document: only the granted
    // role gives it rights. Claiming `root` in CONNECT changes nothing.
    let cert = pki.ca.client("panel-1", &[]);
    let mut panel = device(&broker, &pki, "panel", &cert, "root").await;
    assert!(granted(&mut panel, "sensors/#").await);
    assert!(!granted(&mut panel, "sensors/restricted/#").await);
    assert!(!granted(&mut panel, "#").await, "not root");
    assert_eq!(publish_qos1(&mut panel, "commands/sensor-1/reboot", false).await, PubAckReason::NoMatchingSubscribers);
    assert_eq!(publish_qos1(&mut panel, "sensors/x", false).await, PubAckReason::NotAuthorized);
}
