//! `[[listeners]]`: where clients connect, over which transport, with
//! which TLS files and client-certificate policy, and who may connect
//! anonymously.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::IpNet;
pub use crate::identity::IdentityAsUsername;

/// One network listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// A name for logs and for plugins (`client-info.listener`).
    #[serde(default = "default_listener_name")]
    pub name: String,
    /// Address to bind, e.g. `127.0.0.1:1883` or `[::]:1883`.
    pub bind: SocketAddr,
    /// Wire protocol of the listener.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Which clients may connect without an authentication plugin deciding.
    /// A client that presented a certificate verified against `tls.ca_file`
    /// (`client_auth = "optional"` or `"required"`) is authenticated by it
    /// and is not subject to this policy.
    #[serde(default)]
    pub allow_anonymous: Anonymous,
    /// Whether the CONNECT user name of a client that no authentication
    /// plugin verified (admitted anonymously, or by a certificate without
    /// `use_identity_as_username`) still counts for authorization, as in
    /// Mosquitto. Off by default: such a client is anonymous to the
    /// authorizers, whatever name it claims. On, any client that may
    /// connect gets the rights of any user name it types; the broker warns
    /// at start-up.
    #[serde(default)]
    pub trust_claimed_username: bool,
    /// Certificates and client authentication; required for `tls` and
    /// `wss` listeners, refused for the others.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// HTTP path of the WebSocket endpoint for `ws` and `wss` listeners
    /// (default `/mqtt`); other paths get 404.
    #[serde(default)]
    pub ws_path: Option<String>,
    /// Concurrent connections on this listener, besides the global
    /// `limits.max_connections`; unset: only the global limit applies.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// New connections accepted per second on this listener (a token
    /// bucket holding one second's worth, as EMQX's `max_conn_rate`); the
    /// excess is closed at accept, before anything is read. 0 (the
    /// default): no limit.
    #[serde(default = "default_connection_rate")]
    pub max_connection_rate: u32,
    /// Browser origins a `ws`/`wss` listener accepts, as the upgrade's
    /// `Origin` header names them (`"https://app.example.com"`, or `"*"`
    /// for any). A request without `Origin` (not from a browser) is always
    /// accepted. Unset: browsers are refused where a client may be admitted
    /// without presenting a secret (`allow_anonymous` not false, or client
    /// certificates), and accepted elsewhere.
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
    /// Whether every connection starts with a PROXY protocol header (v1 or
    /// v2), whose source address then stands for the client everywhere
    /// (`allow_anonymous`, logs, plugins, the admin API). A connection
    /// without a valid header is closed. Off by default.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// With `proxy_protocol`: the addresses (or blocks, `10.0.0.0/8`) the
    /// proxies connect from; a connection from elsewhere is closed unread.
    /// Unset: loopback only.
    #[serde(default)]
    pub trusted_proxies: Option<Vec<IpNet>>,
}

impl ListenerConfig {
    /// A plain TCP listener with the default anonymous policy.
    pub fn tcp(name: &str, bind: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            name: name.to_owned(),
            bind,
            protocol: ListenerProtocol::Tcp,
            allow_anonymous: Anonymous::Loopback,
            trust_claimed_username: false,
            tls: None,
            ws_path: None,
            max_connections: None,
            max_connection_rate: default_connection_rate(),
            allowed_origins: None,
            proxy_protocol: false,
            trusted_proxies: None,
        }
    }

    /// Whether a connection from `ip` may send a PROXY protocol header:
    /// `trusted_proxies`, or loopback when unset.
    pub fn trusts_proxy(&self, ip: std::net::IpAddr) -> bool {
        match &self.trusted_proxies {
            Some(nets) => nets.iter().any(|n| n.contains(ip)),
            None => IpNet::loopback().iter().any(|n| n.contains(ip)),
        }
    }

    /// The WebSocket path: `ws_path`, or `/mqtt`.
    pub fn ws_path(&self) -> &str {
        self.ws_path.as_deref().unwrap_or(DEFAULT_WS_PATH)
    }
}

/// Connections per second a listener accepts unless configured otherwise:
/// no limit, as in Mosquitto. A flood is already bounded in memory by
/// `limits.max_connections` and `connect_timeout_ms`; the right rate
/// depends on the fleet (how fast it must reconnect after a restart) and on
/// the CPU a TLS handshake costs, so it is the operator's to set.
fn default_connection_rate() -> u32 {
    0
}

/// The WebSocket path when `ws_path` is not set.
pub const DEFAULT_WS_PATH: &str = "/mqtt";

/// The transport a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// MQTT over plain TCP.
    #[default]
    Tcp,
    /// MQTT over TLS (needs a `tls` table).
    Tls,
    /// MQTT over WebSocket binary frames, subprotocol `mqtt`.
    Ws,
    /// MQTT over WebSocket over TLS (needs a `tls` table).
    Wss,
}

impl ListenerProtocol {
    /// Whether the listener speaks TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerProtocol::Tls | ListenerProtocol::Wss)
    }

    /// Whether the listener speaks WebSocket.
    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerProtocol::Ws | ListenerProtocol::Wss)
    }
}

/// TLS settings of a `tls` or `wss` listener. The files are read, and the
/// key checked against the certificate, when the listener starts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, end-entity certificate first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC; not encrypted).
    pub key_file: PathBuf,
    /// Whether clients are asked for a certificate.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// PEM bundle of the CAs client certificates must chain to; required
    /// unless `client_auth = "none"`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM CRLs; a client certificate they revoke is refused. As with
    /// OpenSSL's CRL check, the end-entity certificate is checked and its
    /// issuer must then have a CRL among these files.
    #[serde(default)]
    pub crl_files: Vec<PathBuf>,
    /// Whether the verified certificate supplies the MQTT user name,
    /// replacing the one in CONNECT (as Mosquitto's option of that name).
    #[serde(default)]
    pub use_identity_as_username: IdentityAsUsername,
}

/// Client certificate policy of a TLS listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Clients are not asked for a certificate.
    #[default]
    None,
    /// Clients may present a certificate; if they do it must verify.
    Optional,
    /// Clients must present a certificate that verifies.
    Required,
}

/// Who may connect anonymously, i.e. without any authentication plugin
/// allowing the client. Closed by default beyond loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Anonymous {
    /// Only clients connecting from a loopback address (the default).
    #[default]
    Loopback,
    /// Anyone (`allow_anonymous = true`): an explicit operator choice.
    Always,
    /// Nobody (`allow_anonymous = false`).
    Never,
}

impl Anonymous {
    /// Whether an anonymous client from `peer` may connect.
    pub fn permits(self, peer: SocketAddr) -> bool {
        match self {
            Anonymous::Always => true,
            Anonymous::Never => false,
            // Canonical first: on a dual-stack `[::]` listener a local
            // IPv4 client arrives as `::ffff:127.0.0.1`.
            Anonymous::Loopback => peer.ip().to_canonical().is_loopback(),
        }
    }
}

impl<'de> Deserialize<'de> for Anonymous {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Anonymous, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Anonymous;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or \"loopback\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Anonymous, E> {
                Ok(if v { Anonymous::Always } else { Anonymous::Never })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Anonymous, E> {
                match v {
                    "loopback" => Ok(Anonymous::Loopback),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
        }
        de.deserialize_any(Visitor)
    }
}

/// Checks the TLS and WebSocket keys of one listener against its protocol;
/// the key in the error is relative to the listener (e.g. `.tls.ca_file`).
pub(super) fn validate_listener(l: &ListenerConfig) -> Result<(), (String, String)> {
    let name = &l.name;
    match (&l.tls, l.protocol.is_tls()) {
        (None, true) => {
            return Err((".protocol".into(), format!("listener {name:?} speaks TLS but has no [listeners.tls] table")));
        }
        (Some(_), false) => {
            return Err((
                ".tls".into(),
                format!("listener {name:?} does not speak TLS; use protocol \"tls\" or \"wss\""),
            ));
        }
        _ => {}
    }
    if let Some(tls) = &l.tls {
        if tls.client_auth != ClientAuth::None && tls.ca_file.is_none() {
            return Err((".tls.client_auth".into(), format!("listener {name:?}: client_auth needs ca_file")));
        }
        if tls.client_auth == ClientAuth::None && tls.ca_file.is_some() {
            return Err((".tls.ca_file".into(), format!("listener {name:?}: ca_file needs client_auth")));
        }
        if tls.client_auth == ClientAuth::None && !tls.crl_files.is_empty() {
            return Err((".tls.crl_files".into(), format!("listener {name:?}: crl_files needs client_auth")));
        }
        if tls.client_auth == ClientAuth::None && tls.use_identity_as_username != IdentityAsUsername::Off {
            return Err((
                ".tls.use_identity_as_username".into(),
                format!("listener {name:?}: there is no identity without client_auth"),
            ));
        }
    }
    if l.max_connections == Some(0) {
        return Err((".max_connections".into(), "must be greater than 0".into()));
    }
    if let Some(path) = &l.ws_path {
        if !l.protocol.is_websocket() {
            return Err((".ws_path".into(), format!("listener {name:?} does not speak WebSocket")));
        }
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            return Err((".ws_path".into(), "must be an absolute path such as \"/mqtt\"".into()));
        }
    }
    if let Some(origins) = &l.allowed_origins {
        if !l.protocol.is_websocket() {
            return Err((".allowed_origins".into(), format!("listener {name:?} does not speak WebSocket")));
        }
        for (i, origin) in origins.iter().enumerate() {
            super::net::check_origin(origin).map_err(|message| (format!(".allowed_origins[{i}]"), message))?;
        }
    }
    match &l.trusted_proxies {
        Some(_) if !l.proxy_protocol => {
            return Err((
                ".trusted_proxies".into(),
                format!("listener {name:?}: only applies with proxy_protocol = true"),
            ));
        }
        Some(nets) if nets.is_empty() => {
            return Err((".trusted_proxies".into(), "must name at least one address (unset: loopback)".into()));
        }
        _ => {}
    }
    Ok(())
}

/// The listeners of a configuration without `[[listeners]]`.
pub(super) fn default_listeners() -> Vec<ListenerConfig> {
    vec![ListenerConfig::tcp("default", SocketAddr::from(([127, 0, 0, 1], 1883)))]
}

fn default_listener_name() -> String {
    "default".to_owned()
}
