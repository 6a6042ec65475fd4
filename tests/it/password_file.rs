//! The shipped `password-file` plugin in the broker, enabled from the config
//! (`[plugins.password-file]`), with real clients: argon2id entries written
//! by `moat::passwd`, Mosquitto's formats used unchanged, and files the
//! plugin must refuse.

use std::path::Path;
use std::time::Duration;

use moat::config::{Anonymous, Config};
use moat::plugin::{Grants, Sidecar, SidecarLimits};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, PubAckReason};

use crate::acl_plugin::{granted, publish_qos1};

use crate::harness::{TestBroker, WAIT};

/// Written by `mosquitto_passwd -b f alice s3cret` (Mosquitto 2.0, `$7$`).
const MOSQUITTO_ALICE: &str = "alice:$7$101$tZFQpalKf0haJHzc$CZG7RR8sWIqfoFgcHgSwDjvedtzGk75EZOpS0lOciKFUjsBkSW8xRZiYuLw8m7IP3Yp7HrS2kQ8BtHAfOOgCWg==";
/// Written by `mosquitto_passwd -H sha512 -b f bob hunter2` (Mosquitto 1.x, `$6$`).
const MOSQUITTO_BOB: &str =
    "bob:$6$01TbQGVw51L/KDt4$7ZqVmQxCsTWF00A7XzkYrsdad16Ko4PdvLspT/2wYBtGquVqivdyhuFlUqVUHn0RhmaAC3pX4OvnGfMqkIW0UQ==";

/// Enables the shipped plugin on `file`, granting its directory, on a
/// listener that refuses anonymous clients.
fn enable(config: &mut Config, file: &Path) {
    let dir = file.parent().expect("file in a directory");
    let table = Sidecar {
        config: Some(toml::from_str(&format!("file = {:?}", file.to_str().expect("utf-8 path"))).expect("table")),
        grants: Some(Grants { read: vec![dir.to_owned()] }),
        // The shipped 1 s deadline, made roomier for a loaded CI machine
        // running unoptimised tests beside other builds.
        limits: Some(SidecarLimits { timeout_ms: Some(5000), ..SidecarLimits::default() }),
        ..Sidecar::default()
    };
    config.plugins.shipped.insert("password-file".into(), table);
    config.listeners[0].allow_anonymous = Anonymous::Never;
}

/// The CONNACK code a v5 client gets with these credentials.
async fn connack(broker: &TestBroker, credentials: Option<(&str, &str)>) -> ConnectReturnCode {
    let mut opts = rumqttc::v5::MqttOptions::new("pw-client", "127.0.0.1", broker.addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some((user, password)) = credentials {
        opts.set_credentials(user, password);
    }
    let (_client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
    let event = tokio::time::timeout(WAIT, eventloop.poll()).await.expect("CONNACK in time");
    match event {
        Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(ack))) => ack.code,
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => code,
        other => panic!("expected a CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn argon2id_users_from_moat_passwd_log_in_and_others_are_refused_alike() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passwd");
    moat::passwd::set_entry(&file, "alice", &moat::passwd::argon2id(b"s3cret").expect("hash")).expect("write");
    moat::passwd::set_entry(&file, "bob", &moat::passwd::argon2id(b"hunter2").expect("hash")).expect("write");
    let broker = TestBroker::with(|c| enable(c, &file)).await;

    assert_eq!(connack(&broker, Some(("alice", "s3cret"))).await, ConnectReturnCode::Success);
    assert_eq!(connack(&broker, Some(("bob", "hunter2"))).await, ConnectReturnCode::Success);
    let wrong = connack(&broker, Some(("alice", "hunter2"))).await;
    let unknown = connack(&broker, Some(("mallory", "s3cret"))).await;
    assert_eq!(wrong, ConnectReturnCode::BadUserNamePassword);
    assert_eq!(unknown, wrong, "an unknown user looks like a wrong password");
    // No user name: the plugin ignores, and this listener refuses anonymous clients.
    assert_eq!(connack(&broker, None).await, ConnectReturnCode::NotAuthorized);
}

#[tokio::test]
async fn a_mosquitto_password_file_works_unchanged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("mosquitto.passwd");
    std::fs::write(&file, format!("{MOSQUITTO_ALICE}\n{MOSQUITTO_BOB}\n")).expect("write");
    let broker = TestBroker::with(|c| enable(c, &file)).await;

    assert_eq!(connack(&broker, Some(("alice", "s3cret"))).await, ConnectReturnCode::Success);
    assert_eq!(connack(&broker, Some(("bob", "hunter2"))).await, ConnectReturnCode::Success);
    assert_eq!(connack(&broker, Some(("alice", "s3cret!"))).await, ConnectReturnCode::BadUserNamePassword);
    assert_eq!(connack(&broker, Some(("bob", "s3cret"))).await, ConnectReturnCode::BadUserNamePassword);
}

/// A file `mosquitto_passwd` writes now, when it is installed: the format
/// must keep working with the tool operators actually have.
#[tokio::test]
async fn entries_fresh_from_mosquitto_passwd_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("fresh.passwd");
    let made = std::process::Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&file)
        .args(["carol", "pa55 word"])
        .status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("mosquitto_passwd is not installed; the committed Mosquitto entries cover the format");
        return;
    }
    let broker = TestBroker::with(|c| enable(c, &file)).await;
    assert_eq!(connack(&broker, Some(("carol", "pa55 word"))).await, ConnectReturnCode::Success);
    assert_eq!(connack(&broker, Some(("carol", "pa55word"))).await, ConnectReturnCode::BadUserNamePassword);
}

#[tokio::test]
async fn a_malformed_file_stops_start_up_naming_the_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passwd");
    std::fs::write(&file, format!("# users\n{MOSQUITTO_ALICE}\ncarol:plaintext\n")).expect("write");
    let mut config = Config::default();
    config.listeners[0].bind = ([127, 0, 0, 1], 0).into();
    enable(&mut config, &file);
    let err = moat::Server::bind(config).await.expect_err("refused");
    let msg = err.to_string();
    assert!(msg.contains("shipped:password-file") && msg.contains("passwd:3: user \"carol\""), "{msg}");

    // Without a grant the plugin would see no file at all: refused at
    // load, naming the grant to add.
    let mut config = Config::default();
    config.listeners[0].bind = ([127, 0, 0, 1], 0).into();
    enable(&mut config, &file);
    if let Some(table) = config.plugins.shipped.get_mut("password-file") {
        table.grants = None;
    }
    let err = moat::Server::bind(config).await.expect_err("refused");
    let dir = file.parent().and_then(|d| d.canonicalize().ok()).expect("the file's directory");
    assert!(err.to_string().contains(&format!("grants.read = [\"{}\"]", dir.display())), "{err}");
}

#[test]
fn the_config_enables_shipped_plugins_by_name_only() {
    let config = Config::parse(
        "[plugins.password-file]\norder = 10\nconfig = { file = \"/etc/moat/passwd\" }\n\
         grants = { read = [\"auth\"] }\n[plugins.password-file.limits]\ntimeout_ms = 2000\n",
        Path::new("/etc/moat/moat.toml"),
    )
    .expect("valid");
    let table = &config.plugins.shipped["password-file"];
    assert_eq!(table.order, Some(10));
    assert_eq!(table.limits.and_then(|l| l.timeout_ms), Some(2000));
    assert_eq!(config.plugins.base_dir, Path::new("/etc/moat"));

    let err = Config::parse("[plugins]\ndir = \"p\"\n\n[plugins.pasword-file]\norder = 1\n", Path::new("moat.toml"))
        .expect_err("unknown name");
    let msg = err.to_string();
    assert!(msg.starts_with("moat.toml:4: `plugins.pasword-file`: no shipped plugin"), "{msg}");
    assert!(msg.contains("password-file"), "lists the shipped ones: {msg}");

    let err = Config::parse("[plugins.password-file]\norder = 1\nordr = 2\n", Path::new("moat.toml"))
        .expect_err("unknown key");
    assert!(err.to_string().starts_with("moat.toml:3:") && err.to_string().contains("ordr"), "{err}");
    let err = Config::parse("[plugins.password-file.limits]\n\nmemory_mb = \"lots\"\n", Path::new("moat.toml"))
        .expect_err("bad type");
    assert!(err.to_string().starts_with("moat.toml:3: `plugins.password-file.limits.memory_mb`"), "{err}");
}

/// Shipped plugins change nothing until the config enables them.
#[tokio::test]
async fn without_configuration_no_shipped_plugin_runs() {
    let broker = TestBroker::start().await;
    assert!(broker.broker.policy().plugins().is_empty());
    assert_eq!(connack(&broker, Some(("anyone", "anything"))).await, ConnectReturnCode::Success);
}

/// The secure set-up of `moat.example.toml`, all from the config: users
/// log in through the shipped `password-file` plugin and the shipped `acl`
/// plugin confines each to the topics under its own name.
#[tokio::test]
async fn shipped_password_file_and_acl_together_confine_each_user() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passwd");
    moat::passwd::set_entry(&file, "alice", &moat::passwd::argon2id(b"s3cret").expect("hash")).expect("write");
    let acl = Sidecar {
        order: Some(20),
        config: Some(
            toml::from_str("[[rules]]\npattern = \"users/%u/#\"\naccess = \"readwrite\"\n").expect("acl config"),
        ),
        ..Sidecar::default()
    };
    let broker = TestBroker::with(|c| {
        enable(c, &file);
        c.plugins.shipped.insert("acl".into(), acl);
    })
    .await;

    let mut alice = broker
        .v5_with("alice-1", |o| {
            o.set_credentials("alice", "s3cret");
        })
        .await;
    assert!(granted(&mut alice, "users/alice/#").await);
    assert!(!granted(&mut alice, "users/#").await);
    assert_eq!(publish_qos1(&mut alice, "users/alice/status", false).await, PubAckReason::Success);
    assert_eq!(alice.publish().await.topic, "users/alice/status");
    assert_eq!(publish_qos1(&mut alice, "users/bob/status", false).await, PubAckReason::NotAuthorized);
}

/// A relative `config.file` is resolved like the relative grant beside
/// it, against the config file's directory; a file outside every granted
/// directory stops the start with the grant to write, and file errors read
/// as the host's ("No such file or directory", not WASI's errno).
#[tokio::test]
async fn relative_files_resolve_against_the_config_file_like_grants() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("auth")).expect("mkdir");
    let file = dir.path().join("auth").join("passwd");
    moat::passwd::set_entry(&file, "alice", &moat::passwd::argon2id(b"s3cret").expect("hash")).expect("write");
    let path = dir.path().join("moat.toml");
    let table =
        "[plugins.password-file]\nconfig.file = \"auth/passwd\"\ngrants.read = [\"auth\"]\nlimits.timeout_ms = 5000\n";
    std::fs::write(&path, format!("[[listeners]]\nbind = \"127.0.0.1:0\"\n\n{table}")).expect("config");
    let loaded = Config::load(&path).expect("valid config");
    let broker = TestBroker::with(|c| {
        c.plugins = loaded.plugins.clone();
        c.listeners[0].allow_anonymous = Anonymous::Never;
    })
    .await;
    assert_eq!(connack(&broker, Some(("alice", "s3cret"))).await, ConnectReturnCode::Success);
    assert_eq!(connack(&broker, Some(("alice", "wrong"))).await, ConnectReturnCode::BadUserNamePassword);

    let run = |config: &str| {
        std::fs::write(&path, format!("[[listeners]]\nbind = \"127.0.0.1:0\"\n\n{config}")).expect("config");
        let out = crate::cli::moat().arg("--config").arg(&path).output().expect("run moat");
        assert_eq!(out.status.code(), Some(64), "refused at start-up");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let auth = dir.path().join("auth").canonicalize().expect("canonical");
    let stderr = run("[plugins.password-file]\nconfig.file = \"auth/passwd\"\n");
    assert!(stderr.contains(&format!("grants.read = [\"{}\"]", auth.display())), "{stderr}");
    let stderr = run("[plugins.password-file]\nconfig.file = \"auth/missing\"\ngrants.read = [\"auth\"]\n");
    assert!(stderr.contains(&format!("cannot read {}: No such file or directory", auth.join("missing").display())));
    assert!(!stderr.contains("os error"), "{stderr}");
}
