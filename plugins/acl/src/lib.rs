//! Authorizer: Mosquitto-style access control lists. Rules per user name,
//! per client id and per pattern (`%u`, `%c`), inline in the sidecar's
//! `[[config.rules]]` and/or from a Mosquitto `acl_file` used unchanged.
//! See README.md for the configuration and the exact semantics.

use moat_plugin_sdk::*;
use serde::Deserialize;

pub mod mosquitto;
pub mod rules;

use rules::{Access, Answer, Op, Rule, RuleSet, Scope};

/// Default lifetime of an allow in the broker's per-connection cache. The
/// rules change only when the plugin reloads, which clears the cache.
const DEFAULT_CACHE_MS: u32 = 60_000;

/// The plugin: its rules and what to answer when none grants.
pub struct Acl {
    rules: RuleSet,
    cache_ms: Option<u32>,
    no_match: NoMatch,
}

/// The answer when no rule grants an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum NoMatch {
    /// Refuse (the default).
    Deny,
    /// Let the next plugin in the chain decide (deny rules still deny).
    Ignore,
}

/// The sidecar's `[config]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AclConfig {
    #[serde(default)]
    rules: Vec<InlineRule>,
    acl_file: Option<String>,
    cache_ms: Option<u32>,
    no_match: Option<NoMatch>,
}

/// One `[[config.rules]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InlineRule {
    access: String,
    topic: Option<String>,
    pattern: Option<String>,
    user: Option<String>,
    client: Option<String>,
    #[serde(default)]
    anonymous: bool,
}

impl InlineRule {
    fn into_rule(self) -> Result<(Scope, Rule), String> {
        let access = Access::parse(&self.access)
            .ok_or_else(|| format!("access `{}`: use read, write, readwrite or deny", self.access))?;
        let (topic, pattern) = match (self.topic, self.pattern) {
            (Some(topic), None) => (topic, false),
            (None, Some(pattern)) => (pattern, true),
            _ => return Err("set exactly one of `topic` and `pattern`".into()),
        };
        topic_rules::validate(&topic).map_err(|e| e.to_string())?;
        let scope = match (self.user, self.client, self.anonymous) {
            (Some(user), None, false) => Scope::User(user),
            (None, Some(client), false) => Scope::Client(client),
            (None, None, true) => Scope::Anonymous,
            (None, None, false) if pattern => Scope::Everyone,
            (None, None, false) => {
                return Err(
                    "a `topic` rule names `user`, `client` or `anonymous = true`; use `pattern` for every client"
                        .into(),
                );
            }
            _ => return Err("set at most one of `user`, `client` and `anonymous`".into()),
        };
        Ok((scope, Rule { access, topic, pattern }))
    }
}

impl Acl {
    /// Builds the rule set from a parsed config.
    fn from_config(config: AclConfig) -> Result<Acl, String> {
        let mut rules = RuleSet::default();
        for (i, inline) in config.rules.into_iter().enumerate() {
            let (scope, rule) = inline.into_rule().map_err(|e| format!("rules[{i}]: {e}"))?;
            rules.add(scope, rule);
        }
        if let Some(path) = &config.acl_file {
            if !path.starts_with('/') {
                return Err(format!("acl_file `{path}` must be an absolute path"));
            }
            let text = read_file(path).map_err(|e| format!("acl_file: {e}"))?;
            mosquitto::parse(&text, &mut rules).map_err(|e| format!("acl_file {path} {e}"))?;
        }
        if rules.is_empty() {
            log(Level::Warn, "acl: no rules configured; every action is denied");
        }
        let cache_ms = match config.cache_ms {
            None => Some(DEFAULT_CACHE_MS),
            Some(0) => None,
            Some(ms) => Some(ms),
        };
        Ok(Acl { rules, cache_ms, no_match: config.no_match.unwrap_or(NoMatch::Deny) })
    }
}

impl Plugin for Acl {
    fn init(config: Config) -> Result<(Self, Manifest), String> {
        let parsed: AclConfig = serde_json::from_value(config.value().clone()).map_err(|e| format!("config: {e}"))?;
        Ok((Acl::from_config(parsed)?, Manifest::new().authorize()))
    }

    fn authorize(&mut self, client: &ClientInfo, action: Action, topic: &str, _qos: QoS, _retain: bool) -> Decision {
        // Retained messages are received; a will is published by the client
        // (late), so it needs the same right as a publish.
        let (op, topic) = match action {
            Action::Publish | Action::Will => (Op::Write, topic),
            Action::Subscribe => (Op::Read, topic_rules::strip_share(topic)),
            Action::Receive | Action::Retained => (Op::Read, topic),
        };
        // Only a verified name selects user rules or fills `%u`: a client
        // that merely claimed one is anonymous here.
        match self.rules.check(client.verified_username(), &client.client_id, op, topic) {
            Answer::Allow => Decision::Allow(self.cache_ms),
            Answer::Denied(rule) => {
                Decision::Deny(format!("{} {topic} is denied by the rule `deny {rule}`", action.doing()))
            }
            Answer::NoGrant => match self.no_match {
                NoMatch::Deny => Decision::Deny(format!("no rule allows {} {topic}", action.doing())),
                NoMatch::Ignore => Decision::Ignore,
            },
        }
    }
}

export_plugin!(Acl);

#[cfg(test)]
mod tests;
