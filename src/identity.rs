//! Who a connection is ([`Peer`]) and what a verified client certificate
//! says about the client ([`TlsIdentity`]): the identity that
//! authentication, `use_identity_as_username` and plugins (`client-info`)
//! see. A leaf: value types every layer above may pass around.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use x509_cert::Certificate;
use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef};
use x509_cert::der::{Decode, Tag, Tagged};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

/// Which part of a verified client certificate becomes the user name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentityAsUsername {
    /// The CONNECT user name is kept (`false`).
    #[default]
    Off,
    /// The subject's common name (`"cn"`, or `true` as in Mosquitto).
    CommonName,
    /// The first DNS or e-mail subject alternative name (`"san"`).
    SubjectAltName,
}

impl<'de> serde::Deserialize<'de> for IdentityAsUsername {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<IdentityAsUsername, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IdentityAsUsername;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("false, \"cn\" or \"san\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<IdentityAsUsername, E> {
                Ok(if v { IdentityAsUsername::CommonName } else { IdentityAsUsername::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IdentityAsUsername, E> {
                match v {
                    "cn" => Ok(IdentityAsUsername::CommonName),
                    "san" => Ok(IdentityAsUsername::SubjectAltName),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
        }
        de.deserialize_any(Visitor)
    }
}

/// Who a connection is: its address, and its verified client certificate
/// when it presented one on a TLS listener that asks for them.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Remote address.
    pub addr: std::net::SocketAddr,
    /// Identity from the client certificate, present only when the
    /// certificate was verified against the listener's `ca_file`.
    pub tls: Option<Arc<TlsIdentity>>,
    /// When CONNECT must have arrived: set at accept, so the transport
    /// handshake and reading CONNECT share one `connect_timeout_ms`.
    /// `None` means "the connect timeout from now".
    pub connect_deadline: Option<tokio::time::Instant>,
}

impl Peer {
    /// A peer without a client certificate.
    pub fn plain(addr: std::net::SocketAddr) -> Peer {
        Peer { addr, tls: None, connect_deadline: None }
    }
}

/// The identity in a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    /// Subject distinguished name as RFC 4514 writes it (last RDN first),
    /// e.g. `CN=sensor-1,O=Acme`.
    pub subject: String,
    /// The subject's common name, when it has exactly one. A subject with
    /// several CNs names nobody by CN: which one counts differs between
    /// libraries (OpenSSL and Mosquitto take the first in the certificate,
    /// RFC 6125 and Go the last), so the broker, and the `cert-identity`
    /// plugin, refuse to guess.
    pub common_name: Option<String>,
    /// Subject alternative names in certificate order, prefixed by type as
    /// OpenSSL prints them: `DNS:`, `email:`, `URI:`, `IP:`. Other kinds
    /// are left out.
    pub sans: Vec<String>,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub sha256_fingerprint: String,
    /// Who issued the certificate, and its serial number: what a CRL
    /// names, so a CRL reload can find the connections it now revokes.
    pub revocation: RevocationId,
}

/// A certificate as a CRL names it: its issuer's DN (RFC 4514 text) and its
/// serial number (lowercase hex, without leading zeros).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RevocationId {
    /// The issuer's distinguished name.
    pub issuer: String,
    /// The serial number.
    pub serial: String,
}

impl RevocationId {
    /// The id of serial number `serial` (DER content bytes) from `issuer`.
    pub fn new(issuer: &x509_cert::name::Name, serial: &[u8]) -> RevocationId {
        let digits = serial.iter().skip_while(|b| **b == 0).fold(String::new(), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        });
        RevocationId { issuer: issuer.to_string(), serial: digits }
    }
}

/// A certificate rustls accepted but that cannot be read for its identity.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the client certificate: {0}")]
pub struct IdentityError(String);

impl TlsIdentity {
    /// Reads the identity of a DER certificate.
    ///
    /// # Errors
    /// [`IdentityError`] when the certificate does not parse.
    pub fn from_der(der: &[u8]) -> Result<TlsIdentity, IdentityError> {
        let cert = Certificate::from_der(der).map_err(|e| IdentityError(e.to_string()))?;
        let tbs = &cert.tbs_certificate;
        let mut names = tbs
            .subject
            .0
            .iter()
            .flat_map(|rdn| rdn.0.iter())
            .filter(|atv| atv.oid == x509_cert::der::oid::db::rfc4519::CN);
        let common_name = match (names.next(), names.next()) {
            (Some(only), None) => directory_string(&only.value),
            _ => None,
        };
        let mut sans = Vec::new();
        if let Ok(Some((_, SubjectAltName(names)))) = tbs.get::<SubjectAltName>() {
            for name in names {
                match name {
                    GeneralName::DnsName(n) => sans.push(format!("DNS:{n}")),
                    GeneralName::Rfc822Name(n) => sans.push(format!("email:{n}")),
                    GeneralName::UniformResourceIdentifier(n) => sans.push(format!("URI:{n}")),
                    GeneralName::IpAddress(ip) => {
                        if let Some(ip) = ip_from_bytes(ip.as_bytes()) {
                            sans.push(format!("IP:{ip}"));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(TlsIdentity {
            subject: tbs.subject.to_string(),
            common_name,
            sans,
            sha256_fingerprint: sha256_hex(der),
            revocation: RevocationId::new(&tbs.issuer, tbs.serial_number.as_bytes()),
        })
    }

    /// The user name `mode` takes from this identity: the common name, or
    /// the first DNS or e-mail alternative name. `None` when the
    /// certificate has no such field (or `mode` is off).
    pub fn username(&self, mode: IdentityAsUsername) -> Option<&str> {
        match mode {
            IdentityAsUsername::Off => None,
            IdentityAsUsername::CommonName => self.common_name.as_deref(),
            IdentityAsUsername::SubjectAltName => {
                self.sans.iter().find_map(|san| san.strip_prefix("DNS:").or_else(|| san.strip_prefix("email:")))
            }
        }
    }
}

/// The text of a DirectoryString attribute value in the encodings
/// certificates use for names; `None` for others (BMPString is rare).
fn directory_string(value: &x509_cert::der::Any) -> Option<String> {
    let text = match value.tag() {
        Tag::Utf8String => Utf8StringRef::try_from(value).ok()?.as_str().to_owned(),
        Tag::PrintableString => PrintableStringRef::try_from(value).ok()?.as_str().to_owned(),
        Tag::Ia5String => Ia5StringRef::try_from(value).ok()?.as_str().to_owned(),
        Tag::TeletexString => TeletexStringRef::try_from(value).ok()?.as_str().to_owned(),
        _ => return None,
    };
    Some(text)
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn sha256_hex(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().fold(String::with_capacity(64), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_by_mode() {
        let id = TlsIdentity {
            subject: "CN=dev-1".into(),
            common_name: Some("dev-1".into()),
            sans: vec!["IP:10.0.0.1".into(), "email:dev@example.com".into(), "DNS:dev.example.com".into()],
            sha256_fingerprint: String::new(),
            revocation: RevocationId::default(),
        };
        assert_eq!(id.username(IdentityAsUsername::Off), None);
        assert_eq!(id.username(IdentityAsUsername::CommonName), Some("dev-1"));
        assert_eq!(id.username(IdentityAsUsername::SubjectAltName), Some("dev@example.com"));
        let bare = TlsIdentity { common_name: None, sans: vec!["URI:urn:x".into()], ..id };
        assert_eq!(bare.username(IdentityAsUsername::CommonName), None);
        assert_eq!(bare.username(IdentityAsUsername::SubjectAltName), None);
    }

    #[test]
    fn reads_subject_common_name_and_alternative_names() {
        use rcgen::{CertificateParams, DnType, KeyPair, SanType};
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "Acme, Inc.");
        params.distinguished_name.push(DnType::CommonName, "dev-1");
        params.subject_alt_names = vec![
            SanType::IpAddress([10, 0, 0, 1].into()),
            SanType::Rfc822Name("dev@example.com".try_into().expect("email")),
            SanType::DnsName("dev.example.com".try_into().expect("dns")),
            SanType::URI("urn:dev:1".try_into().expect("uri")),
        ];
        let cert = params.self_signed(&KeyPair::generate().expect("key")).expect("cert");
        let id = TlsIdentity::from_der(cert.der()).expect("identity");
        assert_eq!(id.common_name.as_deref(), Some("dev-1"));
        assert_eq!(id.subject, "CN=dev-1,O=Acme\\, Inc.");
        assert_eq!(id.sans, ["IP:10.0.0.1", "email:dev@example.com", "DNS:dev.example.com", "URI:urn:dev:1"]);
        assert_eq!(id.sha256_fingerprint, sha256_hex(cert.der()));
        assert!(TlsIdentity::from_der(b"not a certificate").is_err());
    }

    #[test]
    fn a_subject_with_several_common_names_names_nobody_by_cn() {
        use rcgen::{CertificateParams, DnType, KeyPair};
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "first");
        // rcgen keeps one value per type: a second CN by its OID.
        params.distinguished_name.push(DnType::CustomDnType(vec![2, 5, 4, 3]), "second");
        let cert = params.self_signed(&KeyPair::generate().expect("key")).expect("cert");
        let id = TlsIdentity::from_der(cert.der()).expect("identity");
        assert_eq!(id.subject, "CN=second,CN=first");
        assert_eq!(id.common_name, None);
        assert_eq!(id.username(IdentityAsUsername::CommonName), None);
    }

    #[test]
    fn fingerprint_is_lowercase_hex_sha256() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
