//! The configuration's parsing and validation, errors with file, line and key.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("moat.toml"))
}

#[test]
fn empty_file_gives_loopback_defaults() {
    let c = parse("").expect("defaults");
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.listeners[0].bind, SocketAddr::from(([127, 0, 0, 1], 1883)));
    assert_eq!(c.listeners[0].allow_anonymous, Anonymous::Loopback);
}

/// Secure by default: without `allow_anonymous`, any listener (also
/// one on 0.0.0.0) admits anonymous clients from loopback only.
#[test]
fn anonymous_clients_are_loopback_only_unless_allowed() {
    let peer = |s: &str| s.parse::<SocketAddr>().expect("address");
    let default = Config::default();
    assert_eq!(default.listeners[0].bind, peer("127.0.0.1:1883"));
    let c = parse("[[listeners]]\nbind = \"0.0.0.0:1883\"\n[[listeners]]\nname = \"v6\"\nbind = \"[::]:1884\"\n")
        .expect("valid");
    for listener in [&default.listeners[0], &c.listeners[0], &c.listeners[1]] {
        let anon = listener.allow_anonymous;
        assert_eq!(anon, Anonymous::Loopback);
        for local in ["127.0.0.1:5000", "127.0.0.2:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
            assert!(anon.permits(peer(local)), "{local}");
        }
        for remote in ["192.0.2.7:5000", "10.0.0.1:5000", "[2001:db8::1]:5000", "[::ffff:192.0.2.7]:5000"] {
            assert!(!anon.permits(peer(remote)), "{remote}");
        }
    }
    let open = parse("[[listeners]]\nbind = \"0.0.0.0:1883\"\nallow_anonymous = true\n").expect("valid");
    assert!(open.listeners[0].allow_anonymous.permits(peer("192.0.2.7:5000")));
    let closed = parse("[[listeners]]\nbind = \"127.0.0.1:1883\"\nallow_anonymous = false\n").expect("valid");
    assert!(!closed.listeners[0].allow_anonymous.permits(peer("127.0.0.1:5000")));
}

/// `moat.example.toml` stays a valid configuration (it configures the
/// shipped plugins).
#[cfg(feature = "shipped-plugins")]
#[test]
fn the_example_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("moat.example.toml");
    let c = Config::load(&path).expect("moat.example.toml is valid");
    let tls = c.listeners.iter().find(|l| l.protocol == ListenerProtocol::Tls).expect("a TLS listener");
    assert_eq!(tls.bind, "0.0.0.0:8883".parse::<SocketAddr>().expect("address"));
    assert_eq!(tls.allow_anonymous, Anonymous::Never);
    assert!(c.storage.dir.is_some());
    #[cfg(feature = "shipped-plugins")]
    assert!(c.plugins.shipped.contains_key("password-file") && c.plugins.shipped.contains_key("acl"));
}

#[test]
fn full_file() {
    let c = parse(
        "[[listeners]]\nname = \"lan\"\nbind = \"0.0.0.0:1883\"\nprotocol = \"tcp\"\nallow_anonymous = false\n\n\
         [limits]\nmax_connections = 10\nmax_packet_size = 4096\n\n[log]\nlevel = \"debug\"\nformat = \"json\"\n",
    )
    .expect("valid");
    assert_eq!(c.listeners[0].allow_anonymous, Anonymous::Never);
    assert_eq!(c.limits.max_connections, 10);
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn queue_and_retained_bounds() {
    let c = parse("").expect("valid");
    assert_eq!((c.limits.max_queued_bytes, c.limits.max_retained_messages), (16 << 20, 100_000));
    assert_eq!((c.limits.max_sessions, c.limits.write_timeout_ms), (100_000, 30_000));
    let c = parse(
        "[limits]
max_queued_bytes = 4096
max_retained_messages = 0
max_retained_bytes = 1024
",
    )
    .expect("valid");
    assert_eq!(c.limits.queue_bound(), crate::session::QueueBound { messages: 1000, bytes: 4096 });
    assert_eq!((c.limits.max_retained_messages, c.limits.max_retained_bytes), (0, 1024));
    let err = parse(
        "[limits]
max_queued_messages = 5

max_retained_bytes = -1
",
    )
    .expect_err("negative");
    assert!(err.to_string().starts_with("moat.toml:4: `limits.max_retained_bytes`"), "{err}");
    let err = parse(
        "[limits]
max_queued_bytes = \"1 MiB\"
",
    )
    .expect_err("not a number");
    assert!(err.to_string().starts_with("moat.toml:2: `limits.max_queued_bytes`"), "{err}");
}

#[test]
fn share_hold() {
    let c = parse("").expect("valid");
    assert_eq!(c.limits.share_hold(), Duration::from_secs(60));
    let c = parse("[limits]\nshare_hold_ms = 0\n").expect("valid");
    assert_eq!(c.limits.share_hold_ms, 0);
    let err = parse("[limits]\nmax_queued_messages = 5\n\nshare_hold_ms = 86400001\n").expect_err("over a day");
    assert_eq!(err.to_string(), "moat.toml:4: `limits.share_hold_ms`: must be at most 86400000 (a day)");
    let err = parse("[limits]\nshare_hold_ms = -1\n").expect_err("negative");
    assert!(err.to_string().starts_with("moat.toml:2: `limits.share_hold_ms`"), "{err}");
    let err = parse("[limits]\nshare_hold_ms = \"1m\"\n").expect_err("not a number");
    assert!(err.to_string().starts_with("moat.toml:2: `limits.share_hold_ms`"), "{err}");
}

#[test]
fn connection_topic_subscription_property_and_rate_limits() {
    let c = parse("").expect("valid");
    let l = &c.limits;
    assert_eq!((l.max_topic_length, l.max_subscriptions_per_client), (65_535, 1000));
    assert_eq!((l.max_user_properties, l.max_publish_rate), (128, 0));
    assert_eq!((c.listeners[0].max_connections, c.listeners[0].max_connection_rate), (None, 0));
    let c = parse(
        "[[listeners]]
bind = \"127.0.0.1:1883\"
max_connections = 50
max_connection_rate = 200

[limits]
max_topic_length = 256
max_subscriptions_per_client = 0
max_user_properties = 0
max_publish_rate = 100
",
    )
    .expect("valid");
    assert_eq!((c.listeners[0].max_connections, c.listeners[0].max_connection_rate), (Some(50), 200));
    assert_eq!(c.limits.max_topic_length, 256);
    assert_eq!(c.limits.decode_limits(u32::MAX).max_user_properties, usize::MAX);
    assert_eq!(c.limits.max_publish_rate, 100);
    let err = parse("[limits]\n\nmax_topic_length = 65536\n").expect_err("over the protocol");
    assert!(err.to_string().starts_with("moat.toml:3: `limits.max_topic_length`"), "{err}");
    let err = parse("[limits]\nmax_topic_length = 0\n").expect_err("zero");
    assert!(err.to_string().starts_with("moat.toml:2: `limits.max_topic_length`"), "{err}");
    let err = parse("[[listeners]]\nbind = \"127.0.0.1:1\"\nmax_connections = 0\n").expect_err("zero");
    assert!(err.to_string().starts_with("moat.toml:3: `listeners[0].max_connections`"), "{err}");
    let err = parse("[limits]\nmax_publish_rate = -1\n").expect_err("negative");
    assert!(err.to_string().starts_with("moat.toml:2: `limits.max_publish_rate`"), "{err}");
}

#[test]
fn errors_name_file_line_and_key() {
    let err = parse("[limits]\nmax_connections = 1\nmax_packet_sise = 5\n").expect_err("typo");
    let msg = err.to_string();
    assert!(msg.starts_with("moat.toml:3:"), "{msg}");
    assert!(msg.contains("max_packet_sise"), "{msg}");

    let err = parse("[[listeners]]\nname = \"a\"\nbind = \"not-an-address\"\n").expect_err("bad addr");
    let msg = err.to_string();
    assert!(msg.starts_with("moat.toml:3: `listeners[0].bind`"), "{msg}");

    let err = parse("[limits]\n\nmax_inflight = 0\n").expect_err("zero");
    assert_eq!(err.to_string(), "moat.toml:3: `limits.max_inflight`: must be greater than 0");

    let err = parse("[[listeners]]\nbind = \"127.0.0.1:1\"\nallow_anonymous = \"yes\"\n").expect_err("bad anon");
    assert!(err.to_string().starts_with("moat.toml:3: `listeners[0].allow_anonymous`"), "{err}");
}

#[test]
fn tls_and_websocket_listeners() {
    let c = parse(
        "[[listeners]]\nname = \"mtls\"\nbind = \"0.0.0.0:8883\"\nprotocol = \"tls\"\n\
         [listeners.tls]\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\nclient_auth = \"required\"\n\
         ca_file = \"ca.pem\"\ncrl_files = [\"ca.crl\"]\nuse_identity_as_username = \"san\"\n\n\
         [[listeners]]\nname = \"ws\"\nbind = \"0.0.0.0:8080\"\nprotocol = \"ws\"\n\n\
         [[listeners]]\nname = \"wss\"\nbind = \"0.0.0.0:8443\"\nprotocol = \"wss\"\nws_path = \"/\"\n\
         tls = { cert_file = \"s.pem\", key_file = \"s.key\", use_identity_as_username = false }\n",
    )
    .expect("valid");
    let tls = c.listeners[0].tls.as_ref().expect("tls table");
    assert_eq!(c.listeners[0].protocol, ListenerProtocol::Tls);
    assert_eq!(tls.client_auth, ClientAuth::Required);
    assert_eq!(tls.crl_files, [PathBuf::from("ca.crl")]);
    assert_eq!(tls.use_identity_as_username, IdentityAsUsername::SubjectAltName);
    assert_eq!(c.listeners[1].ws_path(), "/mqtt");
    assert_eq!(c.listeners[2].ws_path(), "/");
    let tls = c.listeners[2].tls.as_ref().expect("tls table");
    assert_eq!(tls.client_auth, ClientAuth::None);
    assert_eq!(tls.use_identity_as_username, IdentityAsUsername::Off);
}

#[test]
fn identity_as_username_true_means_common_name() {
    let c = parse(
        "[[listeners]]\nbind = \"127.0.0.1:8883\"\nprotocol = \"tls\"\n[listeners.tls]\ncert_file = \"c\"\n\
         key_file = \"k\"\nclient_auth = \"optional\"\nca_file = \"ca\"\nuse_identity_as_username = true\n",
    )
    .expect("valid");
    let tls = c.listeners[0].tls.as_ref().expect("tls table");
    assert_eq!(tls.use_identity_as_username, IdentityAsUsername::CommonName);
    assert_eq!(tls.client_auth, ClientAuth::Optional);
    assert!(tls.crl_files.is_empty());
}

#[test]
fn tls_errors_name_listener_line_and_key() {
    let tcp = "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\n";
    let err = parse(&format!("{tcp}[[listeners]]\nname = \"b\"\nbind = \"127.0.0.1:2\"\nprotocol = \"tls\"\n"))
        .expect_err("no tls table");
    assert_eq!(
        err.to_string(),
        "moat.toml:7: `listeners[1].protocol`: listener \"b\" speaks TLS but has no [listeners.tls] table"
    );

    let err = parse(&format!("{tcp}[listeners.tls]\ncert_file = \"c\"\nkey_file = \"k\"\n")).expect_err("tls on tcp");
    let msg = err.to_string();
    assert!(msg.starts_with("moat.toml:4: `listeners[0].tls`: listener \"a\" does not speak TLS"), "{msg}");

    let with_tls =
        |extra: &str| format!("{tcp}protocol = \"wss\"\n[listeners.tls]\ncert_file = \"c\"\nkey_file = \"k\"\n{extra}");
    let err = parse(&with_tls("client_auth = \"optional\"\n")).expect_err("no ca");
    assert_eq!(
        err.to_string(),
        "moat.toml:8: `listeners[0].tls.client_auth`: listener \"a\": client_auth needs ca_file"
    );

    let err = parse(&with_tls("client_auth = \"always\"\n")).expect_err("bad client_auth");
    assert!(err.to_string().starts_with("moat.toml:8: `listeners[0].tls.client_auth`"), "{err}");

    let err = parse(&with_tls("use_identity_as_username = \"cn\"\n")).expect_err("identity without client auth");
    assert!(err.to_string().starts_with("moat.toml:8: `listeners[0].tls.use_identity_as_username`"), "{err}");

    let err = parse(&with_tls("use_identity_as_username = \"dn\"\n")).expect_err("bad identity field");
    assert!(err.to_string().starts_with("moat.toml:8: `listeners[0].tls.use_identity_as_username`"), "{err}");

    let err = parse(&with_tls("crl_files = [\"x.crl\"]\n")).expect_err("crl without client auth");
    assert!(err.to_string().starts_with("moat.toml:8: `listeners[0].tls.crl_files`"), "{err}");

    let err = parse(&with_tls("cert_flie = \"c\"\n")).expect_err("typo");
    assert!(err.to_string().starts_with("moat.toml:8:"), "{err}");
    assert!(err.to_string().contains("cert_flie"), "{err}");

    let err = parse(&format!("{tcp}protocol = \"tls\"\n[listeners.tls]\nkey_file = \"k\"\n")).expect_err("no cert");
    assert!(err.to_string().contains("cert_file"), "{err}");

    let err = parse(&format!("{tcp}ws_path = \"/mqtt\"\n")).expect_err("ws_path on tcp");
    assert_eq!(err.to_string(), "moat.toml:4: `listeners[0].ws_path`: listener \"a\" does not speak WebSocket");

    let err = parse(&format!("{tcp}protocol = \"ws\"\nws_path = \"mqtt\"\n")).expect_err("relative ws_path");
    assert!(err.to_string().starts_with("moat.toml:5: `listeners[0].ws_path`"), "{err}");

    let err = parse(&format!("{tcp}protocol = \"quic\"\n")).expect_err("unknown protocol");
    assert!(err.to_string().starts_with("moat.toml:4: `listeners[0].protocol`"), "{err}");
}

#[test]
fn storage_section() {
    let c = parse("").expect("defaults");
    assert_eq!(c.storage.durability(), None);
    let c = parse("[storage]\ndir = \"/var/lib/moat\"\n").expect("valid");
    assert_eq!(c.storage.durability(), Some(crate::store::Durability::Sync));
    let c = parse("[storage]\ndir = \"d\"\ndurability = \"periodic\"\nflush_interval_ms = 250\n").expect("valid");
    assert_eq!(c.storage.durability(), Some(crate::store::Durability::Periodic(Duration::from_millis(250))));
    let c = parse("[storage]\ndir = \"d\"\ndurability = \"none\"\n").expect("valid");
    assert_eq!(c.storage.durability(), Some(crate::store::Durability::None));
}

#[test]
fn plugin_cache_dir() {
    assert_eq!(parse("").expect("valid").plugin_cache_dir(), crate::plugin::default_cache_dir());
    assert_eq!(parse("[plugins]\ncache = false\n").expect("valid").plugin_cache_dir(), None);
    let c = parse("[plugins]\ncache = false\n[storage]\ndir = \"/d\"\n").expect("valid");
    assert_eq!(c.plugin_cache_dir(), None, "off wins over the storage default");
    let err = parse("[plugins]\ncache = false\ncache_dir = \"/c\"\n").expect_err("both");
    assert_eq!(err.to_string(), "moat.toml:3: `plugins.cache_dir`: set while `plugins.cache = false`: remove one");
    let err = parse("[plugins]\ncache = \"no\"\n").expect_err("not a bool");
    assert!(err.to_string().starts_with("moat.toml:2: `plugins.cache`"), "{err}");
    let c = parse("[storage]\ndir = \"/var/lib/moat\"\n").expect("valid");
    assert_eq!(c.plugin_cache_dir(), Some(PathBuf::from("/var/lib/moat/plugin-cache")));
    let c = parse("[plugins]\ncache_dir = \"/c\"\n[storage]\ndir = \"/d\"\n").expect("valid");
    assert_eq!(c.plugin_cache_dir(), Some(PathBuf::from("/c")));
    let err = parse("[plugins]\ndir = \"p\"\ncache_dir = \"\"\n").expect_err("empty");
    assert_eq!(err.to_string(), "moat.toml:3: `plugins.cache_dir`: must not be empty");
    let err = parse("[plugins]\ncache_dir = 5\n").expect_err("not a path");
    assert!(err.to_string().starts_with("moat.toml:2: `plugins.cache_dir`"), "{err}");
}

#[test]
fn storage_errors_name_line_and_key() {
    let err = parse("[storage]\ndurability = \"sync\"\n").expect_err("no dir");
    assert_eq!(err.to_string(), "moat.toml:2: `storage.durability`: needs `storage.dir`");
    let err = parse("[storage]\ndir = \"d\"\n\ndurability = \"always\"\n").expect_err("bad mode");
    assert!(err.to_string().starts_with("moat.toml:4: `storage.durability`"), "{err}");
    let err = parse("[storage]\ndir = \"d\"\nflush_interval_ms = 5\n").expect_err("not periodic");
    assert!(err.to_string().starts_with("moat.toml:3: `storage.flush_interval_ms`: only applies"), "{err}");
    let err = parse("[storage]\ndir = \"d\"\ndurability = \"periodic\"\nflush_interval_ms = 0\n").expect_err("zero");
    assert!(err.to_string().starts_with("moat.toml:4: `storage.flush_interval_ms`"), "{err}");
    let err = parse("[storage]\ndirectory = \"d\"\n").expect_err("unknown key");
    assert!(err.to_string().starts_with("moat.toml:2:"), "{err}");
}

#[test]
fn admin_and_sys_sections() {
    let c = parse("").expect("valid");
    assert!(c.admin.listen.is_none());
    assert_eq!(c.sys.interval_s, 10);
    let c = parse("[admin]\nlisten = \"127.0.0.1:9090\"\n[sys]\ninterval_s = 0\n").expect("loopback, no token");
    assert_eq!(c.admin.listen, Some("127.0.0.1:9090".parse().expect("valid")));
    assert_eq!(c.sys.interval_s, 0);
    let c = parse("[admin]\nlisten = \"0.0.0.0:9090\"\ntoken = \"s3cret\"\n").expect("token given");
    assert_eq!(c.admin.token.as_ref().map(Secret::expose), Some("s3cret"));
    assert!(!format!("{c:?}").contains("s3cret"), "the token never shows in Debug");
}

#[cfg(feature = "cluster")]
#[test]
fn cluster_section() {
    assert_eq!(parse("").expect("valid").cluster, None);
    let c = parse("[cluster]\nnats = [\"nats://127.0.0.1:4222\", \"tls://n2:4222\"]\n").expect("valid");
    let cluster = c.cluster.expect("a cluster section");
    assert_eq!(cluster.nats.len(), 2);
    assert_eq!(cluster, ClusterConfig::new(cluster.nats.clone()));
    let c = parse("[cluster]\nnats = [\"nats://h:1\"]\nnode_id = \"n-1\"\nsubject_prefix = \"acme.moat\"\n")
        .expect("valid");
    assert_eq!(c.cluster.and_then(|c| c.node_id).as_deref(), Some("n-1"));
}

/// A moat built without clustering refuses a `[cluster]` section rather
/// than running as a single node its operator did not ask for.
#[cfg(not(feature = "cluster"))]
#[test]
fn a_cluster_section_without_the_feature_is_refused() {
    let err = parse("[cluster]\nnats = [\"nats://127.0.0.1:4222\"]\n").expect_err("no cluster feature");
    assert_eq!(err.to_string(), "moat.toml:1: `cluster`: this moat was built without the `cluster` feature");
}

#[cfg(feature = "cluster")]
#[test]
fn cluster_errors_name_line_and_key() {
    let err = parse("[cluster]\nnats = []\n").expect_err("no server");
    assert_eq!(err.to_string(), "moat.toml:2: `cluster.nats`: needs at least one NATS server URL");
    let err = parse("[cluster]\nnats = [\"nats://a:1\",\n  \"http://b:2\"]\n").expect_err("bad scheme");
    assert!(err.to_string().starts_with("moat.toml:2: `cluster.nats[1]`: \"http://b:2\""), "{err}");
    let err = parse("[cluster]\nnats = [\"nats://a:1\"]\nnode_id = \"a.b\"\n").expect_err("dot in id");
    assert!(err.to_string().starts_with("moat.toml:3: `cluster.node_id`"), "{err}");
    let err = parse("[cluster]\nnats = [\"nats://a:1\"]\nsubject_prefix = \"moat.>\"\n").expect_err("wildcard");
    assert!(err.to_string().starts_with("moat.toml:3: `cluster.subject_prefix`"), "{err}");
    let err = parse("[cluster]\nnats = [\"nats://a:1\"]\nnode_timeout_s = 0\n").expect_err("no timeout");
    assert_eq!(err.to_string(), "moat.toml:3: `cluster.node_timeout_s`: must be 1 to 3600 seconds");
    let err = parse("[cluster]\nnats = [\"nats://a:1\"]\nredelivery_s = 7200\n").expect_err("too long");
    assert_eq!(err.to_string(), "moat.toml:3: `cluster.redelivery_s`: must be 1 to 3600 seconds");
    let err = parse("[cluster]\nnats = [\"nats://a:1\"]\nstore_timeout_s = 0\n").expect_err("no wait");
    assert_eq!(err.to_string(), "moat.toml:3: `cluster.store_timeout_s`: must be 1 to 3600 seconds");
    let err = parse("[cluster]\nnats = [\"nats://a:1\"]\nreplicas = 7\n").expect_err("too many");
    assert_eq!(err.to_string(), "moat.toml:3: `cluster.replicas`: must be 1 to 5 (JetStream's limit)");
    let err = parse("[cluster]\nnats = [\"nats://a:1\"]\nnode = \"x\"\n").expect_err("unknown key");
    assert!(err.to_string().starts_with("moat.toml:3:"), "{err}");
    let err = parse("[cluster]\nnats = [\"nats://a:1\"]\nwire_format = \"json\"\n").expect_err("no such format");
    assert!(err.to_string().starts_with("moat.toml:3:"), "{err}");
    assert!(err.to_string().contains("payload"), "names the formats: {err}");
    let headers = parse("[cluster]\nnats = [\"nats://a:1\"]\nwire_format = \"headers\"\n").expect("valid");
    assert_eq!(headers.cluster.map(|c| c.wire_format), Some(crate::config::WireFormat::Headers));
    let payload = parse("[cluster]\nnats = [\"nats://a:1\"]\nwire_format = \"payload\"\n").expect("valid");
    assert_eq!(payload.cluster.map(|c| c.wire_format), Some(crate::config::WireFormat::Payload));
    let default = parse("[cluster]\nnats = [\"nats://a:1\"]\n").expect("valid");
    assert_eq!(default.cluster.map(|c| c.wire_format), Some(crate::config::WireFormat::Split));
}

#[test]
fn admin_off_loopback_needs_a_token() {
    let err = parse("[admin]\nlisten = \"0.0.0.0:9090\"\n").expect_err("no token");
    assert!(err.to_string().starts_with("moat.toml:0: `admin.token`: is required"), "{err}");
    let err = parse("[admin]\nlisten = \"127.0.0.1:9090\"\ntoken = \"\"\n").expect_err("empty token");
    assert!(err.to_string().starts_with("moat.toml:3: `admin.token`: must not be empty"), "{err}");
}
