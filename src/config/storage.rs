//! `[storage]`: where and how durably sessions and retained messages are
//! stored.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Where and how durably sessions and retained messages are stored.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Data directory. Without it nothing survives the process.
    pub dir: Option<PathBuf>,
    /// When writes are durable; `sync` when `dir` is set.
    pub durability: Option<DurabilityMode>,
    /// Data sync interval for `durability = "periodic"` (default 1000).
    pub flush_interval_ms: Option<u64>,
}

/// The `storage.durability` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// Acknowledge QoS 1/2 publishes after a data sync (group commit).
    Sync,
    /// Sync every `flush_interval_ms`.
    Periodic,
    /// Never sync; with `dir` set, writes still reach the OS at once.
    None,
}

impl StorageConfig {
    /// The store's durability, or `None` for the in-memory store.
    pub fn durability(&self) -> Option<crate::store::Durability> {
        use crate::store::Durability;
        self.dir.as_ref()?;
        Some(match self.durability.unwrap_or(DurabilityMode::Sync) {
            DurabilityMode::Sync => Durability::Sync,
            DurabilityMode::Periodic => {
                Durability::Periodic(Duration::from_millis(self.flush_interval_ms.unwrap_or(1000)))
            }
            DurabilityMode::None => Durability::None,
        })
    }

    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let mode = self.durability.unwrap_or(DurabilityMode::Sync);
        if self.dir.is_none() && self.durability.is_some_and(|d| d != DurabilityMode::None) {
            return Err(("storage.durability".into(), "needs `storage.dir`".into()));
        }
        if let Some(ms) = self.flush_interval_ms {
            if mode != DurabilityMode::Periodic {
                return Err(("storage.flush_interval_ms".into(), "only applies to durability = \"periodic\"".into()));
            }
            if ms == 0 {
                return Err(("storage.flush_interval_ms".into(), "must be greater than 0".into()));
            }
        }
        if self.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err(("storage.dir".into(), "must not be empty".into()));
        }
        Ok(())
    }
}
