//! The CONNECT handshake: the first packet, authentication, session
//! attach and CONNACK.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::debug;

use super::policy::{self, AuthFailure};
use super::{Connection, Park};
use crate::auth::{ClientInfo, Throttled};
use crate::broker::{AttachRefused, Broker};
use crate::codec::{
    self, ConnAck, Connect, DecodeError, DecodeLimits, Packet, Properties, ProtocolVersion, ReasonCode,
};
use crate::config::ListenerConfig;
use crate::identity::Peer;
use crate::message::Owner;
use crate::metrics::{Limit, LocalCounts, Refusal};
use crate::session::Attached;
use crate::untrusted::Untrusted;

/// The first packet gets its own, smaller size cap: before CONNECT nobody
/// is authenticated, so nobody may make the broker buffer much.
const MAX_CONNECT_PACKET: u32 = 64 * 1024;

/// Reads CONNECT, decides, attaches the session and answers CONNACK.
/// Returns `None` when the connection should simply end (after a refusal
/// CONNACK where the protocol calls for one).
pub(super) async fn handshake<S>(
    broker: Arc<Broker>,
    mut stream: S,
    peer: Peer,
    (listener, listener_name): (Arc<ListenerConfig>, Arc<String>),
    permits: super::Permits,
) -> Option<Box<Connection<S>>>
where
    S: Park,
{
    let listener = &*listener;
    let running = broker.config();
    let limits = &running.limits;
    let mut rbuf = BytesMut::with_capacity(1024);
    let deadline = peer.connect_deadline.unwrap_or_else(|| Instant::now() + limits.connect_timeout());
    let mut bytes_read = 0;
    let connect = read_connect(&broker, &mut stream, &mut rbuf, limits, deadline, &mut bytes_read).await?;
    let version = connect.protocol;
    let negotiated = match negotiate(&broker, &connect, &peer, listener) {
        Ok(n) => n,
        Err(reason) => {
            return Refused::with(Refusal::Invalid, reason, "invalid CONNECT")
                .answer(&broker, &mut stream, version)
                .await;
        }
    };
    tracing::Span::current().record("client_id", tracing::field::display(Untrusted(&negotiated.client_id)));
    let mut client = client_info(&connect, &negotiated, &peer, listener_name);
    let admitted_without_plugin = negotiated.cert_authenticated || listener.allow_anonymous.permits(peer.addr);
    let identifying =
        identify(&broker, &mut stream, &mut rbuf, &connect, &mut client, listener, admitted_without_plugin);
    let authenticated = match tokio::time::timeout_at(deadline, identifying).await {
        Ok(Ok(authenticated)) => authenticated,
        Ok(Err(refused)) => return refused.answer(&broker, &mut stream, version).await,
        Err(_) => return Refused::CLOSED.answer(&broker, &mut stream, version).await,
    };
    let attached = match attach(&broker, &negotiated.client_id, connect.clean_start).await {
        Ok(attached) => attached,
        Err(refused) => return refused.answer(&broker, &mut stream, version).await,
    };
    // One copy, shared by the session (reloads re-authorize with it)
    // and the connection.
    let client = Arc::new(client);
    open_session(&broker, &attached, &client, &negotiated);
    let connack = connack(&negotiated, attached.present, limits, version, &authenticated);
    let parts = Parts { rbuf, bytes_read, negotiated: &negotiated, authenticated, attached, client, permits };
    let mut conn = connection(&broker, stream, &connect, limits, parts);
    #[cfg(feature = "cluster")]
    {
        register_will(&mut conn).await;
        conn.keep(true).await;
    }
    debug!(
        version = ?version,
        clean_start = connect.clean_start,
        keep_alive = negotiated.keep_alive,
        username = Untrusted::field(conn.client.username.as_deref()),
        claimed_username = Untrusted::field(conn.client.claimed_username.as_deref()),
        "client connected"
    );
    conn.send(&Packet::ConnAck(connack));
    Some(conn)
}

/// Reads the first packet under `deadline`; anything but a valid CONNECT
/// is counted and, where the protocol has a way to say so, answered.
async fn read_connect<S>(
    broker: &Broker,
    stream: &mut S,
    rbuf: &mut BytesMut,
    limits: &crate::config::Limits,
    deadline: Instant,
    bytes_read: &mut u64,
) -> Option<Box<Connect>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max_first = limits.decode_limits(MAX_CONNECT_PACKET);
    let first = tokio::time::timeout_at(deadline, read_first(stream, rbuf, max_first, bytes_read)).await;
    let failed = match first {
        Ok(Ok(connect)) => return Some(connect),
        failed => failed,
    };
    broker.metrics.refused(Refusal::Protocol);
    match failed {
        Err(_) => debug!("no CONNECT before the connect timeout"),
        Ok(Err(FirstPacketError::Decode(e, version))) => {
            debug!(error = %e, "invalid first packet");
            if e == DecodeError::TooManyUserProperties {
                broker.metrics.limit_hit(Limit::UserProperties);
            }
            refuse_bad_connect(stream, version, e).await;
        }
        Ok(Err(FirstPacketError::NotConnect)) => debug!("first packet is not CONNECT"),
        Ok(Err(FirstPacketError::Io) | Ok(_)) => {}
    }
    None
}

/// What the plugins will be told about the client, before any of them
/// granted anything.
fn client_info(connect: &Connect, negotiated: &Negotiated, peer: &Peer, listener: Arc<String>) -> ClientInfo {
    ClientInfo {
        client_id: negotiated.client_id.clone(),
        username: negotiated.username.clone(),
        claimed_username: connect.username.as_deref().map(Arc::from),
        peer_address: peer.addr,
        listener,
        protocol: connect.protocol,
        tls: peer.tls.clone(),
        attributes: Default::default(),
    }
}

/// Attaches the client's session, as the refusal to send when it cannot.
async fn attach(broker: &Broker, client_id: &Arc<str>, clean_start: bool) -> Result<Attached, Refused> {
    broker.attach(client_id, clean_start).await.map_err(|refused| match refused {
        AttachRefused::Busy => {
            Refused::with(Refusal::Busy, ReasonCode::SERVER_BUSY, "previous connection did not let go")
        }
        AttachRefused::TooManySessions => {
            broker.metrics.limit_hit(Limit::MaxSessions);
            Refused::with(Refusal::MaxSessions, ReasonCode::QUOTA_EXCEEDED, "limits.max_sessions reached")
        }
    })
}

/// Records who holds the session now (expiry, owner, connection, client),
/// in the store too when the session outlives the connection, and hands it
/// what its share groups kept while no member was connected.
fn open_session(broker: &Broker, attached: &Attached, client: &Arc<ClientInfo>, negotiated: &Negotiated) {
    let session_expiry_s = negotiated.session_expiry_s;
    let owner = Owner(client.username.as_deref().map(str::to_owned));
    {
        let mut session = attached.session.lock();
        // Set while online too: it decides whether queued messages are stored.
        session.expiry_s = session_expiry_s;
        session.owner = Some(owner.clone());
        session.set_connected_since(Some(std::time::SystemTime::now()));
        session.client = Some(client.clone());
    }
    if session_expiry_s > 0 {
        broker.store.session_opened(&negotiated.client_id, session_expiry_s);
        broker.store.session_owner(&negotiated.client_id, &owner);
    }
    // Now that its expiry is known (it decides whether they are stored):
    // what its share groups kept while no member was connected.
    broker.serve_waiting(&attached.session, None);
}

/// The successful CONNACK, with the v5 properties that tell the client
/// the server's limits and what it decided.
fn connack(
    negotiated: &Negotiated,
    session_present: bool,
    limits: &crate::config::Limits,
    version: ProtocolVersion,
    authenticated: &policy::Authenticated,
) -> ConnAck {
    let mut properties = Properties::default();
    if version.is_v5() {
        properties.receive_maximum = Some(limits.max_inflight);
        properties.maximum_packet_size = Some(limits.max_packet_size);
        properties.topic_alias_maximum = Some(limits.topic_alias_maximum);
        properties.assigned_client_identifier = negotiated.assigned.then(|| negotiated.client_id.to_string());
        properties.server_keep_alive = negotiated.server_keep_alive;
        properties.session_expiry_interval = negotiated.expiry_capped.then_some(negotiated.session_expiry_s);
        properties.authentication_method.clone_from(&authenticated.method);
        properties.authentication_data.clone_from(&authenticated.data);
    }
    ConnAck { session_present, reason: ReasonCode::SUCCESS, properties }
}

/// What the handshake hands over to the connection it builds.
struct Parts<'a> {
    rbuf: BytesMut,
    bytes_read: u64,
    negotiated: &'a Negotiated,
    authenticated: policy::Authenticated,
    attached: Attached,
    client: Arc<ClientInfo>,
    permits: super::Permits,
}

/// The connection the handshake admitted, with the limits it negotiated.
fn connection<S>(
    broker: &Arc<Broker>,
    stream: S,
    connect: &Connect,
    limits: &crate::config::Limits,
    parts: Parts<'_>,
) -> Box<Connection<S>>
where
    S: Park,
{
    let Parts { rbuf, bytes_read, negotiated, authenticated, attached, client, permits } = parts;
    let (keep_alive, session_expiry_s) = (negotiated.keep_alive, negotiated.session_expiry_s);
    let props = &connect.properties;
    let mut conn = Box::new(Connection {
        stream,
        // Usually empty by now; if so, nothing is held until the client
        // sends again (see `read_some`).
        rbuf: if rbuf.is_empty() { BytesMut::new() } else { rbuf },
        wbuf: BytesMut::new(),
        version: connect.protocol,
        // At most 65,535 s * 1,500: fits.
        keep_alive_ms: std::num::NonZeroU32::new(u32::from(keep_alive) * 1500),
        will: connect.will.clone().map(Box::new),
        #[cfg(feature = "cluster")]
        subscriptions_changed: false,
        session_expiry_s,
        connect_expiry_zero: session_expiry_s == 0,
        send_window: props.receive_maximum.unwrap_or(u16::MAX).min(limits.max_inflight),
        client_max_packet: props.maximum_packet_size.and_then(std::num::NonZeroU32::new),
        want_drain: true,
        // A new connection stays at least one period before parking.
        stirred: true,
        withheld: None,
        counts: LocalCounts::default(),
        attached,
        broker: broker.clone(),
        authz: None,
        input_pending: false,
        routed: 0,
        rare: None,
        _permits: permits,
        client,
    });
    conn.counts.read(usize::try_from(bytes_read).unwrap_or(usize::MAX));
    let publish_rate = crate::rate::TokenBucket::per_second(limits.max_publish_rate, std::time::Instant::now());
    if authenticated.method.is_some() || publish_rate.is_some() {
        let rare = conn.rare();
        rare.auth_method = authenticated.method;
        rare.publish_rate = publish_rate;
    }
    conn
}

/// Whether `client` may have the session of `client_id` (`[auth]
/// bind_sessions`): checked before the takeover, so a refused client
/// neither kicks the connection attached to it nor discards it. A session
/// belongs to the verified user name (or the anonymity) of the connection
/// that attached it last; one whose owner is not known (recovered from an
/// older store, moved from another node) goes to the next connection.
fn may_take_session(broker: &Broker, client_id: &str, client: &ClientInfo) -> bool {
    if !broker.config().auth.bind_sessions.applies(broker.policy().authenticates()) {
        return true;
    }
    broker.sessions.get(client_id).is_none_or(|session| session.may_be_taken_by(client.username.as_deref()))
}

/// Why a handshake ends without a session: counted as `metric`, logged at
/// `debug`, and answered with a CONNACK of `reason` when there is one.
struct Refused {
    metric: Refusal,
    reason: Option<ReasonCode>,
    why: &'static str,
}

impl Refused {
    /// The connection broke or timed out during authentication: nothing
    /// to answer.
    const CLOSED: Refused = Refused { metric: Refusal::Protocol, reason: None, why: "authentication did not finish" };

    fn with(metric: Refusal, reason: ReasonCode, why: &'static str) -> Refused {
        Refused { metric, reason: Some(reason), why }
    }

    /// Counts, logs and answers the refusal; the handshake's end.
    async fn answer<S, T>(self, broker: &Broker, stream: &mut S, version: ProtocolVersion) -> Option<T>
    where
        S: AsyncWrite + Unpin,
    {
        broker.metrics.refused(self.metric);
        match self.reason {
            Some(reason) => {
                debug!(reason = %reason, why = self.why, "CONNECT refused");
                send_connack(stream, version, ConnAck { reason, ..ConnAck::default() }).await;
            }
            None => debug!(why = self.why, "CONNECT refused"),
        }
        None
    }
}

/// Who the client is: authenticates it under the login throttle, applies
/// the listener's `trust_claimed_username`, and checks that it may have
/// the session of its client id.
async fn identify<S>(
    broker: &Broker,
    stream: &mut S,
    rbuf: &mut BytesMut,
    connect: &Connect,
    client: &mut ClientInfo,
    listener: &ListenerConfig,
    admitted_without_plugin: bool,
) -> Result<policy::Authenticated, Refused>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let authenticated = match login(broker, stream, rbuf, connect, client, admitted_without_plugin).await {
        Ok(authenticated) => authenticated,
        Err(LoginFailure::Throttled(throttled)) => {
            debug!(retry_after_s = throttled.retry_after.as_secs(), "too many failed logins from this address");
            let why = "too many failed logins from this address";
            return Err(Refused::with(Refusal::LoginThrottled, ReasonCode::CONNECTION_RATE_EXCEEDED, why));
        }
        Err(LoginFailure::Auth(AuthFailure::Refused(reason))) => {
            return Err(Refused::with(Refusal::NotAuthorized, reason, "refused by authentication"));
        }
        Err(LoginFailure::Auth(AuthFailure::Closed)) => return Err(Refused::CLOSED),
    };
    if listener.trust_claimed_username && client.username.is_none() {
        // The operator's explicit choice (warned about at start-up): a name
        // nobody verified counts, as in Mosquitto.
        client.username.clone_from(&client.claimed_username);
    }
    if !may_take_session(broker, &client.client_id, client) {
        let why = "the session of this client id belongs to another user";
        return Err(Refused::with(Refusal::SessionOwner, ReasonCode::NOT_AUTHORIZED, why));
    }
    Ok(authenticated)
}

/// Why a login did not succeed.
enum LoginFailure {
    /// The address failed too often: refused before any plugin ran.
    Throttled(Throttled),
    /// Authentication refused the client or broke off.
    Auth(AuthFailure),
}

/// Authenticates under the login throttle (`[auth]`, `auth::LoginThrottle`):
/// an address that failed too often is refused before the chain runs, and
/// waits for one of its address's login slots before the chain runs. A
/// login that does not succeed (refused, broken off, timed out) counts
/// against its address.
async fn login<S>(
    broker: &Broker,
    stream: &mut S,
    rbuf: &mut BytesMut,
    connect: &Connect,
    client: &mut ClientInfo,
    admitted_without_plugin: bool,
) -> Result<policy::Authenticated, LoginFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let settings = broker.config().auth.throttle(crate::plugin::authn_concurrency());
    // Without an authenticating plugin a login costs nothing to wait for.
    let gated = broker.policy().authenticates();
    let ticket =
        broker.logins.admit(client.peer_address.ip(), settings, gated).await.map_err(LoginFailure::Throttled)?;
    let authenticated = policy::authenticate(broker, stream, rbuf, connect, client, admitted_without_plugin)
        .await
        .map_err(LoginFailure::Auth)?;
    ticket.succeeded();
    Ok(authenticated)
}

/// In a cluster, registers the connection's will (if the policy allows
/// it) so that another node publishes it should this one die.
#[cfg(feature = "cluster")]
async fn register_will<S>(conn: &mut Connection<S>)
where
    S: Park,
{
    let Some(will) = conn.will.as_deref().cloned() else { return };
    let broker = conn.broker.clone();
    let Some(cluster) = crate::cluster::Cluster::plugged(broker.replication()) else { return };
    if super::inbound::is_reserved(will.topic.as_str())
        || !conn.allowed(crate::auth::Action::Will, will.topic.as_str(), will.qos, will.retain).await
    {
        return;
    }
    let delay_s = will.properties.will_delay_interval.unwrap_or(0).min(conn.session_expiry_s);
    if let Some(revision) = cluster.register_will(&conn.client.client_id, &will, delay_s).await {
        conn.rare().will_registered = Some(revision);
    }
}

/// What CONNECT negotiated.
struct Negotiated {
    client_id: Arc<str>,
    assigned: bool,
    keep_alive: u16,
    server_keep_alive: Option<u16>,
    session_expiry_s: u32,
    expiry_capped: bool,
    /// The user name the client certificate verified, if it names one.
    username: Option<Arc<str>>,
    /// A verified client certificate authenticated the client.
    cert_authenticated: bool,
}

/// Validates CONNECT against the limits and the authentication policy.
fn negotiate(
    broker: &Broker,
    connect: &Connect,
    peer: &Peer,
    listener: &ListenerConfig,
) -> Result<Negotiated, ReasonCode> {
    let running = broker.config();
    let limits = &running.limits;
    let v5 = connect.protocol.is_v5();
    let (client_id, assigned) = if connect.client_id.is_empty() {
        // 3.1.1 only assigns an id to clean sessions [MQTT-3.1.3-8].
        if !v5 && !connect.clean_start {
            return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        }
        (broker.assign_client_id(), true)
    } else {
        (Arc::from(connect.client_id.as_str()), false)
    };
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if keep_alive > limits.max_keepalive_s || (keep_alive == 0 && limits.max_keepalive_s < u16::MAX) {
        if !v5 {
            // 3.1.1 has no way to tell the client; refuse as Mosquitto does.
            return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        }
        keep_alive = limits.max_keepalive_s;
        server_keep_alive = Some(keep_alive);
    }
    if let Some(will) = &connect.will {
        if will.topic.is_empty() {
            return Err(ReasonCode::TOPIC_NAME_INVALID);
        }
        if let Some(limit) = super::topic_over_limit(limits, will.topic.as_str()) {
            broker.metrics.limit_hit(limit);
            return Err(ReasonCode::TOPIC_NAME_INVALID);
        }
    }
    // A verified client certificate authenticates (see connection::identity);
    // plugins and the anonymous policy decide the rest (connection::policy).
    let login = super::identity::certificate_login(listener, peer)?;
    let requested = if v5 {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    };
    let session_expiry_s = requested.min(limits.max_session_expiry_s);
    Ok(Negotiated {
        client_id,
        assigned,
        keep_alive,
        server_keep_alive,
        session_expiry_s,
        expiry_capped: session_expiry_s != requested,
        username: login.username,
        cert_authenticated: login.authenticated,
    })
}

enum FirstPacketError {
    Io,
    /// The error, and the version the CONNECT claimed (read before
    /// decoding, because a failed decode leaves the buffer unspecified).
    Decode(DecodeError, Option<ProtocolVersion>),
    NotConnect,
}

/// Reads until a whole first packet is buffered; `bytes_read` counts what
/// was read (for the metrics, once the connection is admitted).
async fn read_first<S>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    limits: DecodeLimits,
    bytes_read: &mut u64,
) -> Result<Box<Connect>, FirstPacketError>
where
    S: AsyncRead + Unpin,
{
    loop {
        let claimed = codec::connect_version(rbuf);
        // The version argument is irrelevant: CONNECT carries its own.
        match codec::decode_with(rbuf, ProtocolVersion::V5, limits) {
            Ok(Some(Packet::Connect(connect))) => return Ok(connect),
            Ok(Some(_)) => return Err(FirstPacketError::NotConnect),
            Ok(None) => {}
            Err(e) => return Err(FirstPacketError::Decode(e, claimed)),
        }
        match stream.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Err(FirstPacketError::Io),
            Ok(n) => *bytes_read += n as u64,
        }
    }
}

/// Answers an undecodable CONNECT where a CONNACK can say why: an
/// unsupported protocol level gets 0x84 / return code 1 [MQTT-3.1.2-2], and
/// a v5 CONNECT that is malformed gets its reason code [MQTT-4.13.1-1].
/// Anything else (not MQTT at all, a broken 3.1.1 CONNECT) just closes.
async fn refuse_bad_connect<S: AsyncWrite + Unpin>(
    stream: &mut S,
    version: Option<ProtocolVersion>,
    error: DecodeError,
) {
    let version = match (error, version) {
        (DecodeError::UnsupportedProtocolVersion(_), _) => ProtocolVersion::V311,
        (DecodeError::InvalidProtocolName, _) | (_, None | Some(ProtocolVersion::V311)) => return,
        (_, Some(ProtocolVersion::V5)) => ProtocolVersion::V5,
    };
    send_connack(stream, version, ConnAck { reason: error.reason_code(), ..ConnAck::default() }).await;
}

async fn send_connack<S: AsyncWrite + Unpin>(stream: &mut S, version: ProtocolVersion, connack: ConnAck) {
    let mut buf = BytesMut::new();
    if codec::encode(&Packet::ConnAck(connack), version, &mut buf).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(&buf).await.ok();
            stream.shutdown().await.ok();
        })
        .await;
    }
}
