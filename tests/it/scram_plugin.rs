//! The shipped `scram` plugin in the broker: MQTT 5 enhanced authentication
//! with SCRAM-SHA-256 over AUTH packets, spoken by a client made here with
//! the same crates (no ready MQTT client speaks SCRAM).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use moat::config::Anonymous;
use sha2::{Digest, Sha256};

use crate::harness::{Raw, TestBroker, auth_properties, connect_v5_with, frame, varint};
use crate::plugin_support::stage;

const METHOD: &str = "SCRAM-SHA-256";

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// A credentials line in the format `moat passwd --scram` writes.
fn entry(user: &str, password: &str, salt: &[u8]) -> String {
    let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), salt, 4096);
    let stored_key = Sha256::digest(hmac(&salted, b"Client Key"));
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "{user}:SCRAM-SHA-256$4096:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

/// The client side of one SCRAM exchange.
struct Scram {
    password: String,
    bare: String,
    auth_message: String,
    salted: Vec<u8>,
}

impl Scram {
    fn first(user: &str, password: &str, nonce: &str) -> (Scram, Vec<u8>) {
        let bare = format!("n={user},r={nonce}");
        let first = format!("n,,{bare}").into_bytes();
        (Scram { password: password.into(), bare, auth_message: String::new(), salted: Vec::new() }, first)
    }

    fn last(&mut self, server_first: &[u8]) -> Vec<u8> {
        let server_first = std::str::from_utf8(server_first).expect("server-first is text");
        let field = |name: &str| {
            server_first.split(',').find_map(|f| f.strip_prefix(name)).expect("server-first field").to_owned()
        };
        let salt = STANDARD.decode(field("s=")).expect("salt");
        let iterations = field("i=").parse().expect("iterations");
        self.salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(self.password.as_bytes(), &salt, iterations).to_vec();
        let without_proof = format!("c=biws,r={}", field("r="));
        self.auth_message = format!("{},{server_first},{without_proof}", self.bare);
        let client_key = hmac(&self.salted, b"Client Key");
        let signature = hmac(&Sha256::digest(&client_key), self.auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(k, s)| k ^ s).collect();
        format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes()
    }

    /// Whether `server_final` proves the server knows the verifier.
    fn verifies(&self, server_final: &[u8]) -> bool {
        let signature = hmac(&hmac(&self.salted, b"Server Key"), self.auth_message.as_bytes());
        server_final == format!("v={}", STANDARD.encode(signature)).as_bytes()
    }
}

/// The Authentication Method and Data among MQTT 5 properties.
fn auth_of(mut props: &[u8]) -> (Option<String>, Option<Vec<u8>>) {
    let (mut method, mut data) = (None, None);
    let two = |p: &[u8]| usize::from(u16::from_be_bytes([p[0], p[1]]));
    while let Some((&id, rest)) = props.split_first() {
        let skip = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            0x13 | 0x21 | 0x22 | 0x23 => 2,
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => 2 + two(rest),
            0x26 => 2 + two(rest) + 2 + two(&rest[2 + two(rest)..]),
            other => panic!("unexpected property {other:#x}"),
        };
        match id {
            0x15 => method = Some(String::from_utf8(rest[2..skip].to_vec()).expect("method")),
            0x16 => data = Some(rest[2..skip].to_vec()),
            _ => {}
        }
        props = &rest[skip..];
    }
    (method, data)
}

/// Splits a properties section (length, then properties) off `body`.
fn properties(body: &[u8]) -> &[u8] {
    let (mut len, mut used) = (0usize, 0);
    for (i, b) in body.iter().enumerate() {
        len |= usize::from(b & 0x7f) << (7 * i);
        used = i + 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    &body[used..used + len]
}

fn auth_packet(reason: u8, data: &[u8]) -> Vec<u8> {
    let props = auth_properties(METHOD, Some(data));
    let mut body = vec![reason];
    body.extend(varint(props.len()));
    body.extend(props);
    frame(0xF0, &body)
}

/// Reads an AUTH packet with `reason` and returns its data.
async fn expect_auth(raw: &mut Raw, reason: u8) -> Vec<u8> {
    let (first, body) = raw.read_packet().await;
    assert_eq!((first, body[0]), (0xF0, reason), "AUTH {reason:#x}: {body:02x?}");
    let (method, data) = auth_of(properties(&body[1..]));
    assert_eq!(method.as_deref(), Some(METHOD));
    data.unwrap_or_default()
}

/// A broker whose `scram` plugin reads its credentials file from a granted
/// directory.
async fn broker() -> (TestBroker, (moat::plugin::fixtures::StagedDir, tempfile::TempDir)) {
    broker_with("").await
}

/// [`broker`], with `more` appended to the plugin's sidecar.
async fn broker_with(more: &str) -> (TestBroker, (moat::plugin::fixtures::StagedDir, tempfile::TempDir)) {
    let secrets = tempfile::tempdir().expect("tempdir");
    let file = secrets.path().join("scram.txt");
    let lines = format!("# made by the test\n{}\n", entry("alice", "correct horse", b"0123456789abcdef"));
    std::fs::write(&file, lines).expect("credentials file");
    let sidecar = format!(
        "[config]\nfile = {:?}\n[grants]\nread = [{:?}]\n{more}",
        file.to_str().expect("utf-8 temp path"),
        secrets.path().to_str().expect("utf-8 temp path")
    );
    let dir = stage(&[("scram", "scram", &sidecar)]);
    let path = dir.path().to_owned();
    let broker = TestBroker::with(|c| {
        c.plugins.dir = Some(path);
        c.listeners[0].allow_anonymous = Anonymous::Never;
    })
    .await;
    (broker, (dir, secrets))
}

/// Runs an exchange up to the CONNACK; returns the connection, the client
/// state and the CONNACK's reason code and Authentication Data.
async fn exchange(broker: &TestBroker, user: &str, password: &str) -> (Raw, Scram, u8, Option<Vec<u8>>) {
    let (mut client, first) = Scram::first(user, password, "fyko+d2lbbFgONRv9qkxdawL");
    let mut raw = broker.raw().await;
    raw.send(&connect_v5_with(&format!("{user}-1"), None, None, &auth_properties(METHOD, Some(&first)))).await;
    let server_first = expect_auth(&mut raw, 0x18).await;
    raw.send(&auth_packet(0x18, &client.last(&server_first))).await;
    let (kind, body) = raw.read_packet().await;
    assert_eq!(kind, 0x20, "CONNACK");
    let (_, data) = auth_of(properties(&body[2..]));
    (raw, client, body[1], data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_exchange_admits_the_right_password_and_proves_the_server() {
    let (broker, _dir) = broker().await;
    let (mut raw, mut client, reason, data) = exchange(&broker, "alice", "correct horse").await;
    assert_eq!(reason, 0, "CONNACK success");
    assert!(client.verifies(&data.expect("server-final in CONNACK")), "server signature checks out");

    // Re-authentication (AUTH 0x19) runs the same exchange on the open
    // connection and ends with AUTH success carrying the server-final.
    let (again, first) = Scram::first("alice", "correct horse", "another-nonce");
    client = again;
    raw.send(&auth_packet(0x19, &first)).await;
    let server_first = expect_auth(&mut raw, 0x18).await;
    raw.send(&auth_packet(0x18, &client.last(&server_first))).await;
    let server_final = expect_auth(&mut raw, 0x00).await;
    assert!(client.verifies(&server_final));
    // The connection still works: PINGREQ, PINGRESP.
    raw.send(&[0xC0, 0]).await;
    assert_eq!(raw.read_packet().await, (0xD0, vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_proofs_and_unknown_users_are_refused_alike() {
    let (broker, _dir) = broker().await;
    for (user, password) in [("alice", "wrong"), ("mallory", "correct horse")] {
        let (_raw, _, reason, data) = exchange(&broker, user, password).await;
        assert_eq!((reason, data), (0x86, None), "{user}: bad user name or password");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_client_final_is_refused() {
    let (broker, _dir) = broker().await;
    let (mut client, first) = Scram::first("alice", "correct horse", "same-nonce");
    let mut raw = broker.raw().await;
    raw.send(&connect_v5_with("a-1", None, None, &auth_properties(METHOD, Some(&first)))).await;
    let recorded = client.last(&expect_auth(&mut raw, 0x18).await);
    raw.send(&auth_packet(0x18, &recorded)).await;
    assert_eq!(raw.read_packet().await.1[1], 0, "first exchange succeeds");

    // The same client-first and the recorded client-final on a new
    // connection: the server's nonce is new, so the proof is worthless.
    let mut replay = broker.raw().await;
    replay.send(&connect_v5_with("a-2", None, None, &auth_properties(METHOD, Some(&first)))).await;
    let _ = expect_auth(&mut replay, 0x18).await;
    replay.send(&auth_packet(0x18, &recorded)).await;
    assert_eq!(replay.read_to_close().await[..4], [0x20, 3, 0, 0x86]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v311_client_is_not_the_plugins_business() {
    let (broker, _dir) = broker().await;
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02 | 0x80 | 0x40, 0, 30];
    for field in ["c", "alice", "correct horse"] {
        body.extend((field.len() as u16).to_be_bytes());
        body.extend(field.as_bytes());
    }
    let mut raw = broker.raw().await;
    raw.send(&frame(0x10, &body)).await;
    assert_eq!(raw.read_to_close().await, [0x20, 2, 0, 5], "ignored, then refused as anonymous");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_exchanges_each_keep_their_own_instance() {
    // Without the broker pinning an instance to each exchange, the second
    // client-first would reach the instance holding the first conversation.
    let (broker, _dir) = broker().await;
    let mut open = Vec::new();
    for n in 0..3 {
        let (client, first) = Scram::first("alice", "correct horse", &format!("nonce-{n}"));
        let mut raw = broker.raw().await;
        raw.send(&connect_v5_with(&format!("i-{n}"), None, None, &auth_properties(METHOD, Some(&first)))).await;
        let server_first = expect_auth(&mut raw, 0x18).await;
        open.push((raw, client, server_first));
    }
    for (mut raw, mut client, server_first) in open.into_iter().rev() {
        raw.send(&auth_packet(0x18, &client.last(&server_first))).await;
        let (kind, body) = raw.read_packet().await;
        assert_eq!((kind, body[1]), (0x20, 0), "CONNACK success");
        assert!(client.verifies(&auth_of(properties(&body[2..])).1.expect("server-final")));
    }
}

/// Each exchange holds a plugin instance between its steps; beyond the
/// plugin's `limits.exchanges` a new one is refused with Quota Exceeded at
/// once (not queued), and a finished or abandoned exchange gives its place
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_beyond_the_plugins_cap_are_refused_with_quota_exceeded() {
    let (broker, _dir) = broker_with("[limits]\nexchanges = 2\ntimeout_ms = 1000\n").await;
    let start = |n: usize| {
        let broker = &broker;
        async move {
            let (client, first) = Scram::first("alice", "correct horse", &format!("nonce-{n}"));
            let mut raw = broker.raw().await;
            raw.send(&connect_v5_with(&format!("x-{n}"), None, None, &auth_properties(METHOD, Some(&first)))).await;
            (raw, client)
        }
    };
    let mut open = Vec::new();
    for n in 0..2 {
        let (mut raw, client) = start(n).await;
        let server_first = expect_auth(&mut raw, 0x18).await;
        open.push((raw, client, server_first));
    }
    let (mut third, _) = start(2).await;
    assert_eq!(third.read_to_close().await[..4], [0x20, 3, 0, 0x97], "a third exchange is refused");

    // One finishes, one is abandoned: both places come back.
    let (mut raw, mut client, server_first) = open.remove(0);
    raw.send(&auth_packet(0x18, &client.last(&server_first))).await;
    assert_eq!(raw.read_packet().await.1[1], 0, "CONNACK success");
    drop(open);
    // The abandoned place comes back once the broker reads the close.
    let deadline = tokio::time::Instant::now() + crate::harness::WAIT;
    let mut held = Vec::new();
    let mut n = 3;
    while held.len() < 2 {
        let (mut raw, _) = start(n).await;
        n += 1;
        let (kind, body) = raw.read_packet().await;
        if kind == 0x20 {
            assert_eq!(body[1], 0x97, "refused only for want of a place");
            assert!(tokio::time::Instant::now() < deadline, "the places never came back");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        }
        assert_eq!((kind, body[0]), (0xF0, 0x18), "an exchange starts");
        held.push(raw);
    }
}
