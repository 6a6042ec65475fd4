//! Tokens made here with the same crates the plugin verifies with.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer;
use p256::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::*;

const SECRET: &str = "a-shared-secret-of-32-bytes-or-more!";
const RSA_PRIVATE: &str = include_str!("testdata/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("testdata/rsa_public.pem");
const EC_PRIVATE: &str = include_str!("testdata/ec_private.pem");
const EC_PUBLIC: &str = include_str!("testdata/ec_public.pem");

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token signed with `sign` over a header with `alg` (and `kid`).
fn token_with(header: Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let signed = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let signature = sign(signed.as_bytes());
    format!("{signed}.{}", b64(&signature))
}

fn hs256(secret: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn rs256(data: &[u8]) -> Vec<u8> {
    let key = RsaPrivateKey::from_pkcs8_pem(RSA_PRIVATE).expect("test key");
    key.sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(data)).expect("sign")
}

fn es256(data: &[u8]) -> Vec<u8> {
    let key = p256::ecdsa::SigningKey::from_pkcs8_pem(EC_PRIVATE).expect("test key");
    let sig: p256::ecdsa::Signature = key.sign(data);
    sig.to_bytes().to_vec()
}

fn hs(claims: &Value) -> String {
    token_with(json!({"alg": "HS256", "typ": "JWT"}), claims, |d| hs256(SECRET.as_bytes(), d))
}

fn now() -> u64 {
    now_ms() / 1000
}

/// Claims valid for an hour, for user `alice`.
fn claims() -> Value {
    json!({
        "sub": "alice",
        "exp": now() + 3600,
        "publish": ["users/%u/#", "telemetry/%c"],
        "subscribe": ["commands/%u/+"],
    })
}

fn plugin(extra: Value) -> Jwt {
    let mut config = json!({
        "keys": [
            {"alg": "HS256", "kid": "hs", "secret": SECRET},
            {"alg": "RS256", "kid": "rs", "pem": RSA_PUBLIC},
            {"alg": "ES256", "kid": "es", "pem": EC_PUBLIC},
        ],
    });
    if let (Value::Object(base), Value::Object(more)) = (&mut config, extra) {
        base.extend(more);
    }
    let (plugin, manifest) = Jwt::init(testing::config(&config.to_string())).expect("init");
    assert_eq!(manifest.hooks, [Hook::Authenticate, Hook::Authorize]);
    plugin
}

fn password(token: &str) -> Credentials {
    testing::login("", token.as_bytes())
}

fn refused(outcome: AuthOutcome, why: &str) {
    match outcome {
        AuthOutcome::Deny(reason) => assert!(reason.contains(why), "{reason} should say {why}"),
        other => panic!("expected a denial ({why}), got {other:?}"),
    }
}

fn granted(outcome: AuthOutcome) -> Grant {
    match outcome {
        AuthOutcome::Allow(grant) => grant,
        other => panic!("expected allow, got {other:?}"),
    }
}

#[test]
fn valid_tokens_of_each_algorithm_are_allowed() {
    let mut p = plugin(json!({}));
    let client = testing::client(None);
    let hs = hs(&claims());
    let rs = token_with(json!({"alg": "RS256", "kid": "rs"}), &claims(), rs256);
    let es = token_with(json!({"alg": "ES256"}), &claims(), es256);
    for token in [hs, rs, es] {
        let grant = granted(p.authenticate(&client, &password(&token)));
        assert_eq!(grant.username_override.as_deref(), Some("alice"));
        assert_eq!(grant.attributes[0], (ATTR_SUBJECT.to_owned(), "alice".to_owned()));
    }
}

#[test]
fn token_in_v5_authentication_data() {
    let mut p = plugin(json!({}));
    let mut creds = testing::login("alice", b"");
    creds.password = None;
    creds.auth_method = Some("JWT".into());
    creds.auth_data = Some(hs(&claims()).into_bytes());
    granted(p.authenticate(&testing::client(None), &creds));
    creds.auth_method = Some("SCRAM-SHA-256".into());
    assert!(matches!(p.authenticate(&testing::client(None), &creds), AuthOutcome::Ignore));
    creds.auth_method = Some("JWT".into());
    creds.auth_data = None;
    refused(p.authenticate(&testing::client(None), &creds), "no token");
}

#[test]
fn expired_and_not_yet_valid_tokens_are_refused_with_leeway() {
    let mut p = plugin(json!({"leeway_s": 10}));
    let client = testing::client(None);
    let mut c = claims();
    c["exp"] = json!(now() - 60);
    refused(p.authenticate(&client, &password(&hs(&c))), "expired");
    c["exp"] = json!(now() - 5);
    granted(p.authenticate(&client, &password(&hs(&c))));
    let mut c = claims();
    c["nbf"] = json!(now() + 60);
    refused(p.authenticate(&client, &password(&hs(&c))), "not valid yet");
    c["nbf"] = json!(now() + 5);
    granted(p.authenticate(&client, &password(&hs(&c))));
    let mut c = claims();
    c.as_object_mut().expect("object").remove("exp");
    refused(p.authenticate(&client, &password(&hs(&c))), "no `exp`");
}

#[test]
fn audience_and_issuer_must_match_when_configured() {
    let mut p = plugin(json!({"audience": "mqtt", "issuer": "https://id.example"}));
    let client = testing::client(None);
    let mut c = claims();
    c["aud"] = json!(["web", "mqtt"]);
    c["iss"] = json!("https://id.example");
    granted(p.authenticate(&client, &password(&hs(&c))));
    c["aud"] = json!("web");
    refused(p.authenticate(&client, &password(&hs(&c))), "audience");
    c["aud"] = json!("mqtt");
    c["iss"] = json!("https://evil.example");
    refused(p.authenticate(&client, &password(&hs(&c))), "issuer");
    c.as_object_mut().expect("object").remove("iss");
    refused(p.authenticate(&client, &password(&hs(&c))), "issuer");
}

#[test]
fn forged_signatures_and_alg_none_are_refused() {
    let mut p = plugin(json!({}));
    let client = testing::client(None);
    let forged = token_with(json!({"alg": "HS256"}), &claims(), |d| hs256(b"another-secret-another-secret-xx", d));
    refused(p.authenticate(&client, &password(&forged)), "signature");
    // A valid signature over other claims.
    let genuine = hs(&claims());
    let mut evil = claims();
    evil["publish"] = json!(["#"]);
    let tampered = hs(&evil);
    let spliced = format!(
        "{}.{}",
        &tampered[..tampered.rfind('.').expect("dots")],
        &genuine[genuine.rfind('.').expect("dots") + 1..]
    );
    refused(p.authenticate(&client, &password(&spliced)), "signature");
    let none = token_with(json!({"alg": "none"}), &claims(), |_| Vec::new());
    let none = format!("{}.", none.trim_end_matches('.'));
    refused(p.authenticate(&client, &password(&none)), "`none` is not accepted");
    let mut creds = password(&none);
    creds.password = None;
    creds.auth_method = Some("JWT".into());
    creds.auth_data = Some(none.into_bytes());
    refused(p.authenticate(&client, &creds), "`none` is not accepted");
}

#[test]
fn an_rsa_public_key_is_never_an_hmac_secret() {
    let mut p = plugin(json!({}));
    let client = testing::client(None);
    // The classic confusion: sign HS256 with the bytes of the RS256 public
    // key (as PEM text and as DER), naming the RSA key's id.
    let der = rsa::RsaPublicKey::from(&RsaPrivateKey::from_pkcs8_pem(RSA_PRIVATE).expect("key"))
        .to_public_key_der()
        .expect("der");
    for secret in [RSA_PUBLIC.as_bytes(), der.as_bytes()] {
        for header in [json!({"alg": "HS256", "kid": "rs"}), json!({"alg": "HS256"})] {
            let token = token_with(header, &claims(), |d| hs256(secret, d));
            assert!(matches!(p.authenticate(&client, &password(&token)), AuthOutcome::Deny(_)));
        }
    }
    // And an RS256 token is not checked against the ES256 key or vice versa.
    let es_as_rs = token_with(json!({"alg": "RS256", "kid": "es"}), &claims(), es256);
    refused(p.authenticate(&client, &password(&es_as_rs)), "no RS256 key with kid `es`");
    let n = RsaPrivateKey::from_pkcs8_pem(RSA_PRIVATE).expect("key").n().bits();
    assert_eq!(n, 2048);
}

#[test]
fn kid_selects_the_key() {
    let mut p = plugin(json!({}));
    let client = testing::client(None);
    let right = token_with(json!({"alg": "HS256", "kid": "hs"}), &claims(), |d| hs256(SECRET.as_bytes(), d));
    granted(p.authenticate(&client, &password(&right)));
    let unknown = token_with(json!({"alg": "HS256", "kid": "nope"}), &claims(), |d| hs256(SECRET.as_bytes(), d));
    refused(p.authenticate(&client, &password(&unknown)), "no HS256 key with kid `nope`");
    let wrong = token_with(json!({"alg": "RS256", "kid": "rs"}), &claims(), |d| hs256(SECRET.as_bytes(), d));
    refused(p.authenticate(&client, &password(&wrong)), "signature");
}

#[test]
fn user_name_comes_from_the_claim_and_must_match_connect() {
    let mut p = plugin(json!({}));
    let client = testing::client(None);
    let token = hs(&claims());
    granted(p.authenticate(&client, &testing::login("alice", token.as_bytes())));
    refused(p.authenticate(&client, &testing::login("bob", token.as_bytes())), "user name differs");
    let mut lax = plugin(json!({"match_username": false, "username_claim": "email"}));
    let mut c = claims();
    c["email"] = json!("alice@example.com");
    let grant = granted(lax.authenticate(&client, &testing::login("bob", hs(&c).as_bytes())));
    assert_eq!(grant.username_override.as_deref(), Some("alice@example.com"));
    refused(lax.authenticate(&client, &password(&token)), "no string claim `email`");
}

#[test]
fn passwords_that_are_not_tokens_are_left_to_others() {
    let mut p = plugin(json!({}));
    let client = testing::client(None);
    assert!(matches!(p.authenticate(&client, &testing::login("alice", b"hunter2")), AuthOutcome::Ignore));
    let mut anonymous = testing::login("alice", b"");
    anonymous.password = None;
    assert!(matches!(p.authenticate(&client, &anonymous), AuthOutcome::Ignore));
}

fn connected(p: &mut Jwt, claims: &Value, client_id: &str) -> ClientInfo {
    let grant = granted(p.authenticate(&testing::client(None), &password(&hs(claims))));
    let mut client = testing::client(grant.username_override.as_deref());
    client.client_id = client_id.into();
    client.attributes = grant.attributes;
    client
}

fn allows(p: &mut Jwt, client: &ClientInfo, action: Action, topic: &str) -> bool {
    match p.authorize(client, action, topic, QoS::AtMostOnce, false) {
        Decision::Allow(ttl) => {
            assert!(ttl.is_some_and(|t| t <= 60_000));
            true
        }
        Decision::Deny(_) => false,
        Decision::Ignore => panic!("a JWT client is always decided"),
    }
}

#[test]
fn claims_become_topic_permissions() {
    let mut p = plugin(json!({}));
    let alice = connected(&mut p, &claims(), "dev1");
    assert!(allows(&mut p, &alice, Action::Publish, "users/alice/x/y"));
    assert!(allows(&mut p, &alice, Action::Will, "telemetry/dev1"));
    assert!(!allows(&mut p, &alice, Action::Publish, "users/bob/x"));
    assert!(!allows(&mut p, &alice, Action::Publish, "telemetry/dev2"));
    match p.authorize(&alice, Action::Publish, "telemetry/dev2", QoS::AtMostOnce, false) {
        Decision::Deny(why) => assert_eq!(why, "the client's token does not allow publishing to telemetry/dev2"),
        other => panic!("a denial, not {other:?}"),
    }
    assert!(allows(&mut p, &alice, Action::Subscribe, "commands/alice/+"));
    assert!(allows(&mut p, &alice, Action::Subscribe, "commands/alice/reboot"));
    assert!(!allows(&mut p, &alice, Action::Subscribe, "commands/alice/#"));
    assert!(!allows(&mut p, &alice, Action::Subscribe, "users/alice/x"));
    assert!(allows(&mut p, &alice, Action::Receive, "commands/alice/reboot"));
    assert!(!allows(&mut p, &alice, Action::Retained, "commands/bob/reboot"));
    // Clients the plugin did not authenticate are someone else's business.
    assert!(matches!(
        p.authorize(&testing::client(Some("x")), Action::Publish, "a", QoS::AtMostOnce, false),
        Decision::Ignore
    ));
}

#[test]
fn hostile_names_never_widen_rules() {
    let mut p = plugin(json!({"match_username": false}));
    for evil in ["#", "+", "a/#", "%u"] {
        let mut c = claims();
        c["sub"] = json!(evil);
        let client = connected(&mut p, &c, evil);
        assert!(!allows(&mut p, &client, Action::Publish, "users/x/y"), "{evil}");
        assert!(!allows(&mut p, &client, Action::Publish, "telemetry/x"), "{evil}");
        assert!(!allows(&mut p, &client, Action::Subscribe, "commands/x/y"), "{evil}");
    }
}

#[test]
fn a_placeholder_in_a_name_is_inserted_literally() {
    // Substitution is one pass: the user `x%c` on client `dev1` owns
    // `users/x%c/...`, not the topics of a user called `xdev1`.
    let mut p = plugin(json!({"match_username": false}));
    let mut c = claims();
    c["sub"] = json!("x%c");
    let client = connected(&mut p, &c, "dev1");
    assert!(allows(&mut p, &client, Action::Publish, "users/x%c/y"));
    assert!(!allows(&mut p, &client, Action::Publish, "users/xdev1/y"));
}

#[test]
fn shared_subscriptions_are_judged_by_their_topic_filter() {
    let mut p = plugin(json!({}));
    let alice = connected(&mut p, &claims(), "dev1");
    assert!(allows(&mut p, &alice, Action::Subscribe, "$share/g/commands/alice/+"));
    assert!(!allows(&mut p, &alice, Action::Subscribe, "$share/g/commands/bob/+"));
}

#[test]
fn the_latest_grant_replaces_earlier_ones_and_expiry_denies() {
    let mut p = plugin(json!({"leeway_s": 0}));
    let mut client = connected(&mut p, &claims(), "dev1");
    let mut narrower = claims();
    narrower["publish"] = json!("only/this");
    let again = connected(&mut p, &narrower, "dev1");
    client.attributes.extend(again.attributes);
    assert!(allows(&mut p, &client, Action::Publish, "only/this"));
    assert!(!allows(&mut p, &client, Action::Publish, "users/alice/x"));
    // An allow is cached no longer than the token lives; after exp, deny.
    let mut soon = claims();
    soon["exp"] = json!(now() + 2);
    let short = connected(&mut p, &soon, "dev1");
    match p.authorize(&short, Action::Publish, "users/alice/x", QoS::AtMostOnce, false) {
        Decision::Allow(Some(ttl)) => assert!(ttl <= 2000),
        other => panic!("{other:?}"),
    }
    let mut stale = short.clone();
    for (k, v) in &mut stale.attributes {
        if k == ATTR_EXP {
            *v = (now() - 1).to_string();
        }
    }
    assert!(!allows(&mut p, &stale, Action::Publish, "users/alice/x"));
}

#[test]
fn config_errors_are_explained() {
    let bad = |json: Value| match Jwt::init(testing::config(&json.to_string())) {
        Err(e) => e,
        Ok(_) => panic!("{json} should be refused"),
    };
    assert!(bad(json!({})).contains("keys"));
    assert!(bad(json!({"keys": [{"alg": "none", "secret": SECRET}]})).contains("unsupported alg"));
    assert!(bad(json!({"keys": [{"alg": "HS256", "secret": "short"}]})).contains("32 bytes"));
    assert!(bad(json!({"keys": [{"alg": "HS256", "pem": RSA_PUBLIC}]})).contains("secret"));
    assert!(bad(json!({"keys": [{"alg": "RS256", "pem": EC_PUBLIC}]})).contains("RSA"));
    assert!(bad(json!({"keys": [{"alg": "HS256", "secret": SECRET}], "leeway": 3})).contains("unknown config key"));
    assert!(bad(json!({"keys": [{"pem_file": "/nonexistent/k.pem", "alg": "RS256"}]})).contains("cannot read"));
}

#[test]
fn weak_keys_are_refused_naming_them() {
    use rsa::pkcs1::EncodeRsaPublicKey;
    // A 1024-bit modulus (odd, top bit set): the size is all that matters.
    let mut n = vec![0u8; 128];
    n[0] = 0x80;
    n[127] = 0x01;
    let weak = rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(&n), rsa::BigUint::from(65_537u32)).expect("key");
    let pem = weak.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).expect("pem");
    let init = |config: Value| Jwt::init(testing::config(&config.to_string())).map(|_| ()).expect_err("weak key");
    let err = init(json!({"keys": [{"alg": "RS256", "pem": pem}]}));
    assert!(err.contains("keys[0]") && err.contains("2048 bits") && err.contains("1024"), "{err}");

    let dir = std::env::temp_dir().join(format!("moat-jwt-weak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let jwks_path = dir.join("jwks.json");
    let path = jwks_path.to_str().expect("utf-8").to_owned();
    let sets = [
        (json!({"kty": "RSA", "kid": "old", "alg": "RS256", "n": b64(&n), "e": "AQAB"}), "JWK `old`"),
        (json!({"kty": "oct", "kid": "short", "alg": "HS256", "k": b64(b"sixteen-byte-key")}), "JWK `short`"),
    ];
    for (key, name) in sets {
        std::fs::write(&jwks_path, json!({"keys": [key]}).to_string()).expect("write");
        let err = init(json!({"keys": [{"jwks_file": path}]}));
        assert!(err.contains(name) && err.contains("at least"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn keys_from_files_and_jwks() {
    let dir = std::env::temp_dir().join(format!("moat-jwt-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let pem_path = dir.join("rs.pem");
    std::fs::write(&pem_path, RSA_PUBLIC).expect("write");
    let rsa = rsa::RsaPublicKey::from(&RsaPrivateKey::from_pkcs8_pem(RSA_PRIVATE).expect("key"));
    let ec = p256::ecdsa::SigningKey::from_pkcs8_pem(EC_PRIVATE).expect("key");
    let point = ec.verifying_key().to_encoded_point(false);
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig", "n": b64(&rsa.n().to_bytes_be()), "e": b64(&rsa.e().to_bytes_be())},
        {"kty": "EC", "kid": "e1", "crv": "P-256", "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y"))},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
    ]});
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).expect("write");
    let config = json!({"keys": [
        {"alg": "RS256", "kid": "file", "pem_file": pem_path.to_str().expect("utf-8")},
        {"jwks_file": jwks_path.to_str().expect("utf-8")},
    ]});
    let (mut p, _) = Jwt::init(testing::config(&config.to_string())).expect("init");
    let client = testing::client(None);
    for (alg, kid) in [("RS256", "file"), ("RS256", "r1"), ("ES256", "e1")] {
        let sign = if alg == "RS256" { rs256 } else { es256 };
        let token = token_with(json!({"alg": alg, "kid": kid}), &claims(), sign);
        granted(p.authenticate(&client, &password(&token)));
    }
    let token = token_with(json!({"alg": "RS256", "kid": "enc"}), &claims(), rs256);
    refused(p.authenticate(&client, &password(&token)), "kid `enc`");
    let _ = std::fs::remove_dir_all(&dir);
}
