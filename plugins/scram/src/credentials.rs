//! SCRAM credentials in PostgreSQL's format, one user a line:
//! `user:SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64).

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use moat_plugin_sdk::Config;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Iterations below this are refused (RFC 7677 asks for at least 4096).
pub const MIN_ITERATIONS: u32 = 4096;

/// One user's verifier.
#[derive(Debug, Clone)]
pub struct Entry {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

/// The users and the secret behind the fake salts of unknown users.
pub struct Store {
    users: HashMap<String, Entry>,
    fake_secret: Vec<u8>,
    fake_iterations: u32,
}

impl Store {
    /// Reads `file` (through `read`) and/or the inline `credentials` list.
    pub fn from_config(config: &Config, read: &dyn Fn(&str) -> Result<String, String>) -> Result<Store, String> {
        let Value::Object(table) = config.value() else {
            return Err("the scram plugin needs a [config] table with `file` or `credentials`".into());
        };
        if let Some(unknown) = table.keys().find(|k| !["file", "credentials", "fake_salt_secret"].contains(&k.as_str()))
        {
            return Err(format!("unknown config key `{unknown}`"));
        }
        let mut text = match config.str("file") {
            Some(path) => read(path)?,
            None if table.contains_key("file") => return Err("`file` must be a path".into()),
            None => String::new(),
        };
        let source = config.str("file").unwrap_or("credentials").to_owned();
        let inline = config.strings("credentials")?;
        if !table.contains_key("file") && !table.contains_key("credentials") {
            return Err("give `file` (a credentials file) or `credentials` (a list of lines)".into());
        }
        for line in inline {
            text.push('\n');
            text.push_str(&line);
        }
        let users = parse(&text, &source)?;
        let fake_secret = match config.str("fake_salt_secret") {
            Some(secret) => secret.as_bytes().to_vec(),
            // Unpredictable to a client that has not read the file, and the
            // same in every instance, so an unknown user's salt is stable.
            None => Sha256::new().chain_update(b"moat-scram-fake-salt\0").chain_update(&text).finalize().to_vec(),
        };
        let fake_iterations = users.values().map(|e| e.iterations).min().unwrap_or(MIN_ITERATIONS);
        Ok(Store { users, fake_secret, fake_iterations })
    }

    /// The verifier of `user`.
    pub fn get(&self, user: &str) -> Option<&Entry> {
        self.users.get(user)
    }

    /// A salt and iteration count for a user who does not exist, stable for
    /// the user name, so a client cannot tell unknown users from known ones.
    pub fn fake_salt(&self, user: &str) -> (Vec<u8>, u32) {
        let mut salt = crate::hmac(&self.fake_secret, user.as_bytes());
        salt.truncate(16);
        (salt, self.fake_iterations)
    }
}

/// Parses credential lines; blank lines and `#` comments are skipped. A
/// malformed line is an error naming it, never a user without a verifier.
pub fn parse(text: &str, source: &str) -> Result<HashMap<String, Entry>, String> {
    let mut users = HashMap::new();
    // Inline lines are appended after a newline, so numbering stays exact
    // for the file and counts on for the list.
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |e: &str| format!("{source}:{}: {e}", n + 1);
        let (user, entry) = parse_line(line).map_err(|e| at(&e))?;
        if users.insert(user.to_owned(), entry).is_some() {
            return Err(at(&format!("user {user} appears twice")));
        }
    }
    Ok(users)
}

fn parse_line(line: &str) -> Result<(&str, Entry), String> {
    let (user, secret) = line.split_once(":SCRAM-SHA-256$").ok_or("expected user:SCRAM-SHA-256$...")?;
    if user.is_empty() {
        return Err("empty user name".into());
    }
    let (params, keys) = secret.split_once('$').ok_or("expected <iterations>:<salt>$<StoredKey>:<ServerKey>")?;
    let (iterations, salt) = params.split_once(':').ok_or("expected <iterations>:<salt>")?;
    let (stored, server) = keys.split_once(':').ok_or("expected <StoredKey>:<ServerKey>")?;
    let iterations: u32 = iterations.parse().map_err(|_| "iterations is not a number")?;
    if iterations < MIN_ITERATIONS {
        return Err(format!("iterations must be at least {MIN_ITERATIONS}"));
    }
    let b64 = |v: &str, what: &str| STANDARD.decode(v).map_err(|_| format!("{what} is not base64"));
    let entry = Entry {
        iterations,
        salt: b64(salt, "salt")?,
        stored_key: b64(stored, "StoredKey")?,
        server_key: b64(server, "ServerKey")?,
    };
    if entry.salt.is_empty() || entry.stored_key.len() != 32 || entry.server_key.len() != 32 {
        return Err("a salt and two 32-byte keys are expected".into());
    }
    Ok((user, entry))
}
