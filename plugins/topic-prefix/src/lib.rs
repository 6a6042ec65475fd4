//! Authorizer: allows every action on topics under `config.prefix`
//! (default `public/`), where `%u` stands for the verified user name and
//! `%c` for the client id; other topics are `ignore`d so a later plugin may
//! decide. `config.cache_ms` sets the cache lifetime of an allow (default
//! 60000; 0 for none). Topics under `config.deny_prefix`, if set, are
//! denied.
//!
//! "Under" goes by whole levels: the prefix `users/al` does not cover
//! `users/alice/x`, a prefix ending in `/` covers the levels below it, and
//! the empty prefix covers every topic.
//! A name that cannot stand for one level (empty, or holding `+`, `#` or
//! `/`) matches nothing, so the user `+` does not get `users/+/#`; nor does
//! a client whose user name nobody verified (`%u` needs a verified name).

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

/// Whether `topic` (a name or a subscription filter) is `prefix` or lies
/// below it, level by level.
fn under(prefix: &str, topic: &str) -> bool {
    match topic.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.is_empty() || prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
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
        let placeholders = topic_rules::has_placeholders(&pattern);
        Ok((TopicPrefix { pattern, placeholders, deny, cache_ms }, Manifest::new().authorize()))
    }

    fn authorize(&mut self, client: &ClientInfo, _action: Action, topic: &str, _qos: QoS, _retain: bool) -> Decision {
        if let Some(deny) = &self.deny
            && under(deny, topic)
        {
            return Decision::Deny(format!("{topic} is under {deny}"));
        }
        if !self.placeholders {
            return if under(&self.pattern, topic) { Decision::Allow(self.cache_ms) } else { Decision::Ignore };
        }
        // Escaped like the acl's patterns: a missing or unsafe name (a
        // wildcard, a level separator) makes the prefix cover nothing.
        let Some(prefix) = topic_rules::substitute(&self.pattern, client.verified_username(), &client.client_id) else {
            return Decision::Ignore;
        };
        if under(&prefix, topic) { Decision::Allow(self.cache_ms) } else { Decision::Ignore }
    }
}

export_plugin!(TopicPrefix);

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(json: &str) -> TopicPrefix {
        TopicPrefix::init(testing::config(json)).map(|(p, _)| p).expect("init")
    }

    fn allowed(p: &mut TopicPrefix, client: &ClientInfo, topic: &str) -> bool {
        matches!(p.authorize(client, Action::Subscribe, topic, QoS::AtMostOnce, false), Decision::Allow(_))
    }

    fn user(name: &str) -> ClientInfo {
        testing::client(Some(name))
    }

    #[test]
    fn a_user_gets_only_the_levels_below_their_own_name() {
        let mut p = plugin(r#"{"prefix":"users/%u/"}"#);
        assert!(allowed(&mut p, &user("alice"), "users/alice/inbox"));
        assert!(allowed(&mut p, &user("alice"), "users/alice/#"));
        assert!(!allowed(&mut p, &user("alice"), "users/bob/inbox"));
        for evil in ["+", "#", "a/b", ""] {
            for topic in ["users/+/#", "users/#", "users/a/b/x", "users//x", "users/alice/x"] {
                assert!(!allowed(&mut p, &user(evil), topic), "user {evil:?} on {topic}");
            }
        }
        let mut p = plugin(r#"{"prefix":"devices/%c"}"#);
        let device = |id: &str| ClientInfo { client_id: id.into(), ..testing::client(None) };
        assert!(allowed(&mut p, &device("d1"), "devices/d1/up"));
        assert!(allowed(&mut p, &device("d1"), "devices/d1"));
        assert!(!allowed(&mut p, &device("d"), "devices/d1/up"), "a prefix ends at a level");
        assert!(!allowed(&mut p, &device("+"), "devices/+/up"));
    }

    #[test]
    fn a_claimed_name_that_nobody_verified_fills_no_placeholder() {
        let mut p = plugin(r#"{"prefix":"users/%u/"}"#);
        assert!(!allowed(&mut p, &testing::claiming("alice"), "users/alice/inbox"));
    }

    #[test]
    fn fixed_prefixes_and_denials_go_by_levels() {
        let mut p = plugin(r#"{"prefix":"public","deny_prefix":"public/secret"}"#);
        let anyone = testing::client(None);
        assert!(allowed(&mut p, &anyone, "public/x"));
        assert!(allowed(&mut p, &anyone, "public"));
        assert!(!allowed(&mut p, &anyone, "publicity/x"));
        let d = p.authorize(&anyone, Action::Publish, "public/secret/x", QoS::AtMostOnce, false);
        assert!(matches!(d, Decision::Deny(_)), "{d:?}");
        assert!(allowed(&mut p, &anyone, "public/secretive"));
        let mut p = plugin(r#"{"prefix":""}"#);
        assert!(allowed(&mut p, &anyone, "any/topic"));
    }
}
