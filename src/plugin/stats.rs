//! Per-plugin counters, read later by metrics, and log-once bookkeeping so a
//! plugin failing on every call does not flood the log.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use super::CallFailure;
use crate::metrics::{Histogram, HistogramSnapshot};

/// Counters of one plugin since it was loaded.
#[derive(Debug, Default)]
pub struct PluginStats {
    calls: AtomicU64,
    denials: AtomicU64,
    traps: AtomicU64,
    timeouts: AtomicU64,
    out_of_memory: AtomicU64,
    bad_answers: AtomicU64,
    /// How long calls took, including failed ones.
    latency: Histogram,
    /// One bit per failure cause already logged.
    logged: AtomicU8,
}

/// A copy of a plugin's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Hook calls made (including failed ones).
    pub calls: u64,
    /// Denials: explicit `deny` answers plus failures that denied.
    pub denials: u64,
    /// Traps other than timeouts and memory exhaustion (panics, aborts,
    /// instantiation or `init` failures of a replacement instance).
    pub traps: u64,
    /// Calls interrupted at their deadline.
    pub timeouts: u64,
    /// Calls that hit the memory cap.
    pub out_of_memory: u64,
    /// Answers refused as oversized or malformed.
    pub bad_answers: u64,
    /// Call durations.
    pub latency: HistogramSnapshot,
}

impl PluginStats {
    pub(crate) fn call(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn elapsed(&self, took: std::time::Duration) {
        self.latency.record(took);
    }

    pub(crate) fn denial(&self) {
        self.denials.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failure and logs it the first time this cause is seen for
    /// this plugin. The message never holds credentials or payloads: a
    /// failure's text is built by the host, not copied from the guest's data.
    pub(crate) fn failure(&self, plugin: &str, failure: &CallFailure) {
        let (counter, bit) = match failure {
            CallFailure::Timeout => (&self.timeouts, 1),
            CallFailure::OutOfMemory => (&self.out_of_memory, 2),
            CallFailure::Trap(_) | CallFailure::Instantiate(_) => (&self.traps, 4),
            CallFailure::Oversized { .. } | CallFailure::Malformed(_) => (&self.bad_answers, 8),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if self.logged.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            tracing::warn!(plugin, cause = %failure, "plugin call failed (logged once per cause; see counters)");
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            denials: self.denials.load(Ordering::Relaxed),
            traps: self.traps.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            out_of_memory: self.out_of_memory.load(Ordering::Relaxed),
            bad_answers: self.bad_answers.load(Ordering::Relaxed),
            latency: self.latency.snapshot(),
        }
    }
}
