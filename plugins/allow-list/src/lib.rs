//! Authenticator: lets in the user names listed in its config
//! (`config.users = ["alice", "bob"]`, and one per line in the file
//! `config.users_file`, which needs a read grant), denies every other user
//! name and ignores anonymous clients (the listener's `allow_anonymous`
//! decides).

use moat_plugin_sdk::*;

/// The configured user names.
pub struct AllowList {
    users: Vec<String>,
}

impl Plugin for AllowList {
    fn init(config: Config) -> Result<(Self, Manifest), String> {
        let mut users = config.strings("users")?;
        if let Some(path) = config.str("users_file") {
            let text = std::fs::read_to_string(path).map_err(|e| format!("users_file {path}: {e}"))?;
            users.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned));
        }
        Ok((AllowList { users }, Manifest::new().authenticate()))
    }

    fn authenticate(&mut self, _client: &ClientInfo, credentials: &Credentials) -> AuthOutcome {
        match &credentials.username {
            None => AuthOutcome::Ignore,
            Some(user) if self.users.iter().any(|u| u == user) => AuthOutcome::Allow(Grant {
                attributes: vec![("role".into(), "listed".into())],
                username_override: None,
            }),
            Some(user) => AuthOutcome::Deny(format!("user {user} is not on the allow list")),
        }
    }
}

export_plugin!(AllowList);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_listed_users_only() {
        let (mut p, _) = AllowList::init(testing::config(r#"{"users":["alice"]}"#)).expect("init");
        let client = testing::client(None);
        assert!(matches!(p.authenticate(&client, &testing::login("alice", b"pw")), AuthOutcome::Allow(_)));
        assert!(matches!(p.authenticate(&client, &testing::login("mallory", b"pw")), AuthOutcome::Deny(_)));
    }
}
