//! TLS and mutual TLS listeners: server authentication, ALPN, client
//! certificates (required, optional, refused), CRLs, identity as user name,
//! and the handshake running under the connect timeout.

use std::sync::Arc;
use std::time::Duration;

use moat::config::{Anonymous, ClientAuth, IdentityAsUsername, ListenerProtocol};
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5Code;
use rumqttc::{ConnectReturnCode as V4Code, TlsConfiguration, Transport};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{TestBroker, WAIT, connect_v4};
use crate::pki::{Issued, ServerPki, client_config, write};

fn tls(config: Arc<rustls::ClientConfig>) -> Transport {
    Transport::tls_with_config(TlsConfiguration::Rustls(config))
}

/// Connects an MQTT 5 client over TLS; the CONNACK code, or the error that
/// ended the attempt.
pub(crate) async fn try_v5(broker: &TestBroker, id: &str, config: Arc<rustls::ClientConfig>) -> Result<V5Code, String> {
    let mut opts = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", broker.addr.port());
    opts.set_transport(tls(config));
    let (_client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
    let attempt = async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(ack))) => {
                    return Ok(ack.code);
                }
                Ok(_) => {}
                Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => return Ok(code),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::time::timeout(WAIT, attempt).await.expect("connect attempt ends in time")
}

/// Connects an MQTT 3.1.1 client over TLS.
async fn try_v4(broker: &TestBroker, id: &str, config: Arc<rustls::ClientConfig>) -> Result<V4Code, String> {
    let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", broker.addr.port());
    opts.set_transport(tls(config));
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(opts, 10);
    let attempt = async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => return Ok(ack.code),
                Ok(_) => {}
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Ok(code),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::time::timeout(WAIT, attempt).await.expect("connect attempt ends in time")
}

async fn mtls_broker(pki: &ServerPki, anonymous: Anonymous) -> TestBroker {
    TestBroker::with(|c| {
        pki.apply(&mut c.listeners[0], ListenerProtocol::Tls);
        c.listeners[0].allow_anonymous = anonymous;
    })
    .await
}

fn with_cert(pki: &ServerPki, cert: &Issued) -> Arc<rustls::ClientConfig> {
    client_config(&pki.ca.pem(), Some(cert), &[])
}

#[tokio::test]
async fn tls_server_auth_pubsub_v5_and_v4() {
    let pki = ServerPki::new("server-auth", ClientAuth::None);
    let broker = TestBroker::with(|c| pki.apply(&mut c.listeners[0], ListenerProtocol::Tls)).await;
    let config = client_config(&pki.ca.pem(), None, &[b"mqtt"]);
    let mut sub = broker
        .v5_with("tls-sub", |o| {
            o.set_transport(tls(config.clone()));
        })
        .await;
    sub.subscribe("secure/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await;
    let publisher = broker
        .v4_with("tls-pub", |o| {
            o.set_transport(tls(config.clone()));
        })
        .await;
    publisher.client.publish("secure/a", rumqttc::QoS::AtLeastOnce, false, "over tls").await.expect("publish");
    let got = sub.publish().await;
    assert_eq!(&got.payload[..], b"over tls");
}

/// A raw TLS client offering `alpn`: the protocol the broker chose, and
/// the CONNACK to a 3.1.1 CONNECT sent through it.
async fn raw_tls(broker: &TestBroker, pki: &ServerPki, alpn: &[&[u8]]) -> (Option<Vec<u8>>, Vec<u8>) {
    let connector = tokio_rustls::TlsConnector::from(client_config(&pki.ca.pem(), None, alpn));
    let tcp = TcpStream::connect(broker.addr).await.expect("tcp");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut stream = tokio::time::timeout(WAIT, connector.connect(name, tcp)).await.expect("in time").expect("tls");
    let chosen = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    stream.write_all(&connect_v4("raw-tls")).await.expect("write");
    let mut connack = vec![0; 4];
    tokio::time::timeout(WAIT, stream.read_exact(&mut connack)).await.expect("in time").expect("read");
    (chosen, connack)
}

#[tokio::test]
async fn tls_alpn_mqtt_accepted_not_required() {
    let pki = ServerPki::new("alpn", ClientAuth::None);
    let broker = TestBroker::with(|c| pki.apply(&mut c.listeners[0], ListenerProtocol::Tls)).await;
    assert_eq!(raw_tls(&broker, &pki, &[b"mqtt"]).await, (Some(b"mqtt".to_vec()), vec![0x20, 2, 0, 0]));
    assert_eq!(raw_tls(&broker, &pki, &[]).await, (None, vec![0x20, 2, 0, 0]));
    assert_eq!(raw_tls(&broker, &pki, &[b"x-other"]).await, (None, vec![0x20, 2, 0, 0]));
}

#[tokio::test]
async fn tls_listener_refuses_plain_mqtt() {
    let pki = ServerPki::new("plain-on-tls", ClientAuth::None);
    let broker = TestBroker::with(|c| pki.apply(&mut c.listeners[0], ListenerProtocol::Tls)).await;
    let mut raw = broker.raw().await;
    raw.send(&connect_v4("plain")).await;
    let reply = raw.read_to_close().await;
    assert!(!reply.starts_with(&[0x20]), "no CONNACK over plain TCP: {reply:02x?}");
}

#[tokio::test]
async fn stalled_tls_handshake_does_not_block_other_clients() {
    let pki = ServerPki::new("stalled", ClientAuth::None);
    let broker = TestBroker::with(|c| {
        pki.apply(&mut c.listeners[0], ListenerProtocol::Tls);
        c.limits.connect_timeout_ms = 1000;
    })
    .await;
    // Connected, but never says a word of TLS.
    let mut stalled = broker.raw().await;
    let started = tokio::time::Instant::now();
    let config = client_config(&pki.ca.pem(), None, &[]);
    assert_eq!(try_v5(&broker, "prompt", config).await, Ok(V5Code::Success));
    assert!(started.elapsed() < Duration::from_millis(1000), "served while the other stalls");
    assert!(stalled.read_to_close().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900), "stalled handshake dropped at the connect timeout");
}

#[tokio::test]
async fn mtls_required_accepts_valid_certificate() {
    let pki = ServerPki::new("mtls-valid", ClientAuth::Required);
    let broker = mtls_broker(&pki, Anonymous::Never).await;
    let cert = pki.ca.client("device-1", &[]);
    assert_eq!(try_v5(&broker, "dev1", with_cert(&pki, &cert)).await, Ok(V5Code::Success));
    assert_eq!(try_v4(&broker, "dev1-v4", with_cert(&pki, &cert)).await, Ok(V4Code::Success));
}

#[tokio::test]
async fn mtls_required_refuses_missing_certificate() {
    let pki = ServerPki::new("mtls-none", ClientAuth::Required);
    let broker = mtls_broker(&pki, Anonymous::Always).await;
    let refused = try_v5(&broker, "nocert", client_config(&pki.ca.pem(), None, &[])).await;
    assert!(refused.as_ref().is_err_and(|e| e.contains("CertificateRequired")), "{refused:?}");
}

#[tokio::test]
async fn mtls_required_refuses_certificate_from_another_ca() {
    let pki = ServerPki::new("mtls-wrong-ca", ClientAuth::Required);
    let broker = mtls_broker(&pki, Anonymous::Always).await;
    let stranger = crate::pki::Ca::new("someone else").client("device-1", &[]);
    let refused = try_v5(&broker, "stranger", with_cert(&pki, &stranger)).await;
    assert!(refused.as_ref().is_err_and(|e| e.contains("UnknownCA")), "{refused:?}");
}

#[tokio::test]
async fn mtls_required_refuses_expired_certificate() {
    let pki = ServerPki::new("mtls-expired", ClientAuth::Required);
    let broker = mtls_broker(&pki, Anonymous::Always).await;
    let expired = pki.ca.expired_client("device-1");
    let refused = try_v5(&broker, "expired", with_cert(&pki, &expired)).await;
    assert!(refused.as_ref().is_err_and(|e| e.contains("CertificateExpired")), "{refused:?}");
}

#[tokio::test]
async fn mtls_refuses_revoked_certificate() {
    let mut pki = ServerPki::new("mtls-revoked", ClientAuth::Required);
    let revoked = pki.ca.client("device-revoked", &[]);
    let good = pki.ca.client("device-good", &[]);
    pki.tls.crl_files = vec![write(&pki.dir, "ca.crl", &pki.ca.crl(&[&revoked]))];
    let broker = mtls_broker(&pki, Anonymous::Always).await;
    let refused = try_v5(&broker, "revoked", with_cert(&pki, &revoked)).await;
    assert!(refused.as_ref().is_err_and(|e| e.contains("CertificateRevoked")), "{refused:?}");
    assert_eq!(try_v5(&broker, "good", with_cert(&pki, &good)).await, Ok(V5Code::Success));
}

#[tokio::test]
async fn a_crl_reload_disconnects_the_clients_it_now_revokes() {
    let mut pki = ServerPki::new("crl-reload", ClientAuth::Required);
    let (bad, good) = (pki.ca.client("device-bad", &[]), pki.ca.client("device-good", &[]));
    pki.tls.crl_files = vec![write(&pki.dir, "ca.crl", &pki.ca.crl(&[]))];
    let broker = mtls_broker(&pki, Anonymous::Never).await;
    let connect = |id: &'static str, cert: &Issued| {
        let config = with_cert(&pki, cert);
        broker.v5_with(id, move |o| {
            o.set_transport(tls(config));
        })
    };
    let mut bad_client = connect("bad", &bad).await;
    let mut good_client = connect("good", &good).await;
    good_client.subscribe("still/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await;

    write(&pki.dir, "ca.crl", &pki.ca.crl(&[&bad]));
    let report = broker.reloader.reload().await.expect("reload");
    assert_eq!(report.tls_reloaded, ["test"]);
    assert_eq!(
        bad_client.disconnect_reason().await,
        rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::AdministrativeAction
    );
    let refused = try_v5(&broker, "bad-again", with_cert(&pki, &bad)).await;
    assert!(refused.as_ref().is_err_and(|e| e.contains("CertificateRevoked")), "{refused:?}");
    let publisher = broker.v5_with("publisher", |o| {
        o.set_transport(tls(with_cert(&pki, &good)));
    });
    let publisher = publisher.await;
    publisher.client.publish("still/here", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "x").await.expect("pub");
    assert_eq!(&good_client.publish().await.payload[..], b"x", "the others stay connected");
}

#[tokio::test]
async fn an_expired_crl_is_refused_at_start_up_and_at_reload() {
    let mut pki = ServerPki::new("crl-expired", ClientAuth::Required);
    let crl = write(&pki.dir, "ca.crl", &pki.ca.crl_until(&[], (2021, 1, 1)));
    pki.tls.crl_files = vec![crl.clone()];
    let mut config = moat::config::Config::default();
    config.listeners[0].bind = ([127, 0, 0, 1], 0).into();
    pki.apply(&mut config.listeners[0], ListenerProtocol::Tls);
    let err = moat::Server::bind(config).await.expect_err("expired CRL").to_string();
    assert!(err.contains(&crl.display().to_string()) && err.contains("expired"), "{err}");

    // Valid at start, expired when reloaded: refused, the old CRL serves on.
    write(&pki.dir, "ca.crl", &pki.ca.crl(&[]));
    let broker = mtls_broker(&pki, Anonymous::Never).await;
    write(&pki.dir, "ca.crl", &pki.ca.crl_until(&[], (2021, 1, 1)));
    let refused = broker.reloader.reload().await.expect_err("expired CRL");
    assert!(refused.0.contains("ca.crl") && refused.0.contains("expired"), "{refused}");
    let cert = pki.ca.client("device-1", &[]);
    assert_eq!(try_v5(&broker, "still", with_cert(&pki, &cert)).await, Ok(V5Code::Success));
}

#[tokio::test]
async fn mtls_optional_accepts_both_when_anonymous_allowed() {
    let pki = ServerPki::new("optional-open", ClientAuth::Optional);
    let broker = mtls_broker(&pki, Anonymous::Always).await;
    let cert = pki.ca.client("device-1", &[]);
    assert_eq!(try_v5(&broker, "with", with_cert(&pki, &cert)).await, Ok(V5Code::Success));
    assert_eq!(try_v5(&broker, "without", client_config(&pki.ca.pem(), None, &[])).await, Ok(V5Code::Success));
}

#[tokio::test]
async fn mtls_optional_only_certificate_authenticates() {
    let pki = ServerPki::new("optional-closed", ClientAuth::Optional);
    let broker = mtls_broker(&pki, Anonymous::Never).await;
    let cert = pki.ca.client("device-1", &[]);
    assert_eq!(try_v5(&broker, "with", with_cert(&pki, &cert)).await, Ok(V5Code::Success));
    let anonymous = client_config(&pki.ca.pem(), None, &[]);
    assert_eq!(try_v5(&broker, "without", anonymous.clone()).await, Ok(V5Code::NotAuthorized));
    assert_eq!(try_v4(&broker, "without-v4", anonymous).await, Ok(V4Code::NotAuthorized));
    // A certificate from another CA is not "optional": it is refused.
    let stranger = crate::pki::Ca::new("someone else").client("device-1", &[]);
    assert!(try_v5(&broker, "stranger", with_cert(&pki, &stranger)).await.is_err());
}

#[tokio::test]
async fn identity_as_username_common_name() {
    let mut pki = ServerPki::new("identity-cn", ClientAuth::Required);
    pki.tls.use_identity_as_username = IdentityAsUsername::CommonName;
    let broker = mtls_broker(&pki, Anonymous::Never).await;
    let named = pki.ca.client("device-1", &["device-1.example.com"]);
    assert_eq!(try_v5(&broker, "named", with_cert(&pki, &named)).await, Ok(V5Code::Success));
    let nameless = pki.ca.client("", &["device-2.example.com"]);
    assert_eq!(try_v5(&broker, "nameless", with_cert(&pki, &nameless)).await, Ok(V5Code::BadUserNamePassword));
    assert_eq!(try_v4(&broker, "nameless-v4", with_cert(&pki, &nameless)).await, Ok(V4Code::BadUserNamePassword));
    // Several CNs: which one counts differs between libraries, so none does.
    let ambiguous = pki.ca.client_with_two_common_names("device-3", "admin");
    assert_eq!(try_v5(&broker, "two-cns", with_cert(&pki, &ambiguous)).await, Ok(V5Code::BadUserNamePassword));
}

#[tokio::test]
async fn identity_as_username_subject_alt_name() {
    let mut pki = ServerPki::new("identity-san", ClientAuth::Required);
    pki.tls.use_identity_as_username = IdentityAsUsername::SubjectAltName;
    let broker = mtls_broker(&pki, Anonymous::Never).await;
    let with_san = pki.ca.client("", &["device-2.example.com"]);
    assert_eq!(try_v5(&broker, "san", with_cert(&pki, &with_san)).await, Ok(V5Code::Success));
    let cn_only = pki.ca.client("device-1", &[]);
    assert_eq!(try_v5(&broker, "cn-only", with_cert(&pki, &cn_only)).await, Ok(V5Code::BadUserNamePassword));
}

#[tokio::test]
async fn tls_setup_errors_stop_the_server() {
    let pki = ServerPki::new("setup-error", ClientAuth::None);
    let mut config = moat::config::Config::default();
    config.listeners[0].bind = ([127, 0, 0, 1], 0).into();
    pki.apply(&mut config.listeners[0], ListenerProtocol::Tls);
    config.listeners[0].tls.as_mut().expect("tls").key_file = pki.dir.join("absent.key");
    let err = moat::Server::bind(config).await.expect_err("missing key");
    assert!(matches!(err, moat::server::ServerError::Tls(_)), "{err:?}");
    assert!(err.to_string().contains("absent.key"), "{err}");
}

#[tokio::test]
async fn replaced_certificates_serve_new_handshakes_only() {
    let old = ServerPki::new("swap-old", ClientAuth::None);
    let broker = TestBroker::with(|c| old.apply(&mut c.listeners[0], ListenerProtocol::Tls)).await;
    let trusts_old = client_config(&old.ca.pem(), None, &[]);
    let mut before = broker
        .v5_with("before", |o| {
            o.set_transport(tls(trusts_old.clone()));
        })
        .await;
    before.subscribe("swap/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await;

    let new = ServerPki::new("swap-new", ClientAuth::None);
    let (name, acceptor) = &broker.tls[0];
    let configs =
        moat::transport::ServerConfigs::load(name, ListenerProtocol::Tls, &new.tls).expect("new certificates");
    acceptor.replace(configs);

    let refused = try_v5(&broker, "old-trust", trusts_old).await;
    assert!(refused.as_ref().is_err_and(|e| e.contains("invalid peer certificate")), "{refused:?}");
    let after = broker
        .v5_with("after", |o| {
            o.set_transport(tls(client_config(&new.ca.pem(), None, &[])));
        })
        .await;
    after.client.publish("swap/x", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "hi").await.expect("publish");
    assert_eq!(&before.publish().await.payload[..], b"hi", "the connection made before the swap goes on");
}

#[tokio::test]
async fn reload_reads_rotated_certificate_files_and_refuses_broken_ones() {
    let pki = ServerPki::new("reload-rotate", ClientAuth::None);
    let broker = TestBroker::with(|c| pki.apply(&mut c.listeners[0], ListenerProtocol::Tls)).await;
    let trusts_old = client_config(&pki.ca.pem(), None, &[]);
    let mut before = broker
        .v5_with("before", |o| {
            o.set_transport(tls(trusts_old.clone()));
        })
        .await;
    before.subscribe("rotate/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await;

    // A key that does not parse: the reload is refused as a whole and the
    // old certificate keeps serving.
    let old_key = std::fs::read_to_string(&pki.tls.key_file).expect("key");
    write(&pki.dir, "server.key", "not a key");
    let refused = broker.reloader.reload().await.expect_err("broken key");
    assert!(refused.0.contains("server.key"), "{refused}");
    assert_eq!(try_v5(&broker, "still-old", trusts_old.clone()).await, Ok(V5Code::Success));
    write(&pki.dir, "server.key", &old_key);

    // Rotated in place (same file names), as certificate renewal does.
    let ca = crate::pki::Ca::new("moat renewed CA");
    let server = ca.server();
    write(&pki.dir, "server.pem", &server.cert_pem);
    write(&pki.dir, "server.key", &server.key_pem);
    let report = broker.reloader.reload().await.expect("reload");
    assert_eq!(report.tls_reloaded, ["test"]);
    assert!(report.needs_restart.is_empty(), "{:?}", report.needs_restart);

    let refused = try_v5(&broker, "old-trust", trusts_old).await;
    assert!(refused.as_ref().is_err_and(|e| e.contains("invalid peer certificate")), "{refused:?}");
    let after = broker
        .v5_with("after", |o| {
            o.set_transport(tls(client_config(&ca.pem(), None, &[])));
        })
        .await;
    after.client.publish("rotate/x", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "hi").await.expect("publish");
    assert_eq!(&before.publish().await.payload[..], b"hi", "the connection made before the reload goes on");
}
