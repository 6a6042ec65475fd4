//! TLS listeners: the rustls server configuration of a listener, built once
//! from its PEM files at start-up and swappable at run time (certificate
//! reload replaces it; connections in flight keep the one they started
//! with). The handshake itself runs in the connection task.
//!
//! CRLs: a CRL past its `nextUpdate` is refused when the files are read
//! (start-up or reload: it may lack the revocations published since), and
//! a CRL that expires while loaded refuses the certificates it covers from
//! then on (fail closed, as OpenSSL's CRL check); the broker warns at load
//! when one expires within a day. A reload hands back what the new CRLs
//! revoke ([`ServerConfigs::revokes`]), so connected clients whose
//! certificate they now revoke are disconnected.
//!
//! rustls with the ring provider: TLS 1.2 and 1.3, rustls' default AEAD
//! suites only. ALPN: a client that offers one of the listener's protocols
//! (`mqtt`; `http/1.1` for `wss`) gets it; a client that offers none of them,
//! or no ALPN at all, is served without ALPN rather than refused.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::server::{Acceptor, ClientHello, WebPkiClientVerifier, danger::ClientCertVerifier};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{ClientAuth, ListenerProtocol, TlsConfig};
use crate::identity::{RevocationId, TlsIdentity};

/// A TLS listener could not be set up from its files.
#[derive(Debug, thiserror::Error)]
#[error("listener {listener:?}: {}: {problem}", file.display())]
pub struct TlsSetupError {
    /// Listener name.
    pub listener: String,
    /// The file at fault.
    pub file: PathBuf,
    /// What is wrong with it. Never contains key or certificate material.
    pub problem: String,
}

/// The server side of TLS for one listener.
#[derive(Debug)]
pub struct TlsAcceptor {
    /// Read per handshake (an `Arc` clone under a short read lock, never
    /// held across `.await`), written only when certificates are replaced.
    configs: RwLock<Arc<ServerConfigs>>,
}

/// One set of certificates, as two rustls configurations that differ only
/// in ALPN: rustls refuses a client whose ALPN offer shares nothing with
/// the server's list, and we would rather serve it without ALPN.
#[derive(Debug)]
pub struct ServerConfigs {
    with_alpn: Arc<ServerConfig>,
    without_alpn: Arc<ServerConfig>,
    /// The certificates the CRLs revoke.
    revoked: HashSet<RevocationId>,
}

impl ServerConfigs {
    /// Reads the listener's certificate, key, CA bundle and CRLs and builds
    /// its configurations.
    ///
    /// # Errors
    /// [`TlsSetupError`] naming the listener and the file at fault.
    pub fn load(listener: &str, protocol: ListenerProtocol, tls: &TlsConfig) -> Result<ServerConfigs, TlsSetupError> {
        let fail = |file: &Path, problem: String| TlsSetupError {
            listener: listener.to_owned(),
            file: file.to_owned(),
            problem,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = read_certs(&tls.cert_file).map_err(|p| fail(&tls.cert_file, p))?;
        let key = read_key(&tls.key_file).map_err(|p| fail(&tls.key_file, p))?;
        let (verifier, revoked) = client_verifier(tls, &provider).map_err(|(file, p)| fail(&file, p))?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| fail(&tls.cert_file, e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => fail(
                    &tls.key_file,
                    format!("the private key does not match the certificate in {}", tls.cert_file.display()),
                ),
                other => fail(&tls.key_file, format!("unusable private key or certificate: {other}")),
            })?;
        let alpn: &[&[u8]] = if protocol.is_websocket() { &[b"http/1.1"] } else { &[b"mqtt"] };
        let mut with_alpn = config.clone();
        with_alpn.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(ServerConfigs { with_alpn: Arc::new(with_alpn), without_alpn: Arc::new(config), revoked })
    }

    /// Whether the CRLs of these configurations revoke the certificate
    /// `id` names.
    pub fn revokes(&self, id: &RevocationId) -> bool {
        self.revoked.contains(id)
    }

    /// The configuration for a client: with ALPN if it offered one of ours.
    fn for_hello(&self, hello: &ClientHello<'_>) -> Arc<ServerConfig> {
        let ours = &self.with_alpn.alpn_protocols;
        let offered = hello.alpn().is_some_and(|mut offer| offer.any(|p| ours.iter().any(|o| o == p)));
        if offered { self.with_alpn.clone() } else { self.without_alpn.clone() }
    }
}

impl TlsAcceptor {
    /// An acceptor serving `configs`.
    pub fn new(configs: ServerConfigs) -> TlsAcceptor {
        TlsAcceptor { configs: RwLock::new(Arc::new(configs)) }
    }

    /// Serves new handshakes with `configs`; handshakes already started
    /// finish with the old ones. For certificate reload.
    pub fn replace(&self, configs: ServerConfigs) {
        *self.configs.write() = Arc::new(configs);
    }

    /// Runs the server handshake and reads the client's verified identity.
    /// The caller bounds it with the connect timeout.
    ///
    /// # Errors
    /// The I/O or TLS error that ended the handshake (the peer's doing; log
    /// it at debug).
    pub async fn accept<S>(&self, stream: S) -> io::Result<(TlsStream<S>, Option<TlsIdentity>)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(Acceptor::default(), stream).await?;
        let config = {
            let configs = self.configs.read().clone();
            configs.for_hello(&start.client_hello())
        };
        let stream = start.into_stream(config).await?;
        // rustls only hands out certificates its verifier accepted.
        let identity = match stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()) {
            Some(cert) => Some(TlsIdentity::from_der(cert).map_err(io::Error::other)?),
            None => None,
        };
        Ok((stream, identity))
    }
}

/// Reads a file whole; the message never quotes its content.
fn read(file: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(file).map_err(|e| format!("cannot read: {e}"))
}

fn read_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(file)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a valid PEM file: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate found (expected \"-----BEGIN CERTIFICATE-----\")".into());
    }
    Ok(certs)
}

fn read_key(file: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read(file)?;
    if pem.windows(30).any(|w| w == b"-----BEGIN ENCRYPTED PRIVATE K") {
        return Err(
            "encrypted private keys are not supported; store the key unencrypted with tight file permissions".into()
        );
    }
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            "no private key found (expected PEM PKCS#8, PKCS#1 RSA or SEC1 EC)".to_owned()
        }
        // Only the error's kind: its details could quote key material.
        _ => "not a valid PEM private key".to_owned(),
    })
}

fn read_crls(file: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let pem = read(file)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a valid PEM file: {e}"))?;
    if crls.is_empty() {
        return Err("no CRL found (expected \"-----BEGIN X509 CRL-----\")".into());
    }
    Ok(crls)
}

/// Within this of its `nextUpdate`, a CRL is warned about at load.
const CRL_EXPIRY_WARNING: Duration = Duration::from_secs(24 * 3600);

/// Reads what a CRL revokes, refusing it when it is past its `nextUpdate`
/// at `now`: it may lack revocations published since, and serving with
/// it would admit them.
fn crl_entries(der: &[u8], file: &Path, now: SystemTime) -> Result<Vec<RevocationId>, String> {
    use x509_cert::der::Decode;
    let crl = x509_cert::crl::CertificateList::from_der(der).map_err(|e| format!("unusable CRL: {e}"))?;
    let tbs = &crl.tbs_cert_list;
    if let Some(next) = &tbs.next_update {
        let next = next.to_system_time();
        let issuer = tbs.issuer.to_string();
        if next <= now {
            let at = next.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            return Err(format!(
                "the CRL of {issuer} expired (nextUpdate {at}, seconds since 1970): it may lack revocations made \
                 since; install a current one"
            ));
        }
        if next.duration_since(now).is_ok_and(|left| left < CRL_EXPIRY_WARNING) {
            tracing::warn!(
                file = %file.display(),
                issuer,
                "CRL expires within a day: once it has, client certificates of its issuer are refused"
            );
        }
    }
    let revoked = tbs.revoked_certificates.iter().flatten();
    Ok(revoked.map(|r| RevocationId::new(&tbs.issuer, r.serial_number.as_bytes())).collect())
}

/// A file and what is wrong with it.
type FileProblem = (PathBuf, String);

/// The client certificate verifier: none, or WebPKI against `ca_file` with
/// the CRLs, checking the end-entity certificate's revocation status,
/// refusing a status that no CRL covers and a CRL past its `nextUpdate`
/// (as OpenSSL's CRL check does); and what the CRLs revoke.
fn client_verifier(
    tls: &TlsConfig,
    provider: &Arc<CryptoProvider>,
) -> Result<(Arc<dyn ClientCertVerifier>, HashSet<RevocationId>), FileProblem> {
    let Some(ca_file) = tls.ca_file.as_ref().filter(|_| tls.client_auth != ClientAuth::None) else {
        return Ok((WebPkiClientVerifier::no_client_auth(), HashSet::new()));
    };
    let fail = |file: &Path, problem: String| (file.to_owned(), problem);
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca_file).map_err(|p| fail(ca_file, p))? {
        roots.add(cert).map_err(|e| fail(ca_file, format!("not a usable CA certificate: {e}")))?;
    }
    let roots = Arc::new(roots);
    let mut crls = Vec::new();
    let mut revoked = HashSet::new();
    let now = SystemTime::now();
    for file in &tls.crl_files {
        let these = read_crls(file).map_err(|p| fail(file, p))?;
        for crl in &these {
            revoked.extend(crl_entries(crl, file, now).map_err(|p| fail(file, p))?);
        }
        // Parse each file on its own first so an error names the file.
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .with_crls(these.iter().cloned())
            .build()
            .map_err(|e| fail(file, format!("unusable CRL: {e}")))?;
        crls.extend(these);
    }
    let builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .enforce_revocation_expiration();
    let builder = if tls.client_auth == ClientAuth::Optional { builder.allow_unauthenticated() } else { builder };
    Ok((builder.build().map_err(|e| fail(ca_file, e.to_string()))?, revoked))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

    use super::*;

    /// A scratch directory for one test's files.
    fn dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("moat-tls-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).expect("write");
        path
    }

    /// A CA certificate, a server certificate it signed, and both keys.
    struct Files {
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
        other_key: PathBuf,
        crl: PathBuf,
    }

    fn files(test: &str) -> Files {
        let d = dir(test);
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "Test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca.self_signed(&ca_key).expect("ca");
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["localhost".into()]).expect("params");
        let cert = cert.signed_by(&key, &ca, &ca_key).expect("cert");
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: rcgen::SerialNumber::from(1),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&ca, &ca_key)
        .expect("crl");
        Files {
            ca: write(&d, "ca.pem", &ca.pem()),
            cert: write(&d, "server.pem", &cert.pem()),
            key: write(&d, "server.key", &key.serialize_pem()),
            other_key: write(&d, "other.key", &KeyPair::generate().expect("key").serialize_pem()),
            crl: write(&d, "ca.crl", &crl.pem().expect("crl pem")),
        }
    }

    fn settings(f: &Files) -> TlsConfig {
        TlsConfig {
            cert_file: f.cert.clone(),
            key_file: f.key.clone(),
            client_auth: ClientAuth::Required,
            ca_file: Some(f.ca.clone()),
            crl_files: vec![f.crl.clone()],
            use_identity_as_username: crate::config::IdentityAsUsername::Off,
        }
    }

    fn load_err(tls: &TlsConfig) -> String {
        ServerConfigs::load("secure", ListenerProtocol::Tls, tls).expect_err("should fail").to_string()
    }

    #[test]
    fn valid_files_load_with_alpn() {
        let f = files("valid");
        let configs = ServerConfigs::load("secure", ListenerProtocol::Tls, &settings(&f)).expect("loads");
        assert_eq!(configs.with_alpn.alpn_protocols, [b"mqtt".to_vec()]);
        assert!(configs.without_alpn.alpn_protocols.is_empty());
        let wss = ServerConfigs::load("secure", ListenerProtocol::Wss, &settings(&f)).expect("loads");
        assert_eq!(wss.with_alpn.alpn_protocols, [b"http/1.1".to_vec()]);
    }

    #[test]
    fn missing_file_names_listener_and_file() {
        let f = files("missing");
        let tls = TlsConfig { cert_file: f.cert.with_file_name("nope.pem"), ..settings(&f) };
        let msg = load_err(&tls);
        assert!(msg.starts_with(&format!("listener \"secure\": {}: cannot read:", tls.cert_file.display())), "{msg}");
    }

    #[test]
    fn certificate_file_without_certificates() {
        let f = files("nocert");
        let tls = TlsConfig { cert_file: f.key.clone(), ..settings(&f) };
        let msg = load_err(&tls);
        assert_eq!(
            msg,
            format!(
                "listener \"secure\": {}: no certificate found (expected \"-----BEGIN CERTIFICATE-----\")",
                f.key.display()
            )
        );
    }

    #[test]
    fn key_file_without_key() {
        let f = files("nokey");
        let tls = TlsConfig { key_file: f.cert.clone(), ..settings(&f) };
        let msg = load_err(&tls);
        assert!(msg.starts_with(&format!("listener \"secure\": {}: no private key found", f.cert.display())), "{msg}");
    }

    #[test]
    fn encrypted_key_is_unsupported() {
        let f = files("encrypted");
        let key = write(
            &dir("encrypted"),
            "enc.key",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAA==\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let msg = load_err(&TlsConfig { key_file: key.clone(), ..settings(&f) });
        assert!(
            msg.contains(&key.display().to_string()) && msg.contains("encrypted private keys are not supported"),
            "{msg}"
        );
    }

    #[test]
    fn key_not_matching_certificate() {
        let f = files("mismatch");
        let msg = load_err(&TlsConfig { key_file: f.other_key.clone(), ..settings(&f) });
        assert_eq!(
            msg,
            format!(
                "listener \"secure\": {}: the private key does not match the certificate in {}",
                f.other_key.display(),
                f.cert.display()
            )
        );
    }

    #[test]
    fn unreadable_ca_and_crl() {
        let f = files("ca");
        let missing = f.ca.with_file_name("missing-ca.pem");
        let msg = load_err(&TlsConfig { ca_file: Some(missing.clone()), ..settings(&f) });
        assert!(msg.starts_with(&format!("listener \"secure\": {}: cannot read", missing.display())), "{msg}");

        let msg = load_err(&TlsConfig { ca_file: Some(f.key.clone()), ..settings(&f) });
        assert!(msg.starts_with(&format!("listener \"secure\": {}: no certificate found", f.key.display())), "{msg}");

        let msg = load_err(&TlsConfig { crl_files: vec![f.cert.clone()], ..settings(&f) });
        assert!(msg.starts_with(&format!("listener \"secure\": {}: no CRL found", f.cert.display())), "{msg}");

        let garbage = write(&dir("ca"), "bad.crl", "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n");
        let msg = load_err(&TlsConfig { crl_files: vec![garbage.clone()], ..settings(&f) });
        assert!(msg.starts_with(&format!("listener \"secure\": {}: unusable CRL", garbage.display())), "{msg}");
    }

    #[test]
    fn errors_never_quote_key_material() {
        let f = files("secret");
        let key_pem = std::fs::read_to_string(&f.key).expect("key");
        let body: String = key_pem.lines().nth(1).expect("base64 line").chars().take(16).collect();
        for tls in [
            TlsConfig { cert_file: f.key.clone(), ..settings(&f) },
            TlsConfig { ca_file: Some(f.key.clone()), ..settings(&f) },
            TlsConfig { crl_files: vec![f.key.clone()], ..settings(&f) },
        ] {
            let msg = load_err(&tls);
            assert!(!msg.contains(&body), "{msg}");
        }
    }
}
