//! Who may use the admin API. A web page in the operator's browser can
//! send requests to a loopback address, under a name of its own that it
//! points there (DNS rebinding), so besides the token:
//!
//! - the `Host` header must name an IP address, `localhost` or one of
//!   `admin.allowed_hosts` (a rebinding page can only send its own name);
//! - a browser's cross-origin request (an `Origin` other than the API's
//!   own, or `Sec-Fetch-Site` other than `same-origin`/`none`) is refused;
//! - state-changing endpoints need the token, which `admin.token` sets, or
//!   `admin.token_file` holds (created with a random token if missing).

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::rand::SecureRandom;

use super::{Request, Response};
use crate::config::AdminConfig;
use crate::transport::ws::{host_name, is_unrebindable};

/// A token file's longest accepted content.
const MAX_TOKEN_FILE: u64 = 4096;

/// The admin token file is unusable: the broker does not start.
#[derive(Debug, thiserror::Error)]
#[error("admin.token_file {}: {reason}", path.display())]
pub struct TokenFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// The admin listener's access rules, from `[admin]`.
#[derive(Debug)]
pub struct Access {
    token: Option<Arc<str>>,
    /// Lowercase, as `Host` is compared.
    allowed_hosts: Vec<String>,
}

impl Access {
    /// The rules of `config`; reads or creates its token file.
    ///
    /// # Errors
    /// [`TokenFileError`] when the token file cannot be created, or exists
    /// but is a link, not a regular file, open to group or others, or empty.
    pub fn new(config: &AdminConfig) -> Result<Access, TokenFileError> {
        let token = match (&config.token, &config.token_file) {
            (Some(token), _) => Some(Arc::from(token.expose())),
            (None, Some(path)) => Some(Arc::from(token_from_file(path)?.as_str())),
            (None, None) => None,
        };
        let allowed_hosts = config.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        Ok(Access { token, allowed_hosts })
    }

    /// Whether a token is in force.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Checks a parsed request head against the rules.
    /// `Err` is the answer to send instead of serving it.
    pub(super) fn request(&self, parsed: &httparse::Request<'_, '_>) -> Result<Request, Response> {
        let bad = || Response::error(400, "malformed request");
        let method = parsed.method.ok_or_else(bad)?.to_owned();
        let target = parsed.path.ok_or_else(bad)?;
        let path = target.split('?').next().unwrap_or(target).to_owned();
        let host = self.check_host(parsed)?;
        check_origin(parsed, host)?;
        let presented = header(parsed, "authorization")
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let token_presented = self
            .token
            .as_deref()
            .is_some_and(|expected| presented.is_some_and(|p| constant_time_eq(p.as_bytes(), expected.as_bytes())));
        Ok(Request { method, path, authorized: token_presented || self.token.is_none(), token_presented })
    }

    /// The `Host` header, if it names a host the API answers to. Required
    /// in HTTP/1.1 (RFC 9112, 3.2); an HTTP/1.0 request may omit it, which
    /// no browser does.
    fn check_host<'h>(&self, parsed: &httparse::Request<'h, '_>) -> Result<Option<&'h str>, Response> {
        let mut hosts = parsed.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host"));
        let (Some(host), None) = (hosts.next(), hosts.next()) else {
            return match parsed.version {
                Some(0) if parsed.headers.iter().all(|h| !h.name.eq_ignore_ascii_case("host")) => Ok(None),
                _ => Err(Response::error(400, "one Host header is required")),
            };
        };
        let host = std::str::from_utf8(host.value).map_err(|_| Response::error(400, "malformed Host"))?.trim();
        if self.knows(host_name(host)) {
            Ok(Some(host))
        } else {
            Err(Response::error(403, "unknown Host; list it in admin.allowed_hosts"))
        }
    }

    /// Whether `name` (a `Host` without its port) is an IP address,
    /// `localhost` or an allowed host. Only a name can be rebound: a
    /// browser sends an address as `Host` only to that address.
    fn knows(&self, name: &str) -> bool {
        let bare = name.strip_suffix('.').unwrap_or(name);
        is_unrebindable(name) || self.allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(bare))
    }
}

/// Refuses a browser's cross-origin request: `Origin` other than
/// `http://` + `Host`, or `Sec-Fetch-Site` other than `same-origin` or
/// `none` (typed in the address bar).
fn check_origin(parsed: &httparse::Request<'_, '_>, host: Option<&str>) -> Result<(), Response> {
    let refuse = || Response::error(403, "cross-origin requests are refused");
    if let Some(site) = header(parsed, "sec-fetch-site")
        && !site.eq_ignore_ascii_case("same-origin")
        && !site.eq_ignore_ascii_case("none")
    {
        return Err(refuse());
    }
    let Some(origin) = header(parsed, "origin") else { return Ok(()) };
    let same = host.is_some_and(|host| {
        origin.get(..7).is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"))
            && origin[7..].eq_ignore_ascii_case(host)
    });
    if same { Ok(()) } else { Err(refuse()) }
}

/// The value of the first header called `name`, if it is text.
fn header<'h>(parsed: &httparse::Request<'h, '_>, name: &str) -> Option<&'h str> {
    let h = parsed.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name))?;
    std::str::from_utf8(h.value).ok().map(str::trim)
}

/// Compares a presented token with the configured one without revealing,
/// through timing, how many leading bytes matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token in `path`, or a new random one written there (mode 0600).
fn token_from_file(path: &Path) -> Result<String, TokenFileError> {
    let fail = |reason: String| TokenFileError { path: path.to_owned(), reason };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = new_token().map_err(fail)?;
            // `create_new` refuses an existing file or link, so nothing is
            // written through a link planted since the check.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| fail(format!("cannot create: {e}")))?;
            writeln!(file, "{token}").and_then(|()| file.sync_all()).map_err(|e| fail(format!("cannot write: {e}")))?;
            tracing::info!(path = %path.display(), "admin API token created; it is in this file");
            Ok(token)
        }
        Err(e) => Err(fail(format!("cannot read: {e}"))),
        Ok(meta) => {
            let token = read_token(path, &meta).map_err(fail)?;
            tracing::info!(path = %path.display(), "admin API token read from this file");
            Ok(token)
        }
    }
}

/// Reads an existing token file that `meta` (not following links)
/// describes, refusing one that others could read or replace.
fn read_token(path: &Path, meta: &std::fs::Metadata) -> Result<String, String> {
    if meta.file_type().is_symlink() {
        return Err("is a symbolic link; name the file itself".into());
    }
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "is readable or writable by group or others (mode {:o}); chmod 600 it",
            meta.mode() & 0o777
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let opened = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
        return Err("was replaced while being opened".into());
    }
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE).read_to_string(&mut text).map_err(|e| format!("cannot read: {e}"))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err("is empty".into());
    }
    Ok(token.to_owned())
}

/// 32 random bytes in hex.
fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| "no system randomness".to_owned())?;
    Ok(bytes.iter().fold(String::with_capacity(64), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    #[test]
    fn known_hosts() {
        let access = Access { token: None, allowed_hosts: vec!["moat.example".into()] };
        for known in ["localhost", "LOCALHOST.", "127.0.0.1", "[::1]", "10.0.0.5", "moat.example", "Moat.Example."] {
            assert!(access.knows(known), "{known}");
        }
        for unknown in ["", "evil.example", "localhost.evil.example", "moat.example.evil", "[evil]"] {
            assert!(!access.knows(unknown), "{unknown}");
        }
    }

    #[test]
    fn new_tokens_are_long_and_differ() {
        let (a, b) = (new_token().expect("token"), new_token().expect("token"));
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
