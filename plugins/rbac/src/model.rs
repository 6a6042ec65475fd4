//! The rbac document as written (TOML or JSON) and its validated,
//! ready-to-evaluate form.

use std::collections::HashMap;

use serde::Deserialize;

/// The document: defaults, roles, groups and clients.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    roles: Vec<RoleDef>,
    #[serde(default)]
    groups: Vec<GroupDef>,
    #[serde(default)]
    clients: Vec<ClientDef>,
    anonymous_group: Option<String>,
}

/// What happens when no permission matches, per action.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// For publishes and wills.
    #[serde(default)]
    pub publish: Fallback,
    /// For subscriptions.
    #[serde(default)]
    pub subscribe: Fallback,
    /// For deliveries and retained messages.
    #[serde(default)]
    pub receive: Fallback,
}

/// An answer when nothing matched.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Refuse (the default).
    #[default]
    Deny,
    /// Permit.
    Allow,
    /// Let the next plugin decide.
    Ignore,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleDef {
    name: String,
    #[serde(default)]
    permissions: Vec<PermissionDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PermissionDef {
    action: String,
    topic: String,
    allow: bool,
    #[serde(default)]
    priority: i64,
}

/// A reference to a role or a group: its name, or its name and priority.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Ref {
    Name(String),
    Ranked {
        name: String,
        #[serde(default)]
        priority: i64,
    },
}

impl Ref {
    fn parts(&self) -> (&str, i64) {
        match self {
            Ref::Name(name) => (name, 0),
            Ref::Ranked { name, priority } => (name, *priority),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupDef {
    name: String,
    #[serde(default)]
    roles: Vec<Ref>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientDef {
    username: Option<String>,
    client_id: Option<String>,
    #[serde(default)]
    roles: Vec<Ref>,
    #[serde(default)]
    groups: Vec<Ref>,
}

/// Which actions a permission speaks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actions {
    /// Publishes and wills.
    pub publish: bool,
    /// Subscriptions.
    pub subscribe: bool,
    /// Deliveries and retained messages.
    pub receive: bool,
}

impl Actions {
    fn parse(word: &str) -> Option<Actions> {
        let (publish, subscribe, receive) = match word {
            "publish" | "write" => (true, false, false),
            "subscribe" => (false, true, false),
            "receive" => (false, false, true),
            "read" => (false, true, true),
            "readwrite" | "all" => (true, true, true),
            _ => return None,
        };
        Some(Actions { publish, subscribe, receive })
    }
}

/// One permission of a role, validated.
#[derive(Debug, Clone)]
pub struct Permission {
    /// The actions it speaks about.
    pub actions: Actions,
    /// The topic filter, possibly with `%u` / `%c`.
    pub topic: String,
    /// Whether `topic` has placeholders to substitute.
    pub pattern: bool,
    /// Allow or deny when it matches.
    pub allow: bool,
}

/// A role: its permissions, highest priority first.
#[derive(Debug, Default)]
pub struct Role {
    /// Highest priority first, written order among equals.
    pub permissions: Vec<Permission>,
}

/// A group: its roles (indices), highest priority first.
#[derive(Debug, Default)]
pub struct Group {
    /// Indices into [`Model::roles`], highest priority first.
    pub roles: Vec<usize>,
}

/// A client entry: its roles and groups (indices with priorities).
#[derive(Debug, Default)]
pub struct ClientEntry {
    /// Indices into [`Model::roles`], highest priority first.
    pub roles: Vec<usize>,
    /// `(priority, index into Model::groups)`.
    pub groups: Vec<(i64, usize)>,
}

/// The validated document, with names resolved to indices.
#[derive(Debug, Default)]
pub struct Model {
    /// Answers when no permission matches.
    pub defaults: Defaults,
    /// Every role, in written order.
    pub roles: Vec<Role>,
    /// Role name -> index into `roles`.
    pub role_index: HashMap<String, usize>,
    /// Every group, in written order.
    pub groups: Vec<Group>,
    /// Every client entry, in written order.
    pub clients: Vec<ClientEntry>,
    /// User name -> indices into `clients`.
    pub by_username: HashMap<String, Vec<usize>>,
    /// Client id -> indices into `clients`.
    pub by_client_id: HashMap<String, Vec<usize>>,
    /// The group of clients without a user name.
    pub anonymous_group: Option<usize>,
}

/// Sorts `(priority, item)` pairs highest priority first, keeping the
/// written order among equals.
fn ranked<T>(mut items: Vec<(i64, T)>) -> Vec<(i64, T)> {
    items.sort_by_key(|(priority, _)| std::cmp::Reverse(*priority));
    items
}

impl Document {
    /// Checks names, references and topics, and builds the model.
    pub fn into_model(self) -> Result<Model, String> {
        let mut model = Model { defaults: self.defaults, ..Model::default() };
        for (i, role) in self.roles.into_iter().enumerate() {
            if model.role_index.insert(role.name.clone(), i).is_some() {
                return Err(format!("role `{}` is defined twice", role.name));
            }
            let mut permissions = Vec::new();
            for (j, p) in role.permissions.into_iter().enumerate() {
                let fail = |why: String| format!("role `{}` permission {j}: {why}", role.name);
                let actions = Actions::parse(&p.action).ok_or_else(|| {
                    fail(format!("action `{}`: use publish, subscribe, receive, read or readwrite", p.action))
                })?;
                topic_rules::validate(&p.topic).map_err(|e| fail(e.to_string()))?;
                let pattern = topic_rules::has_placeholders(&p.topic);
                permissions.push((p.priority, Permission { actions, topic: p.topic, pattern, allow: p.allow }));
            }
            let permissions = ranked(permissions).into_iter().map(|(_, p)| p).collect();
            model.roles.push(Role { permissions });
        }
        let role = |model: &Model, r: &Ref, owner: &str| -> Result<(i64, usize), String> {
            let (name, priority) = r.parts();
            let index = model.role_index.get(name).ok_or_else(|| format!("{owner}: unknown role `{name}`"))?;
            Ok((priority, *index))
        };
        let mut group_index = HashMap::new();
        for (i, group) in self.groups.iter().enumerate() {
            if group_index.insert(group.name.clone(), i).is_some() {
                return Err(format!("group `{}` is defined twice", group.name));
            }
            let roles = group.roles.iter().map(|r| role(&model, r, &format!("group `{}`", group.name)));
            let roles = ranked(roles.collect::<Result<_, _>>()?).into_iter().map(|(_, r)| r).collect();
            model.groups.push(Group { roles });
        }
        let group = |r: &Ref, owner: &str| -> Result<(i64, usize), String> {
            let (name, priority) = r.parts();
            let index = group_index.get(name).ok_or_else(|| format!("{owner}: unknown group `{name}`"))?;
            Ok((priority, *index))
        };
        for (i, client) in self.clients.into_iter().enumerate() {
            let owner = format!("clients[{i}]");
            match (&client.username, &client.client_id) {
                (Some(name), None) => model.by_username.entry(name.clone()).or_default().push(i),
                (None, Some(id)) => model.by_client_id.entry(id.clone()).or_default().push(i),
                _ => return Err(format!("{owner}: set exactly one of `username` and `client_id`")),
            }
            let roles = client.roles.iter().map(|r| role(&model, r, &owner)).collect::<Result<_, _>>()?;
            let roles = ranked(roles).into_iter().map(|(_, r)| r).collect();
            let groups = client.groups.iter().map(|g| group(g, &owner)).collect::<Result<_, _>>()?;
            model.clients.push(ClientEntry { roles, groups });
        }
        if let Some(name) = &self.anonymous_group {
            model.anonymous_group = Some(group(&Ref::Name(name.clone()), "anonymous_group")?.1);
        }
        Ok(model)
    }
}
