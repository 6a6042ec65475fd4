//! Authorizer: role-based access control in the manner of Mosquitto's
//! dynamic-security plugin. Roles hold prioritised allow/deny permissions
//! on topic filters; groups hold roles; clients (by user name or client
//! id) hold roles and groups; an authenticator may grant roles through the
//! `role` attribute. Unmatched actions get an explicit default, deny unless
//! configured. Read from a TOML or JSON file, or inline. See README.md.

use moat_plugin_sdk::*;
use serde_json::Value;

pub mod model;

use model::{Document, Fallback, Model};

/// Default lifetime of a decision in the broker's per-connection cache. The
/// document changes only when the plugin reloads, which clears the cache.
const DEFAULT_CACHE_MS: u32 = 60_000;

/// What a client wants, as permissions name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Publish (and register a will).
    Publish,
    /// Subscribe to a filter.
    Subscribe,
    /// Receive a message (and a retained one).
    Receive,
}

impl Model {
    /// The roles of a client in evaluation order: its own roles (by
    /// priority), then roles from the authenticator's attributes (as
    /// granted), then each group's roles (groups by priority, the
    /// anonymous group last).
    fn roles_of<'a>(&self, user: Option<&str>, client_id: &str, granted: impl Iterator<Item = &'a str>) -> Vec<usize> {
        let by_name = user.and_then(|u| self.by_username.get(u)).into_iter().flatten();
        let entries: Vec<usize> =
            by_name.chain(self.by_client_id.get(client_id).into_iter().flatten()).copied().collect();
        let mut roles: Vec<usize> = entries.iter().flat_map(|&e| self.clients[e].roles.iter().copied()).collect();
        roles.extend(granted.filter_map(|name| self.role_index.get(name).copied()));
        let mut groups: Vec<(i64, usize)> =
            entries.iter().flat_map(|&e| self.clients[e].groups.iter().copied()).collect();
        if user.is_none()
            && let Some(anonymous) = self.anonymous_group
        {
            groups.push((i64::MIN, anonymous));
        }
        groups.sort_by_key(|(priority, _)| std::cmp::Reverse(*priority));
        roles.extend(groups.iter().flat_map(|&(_, g)| self.groups[g].roles.iter().copied()));
        roles
    }

    /// The first matching permission's verdict, `None` when none matches.
    /// A permission matches a subscription only when its filter covers the
    /// whole subscription filter.
    fn decide(&self, client: &ClientInfo, role_attribute: &str, op: Op, topic: &str) -> Option<(bool, String)> {
        // Only a verified name selects a client's roles or fills `%u`.
        let user = client.verified_username();
        let granted = client.attributes.iter().filter(|(k, _)| k == role_attribute).map(|(_, v)| v.as_str());
        for role in self.roles_of(user, &client.client_id, granted) {
            for p in &self.roles[role].permissions {
                let applies = match op {
                    Op::Publish => p.actions.publish,
                    Op::Subscribe => p.actions.subscribe,
                    Op::Receive => p.actions.receive,
                };
                if !applies {
                    continue;
                }
                let filter = if p.pattern {
                    // A deny whose names cannot be substituted still denies
                    // (see `topic_rules::widen`); an allow grants nothing.
                    match topic_rules::pattern_filter(&p.topic, !p.allow, user, &client.client_id) {
                        Some(f) => std::borrow::Cow::Owned(f),
                        None => continue,
                    }
                } else {
                    std::borrow::Cow::Borrowed(p.topic.as_str())
                };
                if topic_rules::covers(&filter, topic) {
                    return Some((p.allow, p.topic.clone()));
                }
            }
        }
        None
    }
}

/// The plugin: the model and its settings.
pub struct Rbac {
    model: Model,
    cache_ms: Option<u32>,
    role_attribute: String,
}

/// Reads the document from `path`, by its extension.
fn read_file(path: &str) -> Result<Document, String> {
    if !path.starts_with('/') {
        return Err(format!("file `{path}` must be an absolute path"));
    }
    let text = moat_plugin_sdk::read_file(path).map_err(|e| format!("file: {e}"))?;
    if path.ends_with(".toml") {
        toml::from_str(&text).map_err(|e| format!("{path}: {e}"))
    } else if path.ends_with(".json") {
        serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))
    } else {
        Err(format!("file `{path}`: the name must end in .toml or .json"))
    }
}

impl Rbac {
    fn from_config(value: &Value) -> Result<Rbac, String> {
        let mut table = match value {
            Value::Object(map) => map.clone(),
            Value::Null => Default::default(),
            _ => return Err("config must be a table".into()),
        };
        let cache_ms = match table.remove("cache_ms") {
            None => Some(DEFAULT_CACHE_MS),
            Some(v) => match v.as_u64().map(u32::try_from) {
                Some(Ok(0)) => None,
                Some(Ok(ms)) => Some(ms),
                _ => return Err("cache_ms must be a number of milliseconds".into()),
            },
        };
        let role_attribute = match table.remove("role_attribute") {
            None => "role".to_owned(),
            Some(Value::String(s)) => s,
            Some(_) => return Err("role_attribute must be a string".into()),
        };
        let document = match table.remove("file") {
            Some(Value::String(path)) => {
                if let Some(key) = table.keys().next() {
                    return Err(format!("`{key}` belongs in the file when `file` is set"));
                }
                read_file(&path)?
            }
            Some(_) => return Err("file must be a string".into()),
            None => serde_json::from_value(Value::Object(table)).map_err(|e| format!("config: {e}"))?,
        };
        let model = document.into_model()?;
        if model.roles.is_empty() {
            log(Level::Warn, "rbac: no roles defined; every action gets the default");
        }
        Ok(Rbac { model, cache_ms, role_attribute })
    }
}

impl Plugin for Rbac {
    fn init(config: Config) -> Result<(Self, Manifest), String> {
        Ok((Rbac::from_config(config.value())?, Manifest::new().authorize()))
    }

    fn authorize(&mut self, client: &ClientInfo, action: Action, topic: &str, _qos: QoS, _retain: bool) -> Decision {
        // A will is published by the client, late; a retained message is
        // received.
        let (op, topic) = match action {
            Action::Publish | Action::Will => (Op::Publish, topic),
            Action::Subscribe => (Op::Subscribe, topic_rules::strip_share(topic)),
            Action::Receive | Action::Retained => (Op::Receive, topic),
        };
        match self.model.decide(client, &self.role_attribute, op, topic) {
            Some((true, _)) => Decision::Allow(self.cache_ms),
            Some((false, rule)) => {
                Decision::Deny(format!("{} {topic} is denied by a deny permission on `{rule}`", action.doing()))
            }
            None => {
                let d = &self.model.defaults;
                let fallback = match op {
                    Op::Publish => d.publish,
                    Op::Subscribe => d.subscribe,
                    Op::Receive => d.receive,
                };
                match fallback {
                    Fallback::Allow => Decision::Allow(self.cache_ms),
                    Fallback::Deny => {
                        Decision::Deny(format!("no permission of the client's roles covers {} {topic}", action.doing()))
                    }
                    Fallback::Ignore => Decision::Ignore,
                }
            }
        }
    }
}

export_plugin!(Rbac);

#[cfg(test)]
mod tests;
