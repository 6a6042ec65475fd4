//! [`TokenBucket`]: the rate limiter behind `max_connection_rate` (one per
//! listener, owned by its accept loop, and one for all listeners behind a
//! lock) and `max_publish_rate` (one per connection, owned by its task).
//!
//! The bucket is plain integers: no atomic, no allocation. Credit is kept in
//! nanoseconds of refill time, so taking a token is a subtraction and the
//! rate needs no floating point.

use std::time::Instant;

/// How much credit a bucket holds at most: one second's worth of tokens,
/// i.e. a burst of `per_second` after a quiet second.
const BURST_NS: u64 = 1_000_000_000;

/// A token bucket refilled at a fixed rate, holding at most one second's
/// worth of tokens. Starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Refill time of one token.
    cost_ns: u64,
    /// The rate it was made for.
    per_second: u32,
    /// Refill time banked, at most [`BURST_NS`].
    credit_ns: u64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `per_second` tokens; `None` for 0, which means no
    /// limit (so an unset limit costs the caller one branch on `Option`).
    pub fn per_second(per_second: u32, now: Instant) -> Option<TokenBucket> {
        let cost_ns = BURST_NS / u64::from(per_second).max(1);
        (per_second > 0).then_some(TokenBucket { cost_ns, per_second, credit_ns: BURST_NS, last: now })
    }

    /// Makes `bucket` follow a configured rate that a reload may change: a
    /// new, full bucket when `per_second` differs from the one it was made
    /// for (0: no limit), else nothing.
    pub fn follow(bucket: &mut Option<TokenBucket>, per_second: u32, now: Instant) {
        if bucket.as_ref().map_or(0, |b| b.per_second) != per_second {
            *bucket = TokenBucket::per_second(per_second, now);
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = u64::try_from(now.saturating_duration_since(self.last).as_nanos()).unwrap_or(u64::MAX);
        self.last = now;
        self.credit_ns = self.credit_ns.saturating_add(elapsed).min(BURST_NS);
        if self.credit_ns >= self.cost_ns {
            self.credit_ns -= self.cost_ns;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn zero_is_no_limit() {
        assert!(TokenBucket::per_second(0, Instant::now()).is_none());
    }

    #[test]
    fn a_full_bucket_allows_one_second_of_burst_then_refills_at_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::per_second(10, start).expect("limited");
        assert_eq!((0..20).filter(|_| bucket.try_take(start)).count(), 10);
        assert!(!bucket.try_take(start + Duration::from_millis(50)));
        assert!(bucket.try_take(start + Duration::from_millis(120)));
        assert!(!bucket.try_take(start + Duration::from_millis(120)));
        // A long pause banks no more than one second's worth.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| bucket.try_take(later)).count(), 10);
    }

    #[test]
    fn a_clock_that_does_not_advance_takes_nothing_back() {
        let start = Instant::now();
        let mut bucket = TokenBucket::per_second(1, start + Duration::from_secs(1)).expect("limited");
        assert!(bucket.try_take(start));
        assert!(!bucket.try_take(start));
    }
}
