//! The shipped `cert-identity` plugin in a mutual-TLS broker: the verified
//! certificate names the user (whatever CONNECT claims), the name is what a
//! following acl plugin substitutes for `%u`, pinned fingerprints map to
//! their users, and a certificate that does not map is refused.

use moat::config::{Anonymous, ClientAuth, ListenerProtocol};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet as V5Packet};
use rumqttc::{TlsConfiguration, Transport};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::acl_plugin::{broker_with, granted};
use crate::harness::{TestBroker, V5, WAIT};
use crate::pki::{Issued, ServerPki, client_config};

/// The SHA-256 fingerprint the broker reports for `cert`.
pub fn fingerprint(cert: &Issued) -> String {
    let der = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).expect("certificate PEM");
    moat::auth::TlsIdentity::from_der(&der).expect("identity").sha256_fingerprint
}

/// A mutual-TLS broker (certificates required, no anonymous clients) on
/// `pki` with `plugins` staged.
pub async fn mtls_broker(
    pki: &ServerPki,
    plugins: &[(&str, &str, &str)],
) -> (TestBroker, moat::plugin::fixtures::StagedDir) {
    broker_with(plugins, |c| {
        pki.apply(&mut c.listeners[0], ListenerProtocol::Tls);
        c.listeners[0].allow_anonymous = Anonymous::Never;
    })
    .await
}

fn tls(pki: &ServerPki, cert: &Issued) -> Transport {
    Transport::tls_with_config(TlsConfiguration::Rustls(client_config(&pki.ca.pem(), Some(cert), &[])))
}

/// A v5 client over mTLS with `cert`, claiming the user name `claimed`.
pub async fn device(broker: &TestBroker, pki: &ServerPki, id: &str, cert: &Issued, claimed: &str) -> V5 {
    let transport = tls(pki, cert);
    broker
        .v5_with(id, |o| {
            o.set_transport(transport);
            o.set_credentials(claimed, "");
        })
        .await
}

/// The CONNACK code an mTLS v5 client with `cert` gets.
async fn connack(broker: &TestBroker, pki: &ServerPki, cert: &Issued) -> ConnectReturnCode {
    let mut opts = rumqttc::v5::MqttOptions::new("refused", "127.0.0.1", broker.addr.port());
    opts.set_transport(tls(pki, cert));
    let (_client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
    let attempt = async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::v5::Event::Incoming(V5Packet::ConnAck(ack))) => return ack.code,
                Ok(_) => {}
                Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => return code,
                Err(e) => panic!("connection failed before CONNACK: {e}"),
            }
        }
    };
    tokio::time::timeout(WAIT, attempt).await.expect("CONNACK in time")
}

const ACL: &str = r##"
order = 2
[config]
[[config.rules]]
pattern = "devices/%u/#"
access = "readwrite"
[[config.rules]]
user = "gateway-1"
access = "readwrite"
topic = "devices/#"
"##;

#[tokio::test]
async fn certificate_names_the_user_the_acl_sees() {
    let pki = ServerPki::new("cert-identity-acl", ClientAuth::Required);
    let gateway = pki.ca.client("ignored-cn", &[]);
    let sidecar = format!(
        "order = 1\n[config]\nusername = \"cn\"\nrole = \"device\"\n[config.fingerprints]\n\"{}\" = \"gateway-1\"\n",
        fingerprint(&gateway)
    );
    let (broker, _dir) = mtls_broker(&pki, &[("cert", "cert-identity", &sidecar), ("acl", "acl", ACL)]).await;

    // CONNECT claims device-2; the certificate says device-1, and wins.
    let cert = pki.ca.client("device-1", &[]);
    let mut d1 = device(&broker, &pki, "d1", &cert, "device-2").await;
    assert!(granted(&mut d1, "devices/device-1/#").await);
    assert!(!granted(&mut d1, "devices/device-2/#").await, "the claimed name grants nothing");
    assert!(!granted(&mut d1, "devices/#").await);

    // A pinned fingerprint maps to its user, whatever the common name.
    let mut gw = device(&broker, &pki, "gw", &gateway, "device-1").await;
    assert!(granted(&mut gw, "devices/#").await, "only gateway-1 may read devices/#");
    assert!(!granted(&mut gw, "other/#").await);

    // A certificate without a common name does not map: refused at CONNECT.
    let nameless = pki.ca.client("", &["nameless.example"]);
    assert_eq!(connack(&broker, &pki, &nameless).await, ConnectReturnCode::NotAuthorized);
    // A common name built to widen `%u` is refused too.
    let wild = pki.ca.client("#", &[]);
    assert_eq!(connack(&broker, &pki, &wild).await, ConnectReturnCode::NotAuthorized);
    // Several common names: the plugin takes neither, as the broker's
    // use_identity_as_username does not (one rule, see tls.rs).
    let ambiguous = pki.ca.client_with_two_common_names("device-1", "gateway-1");
    assert_eq!(connack(&broker, &pki, &ambiguous).await, ConnectReturnCode::NotAuthorized);
}
