//! Mosquitto's `acl_file` syntax, read unchanged:
//!
//! ```text
//! # comment
//! topic read public/#          # before any `user` line: anonymous clients
//! user alice
//! topic readwrite alice/#      # access defaults to readwrite
//! topic deny alice/secret
//! pattern write devices/%c/#   # every client, with %u / %c substituted
//! ```

use crate::rules::{Access, Rule, RuleSet, Scope};

/// Parses the text of an acl file into `rules`. The error names the line
/// (1-based) and what is wrong with it.
pub fn parse(text: &str, rules: &mut RuleSet) -> Result<(), String> {
    let mut scope = Scope::Anonymous;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |why: &str| format!("line {}: {why}: `{line}`", index + 1);
        let (keyword, rest) = line.split_once([' ', '\t']).map_or((line, ""), |(k, r)| (k, r.trim()));
        match keyword {
            "user" => {
                if rest.is_empty() {
                    return Err(fail("`user` needs a name"));
                }
                scope = Scope::User(rest.to_owned());
            }
            "topic" | "pattern" => {
                let (access, topic) = access_and_topic(rest).map_err(|why| fail(&why))?;
                topic_rules::validate(topic).map_err(|e| fail(&e.to_string()))?;
                let pattern = keyword == "pattern";
                let rule = Rule { access, topic: topic.to_owned(), pattern };
                rules.add(if pattern { Scope::Everyone } else { scope.clone() }, rule);
            }
            _ => return Err(fail("expected `user`, `topic` or `pattern`")),
        }
    }
    Ok(())
}

/// `[read|write|readwrite|deny] TOPIC`; the topic is the rest of the line
/// (topics may contain spaces), and the access defaults to readwrite.
fn access_and_topic(rest: &str) -> Result<(Access, &str), String> {
    let (first, after) = rest.split_once([' ', '\t']).map_or((rest, ""), |(f, a)| (f, a.trim()));
    match Access::parse(first) {
        Some(_) if after.is_empty() => Err("missing topic".into()),
        Some(access) => Ok((access, after)),
        None if rest.is_empty() => Err("missing topic".into()),
        None => Ok((Access::ReadWrite, rest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Answer, Op};

    fn load(text: &str) -> RuleSet {
        let mut rules = RuleSet::default();
        parse(text, &mut rules).expect("valid acl file");
        rules
    }

    #[test]
    fn scopes_follow_user_lines_and_patterns_apply_to_all() {
        let rules = load("topic read public/#\n\nuser alice\ntopic alice/#\npattern write dev/%c/up\n");
        assert_eq!(rules.len(), 3);
        assert_eq!(rules.check(None, "c", Op::Read, "public/x"), Answer::Allow);
        assert_eq!(rules.check(Some("alice"), "c", Op::Read, "public/x"), Answer::NoGrant, "anonymous-only rule");
        assert_eq!(rules.check(Some("alice"), "c", Op::Write, "alice/x"), Answer::Allow);
        assert_eq!(rules.check(None, "c", Op::Write, "alice/x"), Answer::NoGrant);
        assert_eq!(rules.check(None, "c", Op::Write, "dev/c/up"), Answer::Allow);
        assert_eq!(rules.check(Some("bob"), "d", Op::Write, "dev/d/up"), Answer::Allow);
    }

    #[test]
    fn topics_may_contain_spaces_and_tabs_separate() {
        let rules = load("user bob\ntopic\tread\ta b/c \n");
        assert_eq!(rules.check(Some("bob"), "c", Op::Read, "a b/c"), Answer::Allow);
    }

    #[test]
    fn malformed_lines_name_the_line() {
        for (text, line) in [
            ("topic read a\nuser\n", "line 2"),
            ("\n\ntopic read\n", "line 3"),
            ("topic\n", "line 1"),
            ("# ok\nsubscribe a/b\n", "line 2"),
            ("topic read a/#/b\n", "line 1"),
            ("pattern write a+\n", "line 1"),
        ] {
            let err = parse(text, &mut RuleSet::default()).expect_err(text);
            assert!(err.starts_with(line), "{text:?}: {err}");
        }
    }
}
