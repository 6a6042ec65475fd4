use super::*;

/// The example document of README.md.
pub const EXAMPLE: &str = r##"
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

[[roles]]
name = "no-public"
permissions = [{ action = "all", topic = "public/#", allow = false }]

[[groups]]
name = "fleet"
roles = ["sensor"]

[[groups]]
name = "ops"
roles = [{ name = "guest" }, { name = "operator", priority = 1 }]

[[groups]]
name = "guests"
roles = ["guest"]

[[clients]]
username = "alice"
groups = ["ops"]

[[clients]]
username = "mallory"
roles = ["no-public"]
groups = ["ops"]

[[clients]]
client_id = "sensor-1"
groups = ["fleet"]

[[clients]]
username = "root"
roles = ["admin"]
"##;

/// The example as JSON, for the file tests.
fn example_json() -> String {
    let doc: Value = toml::from_str(EXAMPLE).expect("example is TOML");
    serde_json::to_string(&doc).expect("as JSON")
}

fn rbac(json: &str) -> Rbac {
    Rbac::init(testing::config(json)).map(|(p, _)| p).expect("init")
}

fn client(user: Option<&str>, client_id: &str, roles: &[&str]) -> ClientInfo {
    ClientInfo {
        client_id: client_id.into(),
        attributes: roles.iter().map(|r| ("role".to_owned(), (*r).to_owned())).collect(),
        ..testing::client(user)
    }
}

fn allowed(p: &mut Rbac, c: &ClientInfo, action: Action, topic: &str) -> bool {
    matches!(p.authorize(c, action, topic, QoS::AtMostOnce, false), Decision::Allow(_))
}

#[test]
fn clients_by_client_id_get_their_groups_roles_with_substitution() {
    let mut p = rbac(&example_json());
    let sensor = client(Some("anyone"), "sensor-1", &[]);
    assert!(allowed(&mut p, &sensor, Action::Publish, "sensors/sensor-1/temp"));
    assert!(!allowed(&mut p, &sensor, Action::Publish, "sensors/sensor-2/temp"));
    assert!(allowed(&mut p, &sensor, Action::Subscribe, "commands/sensor-1/#"));
    assert!(allowed(&mut p, &sensor, Action::Receive, "commands/sensor-1/reboot"));
    assert!(!allowed(&mut p, &sensor, Action::Subscribe, "commands/#"));
    assert!(!allowed(&mut p, &client(Some("anyone"), "sensor-2", &[]), Action::Publish, "sensors/sensor-2/t"));
}

#[test]
fn priorities_order_permissions_roles_and_groups() {
    let mut p = rbac(&example_json());
    let alice = client(Some("alice"), "a", &[]);
    assert!(allowed(&mut p, &alice, Action::Receive, "sensors/kitchen/temp"));
    // The priority-10 deny comes before the operator's read of sensors/#.
    assert!(!allowed(&mut p, &alice, Action::Receive, "sensors/restricted/x"));
    assert!(!allowed(&mut p, &alice, Action::Subscribe, "sensors/restricted/#"));
    // A wider subscription is granted; the denied topics are withheld on receive.
    assert!(allowed(&mut p, &alice, Action::Subscribe, "sensors/#"));
    assert!(allowed(&mut p, &alice, Action::Publish, "commands/sensor-1/reboot"));
    assert!(allowed(&mut p, &alice, Action::Subscribe, "public/#"), "from the group's guest role");
    // A client's own roles come before its groups' roles.
    let mallory = client(Some("mallory"), "m", &[]);
    assert!(!allowed(&mut p, &mallory, Action::Subscribe, "public/#"));
    assert!(allowed(&mut p, &mallory, Action::Receive, "sensors/kitchen/temp"));
}

#[test]
fn anonymous_clients_get_the_anonymous_group_only() {
    let mut p = rbac(&example_json());
    assert!(allowed(&mut p, &client(None, "x", &[]), Action::Subscribe, "public/#"));
    assert!(!allowed(&mut p, &client(None, "x", &[]), Action::Publish, "public/x"));
    assert!(!allowed(&mut p, &client(Some("stranger"), "x", &[]), Action::Subscribe, "public/#"));
}

#[test]
fn roles_granted_by_an_authenticator_count() {
    let mut p = rbac(&example_json());
    let device = client(Some("stranger"), "x", &["operator"]);
    assert!(allowed(&mut p, &device, Action::Subscribe, "sensors/#"));
    assert!(!allowed(&mut p, &device, Action::Receive, "sensors/restricted/1"));
    let unknown = client(Some("stranger"), "x", &["superuser"]);
    assert!(!allowed(&mut p, &unknown, Action::Subscribe, "#"), "an undefined role grants nothing");
    // Another attribute name can carry the roles.
    let json = example_json().replacen('{', r#"{"role_attribute":"groups","#, 1);
    let mut p = rbac(&json);
    let c = ClientInfo { attributes: vec![("groups".into(), "admin".into())], ..client(Some("s"), "x", &[]) };
    assert!(allowed(&mut p, &c, Action::Publish, "any/thing"));
    assert!(!allowed(&mut p, &client(Some("s"), "x", &["admin"]), Action::Publish, "any/thing"));
}

#[test]
fn retained_is_receive_and_will_is_publish() {
    let mut p = rbac(&example_json());
    let alice = client(Some("alice"), "a", &[]);
    assert!(allowed(&mut p, &alice, Action::Retained, "sensors/kitchen/temp"));
    assert!(!allowed(&mut p, &alice, Action::Retained, "sensors/restricted/temp"));
    assert!(!allowed(&mut p, &alice, Action::Will, "sensors/alice/status"), "alice may not publish there");
    assert!(allowed(&mut p, &client(None, "sensor-1", &[]), Action::Will, "sensors/sensor-1/status"));
    assert!(allowed(&mut p, &alice, Action::Subscribe, "$share/g/public/#"), "shared: judged by the filter");
}

#[test]
fn names_with_wildcards_never_widen_a_pattern() {
    let doc = r##"{"roles":[{"name":"own","permissions":[
        {"action":"all","topic":"users/%u/#","allow":true},
        {"action":"all","topic":"devices/%c/#","allow":true}]}],
      "clients":[]}"##;
    let mut p = rbac(doc);
    for evil in ["#", "+", "a/#", "a/b", ""] {
        let c = client(Some(evil), evil, &["own"]);
        for topic in ["users/victim/x", "users/a/b", "users/#", "devices/victim/x", "devices/#", "devices/a/b"] {
            assert!(!allowed(&mut p, &c, Action::Publish, topic), "{evil:?} {topic}");
            assert!(!allowed(&mut p, &c, Action::Subscribe, topic), "{evil:?} {topic}");
        }
    }
    let c = client(Some("%u"), "%c", &["own"]);
    assert!(allowed(&mut p, &c, Action::Publish, "users/%u/x"));
    assert!(!allowed(&mut p, &c, Action::Publish, "users/bob/x"));
    assert!(allowed(&mut p, &c, Action::Publish, "devices/%c/x"));
}

#[test]
fn defaults_are_explicit() {
    let c = client(Some("u"), "c", &[]);
    let mut p = rbac("{}");
    for action in [Action::Publish, Action::Subscribe, Action::Receive, Action::Retained, Action::Will] {
        assert!(matches!(p.authorize(&c, action, "a", QoS::AtMostOnce, false), Decision::Deny(_)), "{action:?}");
    }
    match p.authorize(&c, Action::Retained, "a", QoS::AtMostOnce, false) {
        Decision::Deny(why) => {
            assert_eq!(why, "no permission of the client's roles covers receiving the retained message of a");
        }
        other => panic!("a denial, not {other:?}"),
    }
    let mut p = rbac(r#"{"defaults":{"receive":"allow","publish":"ignore"}}"#);
    assert!(allowed(&mut p, &c, Action::Receive, "a"));
    assert!(matches!(p.authorize(&c, Action::Publish, "a", QoS::AtMostOnce, false), Decision::Ignore));
    assert!(matches!(p.authorize(&c, Action::Subscribe, "a", QoS::AtMostOnce, false), Decision::Deny(_)));
}

#[test]
fn cache_lifetime_is_configurable() {
    let c = client(Some("root"), "c", &[]);
    let json = example_json();
    let mut p = rbac(&json);
    assert!(matches!(p.authorize(&c, Action::Publish, "a", QoS::AtMostOnce, false), Decision::Allow(Some(60_000))));
    let mut p = rbac(&json.replacen('{', r#"{"cache_ms":0,"#, 1));
    assert!(matches!(p.authorize(&c, Action::Publish, "a", QoS::AtMostOnce, false), Decision::Allow(None)));
}

/// A file in a fresh temp directory, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("moat-rbac-test-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write");
        TempFile(path)
    }

    fn config(&self) -> String {
        format!(r#"{{"file":"{}"}}"#, self.0.display())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn reads_toml_and_json_files() {
    for file in [TempFile::new("doc.toml", EXAMPLE), TempFile::new("doc.json", &example_json())] {
        let mut p = rbac(&file.config());
        assert!(allowed(&mut p, &client(Some("root"), "r", &[]), Action::Subscribe, "#"), "{:?}", file.0);
        assert!(!allowed(&mut p, &client(Some("alice"), "r", &[]), Action::Subscribe, "#"), "{:?}", file.0);
    }
}

#[test]
fn bad_documents_are_init_errors() {
    let bad_toml = TempFile::new("bad.toml", "[[roles]]\nname = \"a\"\n\n[[roles]]\nnam = \"b\"\n");
    let other_ext = TempFile::new("doc.yaml", "roles: []\n");
    let cases = [
        (r#"{"roles":[{"name":"a"},{"name":"a"}]}"#.to_owned(), "twice"),
        (r#"{"groups":[{"name":"g","roles":["nope"]}]}"#.to_owned(), "unknown role `nope`"),
        (r#"{"clients":[{"username":"u","groups":["nope"]}]}"#.to_owned(), "unknown group `nope`"),
        (r#"{"clients":[{"roles":[]}]}"#.to_owned(), "exactly one"),
        (r#"{"anonymous_group":"nope"}"#.to_owned(), "nope"),
        (r#"{"roles":[{"name":"r","permissions":[{"action":"fly","topic":"a","allow":true}]}]}"#.to_owned(), "fly"),
        (
            r##"{"roles":[{"name":"r","permissions":[{"action":"read","topic":"a/#/b","allow":true}]}]}"##.to_owned(),
            "`#`",
        ),
        (r#"{"roles":[{"name":"r","permissions":[{"action":"read","topic":"a"}]}]}"#.to_owned(), "allow"),
        (r#"{"file":"/x.toml","roles":[]}"#.to_owned(), "belongs in the file"),
        (r#"{"file":"/nonexistent/rbac.toml"}"#.to_owned(), "grant"),
        (r#"{"file":"rbac.toml"}"#.to_owned(), "absolute"),
        (bad_toml.config(), "line 5"),
        (other_ext.config(), ".toml or .json"),
        (r#"{"rolez":[]}"#.to_owned(), "rolez"),
    ];
    for (json, needle) in cases {
        let err = Rbac::init(testing::config(&json)).map(|_| ()).expect_err(&json);
        assert!(err.contains(needle), "{json}: {err}");
    }
}

#[test]
fn a_claimed_user_name_that_nobody_verified_selects_no_roles() {
    let mut p = rbac(&example_json());
    let impostor = ClientInfo { client_id: "x".into(), ..testing::claiming("root") };
    assert!(!allowed(&mut p, &impostor, Action::Subscribe, "#"), "root's admin role is not the claim's");
    assert!(allowed(&mut p, &impostor, Action::Subscribe, "public/#"), "the anonymous group is");
    assert!(allowed(&mut p, &client(Some("root"), "x", &[]), Action::Subscribe, "#"));
}

#[test]
fn a_deny_pattern_whose_names_cannot_be_substituted_still_denies() {
    let doc = r##"{
        "defaults": {"publish": "allow", "subscribe": "allow", "receive": "allow"},
        "roles": [{"name": "everyone", "permissions": [
            {"action": "all", "topic": "users/%u/private/#", "allow": false},
            {"action": "all", "topic": "devices/%c/keys", "allow": false}
        ]}],
        "groups": [{"name": "all", "roles": ["everyone"]}],
        "anonymous_group": "all",
        "clients": [
            {"username": "alice", "groups": ["all"]},
            {"username": "+", "groups": ["all"]},
            {"client_id": "a/b", "groups": ["all"]}
        ]
    }"##;
    let mut p = rbac(doc);
    let anonymous = client(None, "c", &[]);
    assert!(!allowed(&mut p, &anonymous, Action::Receive, "users/alice/private/x"));
    assert!(!allowed(&mut p, &anonymous, Action::Subscribe, "users/bob/private/#"));
    assert!(!allowed(&mut p, &client(Some("+"), "c", &[]), Action::Receive, "users/alice/private/x"));
    assert!(!allowed(&mut p, &client(None, "a/b", &[]), Action::Publish, "devices/d1/keys"));
    let alice = client(Some("alice"), "c", &[]);
    assert!(!allowed(&mut p, &alice, Action::Receive, "users/alice/private/x"));
    assert!(allowed(&mut p, &alice, Action::Receive, "users/bob/private/x"));
    assert!(allowed(&mut p, &anonymous, Action::Receive, "users/alice/public"));
}
