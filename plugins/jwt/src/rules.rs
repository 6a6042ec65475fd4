//! Topic permissions from claims: MQTT filters with `%u` (user name) and
//! `%c` (client id) substitution.
//!
//! A substituted value is one literal topic level: a user name or client id
//! that is empty or contains `+`, `#` or `/` makes the rule match nothing,
//! so a client cannot widen a rule by choosing its own name.

/// Expands `%u` and `%c` in `rule`, or `None` when a substituted value could
/// act as a wildcard or a level separator.
pub fn expand(rule: &str, user: Option<&str>, client_id: &str) -> Option<String> {
    let safe = |v: &str| !v.is_empty() && !v.contains(['+', '#', '/']);
    if rule.contains("%u") && !user.is_some_and(safe) {
        return None;
    }
    if rule.contains("%c") && !safe(client_id) {
        return None;
    }
    Some(rule.replace("%u", user.unwrap_or("")).replace("%c", client_id))
}

/// Whether topic name `topic` matches filter `filter` (MQTT 4.7; topics
/// starting with `$` are not matched by a leading wildcard).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for part in filter.split('/') {
        match part {
            "#" => return true,
            "+" => {
                if levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}

/// Whether every topic that `wanted` (a subscription filter) can match is
/// also matched by `rule`, so subscribing to `wanted` grants no more than
/// `rule` allows.
pub fn covers(rule: &str, wanted: &str) -> bool {
    if wanted.starts_with('$') && (rule.starts_with('+') || rule.starts_with('#')) {
        return false;
    }
    let mut want = wanted.split('/');
    for part in rule.split('/') {
        match (part, want.next()) {
            ("#", _) => return true,
            (_, None) => return false,
            (_, Some("#")) => return false,
            ("+", Some(_)) => {}
            (literal, Some(w)) => {
                if w != literal {
                    return false;
                }
            }
        }
    }
    want.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_never_widens() {
        assert_eq!(expand("users/%u/#", Some("alice"), "c").as_deref(), Some("users/alice/#"));
        for evil in ["#", "+", "a/#", "", "a/b"] {
            assert_eq!(expand("users/%u/#", Some(evil), "c"), None, "{evil}");
            assert_eq!(expand("dev/%c", Some("u"), evil), None, "{evil}");
        }
        assert_eq!(expand("users/%u", None, "c"), None);
        assert_eq!(expand("fixed/%x", None, "c").as_deref(), Some("fixed/%x"));
    }

    #[test]
    fn topic_matching() {
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("#", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn coverage_of_subscriptions() {
        assert!(covers("a/#", "a/+/b"));
        assert!(covers("a/#", "a/#"));
        assert!(covers("a/+", "a/b"));
        assert!(covers("a/+", "a/+"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("a/b", "a/b/c"));
        assert!(!covers("#", "$SYS/#"));
    }
}
