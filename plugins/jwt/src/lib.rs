//! Authenticator and authorizer for JSON Web Tokens (see README.md).
//!
//! Authentication verifies the token a client presents (in the password
//! field, or in MQTT 5 Authentication Data with the method `JWT`) and
//! grants its permission claims as attributes; authorization reads them
//! back from `client-info.attributes`. Each grant starts with the
//! `jwt.subject` attribute, and only the attributes after the last one
//! count, so a re-authentication replaces the permissions of the previous
//! token instead of adding to them.

use moat_plugin_sdk::*;
use serde_json::{Map, Value};

pub mod keys;
pub mod token;

use keys::Key;
use token::Checks;

/// Attribute that opens a JWT grant: the token's user name.
pub const ATTR_SUBJECT: &str = "jwt.subject";
/// Attribute: the token's `exp`, seconds since the Unix epoch.
pub const ATTR_EXP: &str = "jwt.exp";
/// Attribute, repeated: a topic filter the client may publish to.
pub const ATTR_PUBLISH: &str = "jwt.publish";
/// Attribute, repeated: a topic filter the client may subscribe to.
pub const ATTR_SUBSCRIBE: &str = "jwt.subscribe";

/// Most filters read from one permission claim.
const MAX_RULES_PER_CLAIM: usize = 256;

/// Configuration keys `init` accepts.
const CONFIG_KEYS: [&str; 12] = [
    "keys",
    "leeway_s",
    "require_exp",
    "audience",
    "issuer",
    "username_claim",
    "match_username",
    "publish_claim",
    "subscribe_claim",
    "authorize",
    "cache_ms",
    "auth_method",
];

/// The configured keys, checks and claim names.
pub struct Jwt {
    keys: Vec<Key>,
    checks: Checks,
    username_claim: String,
    match_username: bool,
    publish_claim: String,
    subscribe_claim: String,
    cache_ms: Option<u32>,
    auth_method: String,
}

impl Jwt {
    /// Builds the plugin, reading key files with `read` (the file system in
    /// WebAssembly only reaches directories the sidecar grants).
    pub fn from_config(
        config: &Config,
        read: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<(Jwt, Manifest), String> {
        let Value::Object(table) = config.value() else {
            return Err("the jwt plugin needs a [config] table with `keys`".into());
        };
        if let Some(unknown) = table.keys().find(|k| !CONFIG_KEYS.contains(&k.as_str())) {
            return Err(format!("unknown config key `{unknown}`"));
        }
        let entries = match table.get("keys") {
            Some(Value::Array(entries)) if !entries.is_empty() => entries,
            _ => return Err("`keys` must list at least one key".into()),
        };
        let keys = keys::from_config(entries, read)?;
        if keys.is_empty() {
            return Err("`keys` yields no usable key".into());
        }
        let boolean = |name: &str, default: bool| match table.get(name) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(format!("`{name}` must be true or false")),
        };
        let string = |name: &str, default: &str| match table.get(name) {
            None => Ok(default.to_owned()),
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(_) => Err(format!("`{name}` must be a non-empty string")),
        };
        let number = |name: &str, default: u64| match table.get(name) {
            None => Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| format!("`{name}` must be a whole number of 0 or more")),
        };
        let optional = |name: &str| string(name, "").map(|s| (!s.is_empty()).then_some(s));
        let checks = Checks {
            leeway_s: number("leeway_s", 30)?,
            require_exp: boolean("require_exp", true)?,
            audience: optional("audience")?,
            issuer: optional("issuer")?,
        };
        let cache_ms = match number("cache_ms", 60_000)? {
            0 => None,
            ms => Some(u32::try_from(ms).map_err(|_| "`cache_ms` is too large".to_owned())?),
        };
        let plugin = Jwt {
            keys,
            checks,
            username_claim: string("username_claim", "sub")?,
            match_username: boolean("match_username", true)?,
            publish_claim: string("publish_claim", "publish")?,
            subscribe_claim: string("subscribe_claim", "subscribe")?,
            cache_ms,
            auth_method: string("auth_method", "JWT")?,
        };
        let manifest = Manifest::new().authenticate();
        let manifest = if boolean("authorize", true)? { manifest.authorize() } else { manifest };
        Ok((plugin, manifest))
    }

    /// The grant for verified `claims`, or why the client is refused.
    fn grant(&self, claims: &Map<String, Value>, connect_user: Option<&str>) -> Result<Grant, String> {
        let Some(Value::String(user)) = claims.get(&self.username_claim) else {
            return Err(format!("token has no string claim `{}`", self.username_claim));
        };
        if self.match_username
            && let Some(given) = connect_user.filter(|u| !u.is_empty())
            && given != user
        {
            return Err("user name differs from the token's".into());
        }
        let mut attributes = vec![(ATTR_SUBJECT.to_owned(), user.clone())];
        if let Some(exp) = token::numeric_date(claims, "exp")? {
            attributes.push((ATTR_EXP.to_owned(), exp.to_string()));
        }
        for (claim, attr) in [(&self.publish_claim, ATTR_PUBLISH), (&self.subscribe_claim, ATTR_SUBSCRIBE)] {
            for filter in filters(claims, claim)? {
                attributes.push((attr.to_owned(), filter));
            }
        }
        Ok(Grant { attributes, username_override: Some(user.clone()) })
    }
}

/// The topic filters of a permission claim: absent is none; a string is one.
fn filters(claims: &Map<String, Value>, claim: &str) -> Result<Vec<String>, String> {
    let list = match claims.get(claim) {
        None => return Ok(Vec::new()),
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(items)) if items.len() <= MAX_RULES_PER_CLAIM => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| format!("`{claim}` must list strings")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(format!("`{claim}` must be a string or a list of at most {MAX_RULES_PER_CLAIM}")),
    };
    Ok(list.into_iter().filter(|f| !f.is_empty()).collect())
}

impl Plugin for Jwt {
    fn init(config: Config) -> Result<(Self, Manifest), String> {
        Jwt::from_config(&config, &read_file)
    }

    fn authenticate(&mut self, _client: &ClientInfo, credentials: &Credentials) -> AuthOutcome {
        let token = match &credentials.auth_method {
            Some(method) if *method == self.auth_method => match &credentials.auth_data {
                Some(data) => data.as_slice(),
                None => return AuthOutcome::Deny("no token in the authentication data".into()),
            },
            // Another enhanced-authentication method: not ours.
            Some(_) => return AuthOutcome::Ignore,
            // A password that is no token is left to other authenticators.
            None => match &credentials.password {
                Some(password) if token::looks_like_jwt(password) => password.as_slice(),
                _ => return AuthOutcome::Ignore,
            },
        };
        let Ok(token) = std::str::from_utf8(token) else { return AuthOutcome::Deny("token is not text".into()) };
        let now_s = now_ms() / 1000;
        match token::verify(token, &self.keys, &self.checks, now_s)
            .and_then(|claims| self.grant(&claims, credentials.username.as_deref()))
        {
            Ok(grant) => AuthOutcome::Allow(grant),
            Err(reason) => AuthOutcome::Deny(format!("JWT refused: {reason}")),
        }
    }

    fn authorize(&mut self, client: &ClientInfo, action: Action, topic: &str, _qos: QoS, _retain: bool) -> Decision {
        // Only the latest JWT grant counts (see the crate documentation).
        let Some(start) = client.attributes.iter().rposition(|(k, _)| k == ATTR_SUBJECT) else {
            return Decision::Ignore;
        };
        let granted = &client.attributes[start..];
        let mut ttl_ms = self.cache_ms;
        if let Some(exp) = granted.iter().find(|(k, _)| k == ATTR_EXP).and_then(|(_, v)| v.parse::<u64>().ok()) {
            let end_ms = exp.saturating_add(self.checks.leeway_s).saturating_mul(1000);
            let now = now_ms();
            if now >= end_ms {
                return Decision::Deny("the client's token has expired".into());
            }
            // A cached allow must not outlive the token.
            let left = u32::try_from(end_ms - now).unwrap_or(u32::MAX);
            ttl_ms = ttl_ms.map(|t| t.min(left));
        }
        let (attr, wanted_is_filter) = match action {
            Action::Publish | Action::Will => (ATTR_PUBLISH, false),
            Action::Subscribe => (ATTR_SUBSCRIBE, true),
            Action::Receive | Action::Retained => (ATTR_SUBSCRIBE, false),
        };
        // Rules speak about the topics a subscription receives, whoever
        // shares it, as in the `acl` and `rbac` plugins.
        let topic = if wanted_is_filter { topic_rules::strip_share(topic) } else { topic };
        let user = client.verified_username();
        let allowed = granted
            .iter()
            .filter(|(k, _)| k == attr)
            .filter_map(|(_, rule)| topic_rules::substitute(rule, user, &client.client_id))
            .any(|rule| topic_rules::covers(&rule, topic));
        if allowed {
            Decision::Allow(ttl_ms)
        } else {
            Decision::Deny(format!("the client's token does not allow {} {topic}", action.doing()))
        }
    }
}

export_plugin!(Jwt);

#[cfg(test)]
mod tests;
