//! Topic names and topic filters, validated once at the edge.
//!
//! Both are cheap to clone (`Arc<str>`) because a topic travels with every
//! routed message and a filter lives in the subscription index and the
//! session at the same time.

use std::fmt;
use std::sync::Arc;

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The string is longer than the 65,535 bytes a UTF-8 string may hold.
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    /// A topic filter must be at least one character long [MQTT-4.7.3-1].
    #[error("topic filter is empty")]
    Empty,
    /// Topic names carry no wildcards [MQTT-3.3.2-2].
    #[error("topic name contains a wildcard")]
    Wildcard,
    /// `#` is only valid alone as the last level, `+` only alone in a level.
    #[error("wildcard in the wrong place")]
    MisplacedWildcard,
    /// U+0000 is never allowed in a UTF-8 string [MQTT-1.5.4-2].
    #[error("topic contains U+0000")]
    Null,
    /// A `$share/` filter needs a group name without wildcards and a filter.
    #[error("malformed shared subscription")]
    BadShare,
}

/// A topic name as published: UTF-8 without wildcards or U+0000.
///
/// It may be empty only transiently, in a v5 PUBLISH that uses a topic alias;
/// the connection resolves the alias before the name goes anywhere else.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Arc<str>);

impl TopicName {
    /// Validates a topic name.
    ///
    /// # Errors
    /// [`TopicError`] when the name contains `+`, `#` or U+0000 or is too long.
    pub fn new(name: &str) -> Result<TopicName, TopicError> {
        if name.len() > usize::from(u16::MAX) {
            return Err(TopicError::TooLong);
        }
        if name.bytes().any(|b| b == b'+' || b == b'#') {
            return Err(TopicError::Wildcard);
        }
        if name.contains('\0') {
            return Err(TopicError::Null);
        }
        Ok(TopicName(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the empty name used together with a topic alias.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `/`-separated levels of the name.
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// Whether the name starts with `$` and so is hidden from wildcards at
    /// the first level [MQTT-4.7.2-1].
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A subscription's topic filter, possibly a shared subscription
/// `$share/{group}/{filter}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter {
    full: Arc<str>,
    /// Byte offset of the filter proper inside `full` (0 unless shared).
    filter_start: usize,
}

impl TopicFilter {
    /// Validates a topic filter, including the `$share/` form.
    ///
    /// # Errors
    /// [`TopicError`] for an empty filter, misplaced wildcards, U+0000, or a
    /// malformed shared subscription.
    pub fn new(filter: &str) -> Result<TopicFilter, TopicError> {
        if filter.is_empty() {
            return Err(TopicError::Empty);
        }
        if filter.len() > usize::from(u16::MAX) {
            return Err(TopicError::TooLong);
        }
        if filter.contains('\0') {
            return Err(TopicError::Null);
        }
        let filter_start = match filter.strip_prefix("$share/") {
            Some(rest) => {
                let (group, inner) = rest.split_once('/').ok_or(TopicError::BadShare)?;
                if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
                    return Err(TopicError::BadShare);
                }
                filter.len() - inner.len()
            }
            None => 0,
        };
        validate_filter_levels(&filter[filter_start..])?;
        Ok(TopicFilter { full: Arc::from(filter), filter_start })
    }

    /// The filter exactly as the client sent it (with any `$share/` prefix).
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The filter that topics are matched against (without `$share/group/`).
    pub fn filter(&self) -> &str {
        &self.full[self.filter_start..]
    }

    /// The share group name for a shared subscription.
    pub fn share_group(&self) -> Option<&str> {
        if self.filter_start == 0 {
            return None;
        }
        // "$share/" is 7 bytes; the group ends at the slash before the filter.
        Some(&self.full[7..self.filter_start - 1])
    }

    /// Whether the filter contains `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.filter().contains(['+', '#'])
    }

    /// Whether `topic` matches this filter, following the rules of
    /// [MQTT-4.7]: `+` matches one level, `#` the parent and all children,
    /// and a wildcard first level never matches a `$` topic.
    pub fn matches(&self, topic: &TopicName) -> bool {
        filter_matches(self.filter(), topic.as_str())
    }
}

/// Matches a filter string (already validated, without `$share/`) against a
/// topic name string.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for filter_level in filter.split('/') {
        match filter_level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            level => {
                if topic_levels.next() != Some(level) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

fn validate_filter_levels(filter: &str) -> Result<(), TopicError> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        match level {
            "#" if !is_last => return Err(TopicError::MisplacedWildcard),
            "#" | "+" => {}
            other if other.contains(['+', '#']) => return Err(TopicError::MisplacedWildcard),
            _ => {}
        }
    }
    Ok(())
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.full, f)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> TopicName {
        TopicName::new(s).expect("valid test topic")
    }

    #[test]
    fn mqtt_4_7_1_wildcard_rules() {
        for ok in ["#", "+", "a/#", "a/+/b", "+/+", "/", "a//b", "+/#", "$share/g/a/#"] {
            assert!(TopicFilter::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+", "a/b+/c", "#/a", "$share/g", "$share//a", "$share/g+/a"] {
            assert!(TopicFilter::new(bad).is_err(), "{bad}");
        }
        assert_eq!(TopicName::new("a/+"), Err(TopicError::Wildcard));
        assert_eq!(TopicName::new("a\0"), Err(TopicError::Null));
    }

    #[test]
    fn mqtt_4_7_1_2_multi_level_matches_parent() {
        let f = TopicFilter::new("sport/tennis/#").expect("valid");
        assert!(f.matches(&name("sport/tennis")));
        assert!(f.matches(&name("sport/tennis/player1/ranking")));
        assert!(!f.matches(&name("sport/tennisx")));
    }

    #[test]
    fn mqtt_4_7_1_3_single_level() {
        let f = TopicFilter::new("sport/+").expect("valid");
        assert!(f.matches(&name("sport/")));
        assert!(!f.matches(&name("sport")));
        assert!(!f.matches(&name("sport/a/b")));
        assert!(TopicFilter::new("+/+").expect("valid").matches(&name("/finance")));
        assert!(TopicFilter::new("/+").expect("valid").matches(&name("/finance")));
        assert!(!TopicFilter::new("+").expect("valid").matches(&name("/finance")));
    }

    #[test]
    fn mqtt_4_7_2_1_dollar_topics_hidden_from_first_level_wildcards() {
        assert!(!TopicFilter::new("#").expect("valid").matches(&name("$SYS/x")));
        assert!(!TopicFilter::new("+/x").expect("valid").matches(&name("$SYS/x")));
        assert!(TopicFilter::new("$SYS/#").expect("valid").matches(&name("$SYS/x")));
    }

    #[test]
    fn shared_subscription_parts() {
        let f = TopicFilter::new("$share/grp/a/+").expect("valid");
        assert_eq!(f.share_group(), Some("grp"));
        assert_eq!(f.filter(), "a/+");
        assert!(f.matches(&name("a/b")));
        assert_eq!(TopicFilter::new("a/b").expect("valid").share_group(), None);
    }
}
