//! Failed accepts, logged once per interval with a count.
//!
//! When the process runs out of file descriptors every `accept` fails
//! (`EMFILE`) until a connection closes, while clients keep knocking: the
//! loop retries every few milliseconds, and a line per failure buried the
//! log (13,500 lines in two minutes, issue 25). [`AcceptFailures`] turns a
//! run of failures into a line when it starts, a line with a count per
//! [`REPORT_EVERY`] while it lasts, and a line when accepting works again.

use std::time::{Duration, Instant};

/// How often a run of failed accepts is reported while it lasts.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(10);

/// A listener's run of failed accepts. Owned by its accept loop: plain
/// integers, no lock.
#[derive(Debug, Default)]
pub(crate) struct AcceptFailures {
    run: Option<Run>,
}

/// A run of failures not yet ended by a successful accept.
#[derive(Debug)]
struct Run {
    started: Instant,
    /// Failures in the whole run.
    total: u64,
    /// Failures since the last line logged, and when that was.
    unreported: u64,
    reported: Instant,
}

/// What to log about a failure or a success.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Report {
    /// The first failure of a run.
    Started,
    /// The run goes on: `failures` since the last line, `over` that long.
    Continuing { failures: u64, over: Duration },
    /// An accept worked after a run of `failures` that lasted `lasted`.
    Ended { failures: u64, lasted: Duration },
}

impl AcceptFailures {
    /// Counts a failed accept; says what to log, if anything.
    pub(crate) fn failed(&mut self, now: Instant) -> Option<Report> {
        let Some(run) = &mut self.run else {
            self.run = Some(Run { started: now, total: 1, unreported: 0, reported: now });
            return Some(Report::Started);
        };
        run.total += 1;
        run.unreported += 1;
        let over = now.saturating_duration_since(run.reported);
        if over < REPORT_EVERY {
            return None;
        }
        let failures = std::mem::take(&mut run.unreported);
        run.reported = now;
        Some(Report::Continuing { failures, over })
    }

    /// Ends a run of failures, if one was going on: one branch per accept
    /// otherwise.
    pub(crate) fn accepted(&mut self, now: Instant) -> Option<Report> {
        let run = self.run.take()?;
        Some(Report::Ended { failures: run.total, lasted: now.saturating_duration_since(run.started) })
    }
}

/// Whether an accept failed because the process or the system ran out of
/// file descriptors (`EMFILE`, `ENFILE`).
pub(crate) fn out_of_descriptors(error: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        use rustix::io::Errno;
        matches!(Errno::from_io_error(error), Some(Errno::MFILE | Errno::NFILE))
    }
    #[cfg(not(unix))]
    {
        let _ = error;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_failures_logs_at_its_start_then_once_per_interval_then_at_its_end() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut failures = AcceptFailures::default();
        assert_eq!(failures.accepted(at(0)), None, "no run, nothing to say");
        assert_eq!(failures.failed(at(0)), Some(Report::Started));
        // A retry every 50 ms for just under the interval: silent.
        let mut ms = 0;
        while ms + 50 < REPORT_EVERY.as_millis() as u64 {
            ms += 50;
            assert_eq!(failures.failed(at(ms)), None, "at {ms} ms");
        }
        let quiet = ms / 50;
        ms += 50;
        let over = Duration::from_millis(ms);
        assert_eq!(failures.failed(at(ms)), Some(Report::Continuing { failures: quiet + 1, over }));
        assert_eq!(failures.failed(at(ms + 50)), None);
        assert_eq!(
            failures.accepted(at(ms + 70)),
            Some(Report::Ended { failures: quiet + 3, lasted: Duration::from_millis(ms + 70) })
        );
        assert_eq!(failures.accepted(at(ms + 80)), None);
        assert_eq!(failures.failed(at(ms + 90)), Some(Report::Started), "a new run");
    }

    #[cfg(unix)]
    #[test]
    fn emfile_and_enfile_are_out_of_descriptors() {
        use rustix::io::Errno;
        assert!(out_of_descriptors(&Errno::MFILE.into()));
        assert!(out_of_descriptors(&Errno::NFILE.into()));
        assert!(!out_of_descriptors(&Errno::CONNABORTED.into()));
        assert!(!out_of_descriptors(&std::io::Error::other("other")));
    }
}
