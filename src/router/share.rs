//! Share groups' messages that no member holds: the queue each group keeps
//! while none of its members can take them, and the moves that hand a
//! leaving member's unacknowledged messages to the others.
//!
//! A share group gives each message to one connected member. A member
//! that leaves for good (its session ends), or stays away longer than
//! `limits.share_hold_ms`, gives up the QoS 1/2 messages its client has
//! not received (QoS 2: not answered with PUBREC) [MQTT-4.8.2]: they go
//! to the group's connected members in turn, ahead of their queues in
//! their order, as far as those queues have room. What no member can take
//! waits in the group's queue, as does what is published to a group with
//! no member connected, until a member connects, subscribes, or drains
//! its queue. That queue has the bound of a session's
//! (`limits.max_queued_messages`/`max_queued_bytes`); what does not fit
//! is dropped and counted (`share_group_full`). So no queue grows past its
//! bound, however many members come and go. The group's messages are
//! kept in the store under the group: with `[storage]` they outlive the
//! broker.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use super::{Match, Router};
use crate::codec::{QoS, TopicFilter};
use crate::message::Delivery;
use crate::metrics::{DropReason, Metrics};
use crate::session::{QueueBound, Room, Session};
use crate::store::Store;

/// The queues of share groups with messages no member can take now.
#[derive(Debug)]
pub(super) struct ShareQueues {
    inner: Mutex<Queues>,
    /// Messages in all the queues, so a connection learns without a lock
    /// that nothing waits (the common case).
    waiting: AtomicUsize,
}

#[derive(Debug)]
struct Queues {
    /// By shared subscription (`$share/{group}/{filter}`).
    groups: HashMap<TopicFilter, GroupQueue>,
    /// Each group's bound: a session's (`limits.max_queued_*`).
    bound: QueueBound,
}

#[derive(Debug, Default)]
struct GroupQueue {
    /// Oldest first, each with the key the store keeps it under.
    deliveries: VecDeque<Delivery>,
    /// Topic and payload bytes, as a session's queue counts them.
    bytes: usize,
}

impl Default for ShareQueues {
    fn default() -> ShareQueues {
        let bound = QueueBound::default();
        ShareQueues { inner: Mutex::new(Queues { groups: HashMap::new(), bound }), waiting: AtomicUsize::new(0) }
    }
}

fn size(d: &Delivery) -> usize {
    d.message.topic.as_str().len() + d.message.payload.len()
}

/// Whether `delivery` fits in `room` (a session queue's, see
/// [`crate::session::SessionState::room`]), and if so takes it out.
fn take_room(room: &mut Room, delivery: &Delivery) -> bool {
    let size = size(delivery);
    // A message larger than the byte bound still fits an empty queue.
    if room.messages == 0 || (!room.empty && room.bytes.is_some_and(|bytes| bytes < size)) {
        return false;
    }
    room.messages -= 1;
    room.empty = false;
    if let Some(bytes) = &mut room.bytes {
        *bytes = bytes.saturating_sub(size);
    }
    true
}

/// `delivery` as member `to` gets it: at the lower of the published and
/// granted QoS, its retain flag and subscription identifier.
fn for_member(mut delivery: Delivery, to: &Match) -> Delivery {
    delivery.qos = delivery.message.qos.min(to.qos);
    delivery.retain = delivery.message.retain && to.retain_as_published;
    delivery.subscription_ids = to.id.into_iter().collect();
    delivery
}

impl Router {
    /// Sets the bound of each share group's queue (start-up, reload).
    pub fn set_share_bound(&self, bound: QueueBound) {
        self.waiting.inner.lock().bound = bound;
    }

    /// Messages waiting in share groups' queues.
    pub fn share_waiting(&self) -> usize {
        self.waiting.waiting.load(Ordering::Relaxed)
    }

    /// Puts back what the store kept for share group `share`, whatever
    /// the bound: nothing recovered is dropped.
    pub fn restore_waiting(&self, share: TopicFilter, deliveries: Vec<Delivery>) {
        let mut queues = self.waiting.inner.lock();
        self.waiting.waiting.fetch_add(deliveries.len(), Ordering::Relaxed);
        let queue = queues.groups.entry(share).or_default();
        for delivery in deliveries {
            queue.bytes += size(&delivery);
            queue.deliveries.push_back(delivery);
        }
    }

    /// A message for share group `share`, which has no member connected:
    /// QoS 1/2 wait in the group's queue (kept in `store`), within its
    /// bound; the rest is dropped and counted.
    pub(super) fn wait_in_group(
        &self,
        share: &Arc<TopicFilter>,
        message: &Arc<crate::message::Message>,
        store: &dyn Store,
        metrics: &Metrics,
    ) {
        if message.qos == QoS::AtMostOnce {
            metrics.dropped(DropReason::OfflineQos0, 1);
            return;
        }
        let delivery = Delivery {
            message: message.clone(),
            qos: message.qos,
            retain: message.retain,
            subscription_ids: Vec::new(),
            stored: None,
            jetstream: None,
            share: Some(share.clone()),
        };
        self.park(share, vec![delivery], false, store, metrics);
    }

    /// Adds `deliveries` (none of them keyed in the store) to the queue of
    /// share group `share` — at its back, or at its `front` for those
    /// taken from it that a member could not take after all — keeping
    /// each in `store`; what does not fit is dropped and counted.
    fn park(&self, share: &TopicFilter, deliveries: Vec<Delivery>, front: bool, store: &dyn Store, metrics: &Metrics) {
        let mut queues = self.waiting.inner.lock();
        let bound = queues.bound;
        let queue = queues.groups.entry(share.clone()).or_default();
        let mut kept = Vec::with_capacity(deliveries.len());
        let mut dropped = 0;
        for mut delivery in deliveries {
            // Counted as if already in: `kept` joins the queue below.
            let (len, bytes) = (queue.deliveries.len() + kept.len(), queue.bytes);
            if len >= bound.messages || (bound.bytes > 0 && len > 0 && bytes + size(&delivery) > bound.bytes) {
                dropped += 1;
                continue;
            }
            // Under the lock, so the store's order is the queue's.
            delivery.stored = store.share_queued(share, &delivery);
            queue.bytes += size(&delivery);
            kept.push(delivery);
        }
        let n = kept.len();
        if front {
            for delivery in kept.into_iter().rev() {
                queue.deliveries.push_front(delivery);
            }
        } else {
            queue.deliveries.extend(kept);
        }
        if queue.deliveries.is_empty() {
            queues.groups.remove(share);
        }
        self.waiting.waiting.fetch_add(n, Ordering::Relaxed);
        metrics.dropped(DropReason::ShareGroupFull, dropped as u64);
    }

    /// Hands share groups' messages that a member gave up (none keyed in
    /// the store, none kept by JetStream) to the connected members of
    /// their groups in turn, as far as their queues have room, and the
    /// rest to the groups' queues. The member that gave them up is no
    /// candidate: it is gone, or away.
    pub fn redispatch(&self, deliveries: Vec<Delivery>, store: &dyn Store, metrics: &Metrics) {
        let now = Instant::now();
        let mut by_group: Vec<(Arc<TopicFilter>, Vec<Delivery>)> = Vec::new();
        let mut expired = 0;
        for delivery in deliveries {
            let Some(share) = delivery.share.clone() else { continue };
            if delivery.message.is_expired(now) {
                expired += 1;
                continue;
            }
            match by_group.iter_mut().find(|(s, _)| *s == share) {
                Some((_, batch)) => batch.push(delivery),
                None => by_group.push((share, vec![delivery])),
            }
        }
        metrics.dropped(DropReason::Expired, expired);
        for (share, batch) in by_group {
            let (filter, group) = (share.filter(), share.share_group().unwrap_or_default());
            let members = self.trie.read().group_online(filter, group);
            let left = spread(&members, batch, store);
            if !left.is_empty() {
                self.park(&share, left, false, store, metrics);
            }
        }
    }

    /// Hands `session`, if connected, what waits in its share groups (only
    /// `share`'s, for a new subscription), as far as its queue has room;
    /// the store sees each move as one commit. Called when it connects or
    /// subscribes, and after its connection took from its queue.
    pub fn serve_waiting(
        &self,
        session: &Arc<Session>,
        share: Option<&TopicFilter>,
        store: &dyn Store,
        metrics: &Metrics,
    ) {
        if self.share_waiting() == 0 {
            return;
        }
        let (members, mut room) = {
            let state = session.lock();
            if !state.online {
                return;
            }
            let members: Vec<Match> = state
                .subscriptions
                .iter()
                .filter(|(f, _)| f.share_group().is_some() && share.is_none_or(|s| s == *f))
                .map(|(f, sub)| Match {
                    session: session.clone(),
                    qos: sub.options.qos,
                    retain_as_published: sub.options.retain_as_published,
                    no_local: false,
                    id: sub.id,
                    share: Some(Arc::new(f.clone())),
                })
                .collect();
            (members, state.room())
        };
        for member in members {
            let Some(share) = member.share.as_deref() else { continue };
            let taken = self.take_waiting(share, &mut room);
            if taken.is_empty() {
                continue;
            }
            let commit = store.group();
            for key in taken.iter().filter_map(|d| d.stored) {
                store.share_taken(share, key);
            }
            let taken = taken.into_iter().map(|d| for_member(Delivery { stored: None, ..d }, &member)).collect();
            let left = hand_to(&member.session, taken, store);
            if !left.is_empty() {
                self.park(share, left, true, store, metrics);
            }
            drop(commit);
        }
    }

    /// Takes from the front of share group `share`'s queue what fits in
    /// `room`.
    fn take_waiting(&self, share: &TopicFilter, room: &mut Room) -> Vec<Delivery> {
        let mut queues = self.waiting.inner.lock();
        let Some(queue) = queues.groups.get_mut(share) else { return Vec::new() };
        let mut taken = Vec::new();
        while let Some(front) = queue.deliveries.front() {
            if !take_room(room, front) {
                break;
            }
            if let Some(delivery) = queue.deliveries.pop_front() {
                queue.bytes -= size(&delivery);
                taken.push(delivery);
            }
        }
        if queue.deliveries.is_empty() {
            queues.groups.remove(share);
        }
        self.waiting.waiting.fetch_sub(taken.len(), Ordering::Relaxed);
        taken
    }
}

/// Gives `batch` to `members` in turn, each member's share ahead of its
/// queue, as far as each has room; returns what no member took.
fn spread(members: &[Match], batch: Vec<Delivery>, store: &dyn Store) -> Vec<Delivery> {
    if members.is_empty() {
        return batch;
    }
    let mut rooms: Vec<Room> = members.iter().map(|m| m.session.lock().room()).collect();
    let mut shares: Vec<Vec<Delivery>> = vec![Vec::new(); members.len()];
    let mut left = Vec::new();
    let mut turn = 0;
    for delivery in batch {
        let n = members.len();
        let taker = (0..n).map(|i| (turn + i) % n).find(|&i| take_room(&mut rooms[i], &delivery));
        match taker {
            Some(i) => {
                shares[i].push(for_member(delivery, &members[i]));
                turn = i + 1;
            }
            None => left.push(delivery),
        }
    }
    for (member, share) in members.iter().zip(shares) {
        left.extend(hand_to(&member.session, share, store));
    }
    left
}

/// Puts as many of `deliveries` as fit ahead of `session`'s queue if it is
/// still connected (kept in the store when the session outlives its
/// connection), and wakes it; returns the rest.
fn hand_to(session: &Arc<Session>, mut deliveries: Vec<Delivery>, store: &dyn Store) -> Vec<Delivery> {
    if deliveries.is_empty() {
        return deliveries;
    }
    let rest = {
        let mut state = session.lock();
        if !state.online {
            return deliveries;
        }
        let rest = deliveries.split_off(state.fitting(&deliveries));
        if state.expiry_s > 0 {
            for delivery in deliveries.iter_mut().filter(|d| d.qos != QoS::AtMostOnce) {
                delivery.stored = store.queued(session.client_id(), delivery);
            }
        }
        state.push_front(deliveries);
        rest
    };
    session.wake();
    rest
}
