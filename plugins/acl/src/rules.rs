//! The rule set and its decision: which rules apply to a client, and
//! whether they grant an operation on a topic.

use std::collections::HashMap;

use topic_rules::{covers, pattern_filter};

/// What a rule grants, in Mosquitto's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Subscribe and receive.
    Read,
    /// Publish.
    Write,
    /// Both.
    ReadWrite,
    /// Nothing, and it overrides every grant of the other rules.
    Deny,
}

impl Access {
    /// Parses `read`, `write`, `readwrite` or `deny`.
    pub fn parse(word: &str) -> Option<Access> {
        match word {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "readwrite" => Some(Access::ReadWrite),
            "deny" => Some(Access::Deny),
            _ => None,
        }
    }

    fn grants(self, op: Op) -> bool {
        matches!((self, op), (Access::ReadWrite, _) | (Access::Read, Op::Read) | (Access::Write, Op::Write))
    }
}

/// The two things a rule can grant; every broker action is one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Subscribe, receive, receive a retained message.
    Read,
    /// Publish, register a will.
    Write,
}

/// One rule: an access on a topic filter, optionally a `%u`/`%c` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What the rule grants or denies.
    pub access: Access,
    /// The topic filter, with placeholders when `pattern`.
    pub topic: String,
    /// Whether `%u` and `%c` in `topic` are substituted.
    pub pattern: bool,
}

/// Whom a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every client.
    Everyone,
    /// Clients without a user name.
    Anonymous,
    /// Clients with this user name.
    User(String),
    /// Clients with this client id.
    Client(String),
}

/// Every rule, indexed by whom it applies to.
#[derive(Debug, Default)]
pub struct RuleSet {
    everyone: Vec<Rule>,
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    clients: HashMap<String, Vec<Rule>>,
}

/// The rule set's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Some rule grants the operation and no deny rule matches.
    Allow,
    /// A deny rule matches (this topic filter).
    Denied(String),
    /// No rule grants the operation.
    NoGrant,
}

impl RuleSet {
    /// Adds a rule for `scope`.
    pub fn add(&mut self, scope: Scope, rule: Rule) {
        match scope {
            Scope::Everyone => self.everyone.push(rule),
            Scope::Anonymous => self.anonymous.push(rule),
            Scope::User(name) => self.users.entry(name).or_default().push(rule),
            Scope::Client(id) => self.clients.entry(id).or_default().push(rule),
        }
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.everyone.len()
            + self.anonymous.len()
            + self.users.values().map(Vec::len).sum::<usize>()
            + self.clients.values().map(Vec::len).sum::<usize>()
    }

    /// Whether there is no rule at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides `op` on `topic` (a topic name, or a subscription filter
    /// without its `$share/GROUP/` prefix) for a client. Every rule that
    /// applies to the client is consulted; a matching deny rule wins over
    /// any grant, as in Mosquitto.
    pub fn check(&self, user: Option<&str>, client_id: &str, op: Op, topic: &str) -> Answer {
        let by_name = match user {
            Some(name) => self.users.get(name),
            None => Some(&self.anonymous),
        };
        let applicable =
            by_name.into_iter().chain(self.clients.get(client_id)).chain(std::iter::once(&self.everyone)).flatten();
        let mut granted = false;
        for rule in applicable {
            let filter = if rule.pattern {
                // A deny pattern whose names cannot be substituted still
                // denies (see `topic_rules::widen`); a grant grants nothing.
                match pattern_filter(&rule.topic, rule.access == Access::Deny, user, client_id) {
                    Some(filter) => std::borrow::Cow::Owned(filter),
                    None => continue,
                }
            } else {
                std::borrow::Cow::Borrowed(rule.topic.as_str())
            };
            if !covers(&filter, topic) {
                continue;
            }
            if rule.access == Access::Deny {
                return Answer::Denied(rule.topic.clone());
            }
            granted |= rule.access.grants(op);
        }
        if granted { Answer::Allow } else { Answer::NoGrant }
    }
}
