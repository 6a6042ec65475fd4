//! Vectors files: parsing, validation and what a run reports.

use super::*;

#[test]
fn parses_every_hook() {
    let v = Vectors::parse(
        r#"
[client]
username = "alice"
attributes = { role = "admin" }

[[vector]]
hook = "authorize"
action = "subscribe"
topic = "a/#"
qos = 2
expect = "allow"

[[vector]]
name = "login"
hook = "authenticate"
username = "bob"
password_hex = "00ff"
expect = "deny"
expect_reason = "bob"

[[vector]]
hook = "transform"
topic = "t/1"
payload = "x"
client = { username = "carol" }
expect = "replace"
expect_payload_hex = "58"
"#,
    )
    .expect("valid vectors");
    assert_eq!(v.len(), 3);
    assert_eq!(v.vectors[0].name, "vector 1");
    assert_eq!(v.vectors[0].client.username.as_deref(), Some("alice"));
    assert_eq!(v.vectors[0].client.attributes, [("role".to_owned(), "admin".to_owned())]);
    assert!(matches!(v.vectors[0].call, Call::Authorize { qos: QoS::ExactlyOnce, .. }));
    assert_eq!(v.vectors[1].client.claimed_username.as_deref(), Some("bob"), "authenticate's user is claimed");
    assert_eq!(v.vectors[1].client.username, None, "and nobody verified it yet");
    assert_eq!(v.vectors[2].client.claimed_username.as_deref(), Some("carol"), "a verified name was claimed");
    match &v.vectors[1].call {
        Call::Authenticate(c) => assert_eq!(c.password.as_deref(), Some(&[0, 0xff][..])),
        other => panic!("{other:?}"),
    }
    assert_eq!(v.vectors[2].client.username.as_deref(), Some("carol"));
    assert_eq!(v.vectors[2].expect.payload.as_deref(), Some(&b"X"[..]));
}

#[test]
fn errors_name_the_vector_or_the_line() {
    let err =
        Vectors::parse("[[vector]]\nhook = \"authorize\"\ntopic = \"a\"\nexpect = \"allow\"\n").expect_err("no action");
    assert!(err.contains("vector 1") && err.contains("action"), "{err}");
    let err = Vectors::parse("[[vector]]\nname = \"t\"\nhook = \"transform\"\ntopic = \"a\"\nexpect = \"allow\"\n")
        .expect_err("allow is not a transform outcome");
    assert!(err.contains("\"t\"") && err.contains("pass, replace, drop"), "{err}");
    let err = Vectors::parse("[[vector]]\nhook = \"authorize\"\nexpct = \"allow\"\n").expect_err("typo");
    assert!(err.contains("expct") && err.contains("line 3"), "{err}");
    assert!(Vectors::parse("").expect_err("empty").contains("no [[vector]]"));
    let err = Vectors::parse("[[vector]]\nhook = \"authenticate\"\npassword_hex = \"zz\"\nexpect = \"allow\"\n")
        .expect_err("bad hex");
    assert!(err.contains("password_hex"), "{err}");
}
