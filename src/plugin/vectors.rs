//! Test vectors for one plugin: hook calls with the answers a plugin author
//! expects, run by `moat plugin check --vectors FILE.toml` against a plugin
//! loaded exactly as the broker loads it.
//!
//! ```toml
//! [client]                      # defaults for every vector (all optional)
//! client_id = "test-client"
//! username = "alice"           # the verified user name
//! claimed_username = "alice"   # CONNECT's (attribute moat.claimed-username); default: username
//! listener = "tcp"
//! peer_address = "127.0.0.1:50000"
//! protocol = 5                  # 4 (MQTT 3.1.1) or 5
//! attributes = { role = "admin" }
//! tls = { subject = "CN=alice", sans = ["DNS:alice"], sha256_fingerprint = "ab12..." }
//!
//! [[vector]]
//! name = "alice publishes under her prefix"
//! hook = "authorize"            # "authenticate" | "authorize" | "transform"
//! action = "publish"            # publish | subscribe | receive | retained | will
//! topic = "users/alice/x"
//! qos = 1                       # default 0
//! retain = false                # default false
//! expect = "allow"              # allow | deny | ignore | fail
//!
//! [[vector]]
//! hook = "authenticate"
//! username = "alice"            # also the name the client claims
//! password = "secret"           # or password_hex; auth_method, auth_data_hex
//! expect = "allow"              # allow | deny | ignore | continue | fail
//! expect_attributes = { role = "admin" }   # allow: these attributes (exactly)
//! expect_username = "alice"     # allow: the user name override
//!
//! [[vector]]
//! hook = "transform"
//! topic = "sensors/t1"
//! payload = "21.5"              # or payload_hex; qos, retain as above
//! expect = "replace"            # pass | replace | drop | fail
//! expect_topic = "sensors/t1/c" # replace: the new topic
//! expect_payload = "21.5 C"     # replace: the new payload (or expect_payload_hex)
//! ```
//!
//! A `deny` or `drop` may add `expect_reason`, a text the reason must
//! contain; a `continue` may add `expect_data_hex`. A vector may override the
//! client with its own `client = { ... }` table. `fail` expects the call to
//! fail (trap, timeout, out of memory, oversized or malformed answer), which
//! the broker counts as a denial (transforms: per `on_error`).
//!
//! Each vector is one call on the plugin, as the broker would make it: a
//! hook the manifest does not declare is never called by the broker, so such
//! a vector fails; a transform on a topic no declared filter matches is not
//! called and passes. Enhanced authentication is one step per vector.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use super::request::{Action, ClientInfo, Credentials, PluginMessage};
use super::{AuthnAnswer, AuthzAnswer, CallFailure, Hook, LoadedPlugin, TransformAnswer, block_on};
use crate::codec::topic::filter_matches;
use crate::codec::{ProtocolVersion, QoS, TopicName};
use crate::identity::TlsIdentity;

/// A parsed, validated vectors file.
#[derive(Debug, Clone)]
pub struct Vectors {
    vectors: Vec<Vector>,
}

/// One hook call and what it should answer.
#[derive(Debug, Clone)]
struct Vector {
    name: String,
    client: ClientInfo,
    call: Call,
    expect: Expect,
}

#[derive(Debug, Clone)]
enum Call {
    Authenticate(Credentials),
    Authorize { action: Action, topic: String, qos: QoS, retain: bool },
    Transform(PluginMessage),
}

/// What a vector expects: the outcome's name and the details to compare.
#[derive(Debug, Clone, Default)]
struct Expect {
    outcome: String,
    reason: Option<String>,
    attributes: Option<Vec<(String, String)>>,
    username: Option<String>,
    data: Option<Vec<u8>>,
    topic: Option<String>,
    payload: Option<Vec<u8>>,
}

/// The result of one vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorResult {
    /// The vector's `name` (or `vector N`).
    pub name: String,
    /// What the plugin answered, for the report.
    pub observed: String,
    /// Why the answer does not match, when it does not.
    pub mismatch: Option<String>,
}

impl VectorResult {
    /// Whether the answer matched.
    pub fn passed(&self) -> bool {
        self.mismatch.is_none()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    client: Option<ClientSpec>,
    #[serde(default)]
    vector: Vec<VectorSpec>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientSpec {
    client_id: Option<String>,
    username: Option<String>,
    claimed_username: Option<String>,
    peer_address: Option<String>,
    listener: Option<String>,
    protocol: Option<u8>,
    attributes: Option<BTreeMap<String, String>>,
    tls: Option<TlsSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSpec {
    subject: String,
    #[serde(default)]
    sans: Vec<String>,
    #[serde(default)]
    sha256_fingerprint: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorSpec {
    name: Option<String>,
    hook: HookSpec,
    client: Option<ClientSpec>,
    username: Option<String>,
    password: Option<String>,
    password_hex: Option<String>,
    auth_method: Option<String>,
    auth_data_hex: Option<String>,
    action: Option<ActionSpec>,
    topic: Option<String>,
    qos: Option<u8>,
    retain: Option<bool>,
    payload: Option<String>,
    payload_hex: Option<String>,
    expect: String,
    expect_reason: Option<String>,
    expect_attributes: Option<BTreeMap<String, String>>,
    expect_username: Option<String>,
    expect_data_hex: Option<String>,
    expect_topic: Option<String>,
    expect_payload: Option<String>,
    expect_payload_hex: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum HookSpec {
    Authenticate,
    Authorize,
    Transform,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ActionSpec {
    Publish,
    Subscribe,
    Receive,
    Retained,
    Will,
}

impl Vectors {
    /// Parses and validates a vectors file. The error is a message for the
    /// author (with the line for syntax and type errors, and the vector's
    /// name for missing or contradictory keys); the caller adds the file
    /// name.
    pub fn parse(text: &str) -> Result<Vectors, String> {
        let spec: FileSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        let defaults = spec.client.unwrap_or_default();
        let vectors = spec
            .vector
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let name = v.name.clone().unwrap_or_else(|| format!("vector {}", i + 1));
                Vector::from_spec(name.clone(), v, &defaults).map_err(|e| format!("vector {:?}: {e}", name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if vectors.is_empty() {
            return Err("no [[vector]] tables".into());
        }
        Ok(Vectors { vectors })
    }

    /// How many vectors there are.
    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    /// Whether there are none (never, for a parsed file).
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// Runs every vector on `plugin`, in file order.
    pub fn run(&self, plugin: &Arc<LoadedPlugin>) -> Vec<VectorResult> {
        self.vectors.iter().map(|v| v.run(plugin)).collect()
    }
}

impl Vector {
    fn from_spec(name: String, v: VectorSpec, defaults: &ClientSpec) -> Result<Vector, String> {
        let mut client_spec = overlay(defaults, v.client.as_ref());
        if matches!(v.hook, HookSpec::Authenticate) && v.username.is_some() {
            // As in the broker: before authentication the name is only a
            // claim (unless the vector's own client says a certificate
            // verified one).
            client_spec.claimed_username.clone_from(&v.username);
            if v.client.as_ref().is_none_or(|c| c.username.is_none()) {
                client_spec.username = None;
            }
        }
        let client = client(&client_spec)?;
        let qos = match v.qos {
            None => QoS::AtMostOnce,
            Some(n) => QoS::from_u8(n).ok_or_else(|| format!("`qos` must be 0, 1 or 2, not {n}"))?,
        };
        let retain = v.retain.unwrap_or(false);
        let (call, allowed): (Call, &[&str]) = match v.hook {
            HookSpec::Authenticate => {
                let password = match (v.password, v.password_hex) {
                    (Some(_), Some(_)) => return Err("give `password` or `password_hex`, not both".into()),
                    (Some(p), None) => Some(Bytes::from(p)),
                    (None, Some(h)) => Some(Bytes::from(hex("password_hex", &h)?)),
                    (None, None) => None,
                };
                let auth_data = v.auth_data_hex.map(|h| hex("auth_data_hex", &h).map(Bytes::from)).transpose()?;
                let creds = Credentials { username: v.username, password, auth_method: v.auth_method, auth_data };
                (Call::Authenticate(creds), &["allow", "deny", "ignore", "continue", "fail"])
            }
            HookSpec::Authorize => {
                let action = v.action.ok_or("`action` is required for authorize")?;
                let topic = v.topic.ok_or("`topic` is required for authorize")?;
                let action = match action {
                    ActionSpec::Publish => Action::Publish,
                    ActionSpec::Subscribe => Action::Subscribe,
                    ActionSpec::Receive => Action::Receive,
                    ActionSpec::Retained => Action::Retained,
                    ActionSpec::Will => Action::Will,
                };
                (Call::Authorize { action, topic, qos, retain }, &["allow", "deny", "ignore", "fail"])
            }
            HookSpec::Transform => {
                let topic = v.topic.ok_or("`topic` is required for transform")?;
                let topic = TopicName::new(&topic).map_err(|e| format!("`topic` {topic:?} is invalid: {e}"))?;
                let payload = text_or_hex(v.payload, v.payload_hex, "payload")?.unwrap_or_default();
                let message = PluginMessage::new(topic, Bytes::from(payload), qos, retain);
                (Call::Transform(message), &["pass", "replace", "drop", "fail"])
            }
        };
        if !allowed.contains(&v.expect.as_str()) {
            return Err(format!("`expect` must be one of {}, not {:?}", allowed.join(", "), v.expect));
        }
        let expect = Expect {
            outcome: v.expect,
            reason: v.expect_reason,
            attributes: v.expect_attributes.map(|a| a.into_iter().collect()),
            username: v.expect_username,
            data: v.expect_data_hex.map(|h| hex("expect_data_hex", &h)).transpose()?,
            topic: v.expect_topic,
            payload: text_or_hex(v.expect_payload, v.expect_payload_hex, "expect_payload")?,
        };
        Ok(Vector { name, client, call, expect })
    }

    fn run(&self, plugin: &Arc<LoadedPlugin>) -> VectorResult {
        let (observed, mismatch) = match self.answer(plugin) {
            Ok(observed) => {
                let mismatch = self.compare(&observed);
                (observed.describe(), mismatch)
            }
            Err(not_called) => (not_called.clone(), Some(not_called)),
        };
        VectorResult { name: self.name.clone(), observed, mismatch }
    }

    /// Calls the plugin as the broker would, or says why the broker would
    /// not call it.
    fn answer(&self, plugin: &Arc<LoadedPlugin>) -> Result<Observed, String> {
        let hook = match self.call {
            Call::Authenticate(_) => Hook::Authenticate,
            Call::Authorize { .. } => Hook::Authorize,
            Call::Transform(_) => Hook::Transform,
        };
        if !plugin.manifest().implements(hook) {
            return Err(format!("the manifest does not declare {hook:?}, so the broker never calls it"));
        }
        Ok(match &self.call {
            Call::Authenticate(creds) => match block_on(plugin.authenticate(&self.client, creds, None)) {
                Ok((answer, _pinned)) => Observed::Authn(answer),
                Err(f) => Observed::Failed(f),
            },
            Call::Authorize { action, topic, qos, retain } => {
                match block_on(plugin.authorize(&self.client, *action, topic, *qos, *retain)) {
                    Ok(answer) => Observed::Authz(answer),
                    Err(f) => Observed::Failed(f),
                }
            }
            Call::Transform(message) => {
                let filters = &plugin.manifest().transform_filters;
                if !filters.iter().any(|f| filter_matches(f.filter(), message.topic.as_str())) {
                    Observed::NotCalled
                } else {
                    match block_on(plugin.on_publish(&self.client, message)) {
                        Ok(answer) => Observed::Transform(answer),
                        Err(f) => Observed::Failed(f),
                    }
                }
            }
        })
    }

    /// Why `observed` does not match the expectation, if it does not.
    fn compare(&self, observed: &Observed) -> Option<String> {
        let e = &self.expect;
        let outcome = observed.outcome();
        if outcome != e.outcome {
            return Some(format!("expected {}, got {}", e.outcome, observed.describe()));
        }
        let reason = match observed {
            Observed::Authn(AuthnAnswer::Deny(r))
            | Observed::Authz(AuthzAnswer::Deny(r))
            | Observed::Transform(TransformAnswer::Drop(r)) => Some(r.as_str()),
            _ => None,
        };
        if let (Some(want), Some(got)) = (&e.reason, reason)
            && !got.contains(want.as_str())
        {
            return Some(format!("expected a reason containing {want:?}, got {got:?}"));
        }
        match observed {
            Observed::Authn(AuthnAnswer::Allow { attributes, username_override, .. }) => {
                if let Some(want) = &e.attributes {
                    let mut got = attributes.clone();
                    got.sort();
                    if &got != want {
                        return Some(format!("expected attributes {want:?}, got {got:?}"));
                    }
                }
                if e.username.is_some() && &e.username != username_override {
                    return Some(format!("expected user name override {:?}, got {username_override:?}", e.username));
                }
            }
            Observed::Authn(AuthnAnswer::Continue(data)) => {
                if let Some(want) = &e.data
                    && want != data
                {
                    return Some(format!("expected data {}, got {}", to_hex(want), to_hex(data)));
                }
            }
            Observed::Transform(TransformAnswer::Replace(m)) => {
                if let Some(want) = &e.topic
                    && want != m.topic.as_str()
                {
                    return Some(format!("expected topic {want:?}, got {:?}", m.topic.as_str()));
                }
                if let Some(want) = &e.payload
                    && want[..] != m.payload[..]
                {
                    return Some(format!("expected payload {}, got {}", show(want), show(&m.payload)));
                }
            }
            _ => {}
        }
        None
    }
}

/// What a plugin answered to one vector.
enum Observed {
    Authn(AuthnAnswer),
    Authz(AuthzAnswer),
    Transform(TransformAnswer),
    /// A transform on a topic outside the plugin's filters: not called.
    NotCalled,
    Failed(CallFailure),
}

impl Observed {
    /// The outcome's name as vectors spell it.
    fn outcome(&self) -> &'static str {
        match self {
            Observed::Authn(AuthnAnswer::Allow { .. }) | Observed::Authz(AuthzAnswer::Allow(_)) => "allow",
            Observed::Authn(AuthnAnswer::Deny(_)) | Observed::Authz(AuthzAnswer::Deny(_)) => "deny",
            Observed::Authn(AuthnAnswer::Ignore) | Observed::Authz(AuthzAnswer::Ignore) => "ignore",
            Observed::Authn(AuthnAnswer::Continue(_)) => "continue",
            Observed::Transform(TransformAnswer::Pass) | Observed::NotCalled => "pass",
            Observed::Transform(TransformAnswer::Replace(_)) => "replace",
            Observed::Transform(TransformAnswer::Drop(_)) => "drop",
            Observed::Failed(_) => "fail",
        }
    }

    /// The answer for the report. Reasons and topics are the plugin's own
    /// text; payloads are shown because vectors are the author's test data.
    fn describe(&self) -> String {
        match self {
            Observed::Authn(AuthnAnswer::Allow { attributes, username_override, .. }) => {
                let mut s = "allow".to_owned();
                if !attributes.is_empty() {
                    s.push_str(&format!(" attributes={attributes:?}"));
                }
                if let Some(u) = username_override {
                    s.push_str(&format!(" username={u:?}"));
                }
                s
            }
            Observed::Authz(AuthzAnswer::Allow(ttl)) => match ttl {
                Some(ttl) => format!("allow (cache {} ms)", ttl.as_millis()),
                None => "allow".to_owned(),
            },
            Observed::Authn(AuthnAnswer::Deny(r)) | Observed::Authz(AuthzAnswer::Deny(r)) => format!("deny ({r:?})"),
            Observed::Authn(AuthnAnswer::Continue(data)) => format!("continue (data {})", to_hex(data)),
            Observed::Transform(TransformAnswer::Replace(m)) => {
                format!("replace (topic {:?}, payload {})", m.topic.as_str(), show(&m.payload))
            }
            Observed::Transform(TransformAnswer::Drop(r)) => format!("drop ({r:?})"),
            Observed::NotCalled => "pass (not called: no transform filter matches the topic)".to_owned(),
            Observed::Failed(f) => format!("fail ({f}; the broker counts this as a denial)"),
            other => other.outcome().to_owned(),
        }
    }
}

/// `defaults` with the keys `over` sets replaced.
fn overlay(defaults: &ClientSpec, over: Option<&ClientSpec>) -> ClientSpec {
    let Some(o) = over else { return defaults.clone() };
    let d = defaults.clone();
    ClientSpec {
        client_id: o.client_id.clone().or(d.client_id),
        username: o.username.clone().or(d.username),
        claimed_username: o.claimed_username.clone().or(d.claimed_username),
        peer_address: o.peer_address.clone().or(d.peer_address),
        listener: o.listener.clone().or(d.listener),
        protocol: o.protocol.or(d.protocol),
        attributes: o.attributes.clone().or(d.attributes),
        tls: o.tls.clone().or(d.tls),
    }
}

fn client(spec: &ClientSpec) -> Result<ClientInfo, String> {
    let peer = spec.peer_address.as_deref().unwrap_or("127.0.0.1:50000");
    let peer_address: SocketAddr = peer.parse().map_err(|e| format!("client `peer_address` {peer:?}: {e}"))?;
    let protocol = match spec.protocol.unwrap_or(5) {
        4 => ProtocolVersion::V311,
        5 => ProtocolVersion::V5,
        n => return Err(format!("client `protocol` must be 4 or 5, not {n}")),
    };
    let tls = spec.tls.as_ref().map(|t| {
        let common_name = t.subject.split(',').find_map(|rdn| rdn.trim().strip_prefix("CN=")).map(str::to_owned);
        Arc::new(TlsIdentity {
            subject: t.subject.clone(),
            common_name,
            sans: t.sans.clone(),
            sha256_fingerprint: t.sha256_fingerprint.clone(),
            revocation: Default::default(),
        })
    });
    let username: Option<Arc<str>> = spec.username.as_deref().map(Arc::from);
    Ok(ClientInfo {
        client_id: spec.client_id.as_deref().unwrap_or("test-client").into(),
        claimed_username: spec.claimed_username.as_deref().map(Arc::from).or_else(|| username.clone()),
        username,
        peer_address,
        listener: Arc::new(spec.listener.clone().unwrap_or_else(|| "tcp".to_owned())),
        protocol,
        tls,
        attributes: spec.attributes.clone().unwrap_or_default().into_iter().collect(),
    })
}

fn text_or_hex(text: Option<String>, hex_text: Option<String>, key: &str) -> Result<Option<Vec<u8>>, String> {
    match (text, hex_text) {
        (Some(_), Some(_)) => Err(format!("give `{key}` or `{key}_hex`, not both")),
        (Some(t), None) => Ok(Some(t.into_bytes())),
        (None, Some(h)) => hex(&format!("{key}_hex"), &h).map(Some),
        (None, None) => Ok(None),
    }
}

fn hex(key: &str, text: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("`{key}` is not hex");
    if !text.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()).ok_or_else(bad))
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A payload as text when it is UTF-8, else as hex.
fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => format!("{text:?}"),
        Err(_) => format!("hex {}", to_hex(bytes)),
    }
}

#[cfg(test)]
mod tests;
