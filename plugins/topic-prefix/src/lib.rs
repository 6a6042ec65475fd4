//! Authorizer: allows every action on topics under `config.prefix`
//! (default `public/`), where `%u` stands for the user name and `%c` for the
//! client id; other topics are `ignore`d so a later plugin may decide.
//! `config.cache_ms` sets the cache lifetime of an allow (default 60000; 0
//! for none). Topics under `config.deny_prefix`, if set, are denied.

use moat_plugin_sdk::*;

/// The configured prefix pattern and cache lifetime.
pub struct TopicPrefix {
    pattern: String,
    /// Whether the pattern holds `%u` or `%c`. Without them the pattern is
    /// the prefix itself, and a call compares without building a string.
    placeholders: bool,
    deny: Option<String>,
    cache_ms: Option<u32>,
}

impl Plugin for TopicPrefix {
    fn init(config: Config) -> Result<(Self, Manifest), String> {
        let pattern = config.str("prefix").unwrap_or("public/").to_owned();
        let cache_ms = match config.i64("cache_ms") {
            None => Some(60_000),
            Some(ms) if ms <= 0 => None,
            Some(ms) => Some(u32::try_from(ms).map_err(|_| "cache_ms is too large".to_owned())?),
        };
        let deny = config.str("deny_prefix").map(str::to_owned);
        let placeholders = pattern.contains("%u") || pattern.contains("%c");
        Ok((TopicPrefix { pattern, placeholders, deny, cache_ms }, Manifest::new().authorize()))
    }

    fn authorize(&mut self, client: &ClientInfo, _action: Action, topic: &str, _qos: QoS, _retain: bool) -> Decision {
        if let Some(deny) = &self.deny
            && topic.starts_with(deny.as_str())
        {
            return Decision::Deny(format!("{topic} is under {deny}"));
        }
        if !self.placeholders {
            return if topic.starts_with(&self.pattern) { Decision::Allow(self.cache_ms) } else { Decision::Ignore };
        }
        let user = client.username.as_deref().unwrap_or("");
        if self.pattern.contains("%u") && user.is_empty() {
            return Decision::Ignore;
        }
        let prefix = self.pattern.replace("%u", user).replace("%c", &client.client_id);
        if topic.starts_with(&prefix) { Decision::Allow(self.cache_ms) } else { Decision::Ignore }
    }
}

export_plugin!(TopicPrefix);
