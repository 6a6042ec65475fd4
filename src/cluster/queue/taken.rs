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
//! across a leader change. And a session that becomes kept while messages
//! flow gets some both ways: its node queued them for it (not kept yet)
//! after its consumer was made (which has them too); those are
//! remembered by their [`MessageId`] alone ([`Taken::remember_copy`]).
//!
//! How long to remember is a matter of time, not of count: a session that
//! takes 100 messages a second takes 500 between a lost acknowledgement
//! and the redelivery five seconds later. (A bound of 256 messages let
//! about one duplicate in five runs of a JetStream leader cut through.)

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::message::MessageId;

/// QoS 2 messages a session took from JetStream, for as long as JetStream
/// may hand them over again.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    /// Oldest first: when each was taken, its stream sequence (0 for a
    /// copy routed here) and its message id.
    order: VecDeque<(Instant, u64, MessageId)>,
    /// The keys of `order`, for a look-up that does not walk it:
    /// sequences as even keys, message ids (odd) as they are.
    keys: HashSet<u64>,
}

impl Taken {
    /// Messages remembered at most, whatever their age: about 800 KiB for
    /// a session that takes QoS 2 messages faster than this over the
    /// window.
    pub const MAX: usize = 16_384;

    /// Remembers that the session took the message stored as `seq` with
    /// message id `id` (perhaps none) at `now`, forgetting what was taken
    /// longer than `window` ago.
    pub fn remember(&mut self, seq: u64, id: MessageId, now: Instant, window: Duration) {
        while let Some(&(at, old_seq, old_id)) = self.order.front() {
            if now.saturating_duration_since(at) <= window && self.order.len() < Self::MAX {
                break;
            }
            self.order.pop_front();
            if old_seq != 0 {
                self.keys.remove(&seq_key(old_seq));
            }
            if !old_id.is_none() {
                self.keys.remove(&old_id.get());
            }
        }
        self.order.push_back((now, seq, id));
        if seq != 0 {
            self.keys.insert(seq_key(seq));
        }
        if !id.is_none() {
            self.keys.insert(id.get());
        }
    }

    /// Remembers that the session got a copy of message `id` its node
    /// routed to it, which its consumer may hold too.
    pub fn remember_copy(&mut self, id: MessageId, now: Instant, window: Duration) {
        self.remember(0, id, now, window);
    }

    /// Whether the session took the message stored as `seq`, or another
    /// copy of it (the same message id `id`, unless none).
    pub fn contains(&self, seq: u64, id: MessageId) -> bool {
        self.keys.contains(&seq_key(seq)) || (!id.is_none() && self.keys.contains(&id.get()))
    }

    /// Messages remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }
}

/// A stream sequence as a key: even, so it never meets a message id,
/// which is odd.
fn seq_key(seq: u64) -> u64 {
    seq << 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Message id `n` (made odd).
    fn id(n: u64) -> MessageId {
        MessageId::from_header(&format!("{:016x}", n | 1))
    }

    #[test]
    fn remembered_for_the_window_whatever_the_count() {
        let mut taken = Taken::default();
        let start = Instant::now();
        let window = Duration::from_secs(10);
        // 100 a second for 9 s: 900 messages, all within the window (the
        // old bound of 256 would have forgotten the first 644).
        for seq in 1..=900u64 {
            let at = start + Duration::from_millis(seq * 10);
            taken.remember(seq, if seq % 2 == 0 { id(1000 + seq) } else { MessageId::NONE }, at, window);
        }
        assert!(taken.contains(1, MessageId::NONE) && taken.contains(900, MessageId::NONE));
        // Another copy: the same id under a new sequence; no id, no match.
        assert!(taken.contains(10_000, id(1002)));
        assert!(!taken.contains(10_000, MessageId::NONE));
        // Past the window, the oldest go.
        taken.remember(901, MessageId::NONE, start + Duration::from_secs(15), window);
        assert!(!taken.contains(1, MessageId::NONE) && !taken.contains(10_000, id(1002)));
        assert!(taken.contains(600, MessageId::NONE) && taken.contains(901, MessageId::NONE));
    }

    #[test]
    fn bounded_in_count() {
        let mut taken = Taken::default();
        let now = Instant::now();
        for seq in 1..=(Taken::MAX as u64 + 10) {
            taken.remember(seq, MessageId::NONE, now, Duration::from_secs(3600));
        }
        assert_eq!(taken.len(), Taken::MAX);
        assert!(!taken.contains(10, MessageId::NONE) && taken.contains(11, MessageId::NONE));
        assert_eq!(taken.keys.len(), Taken::MAX, "keys follow the order");
    }

    /// A copy routed to the session is known by its id alone, under any
    /// stream sequence; it takes no sequence's place.
    #[test]
    fn a_routed_copy_is_known_by_its_id() {
        let mut taken = Taken::default();
        let now = Instant::now();
        taken.remember_copy(id(7), now, Duration::from_secs(60));
        assert!(taken.contains(42, id(7)));
        assert!(!taken.contains(42, id(9)) && !taken.contains(0, MessageId::NONE));
        assert_eq!(taken.keys.len(), 1);
    }
}
