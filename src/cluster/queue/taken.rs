//! What a kept session took from its JetStream consumer at QoS 2, so that
//! a message JetStream hands it again is not delivered twice.
//!
//! JetStream may deliver a message again after the session had it: the
//! acknowledgement was lost with a NATS connection (delivered again one
//! `redelivery_s` later), or the consumer's state rolled back when its
//! leader was cut off or killed before the acknowledgement spread (then
//! delivered as if for the first time, once a new leader is elected). It
//! may also hold two copies of one message its node published again under
//! the same `Nats-Msg-Id`, when its own duplicate detection lost track
//! across a leader change.
//!
//! How long to remember is a matter of time, not of count: a session that
//! takes 100 messages a second takes 500 between a lost acknowledgement
//! and the redelivery five seconds later. (A bound of 256 messages let
//! about one duplicate in five runs of a JetStream leader cut through.)

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// QoS 2 messages a session took from JetStream, for as long as JetStream
/// may hand them over again.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    /// Oldest first: when each was taken, its stream sequence and its
    /// message id hash (0 without one).
    order: VecDeque<(Instant, u64, u64)>,
    /// The keys of `order`, for a look-up that does not walk it:
    /// sequences as even keys, message id hashes (odd) as they are.
    keys: HashSet<u64>,
}

impl Taken {
    /// Messages remembered at most, whatever their age: about 800 KiB for
    /// a session that takes QoS 2 messages faster than this over the
    /// window.
    pub const MAX: usize = 16_384;

    /// Remembers that the session took the message stored as `seq` with
    /// message id hash `id` (odd, or 0 for none) at `now`, forgetting what
    /// was taken longer than `window` ago.
    pub fn remember(&mut self, seq: u64, id: u64, now: Instant, window: Duration) {
        while let Some(&(at, old_seq, old_id)) = self.order.front() {
            if now.saturating_duration_since(at) <= window && self.order.len() < Self::MAX {
                break;
            }
            self.order.pop_front();
            self.keys.remove(&seq_key(old_seq));
            if old_id != 0 {
                self.keys.remove(&(old_id | 1));
            }
        }
        self.order.push_back((now, seq, id));
        self.keys.insert(seq_key(seq));
        if id != 0 {
            self.keys.insert(id | 1);
        }
    }

    /// Whether the session took the message stored as `seq`, or another
    /// copy of it (the same message id hash `id`, unless 0).
    pub fn contains(&self, seq: u64, id: u64) -> bool {
        self.keys.contains(&seq_key(seq)) || (id != 0 && self.keys.contains(&(id | 1)))
    }

    /// Messages remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }
}

/// A stream sequence as a key: even, so it never meets a message id
/// hash, which is odd.
fn seq_key(seq: u64) -> u64 {
    seq << 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_for_the_window_whatever_the_count() {
        let mut taken = Taken::default();
        let start = Instant::now();
        let window = Duration::from_secs(10);
        // 100 a second for 9 s: 900 messages, all within the window (the
        // old bound of 256 would have forgotten the first 644).
        for seq in 1..=900u64 {
            let at = start + Duration::from_millis(seq * 10);
            taken.remember(seq, if seq % 2 == 0 { (1000 + seq) | 1 } else { 0 }, at, window);
        }
        assert!(taken.contains(1, 0) && taken.contains(900, 0));
        // Another copy: the same id under a new sequence; no id, no match.
        assert!(taken.contains(10_000, 1002 | 1));
        assert!(!taken.contains(10_000, 0));
        // Past the window, the oldest go.
        taken.remember(901, 0, start + Duration::from_secs(15), window);
        assert!(!taken.contains(1, 0) && !taken.contains(10_000, 1002 | 1));
        assert!(taken.contains(600, 0) && taken.contains(901, 0));
    }

    #[test]
    fn bounded_in_count() {
        let mut taken = Taken::default();
        let now = Instant::now();
        for seq in 1..=(Taken::MAX as u64 + 10) {
            taken.remember(seq, 0, now, Duration::from_secs(3600));
        }
        assert_eq!(taken.len(), Taken::MAX);
        assert!(!taken.contains(10, 0) && taken.contains(11, 0));
        assert_eq!(taken.keys.len(), Taken::MAX, "keys follow the order");
    }
}
