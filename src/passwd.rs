//! Password files for the shipped `password-file` and `scram` plugins, as
//! `moat passwd` writes them: one `user:credential` line per user.
//!
//! - [`argon2id`]: a PHC string, `$argon2id$v=19$m=19456,t=2,p=1$salt$hash`
//!   (OWASP's argon2id parameters), the `password-file` plugin's default.
//! - [`scram_sha256`]: SCRAM-SHA-256 credentials in PostgreSQL's format,
//!   `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5802,
//!   RFC 7677), for the `scram` plugin. The server never stores the password
//!   or anything that logs in by itself.
//!
//! [`set_entry`] and [`delete_entry`] edit a file in place: other lines
//! (users, comments, blank lines) are kept as they are, and the new file
//! replaces the old one atomically with owner-only permissions (0600).

use std::io::Write;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHasher, SaltString};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::SecureRandom;

/// argon2id memory cost in KiB (OWASP: 19 MiB with two passes). The plugin
/// verifying it needs about 20 MiB of linear memory; the shipped
/// `password-file` plugin's default memory cap leaves room for that.
pub const ARGON2_MEMORY_KIB: u32 = 19_456;
/// argon2id passes.
pub const ARGON2_PASSES: u32 = 2;
/// Fewest SCRAM iterations accepted (RFC 7677's minimum).
pub const SCRAM_MIN_ITERATIONS: u32 = 4096;

/// Why a password file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    /// The user name cannot be stored in a password file.
    #[error("invalid user name {0:?}: it must be non-empty and contain no `:`, spaces or control characters")]
    InvalidUser(String),
    /// An empty password would let anyone in.
    #[error("the password must not be empty")]
    EmptyPassword,
    /// Too few SCRAM iterations.
    #[error("SCRAM needs at least {SCRAM_MIN_ITERATIONS} iterations")]
    TooFewIterations,
    /// The user to delete is not in the file.
    #[error("{}: no user {user:?}", file.display())]
    NoSuchUser {
        /// The password file.
        file: PathBuf,
        /// The user name.
        user: String,
    },
    /// The directory the file would go into does not exist (the file is
    /// created, its directory is not: a typo should not make directories).
    #[error("{}: the directory {} does not exist; create it first", file.display(), dir.display())]
    NoDirectory {
        /// The password file.
        file: PathBuf,
        /// Its missing directory.
        dir: PathBuf,
    },
    /// Reading or writing the file failed. The error is part of the
    /// message, not a `source`, so a report that prints causes says it once.
    #[error("{}: {error}", file.display())]
    Io {
        /// The password file.
        file: PathBuf,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// The system random number generator or the hash failed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// A user name fit for a `user:credential` line.
fn check_user(user: &str) -> Result<(), PasswdError> {
    let bad = user.is_empty() || user.chars().any(|c| c == ':' || c.is_whitespace() || c.is_control());
    if bad { Err(PasswdError::InvalidUser(user.to_owned())) } else { Ok(()) }
}

fn random_salt() -> Result<[u8; 16], PasswdError> {
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut salt).map_err(|_| PasswdError::Hash("no system randomness".into()))?;
    Ok(salt)
}

/// An argon2id PHC string of `password` with a fresh random salt.
///
/// # Errors
/// [`PasswdError::EmptyPassword`], or [`PasswdError::Hash`] when the system
/// has no randomness.
pub fn argon2id(password: &[u8]) -> Result<String, PasswdError> {
    if password.is_empty() {
        return Err(PasswdError::EmptyPassword);
    }
    let salt = SaltString::encode_b64(&random_salt()?).map_err(|e| PasswdError::Hash(e.to_string()))?;
    let params =
        argon2::Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, 1, None).map_err(|e| PasswdError::Hash(e.to_string()))?;
    let hasher = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let hash = hasher.hash_password(password, &salt).map_err(|e| PasswdError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

/// SCRAM-SHA-256 credentials of `password` with a fresh random salt, in
/// PostgreSQL's format. The password is used as its UTF-8 bytes (no
/// SASLprep), as clients that send raw passwords expect.
///
/// # Errors
/// [`PasswdError::EmptyPassword`], [`PasswdError::TooFewIterations`], or
/// [`PasswdError::Hash`] when the system has no randomness.
pub fn scram_sha256(password: &[u8], iterations: u32) -> Result<String, PasswdError> {
    if password.is_empty() {
        return Err(PasswdError::EmptyPassword);
    }
    let salt = random_salt()?;
    scram_sha256_with_salt(password, iterations, &salt)
}

/// [`scram_sha256`] with a given salt (for tests against known vectors).
fn scram_sha256_with_salt(password: &[u8], iterations: u32, salt: &[u8]) -> Result<String, PasswdError> {
    let rounds =
        NonZeroU32::new(iterations).filter(|n| n.get() >= SCRAM_MIN_ITERATIONS).ok_or(PasswdError::TooFewIterations)?;
    let mut salted = [0u8; 32];
    ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA256, rounds, salt, password, &mut salted);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &salted);
    let client_key = ring::hmac::sign(&key, b"Client Key");
    let stored_key = ring::digest::digest(&ring::digest::SHA256, client_key.as_ref());
    let server_key = ring::hmac::sign(&key, b"Server Key");
    Ok(format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key.as_ref()),
        B64.encode(server_key.as_ref())
    ))
}

/// Adds `user` with `credential` to `file`, or replaces that user's line;
/// creates the file when it does not exist.
///
/// # Errors
/// [`PasswdError::InvalidUser`], or [`PasswdError::Io`] when the file
/// cannot be read or replaced.
pub fn set_entry(file: &Path, user: &str, credential: &str) -> Result<(), PasswdError> {
    check_user(user)?;
    let mut lines = read_lines(file, true)?;
    let entry = format!("{user}:{credential}");
    match lines.iter_mut().find(|l| line_user(l) == Some(user)) {
        Some(line) => *line = entry,
        None => lines.push(entry),
    }
    write_atomically(file, &lines)
}

/// Removes `user` from `file`.
///
/// # Errors
/// [`PasswdError::NoSuchUser`] when the user is not there, or
/// [`PasswdError::Io`] when the file cannot be read or replaced.
pub fn delete_entry(file: &Path, user: &str) -> Result<(), PasswdError> {
    let mut lines = read_lines(file, false)?;
    let before = lines.len();
    lines.retain(|l| line_user(l) != Some(user));
    if lines.len() == before {
        return Err(PasswdError::NoSuchUser { file: file.to_owned(), user: user.to_owned() });
    }
    write_atomically(file, &lines)
}

/// The user an entry line belongs to; `None` for comments and blank lines.
fn line_user(line: &str) -> Option<&str> {
    if line.trim_start().starts_with('#') {
        return None;
    }
    line.split_once(':').map(|(user, _)| user)
}

fn read_lines(file: &Path, missing_is_empty: bool) -> Result<Vec<String>, PasswdError> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(text.lines().map(str::to_owned).collect()),
        Err(e) if missing_is_empty && e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(PasswdError::Io { file: file.to_owned(), error }),
    }
}

/// Writes a sibling temporary file (0600 from its creation, so the hashes
/// are never readable by others), syncs it, and renames it over `file`.
fn write_atomically(file: &Path, lines: &[String]) -> Result<(), PasswdError> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let io = |error: std::io::Error| {
        if error.kind() == std::io::ErrorKind::NotFound && !dir.is_dir() {
            return PasswdError::NoDirectory { file: file.to_owned(), dir: dir.clone() };
        }
        PasswdError::Io { file: file.to_owned(), error }
    };
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = (|| {
        let mut out = options.open(&tmp)?;
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&tmp, file)?;
        // Make the rename itself durable.
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        // Best effort: the temporary file is useless after a failure.
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_hashes_are_salted_phc_strings() {
        let a = argon2id(b"s3cret").expect("hash");
        let b = argon2id(b"s3cret").expect("hash");
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "fresh salt each time");
        let parsed = argon2::password_hash::PasswordHash::new(&a).expect("PHC");
        use argon2::password_hash::PasswordVerifier;
        assert!(argon2::Argon2::default().verify_password(b"s3cret", &parsed).is_ok());
        assert!(argon2::Argon2::default().verify_password(b"s3cre", &parsed).is_err());
        assert!(matches!(argon2id(b""), Err(PasswdError::EmptyPassword)));
    }

    /// RFC 7677 section 3: user "user", password "pencil", salt
    /// "W22ZaJ0SNY7soEsUEjb6gQ==", 4096 iterations. The StoredKey and
    /// ServerKey follow from the exchange's proofs.
    #[test]
    fn scram_matches_the_rfc_7677_example() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("b64");
        let entry = scram_sha256_with_salt(b"pencil", 4096, &salt).expect("scram");
        assert_eq!(
            entry,
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
        assert!(matches!(scram_sha256(b"pencil", 4095), Err(PasswdError::TooFewIterations)));
        assert!(scram_sha256(b"pencil", 4096).expect("scram").starts_with("SCRAM-SHA-256$4096:"));
    }

    #[test]
    fn set_and_delete_keep_other_lines_and_permissions() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("passwd");
        std::fs::write(&file, "# managed by hand\nalice:old\n\nbob:keep\n").expect("write");
        set_entry(&file, "alice", "new").expect("update");
        set_entry(&file, "carol", "added").expect("add");
        assert_eq!(
            std::fs::read_to_string(&file).expect("read"),
            "# managed by hand\nalice:new\n\nbob:keep\ncarol:added\n"
        );
        delete_entry(&file, "bob").expect("delete");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "# managed by hand\nalice:new\n\ncarol:added\n");
        assert!(matches!(delete_entry(&file, "bob"), Err(PasswdError::NoSuchUser { .. })));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers = std::fs::read_dir(dir.path()).expect("list").count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
    }

    #[test]
    fn new_files_and_bad_user_names() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("new");
        set_entry(&file, "alice", "x").expect("create");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "alice:x\n");
        for bad in ["", "a:b", "a b", "a\nb"] {
            assert!(matches!(set_entry(&file, bad, "x"), Err(PasswdError::InvalidUser(_))), "{bad:?}");
        }
        assert!(matches!(delete_entry(&dir.path().join("missing"), "alice"), Err(PasswdError::Io { .. })));
    }
}
