use super::*;

const FP: &str = "3f2a000000000000000000000000000000000000000000000000000000000001";

fn plugin(json: &str) -> CertIdentity {
    CertIdentity::init(testing::config(json)).map(|(p, _)| p).expect("init")
}

fn with_cert(subject: &str, sans: &[&str], fingerprint: &str) -> ClientInfo {
    ClientInfo {
        tls: Some(TlsIdentity {
            subject: subject.into(),
            sans: sans.iter().map(|s| (*s).to_owned()).collect(),
            sha256_fingerprint: fingerprint.into(),
        }),
        ..testing::client(Some("from-connect"))
    }
}

fn login() -> Credentials {
    testing::login("from-connect", b"ignored")
}

/// The granted user name and attributes, or a panic naming the outcome.
fn granted(p: &mut CertIdentity, client: &ClientInfo) -> (String, Vec<(String, String)>) {
    match p.authenticate(client, &login()) {
        AuthOutcome::Allow(Grant { attributes, username_override: Some(user) }) => (user, attributes),
        other => panic!("expected a grant with a user name, got {other:?}"),
    }
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn common_name_becomes_the_user_name_by_default() {
    let mut p = plugin("{}");
    let (user, attributes) = granted(&mut p, &with_cert("CN=sensor-1,O=Acme", &[], FP));
    assert_eq!(user, "sensor-1");
    assert!(attributes.is_empty());
}

#[test]
fn a_subject_with_several_common_names_maps_by_nothing_but_cn() {
    let cert = with_cert("CN=admin,CN=sensor-1,O=Acme", &["DNS:dev.example.com"], FP);
    match plugin("{}").authenticate(&cert, &login()) {
        AuthOutcome::Deny(why) => assert!(why.contains("more than one cn"), "{why}"),
        other => panic!("expected a denial, got {other:?}"),
    }
    let required = plugin(r#"{"username":"san-dns","required":["cn"]}"#).authenticate(&cert, &login());
    assert!(matches!(required, AuthOutcome::Deny(why) if why.contains("more than one cn")));
    assert_eq!(granted(&mut plugin(r#"{"username":"san-dns"}"#), &cert).0, "dev.example.com");
    let pinned = format!(r#"{{"fingerprints":{{"{FP}":"gateway-1"}}}}"#);
    assert_eq!(granted(&mut plugin(&pinned), &cert).0, "gateway-1");
}

#[test]
fn clients_without_a_certificate_are_ignored() {
    let mut p = plugin("{}");
    assert!(matches!(p.authenticate(&testing::client(Some("u")), &login()), AuthOutcome::Ignore));
}

#[test]
fn alternative_names_and_the_subject_can_name_the_user() {
    let cert = with_cert("CN=x,O=Acme\\, Inc.", &["IP:10.0.0.1", "DNS:dev.example.com", "email:d@example.com"], FP);
    assert_eq!(granted(&mut plugin(r#"{"username":"san-dns"}"#), &cert).0, "dev.example.com");
    assert_eq!(granted(&mut plugin(r#"{"username":"san-email"}"#), &cert).0, "d@example.com");
    assert_eq!(granted(&mut plugin(r#"{"username":"san-ip"}"#), &cert).0, "10.0.0.1");
    assert_eq!(granted(&mut plugin(r#"{"username":"subject"}"#), &cert).0, "CN=x,O=Acme\\, Inc.");
    assert!(matches!(plugin(r#"{"username":"san-uri"}"#).authenticate(&cert, &login()), AuthOutcome::Deny(_)));
}

#[test]
fn a_certificate_that_does_not_map_is_denied_or_ignored() {
    let no_cn = with_cert("O=Acme", &["DNS:dev.example.com"], FP);
    assert!(matches!(plugin("{}").authenticate(&no_cn, &login()), AuthOutcome::Deny(why) if why.contains("no cn")));
    assert!(matches!(plugin(r#"{"unmapped":"ignore"}"#).authenticate(&no_cn, &login()), AuthOutcome::Ignore));
}

#[test]
fn fingerprints_pin_certificates_to_users_and_roles() {
    let colons: String =
        FP.to_uppercase().as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c)).collect::<Vec<_>>().join(":");
    let json = format!(
        r#"{{"username":"fingerprint","fingerprints":{{"{colons}":{{"user":"gateway-1","roles":["admin"]}}}}}}"#
    );
    let mut p = plugin(&json);
    let (user, attributes) = granted(&mut p, &with_cert("CN=whatever", &[], FP));
    assert_eq!(user, "gateway-1");
    assert_eq!(attributes, pairs(&[("role", "admin")]));
    let other = with_cert("CN=whatever", &[], &FP.replace('1', "2"));
    assert!(matches!(p.authenticate(&other, &login()), AuthOutcome::Deny(_)), "only pinned certificates map");
    // In other modes a pinned certificate still takes its entry.
    let json = format!(r#"{{"fingerprints":{{"{FP}":"pinned"}}}}"#);
    let mut p = plugin(&json);
    assert_eq!(granted(&mut p, &with_cert("CN=cn-name", &[], FP)).0, "pinned");
    assert_eq!(granted(&mut p, &with_cert("CN=cn-name", &[], &FP.replace('1', "2"))).0, "cn-name");
}

#[test]
fn required_fields_and_subject_values() {
    let json = r#"{"required":["san-dns"],"require":{"O":"Acme, Inc."}}"#;
    let mut p = plugin(json);
    assert_eq!(granted(&mut p, &with_cert("CN=d1,O=Acme\\, Inc.", &["DNS:d1.acme"], FP)).0, "d1");
    let wrong_org = with_cert("CN=d1,O=Evil", &["DNS:d1.acme"], FP);
    assert!(matches!(p.authenticate(&wrong_org, &login()), AuthOutcome::Deny(why) if why.contains("O=Acme")));
    let no_dns = with_cert("CN=d1,O=Acme\\, Inc.", &[], FP);
    assert!(matches!(p.authenticate(&no_dns, &login()), AuthOutcome::Deny(why) if why.contains("san-dns")));
}

#[test]
fn roles_and_attributes_are_granted() {
    let json = r#"{"role":"device","role_from":"OU","attributes":{"tenant":"acme"}}"#;
    let mut p = plugin(json);
    let (_, attributes) = granted(&mut p, &with_cert("CN=d1,OU=sensors+OU=heaters,O=Acme", &[], FP));
    assert_eq!(attributes, pairs(&[("role", "device"), ("role", "sensors"), ("role", "heaters"), ("tenant", "acme")]));
}

#[test]
fn names_with_wildcards_are_refused() {
    let mut p = plugin("{}");
    for evil in ["#", "+", "a/#", "dev\n1"] {
        let cert = with_cert(&format!("CN={evil}"), &[], FP);
        assert!(matches!(p.authenticate(&cert, &login()), AuthOutcome::Deny(_)), "{evil:?}");
    }
    // `/` is allowed (URIs, paths); topic patterns refuse it themselves.
    assert_eq!(granted(&mut p, &with_cert("CN=a/b", &[], FP)).0, "a/b");
}

#[test]
fn bad_config_is_an_init_error() {
    for (json, needle) in [
        (r#"{"username":"serial"}"#, "serial"),
        (r#"{"fingerprints":{"abc":"u"}}"#, "abc"),
        (&format!(r##"{{"fingerprints":{{"{FP}":"#"}}}}"##), "unusable"),
        (r#"{"required":["san-x"]}"#, "san-x"),
        (r#"{"attributes":{"role":"x"}}"#, "role"),
        (r#"{"unknown":1}"#, "unknown"),
    ] {
        let err = CertIdentity::init(testing::config(json)).map(|_| ()).expect_err(json);
        assert!(err.contains(needle), "{json}: {err}");
    }
}
