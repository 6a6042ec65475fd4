//! The shipped `jwt` plugin in the broker: tokens in the password field
//! (3.1.1 and 5) and in v5 Authentication Data, claims as the client's
//! topic permissions, expired and forged tokens refused.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use moat::config::Anonymous;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, PubAckReason, SubscribeReasonCode};
use sha2::Sha256;

use crate::harness::{Raw, TestBroker, auth_properties, connect_v5_with, frame};
use crate::plugin_support::stage;

const SECRET: &str = "integration-secret-of-at-least-32-bytes";

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// An HS256 token over `claims`, signed with `secret`.
fn token(claims: &serde_json::Value, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

fn claims(sub: &str, exp: u64) -> serde_json::Value {
    serde_json::json!({
        "sub": sub,
        "exp": exp,
        "publish": ["devices/%u/#"],
        "subscribe": ["commands/%u/+"],
    })
}

async fn broker() -> (TestBroker, moat::plugin::fixtures::StagedDir) {
    let sidecar = format!("[config]\nleeway_s = 0\nkeys = [{{ alg = \"HS256\", secret = \"{SECRET}\" }}]\n");
    let dir = stage(&[("jwt", "jwt", &sidecar)]);
    let path = dir.path().to_owned();
    let broker = TestBroker::with(|c| {
        c.plugins.dir = Some(path);
        c.listeners[0].allow_anonymous = Anonymous::Never;
    })
    .await;
    (broker, dir)
}

/// A 3.1.1 CONNECT with a user name and password.
fn connect_v4_login(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02 | 0x80 | 0x40, 0, 30];
    for field in [client_id, user, password] {
        body.extend((field.len() as u16).to_be_bytes());
        body.extend(field.as_bytes());
    }
    frame(0x10, &body)
}

async fn connack_of(broker: &TestBroker, connect: &[u8]) -> Vec<u8> {
    let mut raw: Raw = broker.raw().await;
    raw.send(connect).await;
    raw.read_to_close().await
}

#[tokio::test]
async fn a_valid_token_connects_and_may_publish_only_where_its_claims_allow() {
    let (broker, _dir) = broker().await;
    let good = token(&claims("alice", now_s() + 3600), SECRET);
    let mut alice = broker
        .v5_with("alice-1", |o| {
            o.set_credentials("alice", good.clone());
        })
        .await;
    let granted = alice.subscribe("commands/alice/+", Q5::AtLeastOnce).await;
    assert_eq!(granted.return_codes, [SubscribeReasonCode::Success(Q5::AtLeastOnce)]);
    let refused = alice.subscribe("commands/#", Q5::AtLeastOnce).await;
    assert_eq!(refused.return_codes, [SubscribeReasonCode::NotAuthorized]);

    alice.client.publish("devices/bob/x", Q5::AtLeastOnce, false, "no").await.expect("publish");
    alice.client.publish("devices/alice/x", Q5::AtLeastOnce, false, "yes").await.expect("publish");
    let mut acks = Vec::new();
    while acks.len() < 2 {
        match alice.next().await {
            Some(V5Packet::PubAck(ack)) => acks.push(ack.reason),
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    assert_eq!(acks[0], PubAckReason::NotAuthorized);
    assert_eq!(acks[1], PubAckReason::NoMatchingSubscribers, "allowed, and nobody listens");

    // The user name comes from the token: a 3.1.1 client may leave it empty
    // of meaning, but not contradict it.
    let v4 = broker
        .v4_with("alice-2", |o| {
            o.set_credentials("alice", good.clone());
        })
        .await;
    assert_eq!(v4.connack.code, rumqttc::ConnectReturnCode::Success);
    let as_bob = connack_of(&broker, &connect_v4_login("bob-1", "bob", &good)).await;
    assert_eq!(as_bob, [0x20, 2, 0, 4], "3.1.1 bad user name or password");
}

#[tokio::test]
async fn expired_and_forged_tokens_are_refused() {
    let (broker, _dir) = broker().await;
    let expired = token(&claims("alice", now_s() - 60), SECRET);
    let forged = token(&claims("alice", now_s() + 3600), "another-secret-of-at-least-32-bytes!!");
    for bad in [&expired, &forged] {
        let v5 = connect_v5_with("c5", Some("alice"), Some(bad.as_bytes()), &[]);
        assert_eq!(connack_of(&broker, &v5).await, [0x20, 3, 0, 0x86, 0], "v5 bad user name or password");
        let v4 = connect_v4_login("c4", "alice", bad);
        assert_eq!(connack_of(&broker, &v4).await, [0x20, 2, 0, 4], "3.1.1 bad user name or password");
    }
    // Anonymous clients are not the plugin's to admit.
    let anonymous = connect_v5_with("anon", None, None, &[]);
    assert_eq!(connack_of(&broker, &anonymous).await, [0x20, 3, 0, 0x87, 0], "v5 not authorized");
}

#[tokio::test]
async fn a_token_in_v5_authentication_data_is_a_single_step_exchange() {
    let (broker, _dir) = broker().await;
    let good = token(&claims("carol", now_s() + 3600), SECRET);
    let props = auth_properties("JWT", Some(good.as_bytes()));
    let mut raw = broker.raw().await;
    raw.send(&connect_v5_with("carol-1", None, None, &props)).await;
    let (first, body) = raw.read_packet().await;
    assert_eq!((first, body[1]), (0x20, 0), "CONNACK success");
    let method = [&[0x15u8, 0, 3][..], b"JWT"].concat();
    assert!(body.windows(method.len()).any(|w| w == method), "CONNACK echoes the method: {body:02x?}");

    let forged = token(&claims("carol", now_s() + 3600), "another-secret-of-at-least-32-bytes!!");
    let props = auth_properties("JWT", Some(forged.as_bytes()));
    let refused = connack_of(&broker, &connect_v5_with("carol-2", None, None, &props)).await;
    assert_eq!(refused[..4], [0x20, 3, 0, 0x86]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_a_jwks_file_in_a_granted_directory() {
    let keys = tempfile::tempdir().expect("tempdir");
    let jwks = keys.path().join("jwks.json");
    let k = URL_SAFE_NO_PAD.encode(SECRET);
    std::fs::write(&jwks, format!(r#"{{"keys":[{{"kty":"oct","kid":"k1","alg":"HS256","k":"{k}"}}]}}"#))
        .expect("jwks file");
    let sidecar = format!(
        "[config]\nkeys = [{{ jwks_file = {:?} }}]\n[grants]\nread = [{:?}]\n",
        jwks.to_str().expect("utf-8 temp path"),
        keys.path().to_str().expect("utf-8 temp path")
    );
    let dir = stage(&[("jwt", "jwt", &sidecar)]);
    let path = dir.path().to_owned();
    let broker = TestBroker::with(|c| {
        c.plugins.dir = Some(path);
        c.listeners[0].allow_anonymous = Anonymous::Never;
    })
    .await;
    let good = token(&claims("dave", now_s() + 3600), SECRET);
    broker
        .v5_with("dave-1", |o| {
            o.set_credentials("dave", good.clone());
        })
        .await;
    let forged = token(&claims("dave", now_s() + 3600), "another-secret-of-at-least-32-bytes!!");
    let refused = connack_of(&broker, &connect_v5_with("dave-2", None, Some(forged.as_bytes()), &[])).await;
    assert_eq!(refused, [0x20, 3, 0, 0x86, 0]);
}

#[tokio::test]
async fn a_jwks_with_a_short_symmetric_key_stops_start_up_naming_the_key() {
    let keys = tempfile::tempdir().expect("tempdir");
    let jwks = keys.path().join("jwks.json");
    let k = URL_SAFE_NO_PAD.encode(b"only-16-bytes!!!");
    std::fs::write(&jwks, format!(r#"{{"keys":[{{"kty":"oct","kid":"weak","alg":"HS256","k":"{k}"}}]}}"#))
        .expect("jwks file");
    let sidecar = format!(
        "[config]\nkeys = [{{ jwks_file = {:?} }}]\n[grants]\nread = [{:?}]\n",
        jwks.to_str().expect("utf-8 temp path"),
        keys.path().to_str().expect("utf-8 temp path")
    );
    let dir = stage(&[("jwt", "jwt", &sidecar)]);
    let mut config = moat::config::Config::default();
    config.listeners[0].bind = ([127, 0, 0, 1], 0).into();
    config.plugins.dir = Some(dir.path().to_owned());
    let err = match moat::Server::bind(config).await {
        Err(e) => format!("{:#}", anyhow::Error::from(e)),
        Ok(_) => panic!("a weak key must stop start-up"),
    };
    assert!(err.contains("jwt") && err.contains("JWK `weak`") && err.contains("at least 32 bytes"), "{err}");
}

/// A v5 QoS 1 PUBLISH of `topic` with packet id `id` and no properties.
fn publish_qos1_frame(topic: &str, id: u16) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend(topic.as_bytes());
    body.extend(id.to_be_bytes());
    body.push(0); // no properties
    body.extend(b"m");
    frame(0x32, &body)
}

/// The PUBACK reason code for the PUBLISH just sent (0 when omitted).
async fn puback_reason(raw: &mut Raw, id: u16) -> u8 {
    let (first, body) = raw.read_packet().await;
    assert_eq!((first, &body[..2]), (0x40, &id.to_be_bytes()[..]), "PUBACK {body:02x?}");
    body.get(2).copied().unwrap_or(0)
}

/// MQTT 5 re-authentication with a new token replaces the old token's
/// permissions at once: nothing the old token allowed survives in the
/// client's attributes or in the connection's cached verdicts.
#[tokio::test]
async fn re_authentication_with_a_new_token_replaces_its_permissions() {
    let (broker, _dir) = broker().await;
    let grant = |topic: &str| {
        let claims = serde_json::json!({ "sub": "dave", "exp": now_s() + 3600, "publish": [topic] });
        token(&claims, SECRET)
    };
    let mut raw = broker.raw().await;
    let first = grant("a/#");
    raw.send(&connect_v5_with("dave-1", None, None, &auth_properties("JWT", Some(first.as_bytes())))).await;
    let (kind, body) = raw.read_packet().await;
    assert_eq!((kind, body[1]), (0x20, 0), "CONNACK success");
    raw.send(&publish_qos1_frame("a/1", 1)).await;
    assert_eq!(puback_reason(&mut raw, 1).await, 0x10, "allowed: no matching subscribers");
    raw.send(&publish_qos1_frame("b/1", 2)).await;
    assert_eq!(puback_reason(&mut raw, 2).await, 0x87);

    let second = grant("b/#");
    let props = auth_properties("JWT", Some(second.as_bytes()));
    let mut body = vec![0x19];
    body.extend(crate::harness::varint(props.len()));
    body.extend(props);
    raw.send(&frame(0xF0, &body)).await;
    let (kind, body) = raw.read_packet().await;
    assert_eq!((kind, body[0]), (0xF0, 0x00), "AUTH success: {body:02x?}");
    raw.send(&publish_qos1_frame("a/1", 3)).await;
    assert_eq!(puback_reason(&mut raw, 3).await, 0x87, "the old token's right is gone");
    raw.send(&publish_qos1_frame("b/1", 4)).await;
    assert_eq!(puback_reason(&mut raw, 4).await, 0x10);
}
