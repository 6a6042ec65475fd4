//! A SCRAM client made with the same crates, against the plugin natively.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use super::*;

/// A credentials line as `moat passwd --scram` writes it.
pub fn entry(user: &str, password: &str, salt: &[u8], iterations: u32) -> String {
    let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(&client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "{user}:SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

/// The client side of one exchange.
struct Client {
    password: String,
    bare: String,
    auth_message: String,
    salted: Vec<u8>,
}

impl Client {
    fn first(user: &str, password: &str, nonce: &str) -> (Client, String) {
        let bare = format!("n={},r={nonce}", user.replace('=', "=3D").replace(',', "=2C"));
        let client =
            Client { password: password.into(), bare: bare.clone(), auth_message: String::new(), salted: Vec::new() };
        (client, format!("n,,{bare}"))
    }

    fn last(&mut self, server_first: &str) -> String {
        let mut nonce = "";
        let mut salt = Vec::new();
        let mut iterations = 0;
        for field in server_first.split(',') {
            match field.split_at(2) {
                ("r=", v) => nonce = v,
                ("s=", v) => salt = STANDARD.decode(v).expect("salt"),
                ("i=", v) => iterations = v.parse().expect("iterations"),
                _ => {}
            }
        }
        self.salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(self.password.as_bytes(), &salt, iterations).to_vec();
        let without_proof = format!("c=biws,r={nonce}");
        self.auth_message = format!("{},{server_first},{without_proof}", self.bare);
        let client_key = hmac(&self.salted, b"Client Key");
        let signature = hmac(&Sha256::digest(&client_key), self.auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(k, s)| k ^ s).collect();
        format!("{without_proof},p={}", STANDARD.encode(proof))
    }

    fn server_final_ok(&self, server_final: &[u8]) -> bool {
        let expected = hmac(&hmac(&self.salted, b"Server Key"), self.auth_message.as_bytes());
        server_final == format!("v={}", STANDARD.encode(expected)).as_bytes()
    }
}

fn plugin() -> Scram {
    let lines = [entry("alice", "correct horse", b"salt-of-alice-16", 4096), entry("b,o=b", "pw", b"other-salt", 4096)];
    let config = serde_json::json!({"credentials": lines}).to_string();
    let (plugin, manifest) = Scram::init(testing::config(&config)).expect("init");
    assert_eq!(manifest.hooks, [Hook::Authenticate]);
    plugin
}

fn step(p: &mut Scram, data: &str) -> AuthOutcome {
    p.authenticate(&testing::client(None), &testing::enhanced(METHOD, data.as_bytes()))
}

fn server_first(outcome: AuthOutcome) -> String {
    match outcome {
        AuthOutcome::Continue(data) => String::from_utf8(data).expect("text"),
        other => panic!("expected continue, got {other:?}"),
    }
}

fn auth_data(grant: &Grant) -> Vec<u8> {
    let (_, hex) = grant.attributes.iter().find(|(k, _)| k == AUTH_DATA_ATTRIBUTE).expect("server-final");
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect()
}

#[test]
fn a_right_password_is_allowed_and_the_server_proves_itself() {
    let mut p = plugin();
    for (user, password) in [("alice", "correct horse"), ("b,o=b", "pw")] {
        let (mut client, first) = Client::first(user, password, "rOprNGfwEbeRWgbNEkqO");
        let sf = server_first(step(&mut p, &first));
        assert!(sf.starts_with("r=rOprNGfwEbeRWgbNEkqO") && sf.len() > 40, "{sf}");
        match step(&mut p, &client.last(&sf)) {
            AuthOutcome::Allow(grant) => {
                assert_eq!(grant.username_override.as_deref(), Some(user));
                assert!(client.server_final_ok(&auth_data(&grant)));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_wrong_password_is_denied() {
    let mut p = plugin();
    let (mut client, first) = Client::first("alice", "wrong", "abc");
    let sf = server_first(step(&mut p, &first));
    assert!(matches!(step(&mut p, &client.last(&sf)), AuthOutcome::Deny(r) if r.contains("wrong proof")));
}

#[test]
fn unknown_users_look_like_known_ones_until_the_proof_fails() {
    let mut p = plugin();
    let (mut client, first) = Client::first("mallory", "x", "abc");
    let sf = server_first(step(&mut p, &first));
    let (_, again) = Client::first("mallory", "x", "abc");
    let sf2 = server_first(step(&mut p, &again));
    let salt_of = |s: &str| s.split(',').find(|f| f.starts_with("s=")).map(str::to_owned);
    assert_eq!(salt_of(&sf), salt_of(&sf2), "the fake salt is stable");
    assert!(sf.ends_with(",i=4096"));
    let _ = step(&mut p, "abort");
    let (mut client2, first2) = Client::first("mallory", "x", "abc");
    let sf3 = server_first(step(&mut p, &first2));
    assert!(matches!(step(&mut p, &client2.last(&sf3)), AuthOutcome::Deny(_)));
    let _ = client.last(&sf);
}

#[test]
fn a_replayed_or_mismatched_nonce_is_denied() {
    let mut p = plugin();
    let (mut client, first) = Client::first("alice", "correct horse", "abc");
    let sf = server_first(step(&mut p, &first));
    let recorded = client.last(&sf);
    assert!(matches!(step(&mut p, &recorded), AuthOutcome::Allow(_)));
    // The same client-final again: the conversation is over.
    assert!(matches!(step(&mut p, &recorded), AuthOutcome::Deny(r) if r.contains("without a client-first")));
    // Replayed into a new exchange: the server's nonce differs.
    let (_, first) = Client::first("alice", "correct horse", "abc");
    let _ = server_first(step(&mut p, &first));
    assert!(matches!(step(&mut p, &recorded), AuthOutcome::Deny(r) if r.contains("nonce")));
}

#[test]
fn malformed_messages_channel_binding_and_other_methods() {
    let mut p = plugin();
    for bad in ["", "n,,", "p=tls-unique,,n=alice,r=abc", "n,,n=alice", "n,,n=al=ice,r=x", "n,a=bob,n=alice,r=x"] {
        assert!(matches!(step(&mut p, bad), AuthOutcome::Deny(_)), "{bad:?}");
    }
    let v311 = testing::login("alice", b"correct horse");
    assert!(matches!(p.authenticate(&testing::client(Some("alice")), &v311), AuthOutcome::Ignore));
    let jwt = testing::enhanced("JWT", b"n,,n=alice,r=abc");
    assert!(matches!(p.authenticate(&testing::client(None), &jwt), AuthOutcome::Ignore));
    // The CONNECT user name, if any, must be the SCRAM user.
    let (_, first) = Client::first("alice", "correct horse", "abc");
    let mut creds = testing::enhanced(METHOD, first.as_bytes());
    creds.username = Some("bob".into());
    assert!(matches!(p.authenticate(&testing::client(None), &creds), AuthOutcome::Deny(_)));
}

#[test]
fn credential_lines_are_checked() {
    let good = entry("alice", "pw", b"salt", 4096);
    assert!(credentials::parse(&good, "f").is_ok());
    let weak = entry("alice", "pw", b"salt", 1000);
    assert!(credentials::parse(&weak, "f").expect_err("weak").contains("f:1: iterations"));
    let text = format!("# users\n\n{good}\nbob:SCRAM-SHA-256$4096:c2FsdA==\n");
    assert!(credentials::parse(&text, "users.txt").expect_err("bad line").starts_with("users.txt:4:"));
    assert!(credentials::parse(&format!("{good}\n{good}"), "f").expect_err("twice").contains("twice"));
    assert!(Scram::init(testing::config("{}")).is_err());
    assert!(Scram::init(testing::config(r#"{"file": "/nonexistent/scram.txt"}"#)).is_err());
}
