//! Broker configuration: TOML in, a validated, immutable [`Config`] out.
//!
//! Unknown keys are errors, and every error names the file, the line and the
//! key, because an operator fixing a typo at 3 a.m. should not have to guess.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::plugin::Sidecar;
use crate::plugin::shipped;

mod log;
mod net;

pub use log::{QUIET_TARGETS, log_filter};
pub use net::IpNet;
mod auth;

pub use auth::{AuthConfig, BindSessions};

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a value has the wrong type or range.
    #[error("{file}:{line}: `{key}`: {message}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line of the offending value (0 when unknown).
        line: usize,
        /// Dotted key path, e.g. `listeners[0].bind`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole broker configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Network listeners; the default is one TCP listener on 127.0.0.1:1883.
    #[serde(default = "default_listeners")]
    pub listeners: Vec<ListenerConfig>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Policy plugins.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// Durable storage (`[storage]`).
    #[serde(default)]
    pub storage: StorageConfig,
    /// The admin HTTP listener (`[admin]`), off unless `listen` is set.
    #[serde(default)]
    pub admin: AdminConfig,
    /// `$SYS` topics (`[sys]`).
    #[serde(default)]
    pub sys: SysConfig,
    /// Clustering over NATS (`[cluster]`); a single node without it.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Login throttling and session ownership (`[auth]`).
    #[serde(default)]
    pub auth: AuthConfig,
}

/// Where the policy plugins are, and which shipped plugins are enabled.
///
/// ```toml
/// [plugins]
/// dir = "/etc/moat/plugins"
/// watch = true                     # reload when the directory changes
/// cache_dir = "/var/cache/moat"    # compiled plugins (default: see Config::plugin_cache_dir)
/// cache = true                     # false: compile at every start
/// [plugins.password-file]          # enables the shipped plugin of that name
/// order = 10
/// config = { file = "/etc/moat/passwd" }
/// grants = { read = ["/etc/moat"] }
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PluginsConfig {
    /// Directory of `*.wasm` components and their `NAME.toml` sidecars.
    /// Unset: `./plugins` if that directory exists, else no plugins.
    pub dir: Option<PathBuf>,
    /// Whether a change in `dir` reloads the plugins (default true).
    pub watch: Option<bool>,
    /// Where compiled plugins are kept between runs. Unset: see
    /// [`Config::plugin_cache_dir`].
    pub cache_dir: Option<PathBuf>,
    /// `false` keeps no compiled plugins on disk (default true).
    pub cache: Option<bool>,
    /// Shipped plugins enabled by a `[plugins.NAME]` table, with the keys of
    /// a sidecar (order, on_error, config, limits, grants).
    pub shipped: BTreeMap<String, Sidecar>,
    /// The configuration file's directory: relative grants of shipped
    /// plugins are resolved against it.
    pub base_dir: PathBuf,
}

impl PluginsConfig {
    /// Whether the plugin directory is watched.
    pub fn watch(&self) -> bool {
        self.watch.unwrap_or(true)
    }
}

impl<'de> Deserialize<'de> for PluginsConfig {
    /// `dir`, `watch`, and any other key as a shipped plugin's table; a
    /// hand-written map visitor (not `#[serde(flatten)]`) keeps the TOML
    /// positions, so errors inside a plugin's table still name their line.
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<PluginsConfig, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PluginsConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a table with `dir`, `watch`, `cache_dir`, `cache` and `[plugins.NAME]` tables of shipped plugins",
                )
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<PluginsConfig, A::Error> {
                let mut config = PluginsConfig::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "dir" => config.dir = Some(map.next_value()?),
                        "watch" => config.watch = Some(map.next_value()?),
                        "cache_dir" => config.cache_dir = Some(map.next_value()?),
                        "cache" => config.cache = Some(map.next_value()?),
                        _ => {
                            let table: Sidecar = map.next_value()?;
                            config.shipped.insert(key, table);
                        }
                    }
                }
                Ok(config)
            }
        }
        de.deserialize_map(Visitor)
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listeners: default_listeners(),
            limits: Limits::default(),
            log: LogConfig::default(),
            plugins: PluginsConfig::default(),
            storage: StorageConfig::default(),
            admin: AdminConfig::default(),
            sys: SysConfig::default(),
            cluster: None,
            auth: AuthConfig::default(),
        }
    }
}

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

impl<'de> Deserialize<'de> for IdentityAsUsername {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<IdentityAsUsername, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IdentityAsUsername;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

/// Resource limits. Defaults are safe for a small fleet on a small machine.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent connections across all listeners.
    pub max_connections: usize,
    /// New connections per second across all listeners (a token bucket
    /// holding one second's worth), on top of each listener's own
    /// `max_connection_rate`; 0: no limit. A reload applies it at once.
    pub max_connection_rate: u32,
    /// Largest packet accepted from a client, in bytes (v5 Maximum Packet Size).
    pub max_packet_size: u32,
    /// QoS 1/2 messages in flight per direction per client (v5 Receive Maximum).
    pub max_inflight: u16,
    /// Messages queued per session beyond the in-flight window.
    pub max_queued_messages: usize,
    /// Bytes (topic and payload) queued per session (default 16 MiB); 0: no
    /// limit. At either queue bound, queued QoS 0 messages are evicted
    /// (oldest first) before a new message is refused; QoS 1/2 messages are
    /// never evicted.
    pub max_queued_bytes: usize,
    /// Sessions held at once, connected or not. A CONNECT that would start
    /// a new session beyond it is refused (v5 0x97 Quota exceeded, 3.1.1
    /// 0x03 Server unavailable); resuming a session is not. Sessions
    /// recovered from the store at start-up are all kept.
    pub max_sessions: usize,
    /// Time a batch of packets may take to reach the client's socket. A
    /// client that stops reading is disconnected when it runs out (v5
    /// DISCONNECT 0x97, best effort), so its backlog does not stay pinned.
    pub write_timeout_ms: u64,
    /// How long a publisher is held back when a QoS 1/2 message meets the
    /// full queue of a connected subscriber: its acknowledgement and its
    /// next packets wait until that queue drains to half, so a subscriber
    /// that keeps up loses nothing. If the wait runs out, the message is
    /// dropped for that subscriber (counted) and, until its queue drains
    /// to half, so is every message that does not fit, without waiting.
    /// 0: drop at once (Mosquitto's behaviour).
    pub queue_full_wait_ms: u64,
    /// How long a member of a share group that disconnects but keeps its
    /// session keeps the group's QoS 1/2 messages its client has not
    /// received (sent and not acknowledged, QoS 2 not answered with
    /// PUBREC, or queued) before they go to another member, so a member
    /// that never comes back does not hold them for ever. A member whose
    /// session ends gives them up at once. 0: at once too. At most a day.
    pub share_hold_ms: u64,
    /// Retained messages kept; 0: no limit. A retained message on a new
    /// topic beyond it is refused (v5 QoS 1/2: 0x97 Quota exceeded) or, at
    /// QoS 0 and for 3.1.1 clients, delivered but not retained.
    pub max_retained_messages: usize,
    /// Bytes (topic and payload) of retained messages kept; 0: no limit.
    /// Same behaviour at the limit as `max_retained_messages`.
    pub max_retained_bytes: usize,
    /// Levels in a topic name or filter.
    pub max_topic_levels: usize,
    /// Bytes in a topic name or filter (at most 65535, the protocol's own
    /// bound). A PUBLISH or will over it is refused with 0x90 Topic Name
    /// Invalid, a filter in SUBACK with 0x8F Topic Filter Invalid.
    pub max_topic_length: usize,
    /// Subscriptions a client holds at once; 0: no limit. A filter beyond
    /// it is refused in SUBACK (v5 0x97 Quota exceeded, 3.1.1 0x80).
    pub max_subscriptions_per_client: usize,
    /// User properties in one packet (v5); 0: no limit. A packet with more
    /// is refused (CONNACK or DISCONNECT 0x95 Packet too large) before the
    /// surplus is decoded.
    pub max_user_properties: usize,
    /// PUBLISH packets per second a client may send (a token bucket per
    /// connection holding one second's worth); 0: no limit. Over the rate,
    /// QoS 0 is dropped; v5 QoS 1/2 are refused with 0x97 Quota exceeded;
    /// 3.1.1 QoS 1/2 are acknowledged and dropped. All are counted. A
    /// reload applies it to connected clients too.
    pub max_publish_rate: u32,
    /// Time allowed between TCP accept and a complete CONNECT.
    pub connect_timeout_ms: u64,
    /// Largest keep alive granted; larger requests get v5 Server Keep Alive.
    pub max_keepalive_s: u16,
    /// Largest session expiry granted to v5 clients, in seconds.
    pub max_session_expiry_s: u32,
    /// Topic aliases a v5 client may use towards the broker.
    pub topic_alias_maximum: u16,
    /// Grace period for draining connections on shutdown.
    pub shutdown_grace_ms: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 100_000,
            max_connection_rate: 0,
            max_packet_size: 1024 * 1024,
            max_inflight: 64,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            max_sessions: 100_000,
            write_timeout_ms: 30_000,
            queue_full_wait_ms: 1000,
            share_hold_ms: DEFAULT_SHARE_HOLD_MS,
            max_retained_messages: 100_000,
            max_retained_bytes: 256 * 1024 * 1024,
            max_topic_levels: 64,
            max_topic_length: 65_535,
            max_subscriptions_per_client: 1000,
            max_user_properties: 128,
            max_publish_rate: 0,
            connect_timeout_ms: 10_000,
            max_keepalive_s: u16::MAX,
            max_session_expiry_s: u32::MAX,
            topic_alias_maximum: 16,
            shutdown_grace_ms: 5_000,
        }
    }
}

/// `limits.share_hold_ms` when not set: a minute, long enough for a
/// member to ride out a network blip and resume its work, short enough
/// that the work does not stall for long without it.
pub const DEFAULT_SHARE_HOLD_MS: u64 = 60_000;

/// The largest `limits.share_hold_ms`: a day.
const MAX_SHARE_HOLD_MS: u64 = 86_400_000;

impl Limits {
    /// `share_hold_ms` as a duration.
    pub fn share_hold(&self) -> Duration {
        Duration::from_millis(self.share_hold_ms)
    }

    /// The bound of each session's queue.
    pub fn queue_bound(&self) -> crate::session::QueueBound {
        crate::session::QueueBound { messages: self.max_queued_messages, bytes: self.max_queued_bytes }
    }

    /// What the decoder accepts in one packet from a client, with the
    /// packet size capped at `max_packet_size` (e.g. smaller for CONNECT).
    pub fn decode_limits(&self, max_packet_size: u32) -> crate::codec::DecodeLimits {
        crate::codec::DecodeLimits {
            max_packet_size: max_packet_size.min(self.max_packet_size),
            max_user_properties: match self.max_user_properties {
                0 => usize::MAX,
                n => n,
            },
        }
    }

    /// `connect_timeout_ms` as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// `write_timeout_ms` as a duration.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `moat=debug`. Installed through
    /// [`log_filter`], so `debug` does not mean the compiler's debug lines.
    pub level: Option<String>,
    /// Output format.
    pub format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

// --- [storage] (durable store, issue 9) ---

/// Where and how durably sessions and retained messages are stored.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Data directory. Without it nothing survives the process.
    pub dir: Option<PathBuf>,
    /// When writes are durable; `sync` when `dir` is set.
    pub durability: Option<DurabilityMode>,
    /// Data sync interval for `durability = "periodic"` (default 1000).
    pub flush_interval_ms: Option<u64>,
}

/// The `storage.durability` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// Acknowledge QoS 1/2 publishes after a data sync (group commit).
    Sync,
    /// Sync every `flush_interval_ms`.
    Periodic,
    /// Never sync; with `dir` set, writes still reach the OS at once.
    None,
}

impl StorageConfig {
    /// The store's durability, or `None` for the in-memory store.
    pub fn durability(&self) -> Option<crate::store::Durability> {
        use crate::store::Durability;
        self.dir.as_ref()?;
        Some(match self.durability.unwrap_or(DurabilityMode::Sync) {
            DurabilityMode::Sync => Durability::Sync,
            DurabilityMode::Periodic => {
                Durability::Periodic(Duration::from_millis(self.flush_interval_ms.unwrap_or(1000)))
            }
            DurabilityMode::None => Durability::None,
        })
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let mode = self.durability.unwrap_or(DurabilityMode::Sync);
        if self.dir.is_none() && self.durability.is_some_and(|d| d != DurabilityMode::None) {
            return Err(("storage.durability".into(), "needs `storage.dir`".into()));
        }
        if let Some(ms) = self.flush_interval_ms {
            if mode != DurabilityMode::Periodic {
                return Err(("storage.flush_interval_ms".into(), "only applies to durability = \"periodic\"".into()));
            }
            if ms == 0 {
                return Err(("storage.flush_interval_ms".into(), "must be greater than 0".into()));
            }
        }
        if self.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err(("storage.dir".into(), "must not be empty".into()));
        }
        Ok(())
    }
}

// --- end [storage] ---

/// The admin HTTP listener: metrics, health and the JSON API.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address to serve on, e.g. `127.0.0.1:9090`. Unset: no admin listener.
    pub listen: Option<SocketAddr>,
    /// Bearer token required for everything but `/health` and `/ready`.
    /// A token (this or `token_file`) is required when `listen` is not a
    /// loopback address; without one, the state-changing endpoints (kick,
    /// reload) are refused.
    pub token: Option<Secret>,
    /// A file holding the bearer token instead of `token`: read at
    /// start-up, or created with a random token (mode 0600) if it does not
    /// exist. It must not be a symbolic link nor be readable or writable
    /// by group or others.
    pub token_file: Option<PathBuf>,
    /// Host names the admin API answers to besides IP addresses and
    /// `localhost`: a request whose `Host` header names another host is
    /// refused (403), which defeats DNS rebinding.
    pub allowed_hosts: Vec<String>,
}

impl AdminConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        if self.token.as_ref().is_some_and(|t| t.0.trim().is_empty()) {
            return Err(("admin.token".into(), "must not be empty".into()));
        }
        if self.token_file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            return Err(("admin.token_file".into(), "must not be empty".into()));
        }
        if self.token.is_some() && self.token_file.is_some() {
            return Err(("admin.token_file".into(), "set `admin.token` or `admin.token_file`, not both".into()));
        }
        if let Some(addr) = self.listen
            && !addr.ip().is_loopback()
            && self.token.is_none()
            && self.token_file.is_none()
        {
            return Err((
                "admin.token".into(),
                format!("is required (or `admin.token_file`) when admin.listen ({addr}) is not loopback"),
            ));
        }
        for (i, host) in self.allowed_hosts.iter().enumerate() {
            net::check_host(host).map_err(|message| (format!("admin.allowed_hosts[{i}]"), message))?;
        }
        Ok(())
    }
}

/// A value that must not appear in logs: `Debug` shows `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for comparing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `$SYS/broker/...` topics.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SysConfig {
    /// Seconds between two publications; 0 disables `$SYS`.
    pub interval_s: u64,
}

impl Default for SysConfig {
    fn default() -> SysConfig {
        SysConfig { interval_s: 10 }
    }
}

/// Clustering over NATS (`[cluster]`): nodes exchange publishes through
/// the NATS servers listed in `nats`.
///
/// ```toml
/// [cluster]
/// nats = ["nats://10.0.0.5:4222", "nats://10.0.0.6:4222"]
/// node_id = "moat-1"             # default: random at each start
/// subject_prefix = "moat"        # NATS subjects are `moat.t.<topic levels>`
/// node_timeout_s = 15            # silent this long: dead, its clients' wills go out
/// redelivery_s = 30              # a kept message unacknowledged this long is sent again
/// store_timeout_s = 30           # a QoS 1/2 publisher waits this long for JetStream, then is disconnected
/// replicas = 1                  # of the JetStream streams and buckets Moat creates
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:port` or `tls://host:port`); the
    /// client connects to one and fails over to the others.
    pub nats: Vec<String>,
    /// This node's name in the cluster, unique among the nodes; unset, a
    /// random one is made at start-up.
    #[serde(default)]
    pub node_id: Option<String>,
    /// First subject token(s) of every NATS subject Moat uses, so several
    /// clusters can share one NATS deployment.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// Seconds without a heartbeat after which the other nodes count a
    /// node as dead and publish the wills of the clients it had.
    #[serde(default = "default_node_timeout_s")]
    pub node_timeout_s: u32,
    /// Seconds JetStream waits for a client to acknowledge a message it
    /// keeps for a persistent session before delivering it again: also
    /// how long the messages a dead node had sent its clients, unacknowledged,
    /// take to reach them again through another node.
    #[serde(default = "default_redelivery_s")]
    pub redelivery_s: u32,
    /// Seconds a QoS 1/2 publisher's PUBACK/PUBREC may wait for JetStream
    /// to store its message while a session is kept somewhere (NATS away,
    /// JetStream electing a leader); past it the client is disconnected
    /// without the acknowledgement, so it publishes again.
    #[serde(default = "default_store_timeout_s")]
    pub store_timeout_s: u32,
    /// Replicas of the JetStream streams and buckets a node creates when
    /// they do not exist yet (retained messages, session owners, wills,
    /// heartbeats): 1 for a single JetStream server, 3 for a cluster of
    /// three that should survive losing one.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
}

fn default_replicas() -> usize {
    1
}

/// The `cluster.node_timeout_s` when not set.
pub const DEFAULT_NODE_TIMEOUT_S: u32 = 15;

fn default_node_timeout_s() -> u32 {
    DEFAULT_NODE_TIMEOUT_S
}

/// The `cluster.redelivery_s` when not set.
pub const DEFAULT_REDELIVERY_S: u32 = 30;

fn default_redelivery_s() -> u32 {
    DEFAULT_REDELIVERY_S
}

/// The `cluster.store_timeout_s` when not set.
pub const DEFAULT_STORE_TIMEOUT_S: u32 = 30;

fn default_store_timeout_s() -> u32 {
    DEFAULT_STORE_TIMEOUT_S
}

/// The `cluster.subject_prefix` when not set.
pub const DEFAULT_SUBJECT_PREFIX: &str = "moat";

fn default_subject_prefix() -> String {
    DEFAULT_SUBJECT_PREFIX.to_owned()
}

/// Characters of a node id and of a subject prefix token: safe in any NATS
/// subject, queue group and log line.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

impl ClusterConfig {
    /// A cluster on the NATS servers `nats`, everything else by default.
    pub fn new(nats: Vec<String>) -> ClusterConfig {
        ClusterConfig {
            nats,
            node_id: None,
            subject_prefix: default_subject_prefix(),
            node_timeout_s: DEFAULT_NODE_TIMEOUT_S,
            redelivery_s: DEFAULT_REDELIVERY_S,
            store_timeout_s: DEFAULT_STORE_TIMEOUT_S,
            replicas: default_replicas(),
        }
    }

    fn validate(&self) -> Result<(), (String, String)> {
        if cfg!(not(feature = "cluster")) {
            return Err(("cluster".into(), "this moat was built without the `cluster` feature".into()));
        }
        if self.nats.is_empty() {
            return Err(("cluster.nats".into(), "needs at least one NATS server URL".into()));
        }
        for (i, url) in self.nats.iter().enumerate() {
            let rest = url.strip_prefix("nats://").or_else(|| url.strip_prefix("tls://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                return Err((format!("cluster.nats[{i}]"), format!("{url:?} is not a nats:// or tls:// URL")));
            }
        }
        if let Some(id) = &self.node_id
            && (id.is_empty() || id.len() > 64 || !id.chars().all(is_name_char))
        {
            return Err(("cluster.node_id".into(), "must be 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'".into()));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(("cluster.replicas".into(), "must be 1 to 5 (JetStream's limit)".into()));
        }
        if !(1..=3600).contains(&self.node_timeout_s) {
            return Err(("cluster.node_timeout_s".into(), "must be 1 to 3600 seconds".into()));
        }
        if !(1..=3600).contains(&self.redelivery_s) {
            return Err(("cluster.redelivery_s".into(), "must be 1 to 3600 seconds".into()));
        }
        if !(1..=3600).contains(&self.store_timeout_s) {
            return Err(("cluster.store_timeout_s".into(), "must be 1 to 3600 seconds".into()));
        }
        let prefix = &self.subject_prefix;
        if prefix.split('.').any(|t| t.is_empty() || !t.chars().all(is_name_char)) {
            return Err((
                "cluster.subject_prefix".into(),
                "must be dot-separated tokens of A-Z, a-z, 0-9, '-' and '_'".into(),
            ));
        }
        Ok(())
    }
}

fn default_listeners() -> Vec<ListenerConfig> {
    vec![ListenerConfig::tcp("default", SocketAddr::from(([127, 0, 0, 1], 1883)))]
}

fn default_listener_name() -> String {
    "default".to_owned()
}

impl Config {
    /// Reads and validates a configuration file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, line and key at fault.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(file).map_err(|source| ConfigError::Read { file: file.to_owned(), source })?;
        Config::parse(&text, file)
    }

    /// Parses and validates configuration text; `file` is used in errors.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the line and key at fault.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let invalid = |line: usize, key: String, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            line,
            key,
            message,
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| invalid(line_of(text, e.span()), String::new(), e.message().to_owned()))?;
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            invalid(line_of(text, inner.span()), key, inner.message().to_owned())
        })?;
        config.validate().map_err(|(key, message)| {
            let line = line_of_key(text, &key);
            invalid(line, key, message)
        })?;
        config.plugins.base_dir = match file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        Ok(config)
    }

    /// Cross-field checks that serde cannot express.
    fn validate(&self) -> Result<(), (String, String)> {
        if self.listeners.is_empty() {
            return Err(("listeners".into(), "at least one listener is needed".into()));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if self.listeners[..i].iter().any(|o| o.name == l.name) {
                return Err((format!("listeners[{i}].name"), format!("duplicate listener name {:?}", l.name)));
            }
        }
        for name in self.plugins.shipped.keys() {
            if shipped::find(name).is_none() {
                return Err((
                    format!("plugins.{name}"),
                    format!("no shipped plugin is called {name:?}; shipped plugins: {}", shipped::names()),
                ));
            }
        }
        for (i, l) in self.listeners.iter().enumerate() {
            validate_listener(l).map_err(|(key, message)| (format!("listeners[{i}]{key}"), message))?;
        }
        let l = &self.limits;
        let positive = [
            ("max_connections", l.max_connections as u64),
            ("max_packet_size", u64::from(l.max_packet_size)),
            ("max_inflight", u64::from(l.max_inflight)),
            ("max_topic_levels", l.max_topic_levels as u64),
            ("max_topic_length", l.max_topic_length as u64),
            ("connect_timeout_ms", l.connect_timeout_ms),
            ("write_timeout_ms", l.write_timeout_ms),
            ("max_sessions", l.max_sessions as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err((format!("limits.{key}"), "must be greater than 0".into()));
            }
        }
        if l.max_topic_length > 65_535 {
            return Err(("limits.max_topic_length".into(), "MQTT topics cannot exceed 65535 bytes".into()));
        }
        if l.max_packet_size > 268_435_460 {
            return Err(("limits.max_packet_size".into(), "MQTT packets cannot exceed 268435460 bytes".into()));
        }
        if l.max_packet_size < 64 {
            return Err(("limits.max_packet_size".into(), "must be at least 64 bytes".into()));
        }
        if l.share_hold_ms > MAX_SHARE_HOLD_MS {
            return Err(("limits.share_hold_ms".into(), format!("must be at most {MAX_SHARE_HOLD_MS} (a day)")));
        }
        if self.plugins.cache_dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err(("plugins.cache_dir".into(), "must not be empty".into()));
        }
        if self.plugins.cache == Some(false) && self.plugins.cache_dir.is_some() {
            return Err(("plugins.cache_dir".into(), "set while `plugins.cache = false`: remove one".into()));
        }
        self.admin.validate()?;
        self.auth.validate()?;
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        self.storage.validate()
    }

    /// Where compiled plugins are kept: nowhere with `[plugins] cache =
    /// false`; else `[plugins] cache_dir`; else `plugin-cache` under
    /// `[storage] dir`; else the user's cache directory
    /// ([`crate::plugin::default_cache_dir`]: `$XDG_CACHE_HOME/moat` or
    /// `~/.cache/moat`); else, with neither variable set, nowhere.
    pub fn plugin_cache_dir(&self) -> Option<PathBuf> {
        if self.plugins.cache == Some(false) {
            return None;
        }
        self.plugins
            .cache_dir
            .clone()
            .or_else(|| Some(self.storage.dir.as_ref()?.join("plugin-cache")))
            .or_else(crate::plugin::default_cache_dir)
    }
}

/// Checks the TLS and WebSocket keys of one listener against its protocol;
/// the key in the error is relative to the listener (e.g. `.tls.ca_file`).
fn validate_listener(l: &ListenerConfig) -> Result<(), (String, String)> {
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
            net::check_origin(origin).map_err(|message| (format!(".allowed_origins[{i}]"), message))?;
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

/// The 1-based line of a byte offset (0 when unknown).
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> usize {
    span.map_or(0, |s| text.as_bytes()[..s.start.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1)
}

/// Best-effort line of the last segment of a dotted key path, for errors
/// found after deserialization. A key under `listeners[i]` is looked for
/// after the i-th `[[listeners]]` header.
fn line_of_key(text: &str, key: &str) -> usize {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    let leaf = leaf.split('[').next().unwrap_or(leaf);
    let skip = key
        .strip_prefix("listeners[")
        .and_then(|rest| rest.split(']').next()?.parse::<usize>().ok())
        .and_then(|i| text.lines().enumerate().filter(|(_, l)| l.trim() == "[[listeners]]").nth(i).map(|(n, _)| n))
        .unwrap_or(0);
    let table_suffix = format!(".{leaf}]");
    text.lines()
        .enumerate()
        .skip(skip)
        .find(|(_, l)| {
            let l = l.trim();
            l.strip_prefix(leaf).is_some_and(|rest| rest.trim_start().starts_with('='))
                || l.trim_start_matches('[').starts_with(leaf)
                || (l.starts_with('[') && l.ends_with(&table_suffix))
        })
        .map_or(0, |(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
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

    /// `moat.example.toml` stays a valid configuration.
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

        let err =
            parse(&format!("{tcp}[listeners.tls]\ncert_file = \"c\"\nkey_file = \"k\"\n")).expect_err("tls on tcp");
        let msg = err.to_string();
        assert!(msg.starts_with("moat.toml:4: `listeners[0].tls`: listener \"a\" does not speak TLS"), "{msg}");

        let with_tls = |extra: &str| {
            format!("{tcp}protocol = \"wss\"\n[listeners.tls]\ncert_file = \"c\"\nkey_file = \"k\"\n{extra}")
        };
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
        let err =
            parse("[storage]\ndir = \"d\"\ndurability = \"periodic\"\nflush_interval_ms = 0\n").expect_err("zero");
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
    }

    #[test]
    fn admin_off_loopback_needs_a_token() {
        let err = parse("[admin]\nlisten = \"0.0.0.0:9090\"\n").expect_err("no token");
        assert!(err.to_string().starts_with("moat.toml:0: `admin.token`: is required"), "{err}");
        let err = parse("[admin]\nlisten = \"127.0.0.1:9090\"\ntoken = \"\"\n").expect_err("empty token");
        assert!(err.to_string().starts_with("moat.toml:3: `admin.token`: must not be empty"), "{err}");
    }
}
