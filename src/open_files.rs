//! The process's open-file limit (`RLIMIT_NOFILE`), which caps connections.
//!
//! Every connection is a file descriptor. Many systems start services with
//! a soft limit of 1,024 and a much higher hard limit, so a broker that
//! keeps the soft limit stops accepting near a thousand clients whatever
//! `max_connections` says. The binary raises the soft limit to the hard
//! one at start-up ([`OpenFiles::raise`]) and warns when even that is below
//! what the configuration needs ([`needed`]). A library user embedding
//! Moat keeps its own limits: nothing here runs unless called.

use crate::config::Config;

/// Descriptors Moat needs besides connections and the store: standard
/// streams, the runtime's reactor and wakers, the file watcher, listeners
/// being replaced, plugin files and their granted directories, cluster
/// links, admin requests. Generous on purpose: running short of these
/// fails in odd places, while an unused margin costs nothing.
const RESERVED: u64 = 256;

/// What a durable store may hold open: `fjall` caches up to 900 table
/// files (its default descriptor table on Linux), plus journals.
const STORE_FILES: u64 = 1024;

/// The soft and hard open-file limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit in force; `None` is unlimited.
    pub soft: Option<u64>,
    /// The hard limit, which the soft one may be raised to; `None` is
    /// unlimited.
    pub hard: Option<u64>,
}

/// The outcome of [`OpenFiles::raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    /// The limits before.
    pub before: OpenFiles,
    /// The limits after (unchanged when nothing could be raised).
    pub after: OpenFiles,
}

impl OpenFiles {
    /// The process's current limits.
    #[cfg(unix)]
    pub fn current() -> OpenFiles {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        OpenFiles { soft: limit.current, hard: limit.maximum }
    }

    /// Not known on this platform.
    #[cfg(not(unix))]
    pub fn current() -> OpenFiles {
        OpenFiles { soft: None, hard: None }
    }

    /// Raises the soft limit as far towards the hard limit as the system
    /// allows. An unlimited hard limit is not always a valid soft one
    /// (Linux caps it at `fs.nr_open`, macOS at `kern.maxfilesperproc`),
    /// so a refused value is halved until one is accepted or it is no
    /// longer a raise.
    ///
    /// # Errors
    /// The system's error when no raise at all was accepted.
    #[cfg(unix)]
    pub fn raise() -> std::io::Result<Raised> {
        use rustix::process::{Resource, Rlimit, setrlimit};
        let before = OpenFiles::current();
        let Some(soft) = before.soft else {
            return Ok(Raised { before, after: before });
        };
        let mut target = before.hard.unwrap_or(1 << 30);
        let mut refused = None;
        while target > soft {
            match setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum: before.hard }) {
                Ok(()) => return Ok(Raised { before, after: OpenFiles::current() }),
                Err(e) => refused = Some(std::io::Error::from(e)),
            }
            target /= 2;
        }
        match refused {
            Some(e) => Err(e),
            None => Ok(Raised { before, after: before }),
        }
    }

    /// Nothing to raise on this platform.
    ///
    /// # Errors
    /// Never.
    #[cfg(not(unix))]
    pub fn raise() -> std::io::Result<Raised> {
        let now = OpenFiles::current();
        Ok(Raised { before: now, after: now })
    }

    /// Whether the soft limit allows `needed` descriptors.
    pub fn allows(&self, needed: u64) -> bool {
        self.soft.is_none_or(|soft| soft >= needed)
    }
}

/// The descriptors `config` may need at once: `limits.max_connections`,
/// one per listener, the admin listener, the store's files when it has
/// one, and a margin for everything else (`RESERVED`).
pub fn needed(config: &Config) -> u64 {
    let connections = config.limits.max_connections as u64;
    let listeners = config.listeners.len() as u64 + u64::from(config.admin.listen.is_some());
    let store = if config.storage.dir.is_some() { STORE_FILES } else { 0 };
    connections.saturating_add(listeners + store + RESERVED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_counts_connections_listeners_store_and_a_margin() {
        let mut config = Config::default();
        config.limits.max_connections = 1000;
        assert_eq!(needed(&config), 1000 + config.listeners.len() as u64 + RESERVED);
        config.storage.dir = Some("/var/lib/moat".into());
        assert_eq!(needed(&config), 1000 + config.listeners.len() as u64 + STORE_FILES + RESERVED);
    }

    #[test]
    fn an_unlimited_soft_limit_allows_anything() {
        assert!(OpenFiles { soft: None, hard: None }.allows(u64::MAX));
        assert!(!OpenFiles { soft: Some(1024), hard: Some(4096) }.allows(1025));
        assert!(OpenFiles { soft: Some(1024), hard: Some(4096) }.allows(1024));
    }
}
