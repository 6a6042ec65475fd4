//! Certificates made at run time with rcgen (nothing secret is committed):
//! a CA, a server certificate for 127.0.0.1, client certificates in every
//! state a test needs, a CRL, and rustls client configurations.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use moat::config::{ClientAuth, IdentityAsUsername, ListenerConfig, ListenerProtocol, TlsConfig};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate authority that signs server and client certificates.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    next_serial: AtomicU64,
}

/// A certificate with its key, as PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: u64,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key, next_serial: AtomicU64::new(100) }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// The broker's certificate for 127.0.0.1 and localhost.
    pub fn server(&self) -> Issued {
        self.issue(|p| {
            p.subject_alt_names =
                vec![SanType::DnsName("localhost".try_into().expect("dns")), SanType::IpAddress([127, 0, 0, 1].into())];
            p.distinguished_name.push(DnType::CommonName, "moat test server");
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        })
    }

    /// A client certificate with common name `cn` (none if empty) and the
    /// given DNS alternative names.
    pub fn client(&self, cn: &str, dns: &[&str]) -> Issued {
        self.client_with(cn, dns, |_| {})
    }

    /// A client certificate whose subject holds two common names, `first`
    /// then `second` in certificate order.
    pub fn client_with_two_common_names(&self, first: &str, second: &str) -> Issued {
        self.client_with(first, &[], |p| {
            // rcgen keeps one value per type: the second CN goes by its OID.
            p.distinguished_name.push(DnType::CustomDnType(vec![2, 5, 4, 3]), second);
        })
    }

    /// A client certificate that expired in 2021.
    pub fn expired_client(&self, cn: &str) -> Issued {
        self.client_with(cn, &[], |p| {
            p.not_before = date_time_ymd(2020, 1, 1);
            p.not_after = date_time_ymd(2021, 1, 1);
        })
    }

    fn client_with(&self, cn: &str, dns: &[&str], tweak: impl FnOnce(&mut CertificateParams)) -> Issued {
        self.issue(|p| {
            if !cn.is_empty() {
                p.distinguished_name.push(DnType::CommonName, cn);
            }
            p.subject_alt_names = dns.iter().map(|d| SanType::DnsName((*d).try_into().expect("dns"))).collect();
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            tweak(p);
        })
    }

    fn issue(&self, tweak: impl FnOnce(&mut CertificateParams)) -> Issued {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        params.serial_number = Some(SerialNumber::from(serial));
        tweak(&mut params);
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), serial }
    }

    /// A CRL revoking `revoked`.
    pub fn crl(&self, revoked: &[&Issued]) -> String {
        self.crl_until(revoked, (2100, 1, 1))
    }

    /// A CRL revoking `revoked` whose `nextUpdate` is the day `next_update`
    /// (year, month, day).
    pub fn crl_until(&self, revoked: &[&Issued], (year, month, day): (i32, u8, u8)) -> String {
        CertificateRevocationListParams {
            this_update: date_time_ymd(2020, 1, 1),
            next_update: date_time_ymd(year, month, day),
            crl_number: SerialNumber::from(1),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|c| RevokedCertParams {
                    serial_number: SerialNumber::from(c.serial),
                    revocation_time: date_time_ymd(2020, 6, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.cert, &self.key)
        .expect("CRL")
        .pem()
        .expect("CRL PEM")
    }
}

/// A scratch directory unique to this process and `test`.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moat-it-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

pub fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write file");
    path
}

/// A server-side setup: the CA, the files, and the listener's TLS table.
pub struct ServerPki {
    pub ca: Ca,
    pub tls: TlsConfig,
    pub dir: PathBuf,
}

impl ServerPki {
    /// A CA and server certificate on disk; `client_auth` needs no CA file
    /// beyond the same CA.
    pub fn new(test: &str, client_auth: ClientAuth) -> ServerPki {
        let dir = scratch(test);
        let ca = Ca::new("moat test CA");
        let server = ca.server();
        let tls = TlsConfig {
            cert_file: write(&dir, "server.pem", &server.cert_pem),
            key_file: write(&dir, "server.key", &server.key_pem),
            client_auth,
            ca_file: (client_auth != ClientAuth::None).then(|| write(&dir, "ca.pem", &ca.pem())),
            crl_files: Vec::new(),
            use_identity_as_username: IdentityAsUsername::Off,
        };
        ServerPki { ca, tls, dir }
    }

    /// Turns `listener` into a `protocol` listener with this TLS table.
    pub fn apply(&self, listener: &mut ListenerConfig, protocol: ListenerProtocol) {
        listener.protocol = protocol;
        listener.tls = Some(self.tls.clone());
    }
}

/// A rustls client trusting `ca_pem`, presenting `client` if given.
pub fn client_config(ca_pem: &str, client: Option<&Issued>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client {
        Some(c) => {
            let chain = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes()).collect::<Result<_, _>>().expect("chain");
            let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).expect("key");
            builder.with_client_auth_cert(chain, key).expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}
