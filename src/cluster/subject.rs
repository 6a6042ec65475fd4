//! MQTT topics and filters as NATS subjects: a pure, reversible mapping.
//!
//! A topic `a/b` becomes `{prefix}.t.a.b`; a topic whose first level starts
//! with `$` goes under `{prefix}.d.` instead, because MQTT wildcards at the
//! first level never match `$` topics [MQTT-4.7.2-1] while NATS wildcards
//! would: keeping them in their own branch lets NATS interest follow the
//! MQTT rule. Those two branches are what JetStream's queue stream
//! captures (`queue`); a message no kept session or share group can want
//! from it (QoS 0) travels under `{prefix}.u.` or `{prefix}.v.` instead
//! ([`Subjects::topic_into`] with `captured` false), so nats-server does
//! not sequence it, and subscriptions cover both ([`Subjects::subscribed`]).
//! Filters map level by level, `+` to `*` and a trailing `#` to
//! `>` plus the parent level (`a/#` matches `a`, NATS `a.>` does not).
//!
//! NATS reserves `.`, `*`, `>` and whitespace in subjects and allows no
//! empty token, while an MQTT level may hold any UTF-8 and be empty. So a
//! level's bytes outside printable ASCII, and `.`, `*`, `>` and `%`, are
//! written `%XX` (hex), and an empty level is the token `%` alone, which no
//! escaped level can produce. The mapping is injective, so NATS interest is
//! exact, and [`Subjects::topic_of`] inverts it.

use std::fmt::Write;

/// The branch under the prefix for topics not starting with `$`.
const TOPICS: &str = "t";
/// The branch for `$` topics.
const DOLLAR: &str = "d";
/// [`TOPICS`] and [`DOLLAR`] for messages the queue stream does not
/// capture.
const TOPICS_LIVE: &str = "u";
const DOLLAR_LIVE: &str = "v";

/// The branch of a topic or filter that starts with `start` (its first
/// level, or all of it: only a leading `$` matters).
fn branch(start: &str, captured: bool) -> &'static str {
    match (start.starts_with('$'), captured) {
        (false, true) => TOPICS,
        (true, true) => DOLLAR,
        (false, false) => TOPICS_LIVE,
        (true, false) => DOLLAR_LIVE,
    }
}

/// Maps topics and filters to subjects under one prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (a valid literal subject, e.g. `moat`).
    pub fn new(prefix: &str) -> Subjects {
        Subjects { prefix: prefix.to_owned() }
    }

    /// The subject a message published to `topic` travels on (captured
    /// by the queue stream).
    pub fn topic(&self, topic: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + 3 + topic.len() + 8);
        self.topic_into(topic, true, &mut out);
        out
    }

    /// Writes the subject of `topic` into `out`, cleared first (a task
    /// publishing many messages reuses one buffer): in a branch the queue
    /// stream captures, or (`captured` false) in one it does not.
    pub fn topic_into(&self, topic: &str, captured: bool, out: &mut String) {
        out.clear();
        out.push_str(&self.prefix);
        out.push('.');
        out.push_str(branch(topic, captured));
        for level in topic.split('/') {
            out.push('.');
            escape(level, out);
        }
    }

    /// The subjects of the (non-shared) MQTT `filter`: one, or two for a
    /// filter ending in `#` that has a parent level.
    /// These are the subjects the queue stream captures, as a kept
    /// session's or share group's consumer filters on them.
    pub fn filter(&self, filter: &str) -> Vec<String> {
        self.filter_in(filter, true)
    }

    /// The subjects a node subscribes to for `filter`: those of
    /// [`Subjects::filter`] and their twins outside the stream.
    pub fn subscribed(&self, filter: &str) -> Vec<String> {
        let mut subjects = self.filter_in(filter, true);
        subjects.extend(self.filter_in(filter, false));
        subjects
    }

    fn filter_in(&self, filter: &str, captured: bool) -> Vec<String> {
        let first = filter.split('/').next().unwrap_or_default();
        let mut subject = format!("{}.{}", self.prefix, branch(first, captured));
        let mut parent = None;
        for level in filter.split('/') {
            match level {
                "+" => subject.push_str(".*"),
                "#" => {
                    // `#` alone matches every topic, and every topic has at
                    // least one level, so `>` covers it without a parent.
                    if filter != "#" {
                        parent = Some(subject.clone());
                    }
                    subject.push_str(".>");
                }
                literal => {
                    subject.push('.');
                    escape(literal, &mut subject);
                }
            }
        }
        let mut subjects = vec![subject];
        subjects.extend(parent);
        subjects
    }

    /// Whether the subject of `topic` is at most `max` bytes long, without
    /// building it when the answer is plain (escaping at most triples a
    /// byte).
    pub fn fits(&self, topic: &str, max: usize) -> bool {
        // `{prefix}.t`, then per level a `.` and the level escaped: at most
        // 3 bytes per byte, or `%` for an empty one.
        let worst = self.prefix.len() + 2 + 3 * topic.len() + 2;
        worst <= max || self.topic(topic).len() <= max
    }

    /// The NATS queue group of share group `group` with (non-shared)
    /// `filter`: `{prefix}.s.{group}.{filter levels}`, escaped as topics
    /// are, so distinct pairs never share a queue group (NATS merges queue
    /// groups of one name across the subjects a message matches).
    pub fn share_queue(&self, group: &str, filter: &str) -> String {
        let mut out = format!("{}.s.", self.prefix);
        escape(group, &mut out);
        for level in filter.split('/') {
            out.push('.');
            // Wildcards written as escapes too: a queue group name is a
            // literal, and `+` or `#` never stands inside a filter level.
            match level {
                "+" => out.push_str("%2B"),
                "#" => out.push_str("%23"),
                literal => escape(literal, &mut out),
            }
        }
        out
    }

    /// The wildcard subject every topic's subject matches (`{prefix}.>`).
    pub fn everything(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// The topic a subject made by [`Subjects::topic`] stands for, or `None`
    /// for any other subject.
    pub fn topic_of(&self, subject: &str) -> Option<String> {
        let rest = subject.strip_prefix(self.prefix.as_str())?.strip_prefix('.')?;
        let (branch, levels) = rest.split_once('.')?;
        let mut topic = String::with_capacity(levels.len());
        for (i, token) in levels.split('.').enumerate() {
            if i > 0 {
                topic.push('/');
            }
            unescape(token, &mut topic)?;
        }
        // The branch must agree with the topic, or the subject was not ours.
        (branch == self::branch(&topic, true) || branch == self::branch(&topic, false)).then_some(topic)
    }
}

/// Whether every subject the NATS pattern `inner` matches also matches the
/// pattern `outer` (`*` one token, `>` the rest).
pub fn covers(outer: &str, inner: &str) -> bool {
    let (mut outer, mut inner) = (outer.split('.'), inner.split('.'));
    loop {
        match (outer.next(), inner.next()) {
            (Some(">"), Some(_)) | (None, None) => return true,
            (Some("*"), Some(token)) if token != ">" => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// Whether some subject matches both NATS patterns.
pub fn collide(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) | (None, None) => return true,
            (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

/// Patterns that together match what `patterns` match (or more), no two
/// of which collide: JetStream refuses a consumer whose filter subjects
/// overlap. Those another one covers go; if some still collide (`a.>` and
/// `*.b`), `broaden` gives the pattern that replaces a colliding one.
pub fn disjoint(mut patterns: Vec<String>, broaden: impl Fn(&str) -> String) -> Vec<String> {
    loop {
        patterns.sort();
        patterns.dedup();
        let all = patterns.clone();
        patterns.retain(|p| !all.iter().any(|other| other != p && covers(other, p)));
        let clash =
            patterns.iter().enumerate().find_map(|(i, p)| patterns[i + 1..].iter().any(|q| collide(p, q)).then_some(i));
        let Some(i) = clash else { return patterns };
        let broader = broaden(&patterns[i]);
        if broader == patterns[i] {
            // Nothing broader: cannot happen with the branch wildcards
            // `broaden` gives, which cover every pattern under them.
            return patterns;
        }
        patterns[i] = broader;
    }
}

/// Whether a byte of a level is written as itself.
fn plain(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>' | b'%')
}

fn escape(level: &str, out: &mut String) {
    if level.is_empty() {
        out.push('%');
        return;
    }
    if level.bytes().all(plain) {
        out.push_str(level);
        return;
    }
    for b in level.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn unescape(token: &str, out: &mut String) -> Option<()> {
    if token == "%" {
        return Some(());
    }
    if token.is_empty() {
        return None;
    }
    if !token.contains('%') {
        out.push_str(token);
        return Some(());
    }
    let mut bytes = Vec::with_capacity(token.len());
    let mut rest = token.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = tail.get(..2)?;
            bytes.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    out.push_str(&String::from_utf8(bytes).ok()?);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> Subjects {
        Subjects::new("moat")
    }

    #[test]
    fn plain_topics_map_level_by_level() {
        assert_eq!(s().topic("a/b/c"), "moat.t.a.b.c");
        assert_eq!(s().topic("a"), "moat.t.a");
        assert_eq!(Subjects::new("acme.moat").topic("x"), "acme.moat.t.x");
    }

    #[test]
    fn reserved_characters_and_empty_levels_are_escaped() {
        assert_eq!(s().topic("a.b/c*/>/100%"), "moat.t.a%2Eb.c%2A.%3E.100%25");
        assert_eq!(s().topic("with space/tab\there"), "moat.t.with%20space.tab%09here");
        assert_eq!(s().topic("/"), "moat.t.%.%");
        assert_eq!(s().topic("a//b/"), "moat.t.a.%.b.%");
        assert_eq!(s().topic("grüße"), "moat.t.gr%C3%BC%C3%9Fe");
        // An escaped level never equals the empty-level token.
        assert_ne!(s().topic("%"), s().topic(""));
    }

    #[test]
    fn dollar_topics_have_their_own_branch() {
        assert_eq!(s().topic("$SYS/broker/uptime"), "moat.d.$SYS.broker.uptime");
        assert_eq!(s().filter("$SYS/#"), ["moat.d.$SYS.>", "moat.d.$SYS"]);
        // A wildcard first level does not match `$` topics in MQTT, and
        // stays out of the `$` branch in NATS.
        assert_eq!(s().filter("#"), ["moat.t.>"]);
        assert_eq!(s().filter("+/x"), ["moat.t.*.x"]);
    }

    #[test]
    fn filters_map_wildcards() {
        assert_eq!(s().filter("a/+/c"), ["moat.t.a.*.c"]);
        assert_eq!(s().filter("a/b/#"), ["moat.t.a.b.>", "moat.t.a.b"]);
        assert_eq!(s().filter("+/#"), ["moat.t.*.>", "moat.t.*"]);
        assert_eq!(s().filter("+"), ["moat.t.*"]);
        assert_eq!(s().filter("a.b/+"), ["moat.t.a%2Eb.*"]);
        assert_eq!(s().filter("/+"), ["moat.t.%.*"]);
    }

    /// What NATS would match, to check filters and topics agree with MQTT.
    fn nats_matches(subject_filter: &str, subject: &str) -> bool {
        let f: Vec<&str> = subject_filter.split('.').collect();
        let t: Vec<&str> = subject.split('.').collect();
        for (i, token) in f.iter().enumerate() {
            match *token {
                ">" => return t.len() > i,
                "*" if i < t.len() => {}
                literal if t.get(i) == Some(&literal) => {}
                _ => return false,
            }
        }
        f.len() == t.len()
    }

    #[test]
    fn nats_interest_agrees_with_mqtt_matching() {
        let filters = ["#", "+", "a/#", "a/+", "+/b", "a/b", "/+", "+/+", "$SYS/#", "$x/+", "a.b/#", "+/#", "a/+/#"];
        let topics = ["a", "a/b", "a/b/c", "/", "/b", "a/", "$SYS/x", "$x/y", "a.b", "a.b/c", "b", "x/b/c", "%"];
        for filter in filters {
            for topic in topics {
                let name = crate::codec::TopicName::new(topic).expect("valid topic");
                let mqtt = crate::codec::TopicFilter::new(filter).expect("valid filter").matches(&name);
                let nats = s().filter(filter).iter().any(|f| nats_matches(f, &s().topic(topic)));
                assert_eq!(mqtt, nats, "filter {filter:?} topic {topic:?}");
                // Each topic is matched by at most one subject of a filter.
                let hits = s().filter(filter).iter().filter(|f| nats_matches(f, &s().topic(topic))).count();
                assert!(hits <= 1, "filter {filter:?} topic {topic:?}");
            }
        }
    }

    #[test]
    fn fits_agrees_with_the_subject_length() {
        for topic in ["a", "/", "a//b/", "grüße", "a.b/c*/>/100%", "$SYS/x", &"x/".repeat(40), &"é".repeat(30)] {
            let len = s().topic(topic).len();
            assert!(s().fits(topic, len), "{topic:?}");
            assert!(!s().fits(topic, len - 1), "{topic:?}");
        }
    }

    #[test]
    fn share_queues_differ_by_group_and_filter() {
        assert_eq!(s().share_queue("g", "a/+/#"), "moat.s.g.a.%2B.%23");
        assert_eq!(s().share_queue("g.h", "a b"), "moat.s.g%2Eh.a%20b");
        assert_ne!(s().share_queue("g", "a/b"), s().share_queue("g/a", "b"));
        assert_ne!(s().share_queue("g", "a/b"), s().share_queue("g", "a.b"));
    }

    #[test]
    fn coverage_follows_nats_wildcards() {
        assert!(covers("m.t.a.>", "m.t.a.b.c"));
        assert!(covers("m.t.a.>", "m.t.a.*"));
        assert!(covers("m.t.*.b", "m.t.*.b"));
        assert!(covers("m.t.*.b", "m.t.x.b"));
        assert!(!covers("m.t.a.>", "m.t.a"));
        assert!(!covers("m.t.*.b", "m.t.>"));
        assert!(!covers("m.t.a.b", "m.t.a.*"));
        assert!(!covers("m.t.a", "m.t.a.b"));
        assert!(collide("m.t.a.>", "m.t.*.c"));
        assert!(collide("m.t.*", "m.t.a"));
        assert!(!collide("m.t.a.>", "m.t.a"));
        assert!(!collide("m.t.*.b", "m.t.*.c"));
        let branch = |p: &str| format!("{}.>", p.split('.').take(2).collect::<Vec<_>>().join("."));
        let all = ["m.t.a.>", "m.t.a", "m.t.a.b", "m.t.x.c", "m.t.a.b", "m.d.$x"].map(str::to_owned);
        assert_eq!(disjoint(all.to_vec(), branch), ["m.d.$x", "m.t.a", "m.t.a.>", "m.t.x.c"]);
        let clashing = ["m.t.a.>", "m.t.*.c", "m.d.$x"].map(str::to_owned);
        assert_eq!(disjoint(clashing.to_vec(), branch), ["m.d.$x", "m.t.>"]);
    }

    #[test]
    fn messages_outside_the_stream_have_twin_branches() {
        let mut out = String::new();
        s().topic_into("a/b", false, &mut out);
        assert_eq!(out, "moat.u.a.b");
        s().topic_into("$SYS/x", false, &mut out);
        assert_eq!(out, "moat.v.$SYS.x");
        assert_eq!(s().topic_of("moat.u.a.b").as_deref(), Some("a/b"));
        assert_eq!(s().topic_of("moat.v.$SYS.x").as_deref(), Some("$SYS/x"));
        assert_eq!(s().topic_of("moat.v.a"), None, "the branch must agree with the topic");
        assert_eq!(s().topic_of("moat.u.$x"), None, "the branch must agree with the topic");
        assert_eq!(s().subscribed("a/#"), ["moat.t.a.>", "moat.t.a", "moat.u.a.>", "moat.u.a"]);
        assert_eq!(s().subscribed("$SYS/+"), ["moat.d.$SYS.*", "moat.v.$SYS.*"]);
        // Both kinds of subject of a topic are matched by what a filter
        // subscribes to exactly when MQTT matches them.
        for (filter, topic) in [("#", "a"), ("+/x", "$y/x"), ("a/#", "a"), ("$SYS/#", "$SYS/x"), ("+", "$")] {
            let name = crate::codec::TopicName::new(topic).expect("valid topic");
            let mqtt = crate::codec::TopicFilter::new(filter).expect("valid filter").matches(&name);
            for captured in [true, false] {
                s().topic_into(topic, captured, &mut out);
                let hits = s().subscribed(filter).iter().filter(|f| nats_matches(f, &out)).count();
                assert_eq!(hits, usize::from(mqtt), "filter {filter:?} topic {topic:?} captured {captured}");
            }
        }
    }

    #[test]
    fn subjects_map_back_to_topics() {
        for topic in ["a/b", "/", "a//b/", "a.b/c*/>/100%", "$SYS/x", "grüße/ x", "%", "%2E", "$"] {
            assert_eq!(s().topic_of(&s().topic(topic)).as_deref(), Some(topic));
        }
        assert_eq!(s().topic_of("other.t.a"), None);
        assert_eq!(s().topic_of("moat.t.a.%2"), None);
        assert_eq!(s().topic_of("moat.t.a..b"), None);
        assert_eq!(s().topic_of("moat.d.a"), None, "the branch must agree with the topic");
        assert_eq!(s().topic_of("moat.t.%FF"), None, "not UTF-8");
    }
}
