use super::*;

fn acl(json: &str) -> Acl {
    Acl::init(testing::config(json)).map(|(p, _)| p).expect("init")
}

fn who(user: Option<&str>, client_id: &str) -> ClientInfo {
    ClientInfo { client_id: client_id.into(), ..testing::client(user) }
}

fn allowed(p: &mut Acl, user: Option<&str>, client_id: &str, action: Action, topic: &str) -> bool {
    matches!(p.authorize(&who(user, client_id), action, topic, QoS::AtMostOnce, false), Decision::Allow(_))
}

/// A temp file with `text`, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("moat-acl-test-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write temp file");
        TempFile(path)
    }

    fn config(&self) -> String {
        format!(r#"{{"acl_file":"{}"}}"#, self.0.display())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const INLINE: &str = r#"{"rules":[
    {"user":"alice","access":"readwrite","topic":"sensors/#"},
    {"user":"alice","access":"deny","topic":"sensors/secret"},
    {"user":"bob","access":"read","topic":"sensors/+/temp"},
    {"client":"gateway-1","access":"write","topic":"gateways/1/#"},
    {"anonymous":true,"access":"read","topic":"public/#"},
    {"pattern":"devices/%c/#","access":"write"},
    {"pattern":"users/%u/#","access":"readwrite"}
]}"#;

#[test]
fn inline_rules_per_user_client_anonymous_and_pattern() {
    let mut p = acl(INLINE);
    assert!(allowed(&mut p, Some("alice"), "x", Action::Publish, "sensors/a/temp"));
    assert!(allowed(&mut p, Some("alice"), "x", Action::Subscribe, "sensors/#"));
    assert!(!allowed(&mut p, Some("bob"), "x", Action::Publish, "sensors/a/temp"), "bob only reads");
    assert!(allowed(&mut p, Some("bob"), "x", Action::Receive, "sensors/a/temp"));
    assert!(!allowed(&mut p, Some("bob"), "x", Action::Receive, "sensors/a/humidity"));
    assert!(allowed(&mut p, Some("carol"), "gateway-1", Action::Publish, "gateways/1/up"));
    assert!(!allowed(&mut p, Some("carol"), "gateway-2", Action::Publish, "gateways/1/up"));
    assert!(allowed(&mut p, None, "x", Action::Subscribe, "public/#"));
    assert!(!allowed(&mut p, Some("alice"), "x", Action::Subscribe, "public/#"), "anonymous rules only");
    assert!(allowed(&mut p, Some("bob"), "dev-7", Action::Publish, "devices/dev-7/up"));
    assert!(!allowed(&mut p, Some("bob"), "dev-7", Action::Publish, "devices/dev-8/up"));
    assert!(!allowed(&mut p, Some("bob"), "dev-7", Action::Subscribe, "devices/dev-7/#"), "write only");
    assert!(allowed(&mut p, Some("bob"), "x", Action::Subscribe, "users/bob/#"));
    assert!(!allowed(&mut p, None, "x", Action::Subscribe, "users//#"), "%u needs a user name");
}

#[test]
fn deny_wins_over_any_grant() {
    let mut p = acl(INLINE);
    assert!(!allowed(&mut p, Some("alice"), "x", Action::Publish, "sensors/secret"));
    assert!(!allowed(&mut p, Some("alice"), "x", Action::Receive, "sensors/secret"));
    assert!(!allowed(&mut p, Some("alice"), "x", Action::Subscribe, "sensors/secret"));
    // A wider subscription is granted; the denied topic is withheld on
    // delivery (receive).
    assert!(allowed(&mut p, Some("alice"), "x", Action::Subscribe, "sensors/#"));
    let d = p.authorize(&who(Some("alice"), "x"), Action::Publish, "sensors/secret", QoS::AtMostOnce, false);
    assert!(matches!(&d, Decision::Deny(why) if why.contains("sensors/secret")), "{d:?}");
}

/// The broker logs a plugin's reason as it is: a sentence, not Rust's
/// Debug formatting of the action.
#[test]
fn reasons_read_as_sentences() {
    let mut p = acl(INLINE);
    let alice = who(Some("alice"), "x");
    let reason = |d: Decision| match d {
        Decision::Deny(why) => why,
        other => panic!("a denial, not {other:?}"),
    };
    assert_eq!(
        reason(p.authorize(&alice, Action::Publish, "sensors/secret", QoS::AtMostOnce, false)),
        "publishing to sensors/secret is denied by the rule `deny sensors/secret`"
    );
    assert_eq!(
        reason(p.authorize(&alice, Action::Subscribe, "elsewhere/#", QoS::AtMostOnce, false)),
        "no rule allows subscribing to elsewhere/#"
    );
    assert_eq!(
        reason(p.authorize(&alice, Action::Will, "elsewhere/gone", QoS::AtMostOnce, false)),
        "no rule allows a will message to elsewhere/gone"
    );
}

#[test]
fn a_subscription_needs_a_read_rule_covering_the_whole_filter() {
    let mut p = acl(INLINE);
    assert!(allowed(&mut p, Some("bob"), "x", Action::Subscribe, "sensors/+/temp"));
    assert!(allowed(&mut p, Some("bob"), "x", Action::Subscribe, "sensors/kitchen/temp"));
    assert!(!allowed(&mut p, Some("bob"), "x", Action::Subscribe, "sensors/#"));
    assert!(!allowed(&mut p, Some("bob"), "x", Action::Subscribe, "sensors/+/+"));
    assert!(!allowed(&mut p, Some("bob"), "x", Action::Subscribe, "#"));
    // Shared subscriptions are judged by the filter they share.
    assert!(allowed(&mut p, Some("bob"), "x", Action::Subscribe, "$share/g/sensors/+/temp"));
    assert!(!allowed(&mut p, Some("bob"), "x", Action::Subscribe, "$share/g/sensors/#"));
}

#[test]
fn retained_is_receive_and_will_is_publish() {
    let mut p = acl(INLINE);
    assert!(allowed(&mut p, Some("bob"), "x", Action::Retained, "sensors/a/temp"));
    assert!(!allowed(&mut p, Some("bob"), "x", Action::Will, "sensors/a/temp"), "bob may not publish");
    assert!(allowed(&mut p, Some("bob"), "dev-1", Action::Will, "devices/dev-1/status"));
    assert!(!allowed(&mut p, Some("bob"), "dev-1", Action::Retained, "devices/dev-1/status"), "write only");
}

#[test]
fn names_with_wildcards_or_separators_never_widen_a_pattern() {
    let mut p = acl(INLINE);
    for evil in ["#", "+", "a/#", "a/b", "", "%u", "%c"] {
        // As user name: users/%u/# must not become users/#, users/+/#, ...
        for topic in ["users/victim/x", "users/a/b/x", "users/#", "users/+/x"] {
            if evil == "%u" || evil == "%c" {
                continue;
            }
            assert!(!allowed(&mut p, Some(evil), "x", Action::Publish, topic), "user {evil:?} on {topic}");
            assert!(!allowed(&mut p, Some(evil), "x", Action::Subscribe, topic), "user {evil:?} on {topic}");
            assert!(!allowed(&mut p, Some("bob"), evil, Action::Publish, &topic.replace("users", "devices")));
        }
    }
    // `%u` as a name is inserted literally: it reaches only its own level.
    assert!(allowed(&mut p, Some("%u"), "x", Action::Publish, "users/%u/x"));
    assert!(!allowed(&mut p, Some("%u"), "x", Action::Publish, "users/bob/x"));
    assert!(allowed(&mut p, Some("bob"), "%c", Action::Publish, "devices/%c/x"));
    assert!(!allowed(&mut p, Some("bob"), "%c", Action::Publish, "devices/other/x"));
    // A user named `#` is still granted what does not need substitution.
    let mut p = acl(r##"{"rules":[{"user":"#","access":"read","topic":"lobby"}]}"##);
    assert!(allowed(&mut p, Some("#"), "x", Action::Subscribe, "lobby"));
    assert!(!allowed(&mut p, Some("#"), "x", Action::Subscribe, "other"));
}

#[test]
fn wildcards_in_rules_do_not_reach_dollar_topics() {
    let mut p = acl(r##"{"rules":[{"pattern":"#","access":"readwrite"}]}"##);
    assert!(allowed(&mut p, None, "x", Action::Publish, "a/b"));
    assert!(!allowed(&mut p, None, "x", Action::Subscribe, "$SYS/#"));
    assert!(!allowed(&mut p, None, "x", Action::Receive, "$SYS/broker/uptime"));
}

#[test]
fn an_empty_rule_set_denies_everything() {
    let mut p = acl("{}");
    for action in [Action::Publish, Action::Subscribe, Action::Receive, Action::Retained, Action::Will] {
        assert!(matches!(p.authorize(&who(None, "x"), action, "a", QoS::AtMostOnce, false), Decision::Deny(_)));
        assert!(!allowed(&mut p, Some("admin"), "x", action, "#"));
    }
}

#[test]
fn no_match_ignore_defers_but_deny_rules_still_deny() {
    let json = r#"{"no_match":"ignore","rules":[{"pattern":"x/#","access":"deny"},{"pattern":"ok","access":"read"}]}"#;
    let mut p = acl(json);
    let c = who(Some("u"), "c");
    assert!(matches!(p.authorize(&c, Action::Publish, "y", QoS::AtMostOnce, false), Decision::Ignore));
    assert!(matches!(p.authorize(&c, Action::Publish, "x/1", QoS::AtMostOnce, false), Decision::Deny(_)));
    assert!(matches!(p.authorize(&c, Action::Receive, "ok", QoS::AtMostOnce, false), Decision::Allow(_)));
}

#[test]
fn cache_lifetime_is_configurable() {
    let rule = r#""rules":[{"pattern":"a","access":"read"}]"#;
    let c = who(None, "c");
    let mut p = acl(&format!("{{{rule}}}"));
    assert!(matches!(p.authorize(&c, Action::Receive, "a", QoS::AtMostOnce, false), Decision::Allow(Some(60_000))));
    let mut p = acl(&format!(r#"{{{rule},"cache_ms":250}}"#));
    assert!(matches!(p.authorize(&c, Action::Receive, "a", QoS::AtMostOnce, false), Decision::Allow(Some(250))));
    let mut p = acl(&format!(r#"{{{rule},"cache_ms":0}}"#));
    assert!(matches!(p.authorize(&c, Action::Receive, "a", QoS::AtMostOnce, false), Decision::Allow(None)));
}

#[test]
fn bad_inline_config_is_an_init_error() {
    for (json, needle) in [
        (r#"{"rules":[{"access":"read","topic":"a"}]}"#, "rules[0]"),
        (r#"{"rules":[{"pattern":"a","access":"read"},{"user":"u","access":"sometimes","topic":"a"}]}"#, "rules[1]"),
        (r#"{"rules":[{"user":"u","access":"read","topic":"a/#/b"}]}"#, "rules[0]"),
        (r#"{"rules":[{"user":"u","client":"c","access":"read","topic":"a"}]}"#, "at most one"),
        (r#"{"rules":[{"user":"u","access":"read","topic":"a","pattern":"b"}]}"#, "exactly one"),
        (r#"{"rulez":[]}"#, "rulez"),
        (r#"{"acl_file":"relative.acl"}"#, "absolute"),
        (r#"{"acl_file":"/nonexistent/moat.acl"}"#, "grant"),
    ] {
        let err = Acl::init(testing::config(json)).map(|_| ()).expect_err(json);
        assert!(err.contains(needle), "{json}: {err}");
    }
}

/// Mosquitto's own `aclfile.example`, unchanged, plus the rules of a
/// typical deployment in the same syntax.
const MOSQUITTO_ACL: &str = "\
# This affects access control for clients with no username.
topic read $SYS/#

# This only affects clients with username \"roger\".
user roger
topic foo/bar

# This affects all clients.
pattern write $SYS/broker/connection/%c/state

user sensor-hub
topic write sensors/#
topic read  commands/sensor-hub/#
topic deny sensors/forbidden

# Devices talk under their own client id, users under their own name.
pattern readwrite devices/%c/#
pattern read users/%u/inbox/#
";

#[test]
fn a_mosquitto_acl_file_works_unchanged() {
    let file = TempFile::new("mosquitto.acl", MOSQUITTO_ACL);
    let mut p = acl(&file.config());
    assert!(allowed(&mut p, None, "x", Action::Subscribe, "$SYS/#"));
    assert!(!allowed(&mut p, Some("roger"), "x", Action::Subscribe, "$SYS/#"));
    assert!(allowed(&mut p, Some("roger"), "x", Action::Publish, "foo/bar"));
    assert!(allowed(&mut p, Some("roger"), "x", Action::Subscribe, "foo/bar"));
    assert!(!allowed(&mut p, Some("roger"), "x", Action::Publish, "foo/baz"));
    assert!(allowed(&mut p, Some("roger"), "r1", Action::Publish, "$SYS/broker/connection/r1/state"));
    assert!(!allowed(&mut p, Some("roger"), "r1", Action::Publish, "$SYS/broker/connection/r2/state"));
    assert!(allowed(&mut p, Some("sensor-hub"), "x", Action::Publish, "sensors/a/b"));
    assert!(!allowed(&mut p, Some("sensor-hub"), "x", Action::Publish, "sensors/forbidden"));
    assert!(!allowed(&mut p, Some("sensor-hub"), "x", Action::Subscribe, "sensors/#"), "write only");
    assert!(allowed(&mut p, Some("sensor-hub"), "x", Action::Subscribe, "commands/sensor-hub/#"));
    assert!(allowed(&mut p, None, "dev-1", Action::Subscribe, "devices/dev-1/#"));
    assert!(!allowed(&mut p, None, "#", Action::Subscribe, "devices/#"));
    assert!(!allowed(&mut p, None, "+", Action::Publish, "devices/dev-1/x"));
    assert!(allowed(&mut p, Some("eve"), "e", Action::Subscribe, "users/eve/inbox/#"));
    assert!(!allowed(&mut p, Some("a/#"), "e", Action::Subscribe, "users/a/#"));
    assert!(!allowed(&mut p, Some("eve"), "e", Action::Subscribe, "users/+/inbox/#"));
}

#[test]
fn inline_rules_and_the_file_combine() {
    let file = TempFile::new("combined.acl", "user roger\ntopic foo/bar\n");
    let json = format!(
        r#"{{"acl_file":"{}","rules":[{{"user":"roger","access":"deny","topic":"foo/#"}}]}}"#,
        file.0.display()
    );
    let mut p = acl(&json);
    assert!(!allowed(&mut p, Some("roger"), "x", Action::Publish, "foo/bar"), "the inline deny wins");
}

#[test]
fn a_malformed_acl_file_names_the_line() {
    let file = TempFile::new("bad.acl", "user roger\ntopic foo/bar\n\nsubscribe foo/#\n");
    let err = Acl::init(testing::config(&file.config())).map(|_| ()).expect_err("malformed");
    assert!(err.contains("line 4") && err.contains("subscribe foo/#"), "{err}");
}

#[test]
fn a_claimed_user_name_that_nobody_verified_gets_anonymous_rights_only() {
    let mut p = acl(r##"{"rules":[
        {"user":"admin","access":"readwrite","topic":"admin/#"},
        {"anonymous":true,"access":"read","topic":"public/#"},
        {"pattern":"users/%u/#","access":"readwrite"}
    ]}"##);
    let impostor = ClientInfo { client_id: "x".into(), ..testing::claiming("admin") };
    let ask = |p: &mut Acl, c: &ClientInfo, action, topic| {
        matches!(p.authorize(c, action, topic, QoS::AtMostOnce, false), Decision::Allow(_))
    };
    assert!(!ask(&mut p, &impostor, Action::Subscribe, "admin/#"));
    assert!(!ask(&mut p, &impostor, Action::Publish, "admin/x"));
    assert!(!ask(&mut p, &impostor, Action::Publish, "users/admin/x"), "%u is not the claim");
    assert!(ask(&mut p, &impostor, Action::Subscribe, "public/#"), "anonymous rules apply");
    assert!(allowed(&mut p, Some("admin"), "x", Action::Subscribe, "admin/#"), "the verified admin is");
}

#[test]
fn a_deny_pattern_whose_names_cannot_be_substituted_still_denies() {
    let json = r##"{"rules":[
        {"pattern":"#","access":"readwrite"},
        {"pattern":"users/%u/private/#","access":"deny"},
        {"pattern":"devices/%c/keys","access":"deny"}
    ]}"##;
    let mut p = acl(json);
    // Anonymous: no name for %u, so every user's private topics are denied.
    assert!(!allowed(&mut p, None, "c", Action::Subscribe, "users/alice/private/#"));
    assert!(!allowed(&mut p, None, "c", Action::Receive, "users/alice/private/x"));
    assert!(!allowed(&mut p, None, "c", Action::Publish, "users/bob/private/x"));
    // A hostile name cannot switch the deny off either.
    for evil in ["#", "+", "a/b", ""] {
        assert!(!allowed(&mut p, Some(evil), "c", Action::Receive, "users/alice/private/x"), "user {evil:?}");
        assert!(!allowed(&mut p, Some("u"), evil, Action::Publish, "devices/d1/keys"), "client {evil:?}");
    }
    // Substituted normally, the deny stays with its own name.
    assert!(!allowed(&mut p, Some("alice"), "c", Action::Receive, "users/alice/private/x"));
    assert!(allowed(&mut p, Some("alice"), "c", Action::Receive, "users/bob/private/x"));
    assert!(allowed(&mut p, None, "c", Action::Publish, "users/alice/public"));
    assert!(allowed(&mut p, Some("u"), "d2", Action::Publish, "devices/d1/keys"));
}
