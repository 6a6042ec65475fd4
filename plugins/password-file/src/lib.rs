//! Authenticator: user names and salted, slow password hashes from a file
//! (`config.file = "/etc/moat/passwd"`, an absolute path the plugin is
//! granted read access to).
//!
//! One `user:hash` entry per line; blank lines and lines starting with `#`
//! are skipped. Hashes are argon2id PHC strings (what `moat passwd` writes)
//! or Mosquitto's `$7$` (PBKDF2-SHA512) and `$6$` (salted SHA-512) entries,
//! so a Mosquitto `password_file` works unchanged. A malformed line refuses
//! the plugin at load, naming the line: a user is never left without a
//! password.
//!
//! Clients without a user name, and MQTT 5 enhanced authentication, are
//! ignored (the listener's `allow_anonymous` or another plugin decides).
//! An unknown user and a wrong password are denied alike, after the same
//! amount of hashing.

use std::collections::HashMap;

use moat_plugin_sdk::*;

pub mod hash;

pub use hash::Hash;

/// The reason every refusal carries, so the answer reveals nothing about
/// which of user name and password was wrong.
const REFUSED: &str = "bad user name or password";

/// The users of the password file.
pub struct PasswordFile {
    users: HashMap<String, Hash>,
    /// Checked when the user is unknown, so that answer takes as long as a
    /// wrong password does: the first argon2 entry, else the first entry.
    decoy: Option<Hash>,
    /// Lines whose hash is fast to crack ([`Hash::is_fast`]).
    fast: Vec<usize>,
}

impl PasswordFile {
    /// Parses password file text; `source` names the file in errors.
    ///
    /// # Errors
    /// `source:LINE: message` for the first malformed or duplicate entry.
    pub fn parse(source: &str, text: &str) -> Result<PasswordFile, String> {
        let mut users = HashMap::new();
        let mut decoy = None;
        let mut fast = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let at = |message: String| format!("{source}:{}: {message}", index + 1);
            let Some((user, hash)) = line.split_once(':') else {
                return Err(at("expected `user:hash`".into()));
            };
            if user.is_empty() {
                return Err(at("empty user name".into()));
            }
            let hash = Hash::parse(hash).map_err(|e| at(format!("user {user:?}: {e}")))?;
            if hash.is_fast() {
                fast.push(index + 1);
            }
            // The slowest kind of entry makes the best decoy.
            let better = match (&decoy, &hash) {
                (None, _) => true,
                (Some(Hash::Argon2(_)), _) => false,
                (Some(_), Hash::Argon2(_)) => true,
                (Some(_), _) => false,
            };
            if better {
                decoy = Some(hash.clone());
            }
            if users.insert(user.to_owned(), hash).is_some() {
                return Err(at(format!("user {user:?} is listed twice")));
            }
        }
        Ok(PasswordFile { users, decoy, fast })
    }

    /// The warning for the operator when entries are fast to crack, naming
    /// their lines (not their users); `None` when all are slow.
    pub fn fast_entries_warning(&self, source: &str) -> Option<String> {
        let lines: Vec<String> = self.fast.iter().take(10).map(usize::to_string).collect();
        let more = if self.fast.len() > lines.len() { ", ..." } else { "" };
        (!self.fast.is_empty()).then(|| {
            format!(
                "{source}: {} entries (lines {}{more}) are single-pass SHA-512 ($6$) or PBKDF2 ($7$) with fewer than \
                 {} iterations: a stolen file gives their passwords up quickly; set them again with `moat passwd` \
                 (argon2id)",
                self.fast.len(),
                lines.join(", "),
                hash::FAST_PBKDF2_ITERATIONS,
            )
        })
    }

    /// The number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file lists no user (every login is refused).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` may log in with `password`.
    pub fn check(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(hash) => hash.verify(password),
            None => {
                if let Some(decoy) = &self.decoy {
                    // Only the time it takes matters.
                    let _ = decoy.verify(password);
                }
                false
            }
        }
    }
}

impl Plugin for PasswordFile {
    fn init(config: Config) -> Result<(Self, Manifest), String> {
        let Some(file) = config.str("file") else {
            return Err("`file` (the password file's absolute path) is required".into());
        };
        let text = read_file(file)?;
        let users = PasswordFile::parse(file, &text)?;
        if let Some(warning) = users.fast_entries_warning(file) {
            log(Level::Warn, &warning);
        }
        Ok((users, Manifest::new().authenticate()))
    }

    fn authenticate(&mut self, _client: &ClientInfo, credentials: &Credentials) -> AuthOutcome {
        if credentials.auth_method.is_some() {
            return AuthOutcome::Ignore;
        }
        let Some(user) = &credentials.username else {
            return AuthOutcome::Ignore;
        };
        let password = credentials.password.as_deref().unwrap_or_default();
        if credentials.password.is_some() && self.check(user, password) {
            AuthOutcome::Allow(Grant { attributes: vec![("username".into(), user.clone())], username_override: None })
        } else {
            AuthOutcome::Deny(REFUSED.into())
        }
    }
}

export_plugin!(PasswordFile);

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE_7: &str = "alice:$7$101$tZFQpalKf0haJHzc$CZG7RR8sWIqfoFgcHgSwDjvedtzGk75EZOpS0lOciKFUjsBkSW8xRZiYuLw8m7IP3Yp7HrS2kQ8BtHAfOOgCWg==";
    const BOB_6: &str = "bob:$6$01TbQGVw51L/KDt4$7ZqVmQxCsTWF00A7XzkYrsdad16Ko4PdvLspT/2wYBtGquVqivdyhuFlUqVUHn0RhmaAC3pX4OvnGfMqkIW0UQ==";

    fn plugin(text: &str) -> PasswordFile {
        PasswordFile::parse("passwd", text).expect("valid file")
    }

    fn outcome(p: &mut PasswordFile, user: &str, password: &[u8]) -> AuthOutcome {
        p.authenticate(&testing::client(Some(user)), &testing::login(user, password))
    }

    #[test]
    fn right_password_allows_and_names_the_user() {
        let mut p = plugin(&format!("# users\n\n{ALICE_7}\r\n{BOB_6}\n"));
        assert_eq!(p.len(), 2);
        match outcome(&mut p, "alice", b"s3cret") {
            AuthOutcome::Allow(grant) => {
                assert_eq!(grant.attributes, vec![("username".to_owned(), "alice".to_owned())]);
                assert_eq!(grant.username_override, None);
            }
            other => panic!("expected allow, got {other:?}"),
        }
        assert!(matches!(outcome(&mut p, "bob", b"hunter2"), AuthOutcome::Allow(_)));
    }

    #[test]
    fn wrong_password_and_unknown_user_are_denied_alike() {
        let mut p = plugin(ALICE_7);
        let wrong = outcome(&mut p, "alice", b"s3cre");
        let unknown = outcome(&mut p, "mallory", b"s3cret");
        match (wrong, unknown) {
            (AuthOutcome::Deny(a), AuthOutcome::Deny(b)) => assert_eq!(a, b),
            other => panic!("expected two denials, got {other:?}"),
        }
        // Another user's password does not open this account.
        let mut p = plugin(&format!("{ALICE_7}\n{BOB_6}"));
        assert!(matches!(outcome(&mut p, "alice", b"hunter2"), AuthOutcome::Deny(_)));
    }

    #[test]
    fn no_password_is_denied_and_no_user_name_is_ignored() {
        let mut p = plugin(ALICE_7);
        let mut creds = testing::login("alice", b"");
        creds.password = None;
        assert!(matches!(p.authenticate(&testing::client(None), &creds), AuthOutcome::Deny(_)));
        creds.username = None;
        assert!(matches!(p.authenticate(&testing::client(None), &creds), AuthOutcome::Ignore));
        let mut enhanced = testing::login("alice", b"s3cret");
        enhanced.auth_method = Some("SCRAM-SHA-256".into());
        assert!(matches!(p.authenticate(&testing::client(None), &enhanced), AuthOutcome::Ignore));
    }

    #[test]
    fn fast_entries_are_reported_by_line_at_load() {
        let slow =
            "carol:$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$bIKRw3Ua1pluirFy81fnppmR01EnUxY3hLEBwbWxBG8";
        let p = plugin(&format!(
            "# users
{ALICE_7}
{slow}
{BOB_6}
"
        ));
        let warning = p.fast_entries_warning("passwd").expect("two fast entries");
        assert!(warning.starts_with("passwd: 2 entries (lines 2, 4)"), "{warning}");
        assert!(!warning.contains("alice") && !warning.contains("bob"), "no user names: {warning}");
        assert_eq!(plugin(slow).fast_entries_warning("passwd"), None);
    }

    #[test]
    fn empty_file_denies_everyone() {
        let mut p = plugin("# nobody yet\n");
        assert!(p.is_empty());
        assert!(matches!(outcome(&mut p, "alice", b"s3cret"), AuthOutcome::Deny(_)));
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let cases = [
            (format!("{ALICE_7}\n\nbob\n"), "passwd:3: expected `user:hash`"),
            (format!("{ALICE_7}\nbob:\n"), "passwd:2: user \"bob\": no password hash"),
            ("carol:plaintext\n".to_owned(), "passwd:1: user \"carol\": not a supported"),
            (":$6$c2FsdA$aGFzaA\n".to_owned(), "passwd:1: empty user name"),
            (format!("{ALICE_7}\n{ALICE_7}\n"), "passwd:2: user \"alice\" is listed twice"),
        ];
        for (text, expected) in cases {
            let err = PasswordFile::parse("passwd", &text).err().expect("refused");
            assert!(err.starts_with(expected), "{err:?} should start with {expected:?}");
        }
    }

    #[test]
    fn init_reads_the_file_and_requires_it() {
        let dir = std::env::temp_dir().join(format!("password-file-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("passwd");
        std::fs::write(&path, format!("{ALICE_7}\n")).expect("write");
        let config = testing::config(&format!(r#"{{"file":{:?}}}"#, path.display().to_string()));
        let (mut p, manifest) = PasswordFile::init(config).expect("init");
        assert_eq!(manifest.hooks, vec![Hook::Authenticate]);
        assert!(matches!(outcome(&mut p, "alice", b"s3cret"), AuthOutcome::Allow(_)));

        std::fs::write(&path, "alice:oops\n").expect("write");
        let config = testing::config(&format!(r#"{{"file":{:?}}}"#, path.display().to_string()));
        let err = PasswordFile::init(config).err().expect("refused");
        assert!(err.contains(":1: user \"alice\""), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");

        assert!(PasswordFile::init(testing::config("{}")).err().expect("refused").contains("`file`"));
        let missing = testing::config(r#"{"file":"/nonexistent/passwd"}"#);
        assert!(PasswordFile::init(missing).err().expect("refused").contains("/nonexistent/passwd"));
    }
}
