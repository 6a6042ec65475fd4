//! Topic logic shared by the `acl` and `rbac` plugins: validating rule
//! filters, deciding whether a rule's filter covers a topic or a whole
//! subscription filter, and substituting `%u` / `%c` without letting a
//! client's name widen a rule.
//!
//! Matching follows MQTT: `+` is one level, `#` the rest (including the
//! parent level, so `a/#` covers `a`), and a wildcard in the first level
//! never covers a `$`-topic such as `$SYS/...`.

/// Why a rule's topic filter is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError(pub String);

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks that `filter` is a valid MQTT topic filter: not empty, no NUL,
/// `#` only as the whole last level, `+` only as a whole level.
pub fn validate(filter: &str) -> Result<(), FilterError> {
    if filter.is_empty() {
        return Err(FilterError("empty topic".into()));
    }
    if filter.contains('\0') {
        return Err(FilterError(format!("topic `{filter}` contains NUL")));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(FilterError(format!("`#` must be the whole last level in `{filter}`")));
        }
        if level.contains('+') && *level != "+" {
            return Err(FilterError(format!("`+` must be a whole level in `{filter}`")));
        }
    }
    Ok(())
}

/// Whether every topic `requested` matches is matched by `rule`.
///
/// With a topic name as `requested` (no wildcards) this is plain MQTT
/// matching; with a subscription filter it answers "does the rule grant
/// the whole subscription": `a/#` covers `a/+/b`, `a/+` does not cover
/// `a/#`.
pub fn covers(rule: &str, requested: &str) -> bool {
    if requested.starts_with('$') && rule.starts_with(['+', '#']) {
        return false;
    }
    let mut asked = requested.split('/');
    for level in rule.split('/') {
        if level == "#" {
            return true;
        }
        let Some(other) = asked.next() else {
            return false;
        };
        match (level, other) {
            (_, "#") => return false,
            ("+", _) => {}
            (_, "+") => return false,
            (a, b) if a == b => {}
            _ => return false,
        }
    }
    // A rule ending in `#` already returned; a longer request is not covered.
    asked.next().is_none()
}

/// Strips `$share/GROUP/` from a shared subscription, so rules speak about
/// the topics a subscription receives, whoever shares it.
pub fn strip_share(filter: &str) -> &str {
    filter.strip_prefix("$share/").and_then(|rest| rest.split_once('/')).map_or(filter, |(_, inner)| inner)
}

/// Whether `pattern` contains a `%u` or `%c` placeholder.
pub fn has_placeholders(pattern: &str) -> bool {
    pattern.contains("%u") || pattern.contains("%c")
}

/// Whether a name may stand in for `%u` or `%c`. A name with a wildcard or
/// a level separator would widen or move the rule (`users/%u/#` with the
/// user `a/#` or `+`), and an empty one would address the empty level; all
/// make the pattern not match, as Mosquitto refuses them.
pub fn safe_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['+', '#', '/', '\0'])
}

/// Replaces `%u` with `user` and `%c` with `client` in one pass, so a name
/// that itself contains `%u` is inserted literally. `None` when the pattern
/// needs a name that is missing or unsafe (see [`safe_name`]): the rule
/// then does not apply.
pub fn substitute(pattern: &str, user: Option<&str>, client: &str) -> Option<String> {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut rest = pattern;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("%u") {
            out.push_str(user.filter(|u| safe_name(u))?);
            rest = after;
        } else if let Some(after) = tail.strip_prefix("%c") {
            if !safe_name(client) {
                return None;
            }
            out.push_str(client);
            rest = after;
        } else {
            out.push('%');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Some(out)
}

/// What a deny rule's pattern covers when its names cannot be substituted
/// (anonymous client with `%u`, a name with a wildcard or a `/`): every
/// level that holds a placeholder becomes `+`, so the rule denies the
/// topics it would deny for *some* name. A deny rule must never be skipped
/// because the client's name is missing or hostile: that would make a
/// denied topic reachable by not having (or by faking) a name.
pub fn widen(pattern: &str) -> String {
    let levels = pattern.split('/').map(|level| if has_placeholders(level) { "+" } else { level });
    levels.collect::<Vec<_>>().join("/")
}

/// The filter a `pattern` rule stands for, for one client: substituted,
/// or for a deny rule whose names cannot be substituted, [`widen`]ed;
/// `None` for a grant that cannot be substituted (it grants nothing).
pub fn pattern_filter(pattern: &str, deny: bool, user: Option<&str>, client: &str) -> Option<String> {
    match substitute(pattern, user, client) {
        Some(filter) => Some(filter),
        None if deny => Some(widen(pattern)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_filters() {
        for ok in ["a", "a/b", "#", "+", "a/+/c", "a/#", "/", "+/+", "$SYS/#"] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+/b", "#/a", "a/b+", "x\0"] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn covers_topics_like_mqtt_matching() {
        assert!(covers("a/b", "a/b"));
        assert!(!covers("a/b", "a/c"));
        assert!(covers("a/+", "a/b"));
        assert!(!covers("a/+", "a/b/c"));
        assert!(!covers("a/+", "a"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/#", "a/b/c"));
        assert!(covers("#", "a/b"));
        assert!(covers("+/+", "/x"));
        assert!(!covers("#", "$SYS/x"));
        assert!(!covers("+/x", "$SYS/x"));
        assert!(covers("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn covers_subscriptions_only_when_entirely_granted() {
        assert!(covers("a/#", "a/+/b"));
        assert!(covers("a/#", "a/#"));
        assert!(covers("#", "#"));
        assert!(covers("a/+", "a/+"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("a/b", "#"));
        assert!(!covers("a/+/c", "a/+/#"));
        assert!(!covers("a/b/#", "a/#"));
        assert!(!covers("+", "#"));
    }

    #[test]
    fn strips_share_groups() {
        assert_eq!(strip_share("$share/g/a/b"), "a/b");
        assert_eq!(strip_share("a/b"), "a/b");
        assert_eq!(strip_share("$share/g"), "$share/g");
    }

    #[test]
    fn substitution_never_widens() {
        assert_eq!(substitute("u/%u/%c/#", Some("alice"), "dev"), Some("u/alice/dev/#".into()));
        assert_eq!(substitute("plain/#", None, "#"), Some("plain/#".into()));
        assert_eq!(substitute("u/%u/#", None, "dev"), None, "anonymous");
        for evil in ["#", "+", "a/#", "a/b", "", "a+b"] {
            assert_eq!(substitute("u/%u/#", Some(evil), "dev"), None, "user {evil:?}");
            assert_eq!(substitute("c/%c/#", Some("alice"), evil), None, "client {evil:?}");
        }
        // A name spelling a placeholder is inserted literally, once.
        assert_eq!(substitute("u/%u/%c", Some("%c"), "dev"), Some("u/%c/dev".into()));
        assert_eq!(substitute("100%/x", None, "c"), Some("100%/x".into()));
    }

    #[test]
    fn a_deny_pattern_that_cannot_be_substituted_covers_every_name() {
        assert_eq!(widen("users/%u/secret"), "users/+/secret");
        assert_eq!(widen("u/%u-%c/x/#"), "u/+/x/#");
        assert_eq!(widen("plain/#"), "plain/#");
        assert_eq!(pattern_filter("users/%u/secret", true, None, "c"), Some("users/+/secret".into()));
        assert_eq!(pattern_filter("users/%u/secret", true, Some("a/b"), "c"), Some("users/+/secret".into()));
        assert_eq!(pattern_filter("users/%u/secret", false, None, "c"), None, "a grant grants nothing");
        assert_eq!(pattern_filter("users/%u/secret", true, Some("eve"), "c"), Some("users/eve/secret".into()));
        assert!(covers(&widen("users/%u/secret"), "users/alice/secret"));
    }
}
