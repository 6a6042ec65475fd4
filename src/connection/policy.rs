//! The connection's side of the policy pipeline: authentication at CONNECT
//! (with MQTT 5 enhanced authentication and re-authentication), cached
//! authorization of each action, and message transforms.
//!
//! Every answer that is not an explicit allow is a refusal: the chain in
//! [`crate::auth`] already turns plugin failures into denials, and here an
//! unexpected packet in an authentication exchange refuses too.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info};

use super::{Close, Connection, Park};
use crate::auth::AuthzCache;
use crate::auth::{
    Action, AuthExchange, AuthnOutcome, ClientInfo, Credentials, PluginMessage, Policy, TransformOutcome,
};
use crate::broker::Broker;
use crate::codec::{self, Auth, Connect, Packet, Properties, ProtocolVersion, QoS, ReasonCode, TopicName};
use crate::message::Message;
use crate::untrusted::Untrusted;

/// Authorization verdicts a connection remembers: enough for the topics
/// one device uses, small enough that 100k connections do not notice.
const AUTHZ_CACHE_ENTRIES: usize = 64;

/// Enhanced authentication may take this many round trips at most, so a
/// plugin that always answers `continue` cannot hold a connection forever.
const MAX_AUTH_ROUNDS: usize = 8;

/// Why authentication at CONNECT did not succeed.
pub(super) enum AuthFailure {
    /// Refuse with this CONNACK reason code.
    Refused(ReasonCode),
    /// The connection broke or timed out during an exchange.
    Closed,
}

/// What CONNACK tells a client that authenticated.
#[derive(Debug, Default)]
pub(super) struct Authenticated {
    /// The Authentication Method to echo, if the client used one.
    pub method: Option<String>,
    /// Authentication Data the deciding plugin sent with its `allow`.
    pub data: Option<Bytes>,
}

/// Runs the authentication chain for a CONNECT, with the steps of an
/// enhanced-authentication exchange pinned to one plugin instance.
///
/// A client no plugin decides on is admitted when its certificate
/// authenticated it or the listener admits it anonymously.
pub(super) async fn authenticate<S>(
    broker: &Broker,
    stream: &mut S,
    rbuf: &mut BytesMut,
    connect: &Connect,
    client: &mut ClientInfo,
    admitted_without_plugin: bool,
) -> Result<Authenticated, AuthFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let policy = broker.policy();
    let method = connect.properties.authentication_method.clone();
    let outcome = if policy.authenticates() {
        let mut credentials = Credentials {
            username: connect.username.clone(),
            password: connect.password.clone(),
            auth_method: method.clone(),
            auth_data: connect.properties.authentication_data.clone(),
        };
        // Boxed: the exchange's states (AUTH round trips, plugin calls)
        // would otherwise make every handshake's future larger, and it
        // is moved whole when a connection starts (issue 25).
        Box::pin(run_chain(broker, &policy, stream, rbuf, client, &mut credentials, method.as_deref())).await
    } else {
        // No plugin to ask: no copy of the credentials (issue 25).
        Decided::NoDecision
    };
    // The decision, once per CONNECT, at info: who decided and how. Never
    // the password, the authentication data or a plugin's free-text reason
    // (which may echo them); those stay at debug in `run_chain`.
    let (outcome_label, plugin, admitted) = match &outcome {
        Decided::Allow { plugin, .. } => ("allow", Some(plugin.as_str()), true),
        Decided::Deny(plugin) => ("deny", plugin.as_deref(), false),
        Decided::NoDecision => {
            let admitted = admitted_without_plugin && method.is_none();
            (if admitted { "admitted_without_plugin" } else { "deny" }, None, admitted)
        }
        Decided::Refused(plugin) => ("deny", plugin.as_deref(), false),
        Decided::Busy(plugin) => ("busy", Some(plugin.as_str()), false),
        Decided::Failed(_) => ("deny", None, false),
    };
    broker.metrics.authenticated(admitted);
    info!(
        peer = %client.peer_address,
        client_id = %Untrusted(&client.client_id),
        username = Untrusted::field(client.claimed_username.as_deref()),
        verified_username = Untrusted::field(client.username.as_deref()),
        plugin = plugin.unwrap_or("-"),
        outcome = outcome_label,
        "authentication"
    );
    match outcome {
        // Authentication Data only answers a client that used a method.
        Decided::Allow { data, .. } => {
            let data = if method.is_some() { data } else { None };
            Ok(Authenticated { method, data })
        }
        Decided::NoDecision if method.is_some() => Err(AuthFailure::Refused(ReasonCode::BAD_AUTHENTICATION_METHOD)),
        Decided::NoDecision if admitted => Ok(Authenticated::default()),
        Decided::NoDecision => Err(AuthFailure::Refused(ReasonCode::NOT_AUTHORIZED)),
        Decided::Deny(_) => {
            let bad_credentials = connect.password.is_some() || method.is_some();
            let code = if bad_credentials { ReasonCode::BAD_USER_NAME_OR_PASSWORD } else { ReasonCode::NOT_AUTHORIZED };
            Err(AuthFailure::Refused(code))
        }
        Decided::Refused(_) => Err(AuthFailure::Refused(ReasonCode::NOT_AUTHORIZED)),
        Decided::Busy(_) => Err(AuthFailure::Refused(ReasonCode::QUOTA_EXCEEDED)),
        Decided::Failed(failure) => Err(failure),
    }
}

/// How the authentication chain ended for a CONNECT.
enum Decided {
    /// Allowed by this plugin, with Authentication Data for CONNACK.
    Allow { plugin: String, data: Option<Bytes> },
    /// Denied by this plugin (or the exchange went wrong under it).
    Deny(Option<String>),
    /// No plugin decided.
    NoDecision,
    /// The exchange itself was refused (a `continue` without a method,
    /// too many rounds), under this plugin if known.
    Refused(Option<String>),
    /// The exchange broke off.
    Failed(AuthFailure),
    /// The plugin holds as many exchanges as it may.
    Busy(String),
}

/// Runs the chain, with MQTT 5 AUTH round trips pinned to the instance
/// that answered `continue`, until it decides.
async fn run_chain<S>(
    broker: &Broker,
    policy: &Policy,
    stream: &mut S,
    rbuf: &mut BytesMut,
    client: &mut ClientInfo,
    credentials: &mut Credentials,
    method: Option<&str>,
) -> Decided
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut exchange = None;
    for _ in 0..MAX_AUTH_ROUNDS {
        match authenticate_step(policy, &mut exchange, client, credentials).await {
            AuthnOutcome::Allow(grant) => {
                client.apply_grant(&grant);
                return Decided::Allow { plugin: grant.plugin.to_string(), data: grant.auth_data };
            }
            AuthnOutcome::Deny { plugin, reason } => {
                debug!(plugin = &*plugin, reason, "authentication denied");
                return Decided::Deny(Some(plugin.to_string()));
            }
            AuthnOutcome::NoDecision => return Decided::NoDecision,
            AuthnOutcome::Busy { plugin } => {
                debug!(plugin = &*plugin, "too many authentication exchanges in progress");
                return Decided::Busy(plugin.to_string());
            }
            AuthnOutcome::Continue { plugin, data } => {
                let Some(method) = method else {
                    debug!(plugin = &*plugin, "plugin continued an exchange the client did not start");
                    return Decided::Refused(Some(plugin.to_string()));
                };
                match challenge(stream, rbuf, method, data, broker).await {
                    Ok(answer) => credentials.auth_data = Some(answer),
                    Err(failure) => return Decided::Failed(failure),
                }
            }
        }
    }
    debug!("enhanced authentication took too many rounds");
    Decided::Refused(None)
}

/// Runs one authentication step ([`Policy::authenticate_step`]). Each
/// plugin's call runs on the blocking pool under that plugin's permits (see
/// [`crate::plugin::LoadedPlugin`]); without authenticating plugins the
/// answer is known at once.
async fn authenticate_step(
    policy: &Policy,
    exchange: &mut Option<AuthExchange>,
    client: &ClientInfo,
    credentials: &Credentials,
) -> AuthnOutcome {
    if !policy.authenticates() {
        return AuthnOutcome::NoDecision;
    }
    // Boxed: the chain's future is large and lives only for this step.
    Box::pin(policy.authenticate_step(exchange, client, credentials)).await
}

/// Sends one AUTH challenge and reads the client's answer (before CONNACK).
async fn challenge<S>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    method: &str,
    data: Vec<u8>,
    broker: &Broker,
) -> Result<Bytes, AuthFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    let auth = auth_packet(ReasonCode::CONTINUE_AUTHENTICATION, method, data);
    codec::encode(&auth, ProtocolVersion::V5, &mut out).map_err(|_| AuthFailure::Closed)?;
    stream.write_all(&out).await.map_err(|_| AuthFailure::Closed)?;
    stream.flush().await.map_err(|_| AuthFailure::Closed)?;
    let limits = broker.config().limits.decode_limits(u32::MAX);
    loop {
        match codec::decode_with(rbuf, ProtocolVersion::V5, limits) {
            Ok(Some(Packet::Auth(reply))) => return answer_data(reply, method).map_err(AuthFailure::Refused),
            Ok(Some(_)) => return Err(AuthFailure::Refused(ReasonCode::PROTOCOL_ERROR)),
            Ok(None) => {}
            Err(e) => {
                if e == codec::DecodeError::TooManyUserProperties {
                    broker.metrics.limit_hit(crate::metrics::Limit::UserProperties);
                }
                return Err(AuthFailure::Refused(e.reason_code()));
            }
        }
        match stream.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Err(AuthFailure::Closed),
            Ok(_) => {}
        }
    }
}

/// The Authentication Data of a client's AUTH answer, which must continue
/// the exchange with the same method [MQTT-4.12.0-5].
fn answer_data(reply: Auth, method: &str) -> Result<Bytes, ReasonCode> {
    let same_method = reply.properties.authentication_method.as_deref() == Some(method);
    if reply.reason != ReasonCode::CONTINUE_AUTHENTICATION || !same_method {
        return Err(ReasonCode::PROTOCOL_ERROR);
    }
    Ok(reply.properties.authentication_data.unwrap_or_default())
}

fn auth_packet(reason: ReasonCode, method: &str, data: Vec<u8>) -> Packet {
    Packet::Auth(Auth {
        reason,
        properties: Properties {
            authentication_method: Some(method.to_owned()),
            authentication_data: (!data.is_empty()).then(|| Bytes::from(data)),
            ..Properties::default()
        },
    })
}

impl<S> Connection<S>
where
    S: Park,
{
    /// Whether the policy permits `action` on `topic`, asking the plugins
    /// only when this connection's cache has no live verdict.
    pub(super) async fn allowed(&mut self, action: Action, topic: &str, qos: QoS, retain: bool) -> bool {
        let policy = self.broker.policy();
        self.allowed_by(&policy, Instant::now(), action, topic, qos, retain).await
    }

    /// [`Connection::allowed`] under a policy the caller already holds, so a
    /// publish or a batch of deliveries reads the broker's policy once, at
    /// `now` as the caller read the clock (cached verdicts live for
    /// seconds; a clock read costs a third of a cached answer).
    pub(super) async fn allowed_by(
        &mut self,
        policy: &Policy,
        now: Instant,
        action: Action,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> bool {
        if let Some(allowed) = self.allowed_cached(policy, now, action, topic, qos, retain) {
            return allowed;
        }
        // Boxed: a plugin call's future is large, and this one is kept in
        // the connection's state only while a plugin answers.
        let verdict = Box::pin(policy.authorize(&self.client, action, topic, qos, retain)).await;
        let cache = self.authz.get_or_insert_with(|| Box::new(AuthzCache::new(AUTHZ_CACHE_ENTRIES)));
        cache.remember(now, action, topic, qos, retain, &verdict);
        if let Some(denial) = &verdict.denial {
            let client = self.client.clone();
            self.rare().denials.record(now, &client, action, topic, denial);
        }
        verdict.allowed
    }

    /// The verdict when it is known without asking a plugin: with no
    /// authorizing plugin, or from this connection's cache.
    pub(super) fn allowed_cached(
        &mut self,
        policy: &Policy,
        now: Instant,
        action: Action,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> Option<bool> {
        if !policy.authorizes() {
            return Some(true);
        }
        // Only allows are cached, so nothing here is logged.
        self.authz.as_mut()?.cached(now, policy, action, topic, qos, retain)
    }

    /// Applies the transform plugins registered for the message's topic,
    /// for a caller that found [`Policy::wants_transform`]. `None` means a
    /// plugin dropped it. Its future is large: a caller keeps it boxed.
    pub(super) async fn transform(&mut self, policy: &Policy, message: Message) -> Option<Message> {
        let now = Instant::now();
        match policy.transform(&self.client, &to_plugin(&message, now)).await {
            TransformOutcome::Pass => Some(message),
            TransformOutcome::Replace(replaced) => from_plugin(replaced),
            TransformOutcome::Drop { plugin, reason } => {
                debug!(plugin = &*plugin, reason, topic = %Untrusted(message.topic.as_str()), "message dropped by transform");
                None
            }
        }
    }

    /// MQTT 5 re-authentication: an AUTH packet after CONNACK
    /// [MQTT-4.12.1]. It runs through the same plugin path, permits and
    /// deadlines as authentication at CONNECT. Failure ends the connection
    /// with 0x87 (0x97 when the plugin holds too many exchanges).
    pub(super) async fn on_auth(&mut self, auth: Auth) -> Result<(), Close> {
        let Some(method) = self.rare.as_ref().and_then(|r| r.auth_method.clone()) else {
            return Err(Close::Protocol(ReasonCode::PROTOCOL_ERROR, "AUTH without an authentication method"));
        };
        let expected = if self.rare.as_ref().is_some_and(|r| r.reauth.is_some()) {
            ReasonCode::CONTINUE_AUTHENTICATION
        } else {
            ReasonCode::REAUTHENTICATE
        };
        if auth.reason != expected || auth.properties.authentication_method.as_deref() != Some(method.as_str()) {
            return Err(Close::Protocol(ReasonCode::PROTOCOL_ERROR, "unexpected AUTH"));
        }
        let credentials = Credentials {
            username: self.client.username.as_deref().map(str::to_owned),
            password: None,
            auth_method: Some(method.clone()),
            auth_data: auth.properties.authentication_data,
        };
        // The exchange is taken out, so any answer but `continue` ends it.
        let mut exchange = self.rare.as_mut().and_then(|r| r.reauth.take()).map(|e| *e);
        let policy = self.broker.policy();
        match authenticate_step(&policy, &mut exchange, &self.client, &credentials).await {
            AuthnOutcome::Allow(grant) => {
                std::sync::Arc::make_mut(&mut self.client).apply_grant(&grant);
                if let Some(cache) = &mut self.authz {
                    cache.clear();
                }
                self.attached.session.lock().client = Some(self.client.clone());
                let data = grant.auth_data.map(|d| d.to_vec()).unwrap_or_default();
                self.send(&auth_packet(ReasonCode::SUCCESS, &method, data));
                Ok(())
            }
            AuthnOutcome::Continue { data, .. } => {
                self.rare().reauth = exchange.map(Box::new);
                self.send(&auth_packet(ReasonCode::CONTINUE_AUTHENTICATION, &method, data));
                Ok(())
            }
            AuthnOutcome::Busy { .. } => {
                Err(Close::Protocol(ReasonCode::QUOTA_EXCEEDED, "too many authentication exchanges in progress"))
            }
            AuthnOutcome::Deny { .. } | AuthnOutcome::NoDecision => {
                Err(Close::Protocol(ReasonCode::NOT_AUTHORIZED, "re-authentication failed"))
            }
        }
    }
}

/// The message as a transform plugin sees it.
fn to_plugin(message: &Message, now: Instant) -> PluginMessage {
    let p = &message.properties;
    PluginMessage {
        topic: message.topic.clone(),
        payload: message.payload.clone(),
        qos: message.qos,
        retain: message.retain,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.as_ref().map(|t| t.as_str().to_owned()),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
        message_expiry: message.remaining_expiry(now),
    }
}

/// The routed message a transform returned; `None` (drop) when the plugin
/// produced a response topic that is not a valid topic name.
fn from_plugin(m: PluginMessage) -> Option<Message> {
    let response_topic = match m.response_topic.as_deref().map(TopicName::new).transpose() {
        Ok(topic) => topic,
        Err(e) => {
            debug!(error = %e, "transform returned an invalid response topic; message dropped");
            return None;
        }
    };
    Some(Message::new(
        m.topic,
        m.payload,
        m.qos,
        m.retain,
        &Properties {
            content_type: m.content_type,
            response_topic,
            correlation_data: m.correlation_data,
            user_properties: m.user_properties,
            message_expiry_interval: m.message_expiry,
            ..Properties::default()
        },
    ))
}
