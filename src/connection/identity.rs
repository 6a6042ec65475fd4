//! What a verified client certificate does at CONNECT.
//!
//! On a listener with `client_auth = "optional"` or `"required"`, a client
//! whose certificate verified against the listener's CA is authenticated by
//! it: the anonymous policy does not apply to it. With
//! `use_identity_as_username` the certificate also supplies the verified
//! user name, replacing CONNECT's, and a certificate without the chosen
//! field is refused as a bad user name (0x86, 3.1.1 return code 4). Without
//! it the certificate vouches for nothing but itself: the CONNECT user name
//! stays a claim, which only an authentication plugin can verify. A client
//! without a certificate (possible with `optional`) must pass the anonymous
//! policy or an authentication plugin.

use std::sync::Arc;

use crate::codec::ReasonCode;
use crate::config::ListenerConfig;
use crate::identity::Peer;

/// The part of a login that the certificate decides.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct CertificateLogin {
    /// The user name the certificate verified (`use_identity_as_username`).
    pub(super) username: Option<Arc<str>>,
    /// Whether a verified certificate authenticated the client.
    pub(super) authenticated: bool,
}

/// Applies the listener's certificate rules to a CONNECT.
pub(super) fn certificate_login(listener: &ListenerConfig, peer: &Peer) -> Result<CertificateLogin, ReasonCode> {
    let Some(identity) = &peer.tls else {
        return Ok(CertificateLogin { username: None, authenticated: false });
    };
    let mode = listener.tls.as_ref().map(|tls| tls.use_identity_as_username).unwrap_or_default();
    let username = match mode {
        crate::config::IdentityAsUsername::Off => None,
        mode => Some(Arc::from(identity.username(mode).ok_or(ReasonCode::BAD_USER_NAME_OR_PASSWORD)?)),
    };
    Ok(CertificateLogin { username, authenticated: true })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::config::{ClientAuth, IdentityAsUsername, ListenerProtocol, TlsConfig};
    use crate::identity::TlsIdentity;

    fn listener(mode: IdentityAsUsername) -> ListenerConfig {
        let mut l = ListenerConfig::tcp("mtls", SocketAddr::from(([127, 0, 0, 1], 0)));
        l.protocol = ListenerProtocol::Tls;
        l.tls = Some(TlsConfig {
            cert_file: "s.pem".into(),
            key_file: "s.key".into(),
            client_auth: ClientAuth::Optional,
            ca_file: Some("ca.pem".into()),
            crl_files: Vec::new(),
            use_identity_as_username: mode,
        });
        l
    }

    fn peer(common_name: Option<&str>) -> Peer {
        let identity = TlsIdentity {
            subject: common_name.map(|cn| format!("CN={cn}")).unwrap_or_default(),
            common_name: common_name.map(str::to_owned),
            sans: vec!["DNS:dev.example.com".into()],
            sha256_fingerprint: String::new(),
            revocation: Default::default(),
        };
        Peer { addr: SocketAddr::from(([192, 0, 2, 1], 1)), tls: Some(Arc::new(identity)), connect_deadline: None }
    }

    #[test]
    fn no_certificate_verifies_nothing() {
        let plain = Peer::plain(SocketAddr::from(([192, 0, 2, 1], 1)));
        let login = certificate_login(&listener(IdentityAsUsername::CommonName), &plain);
        assert_eq!(login, Ok(CertificateLogin { username: None, authenticated: false }));
    }

    #[test]
    fn verified_certificate_authenticates_and_maps_username() {
        // Without use_identity_as_username, CONNECT's name stays a claim.
        let off = certificate_login(&listener(IdentityAsUsername::Off), &peer(Some("dev-1")));
        assert_eq!(off, Ok(CertificateLogin { username: None, authenticated: true }));
        let cn = certificate_login(&listener(IdentityAsUsername::CommonName), &peer(Some("dev-1")));
        assert_eq!(cn, Ok(CertificateLogin { username: Some("dev-1".into()), authenticated: true }));
        let san = certificate_login(&listener(IdentityAsUsername::SubjectAltName), &peer(None));
        assert_eq!(san, Ok(CertificateLogin { username: Some("dev.example.com".into()), authenticated: true }));
    }

    #[test]
    fn certificate_without_the_field_is_refused() {
        let login = certificate_login(&listener(IdentityAsUsername::CommonName), &peer(None));
        assert_eq!(login, Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD));
    }
}
