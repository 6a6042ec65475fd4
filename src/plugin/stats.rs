//! Per-plugin counters, read later by metrics, and rate-limited failure
//! lines, so a plugin failing on every call does not flood the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{CallFailure, Hook};
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
    exchanges_refused: AtomicU64,
    output_lines: AtomicU64,
    output_dropped: AtomicU64,
    /// Per hook ([`Hook::index`]) and [`Decision`]: how calls ended.
    decisions: [[AtomicU64; Decision::ALL.len()]; Hook::ALL.len()],
    /// How long calls took, including failed ones.
    latency: Histogram,
    /// Per failure cause: when it was last logged and how many failures of
    /// that cause went unlogged since.
    logged: Mutex<[Option<(Instant, u64)>; CAUSES]>,
}

/// Failure causes logged apart (see [`PluginStats::failure`]).
const CAUSES: usize = 5;

/// At most one line per cause per plugin in this interval.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// How one hook call ended, as counted per plugin and hook
/// (`moat_plugin_decisions_total`). Each hook has its own words:
/// [`Decision::of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `allow` (authenticate, authorize).
    Allow,
    /// `deny` (authenticate, authorize).
    Deny,
    /// `ignore`: left to the next plugin (authenticate, authorize).
    Ignore,
    /// `continue`: an MQTT 5 AUTH round trip (authenticate).
    Continue,
    /// `pass`: the message unchanged (transform).
    Pass,
    /// `replace`: another message instead (transform).
    Replace,
    /// `drop` (transform).
    Drop,
    /// The call failed (trap, timeout, out of memory, refused answer),
    /// which denies, or for a transform follows `on_error`.
    Failure,
}

impl Decision {
    /// Every decision, in counter order.
    pub const ALL: [Decision; 8] = [
        Decision::Allow,
        Decision::Deny,
        Decision::Ignore,
        Decision::Continue,
        Decision::Pass,
        Decision::Replace,
        Decision::Drop,
        Decision::Failure,
    ];

    /// The decisions a call of `hook` can end in.
    pub fn of(hook: Hook) -> &'static [Decision] {
        use Decision::*;
        match hook {
            Hook::Authenticate => &[Allow, Deny, Ignore, Continue, Failure],
            Hook::Authorize => &[Allow, Deny, Ignore, Failure],
            Hook::Transform => &[Pass, Replace, Drop, Failure],
        }
    }

    /// The metric label: `allow`, `deny`, `ignore`, `continue`, `pass`,
    /// `replace`, `drop`, `failure`.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Ignore => "ignore",
            Decision::Continue => "continue",
            Decision::Pass => "pass",
            Decision::Replace => "replace",
            Decision::Drop => "drop",
            Decision::Failure => "failure",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A copy of a plugin's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Hook calls made (including failed ones).
    pub calls: u64,
    /// Refusals this plugin decided: its `deny` answers (authentication
    /// and authorization) plus its failed calls of those hooks, which deny.
    /// [`StatsSnapshot::decisions`] tells them apart.
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
    /// Enhanced-authentication exchanges refused because the plugin held
    /// `limits.exchanges` of them already.
    pub exchanges_refused: u64,
    /// Lines of the plugin's output (stdout, stderr, `host.log`) logged.
    pub output_lines: u64,
    /// Lines of its output dropped: over its rate, over a call's share,
    /// or `[output] level = "off"`.
    pub output_dropped: u64,
    /// How calls ended, per hook and decision: read with
    /// [`StatsSnapshot::decisions`].
    pub decided: [[u64; Decision::ALL.len()]; Hook::ALL.len()],
    /// Call durations.
    pub latency: HistogramSnapshot,
}

impl StatsSnapshot {
    /// How many calls of `hook` ended in `decision`.
    pub fn decisions(&self, hook: Hook, decision: Decision) -> u64 {
        self.decided[hook.index()][decision.index()]
    }
}

impl PluginStats {
    pub(crate) fn call(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn elapsed(&self, took: std::time::Duration) {
        self.latency.record(took);
    }

    pub(crate) fn output_logged(&self) {
        self.output_lines.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn output_dropped(&self, lines: u64) {
        self.output_dropped.fetch_add(lines, Ordering::Relaxed);
    }

    pub(crate) fn denial(&self) {
        self.denials.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a call of `hook` that ended in `decision`.
    pub(crate) fn decided(&self, hook: Hook, decision: Decision) {
        self.decisions[hook.index()][decision.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failure and logs it at `warn` with the plugin, the hook and
    /// the cause (a guest's panic message among them), at most once a
    /// second per cause, saying how many went unlogged since. The message
    /// never holds credentials or payloads: a failure's text is built by
    /// the host, or is what the guest wrote to stderr (escaped).
    pub(crate) fn failure(&self, plugin: &str, hook: Hook, failure: &CallFailure) {
        let (counter, cause) = match failure {
            CallFailure::Timeout => (&self.timeouts, 0),
            CallFailure::OutOfMemory => (&self.out_of_memory, 1),
            CallFailure::Trap(_) | CallFailure::Instantiate(_) => (&self.traps, 2),
            CallFailure::Oversized { .. } | CallFailure::Malformed(_) => (&self.bad_answers, 3),
            CallFailure::Busy => (&self.exchanges_refused, 4),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // A refused exchange is the broker's cap, not how the call ended
        // (the plugin answered `continue`, counted as such).
        if *failure != CallFailure::Busy {
            self.decided(hook, Decision::Failure);
        }
        let now = Instant::now();
        let unlogged = {
            let mut logged = self.logged.lock();
            let entry = &mut logged[cause];
            if let Some((last, skipped)) = entry
                && now.duration_since(*last) < LOG_EVERY
            {
                *skipped += 1;
                return;
            }
            entry.replace((now, 0)).map_or(0, |(_, skipped)| skipped)
        };
        let hook = hook.name();
        if unlogged > 0 {
            tracing::warn!(plugin, hook, cause = %failure, unlogged, "plugin call failed (and {unlogged} more since the last line)");
        } else {
            tracing::warn!(plugin, hook, cause = %failure, "plugin call failed");
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
            exchanges_refused: self.exchanges_refused.load(Ordering::Relaxed),
            output_lines: self.output_lines.load(Ordering::Relaxed),
            output_dropped: self.output_dropped.load(Ordering::Relaxed),
            decided: self.decisions.each_ref().map(|row| row.each_ref().map(|n| n.load(Ordering::Relaxed))),
            latency: self.latency.snapshot(),
        }
    }
}
