//! A fixed-bucket latency histogram of relaxed atomics: recording is one
//! bucket search over a handful of constants and two atomic adds, no lock
//! and no allocation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds. Chosen around plugin calls:
/// a warm Rust call takes under a microsecond, Python and JavaScript a few,
/// and the default deadline is 10 ms.
pub const BUCKETS_US: [u64; 10] = [1, 5, 10, 25, 50, 100, 250, 1_000, 10_000, 100_000];

/// Counts of durations per bucket, plus their sum.
#[derive(Debug, Default)]
pub struct Histogram {
    /// One count per bucket of [`BUCKETS_US`], and one for larger values.
    counts: [AtomicU64; BUCKETS_US.len() + 1],
    sum_ns: AtomicU64,
}

/// A copy of a [`Histogram`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistogramSnapshot {
    /// Non-cumulative counts per bucket of [`BUCKETS_US`], then `+Inf`.
    pub counts: [u64; BUCKETS_US.len() + 1],
    /// Sum of every recorded duration, in nanoseconds.
    pub sum_ns: u64,
}

impl HistogramSnapshot {
    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl Histogram {
    /// Records one duration.
    pub fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_US.iter().position(|&bound| us < bound).unwrap_or(BUCKETS_US.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The counts now (each read on its own: a scrape during calls may see
    /// a sum a few calls ahead of the counts, which Prometheus tolerates).
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_their_bucket() {
        let h = Histogram::default();
        h.record(Duration::from_nanos(400));
        h.record(Duration::from_micros(7));
        h.record(Duration::from_secs(1));
        let s = h.snapshot();
        assert_eq!(s.counts[0], 1);
        assert_eq!(s.counts[2], 1);
        assert_eq!(s.counts[BUCKETS_US.len()], 1);
        assert_eq!(s.count(), 3);
        assert_eq!(s.sum_ns, 1_000_007_400);
    }
}
