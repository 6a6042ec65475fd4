//! Authenticator for mutual-TLS fleets: maps the verified client
//! certificate the broker passes in `client-info.tls` (subject DN, SANs,
//! SHA-256 fingerprint) to a user name (granted as the username override
//! later hooks see, e.g. `%u` of the acl plugin) and attributes such as
//! `role`. Clients without a certificate are ignored. See README.md.

use std::collections::BTreeMap;

use moat_plugin_sdk::*;
use serde::Deserialize;

pub mod dn;

/// Which part of the certificate names the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Source {
    /// The subject's common name.
    Cn,
    /// The first DNS subject alternative name.
    SanDns,
    /// The first e-mail subject alternative name.
    SanEmail,
    /// The first URI subject alternative name.
    SanUri,
    /// The first IP address subject alternative name.
    SanIp,
    /// The whole subject DN as RFC 4514 text.
    Subject,
    /// Only the `fingerprints` table: other certificates do not map.
    Fingerprint,
}

/// What happens to a certificate that does not map to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Unmapped {
    /// Refuse the client (the default).
    Deny,
    /// Let the next authenticator decide.
    Ignore,
}

/// A `fingerprints` entry: a user name, or a user name with roles.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Pinned {
    User(String),
    Full {
        user: String,
        #[serde(default)]
        roles: Vec<String>,
    },
}

/// The sidecar's `[config]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertConfig {
    username: Option<Source>,
    unmapped: Option<Unmapped>,
    #[serde(default)]
    required: Vec<String>,
    #[serde(default)]
    require: BTreeMap<String, String>,
    role: Option<String>,
    role_from: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    fingerprints: BTreeMap<String, Pinned>,
}

/// The plugin: the mapping rules.
pub struct CertIdentity {
    source: Source,
    unmapped: Unmapped,
    required: Vec<String>,
    require: Vec<(String, String)>,
    role: Option<String>,
    role_from: Option<String>,
    attributes: Vec<(String, String)>,
    /// Normalised fingerprint (lowercase hex, no separators) -> (user, roles).
    fingerprints: BTreeMap<String, (String, Vec<String>)>,
}

/// Lowercase hex without `:` separators, as the broker reports it.
fn normalise_fingerprint(raw: &str) -> String {
    raw.chars().filter(|c| *c != ':').flat_map(char::to_lowercase).collect()
}

/// The fields `required` may name besides subject attribute types.
const FIELDS: [&str; 5] = ["cn", "san-dns", "san-email", "san-uri", "san-ip"];

impl CertIdentity {
    fn from_config(c: CertConfig) -> Result<CertIdentity, String> {
        let mut fingerprints = BTreeMap::new();
        for (raw, pinned) in c.fingerprints {
            let fp = normalise_fingerprint(&raw);
            if fp.len() != 64 || !fp.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!("fingerprints: `{raw}` is not a SHA-256 fingerprint in hex"));
            }
            let (user, roles) = match pinned {
                Pinned::User(user) => (user, Vec::new()),
                Pinned::Full { user, roles } => (user, roles),
            };
            if !acceptable_name(&user) {
                return Err(format!("fingerprints: `{raw}` maps to an unusable user name `{user}`"));
            }
            fingerprints.insert(fp, (user, roles));
        }
        for field in &c.required {
            if field.is_empty() || (field.contains('-') && !FIELDS.contains(&field.as_str())) {
                return Err(format!("required: unknown field `{field}`"));
            }
        }
        if c.attributes.contains_key("role") {
            return Err("attributes: set roles with `role` or `role_from`".into());
        }
        Ok(CertIdentity {
            source: c.username.unwrap_or(Source::Cn),
            unmapped: c.unmapped.unwrap_or(Unmapped::Deny),
            required: c.required,
            require: c.require.into_iter().collect(),
            role: c.role,
            role_from: c.role_from,
            attributes: c.attributes.into_iter().collect(),
            fingerprints,
        })
    }

    /// The user name and roles of a certificate, or why it does not map.
    fn map(&self, tls: &TlsIdentity) -> Result<(String, Vec<(String, String)>), String> {
        let subject = dn::attributes(&tls.subject);
        let subject_value = |kind: &str| -> Vec<&str> {
            subject.iter().filter(|(k, _)| k.eq_ignore_ascii_case(kind)).map(|(_, v)| v.as_str()).collect()
        };
        let san = |prefix: &str| tls.sans.iter().find_map(|s| s.strip_prefix(prefix)).map(str::to_owned);
        // One rule with the broker: a subject with several CNs names nobody
        // by CN (libraries disagree on which one counts).
        let common_name = match subject_value("CN")[..] {
            [only] => Some(only.to_owned()),
            _ => None,
        };
        let field = |name: &str| -> Option<String> {
            match name {
                "cn" => common_name.clone(),
                "san-dns" => san("DNS:"),
                "san-email" => san("email:"),
                "san-uri" => san("URI:"),
                "san-ip" => san("IP:"),
                kind => subject_value(kind).first().map(|v| (*v).to_owned()),
            }
        };
        let several_cns = subject_value("CN").len() > 1;
        for name in &self.required {
            if field(name).is_none() {
                let why = if name == "cn" && several_cns { "more than one cn" } else { "no such field" };
                return Err(format!("certificate has no {name} ({why})"));
            }
        }
        for (kind, want) in &self.require {
            if !subject_value(kind).contains(&want.as_str()) {
                return Err(format!("certificate subject lacks {kind}={want}"));
            }
        }
        let fingerprint = normalise_fingerprint(&tls.sha256_fingerprint);
        let (user, mut roles) = if let Some((user, roles)) = self.fingerprints.get(&fingerprint) {
            (user.clone(), roles.clone())
        } else {
            let (name, user) = match self.source {
                Source::Cn => ("cn", field("cn")),
                Source::SanDns => ("san-dns", field("san-dns")),
                Source::SanEmail => ("san-email", field("san-email")),
                Source::SanUri => ("san-uri", field("san-uri")),
                Source::SanIp => ("san-ip", field("san-ip")),
                Source::Subject => ("subject", Some(tls.subject.clone()).filter(|s| !s.is_empty())),
                Source::Fingerprint => ("pinned fingerprint", None),
            };
            let missing = if name == "cn" && several_cns { "more than one cn" } else { "none" };
            (
                user.ok_or_else(|| format!("certificate has no {name} to take the user name from ({missing})"))?,
                Vec::new(),
            )
        };
        if !acceptable_name(&user) {
            return Err(format!("certificate name `{user}` is not a usable user name"));
        }
        roles.extend(self.role.iter().cloned());
        if let Some(kind) = &self.role_from {
            roles.extend(subject_value(kind).into_iter().map(str::to_owned));
        }
        let mut attributes: Vec<(String, String)> = roles.into_iter().map(|r| ("role".to_owned(), r)).collect();
        attributes.extend(self.attributes.iter().cloned());
        Ok((user, attributes))
    }
}

/// A user name later hooks can use safely: not empty, no MQTT wildcard
/// (which a topic pattern could turn into a wider grant), no control
/// characters.
fn acceptable_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['+', '#']) && !name.chars().any(char::is_control)
}

impl Plugin for CertIdentity {
    fn init(config: Config) -> Result<(Self, Manifest), String> {
        let parsed: CertConfig = serde_json::from_value(config.value().clone()).map_err(|e| format!("config: {e}"))?;
        Ok((CertIdentity::from_config(parsed)?, Manifest::new().authenticate()))
    }

    fn authenticate(&mut self, client: &ClientInfo, _credentials: &Credentials) -> AuthOutcome {
        let Some(tls) = &client.tls else {
            return AuthOutcome::Ignore;
        };
        match self.map(tls) {
            Ok((user, attributes)) => AuthOutcome::Allow(Grant { attributes, username_override: Some(user) }),
            Err(why) => match self.unmapped {
                Unmapped::Deny => AuthOutcome::Deny(why),
                Unmapped::Ignore => AuthOutcome::Ignore,
            },
        }
    }
}

export_plugin!(CertIdentity);

#[cfg(test)]
mod tests;
