//! Share groups' messages that no member holds: the queue each group keeps
//! while none of its members is connected, and the moves that hand a
//! member's unacknowledged messages to the others.
//!
//! A share group gives each message to one connected member. A member
//! that leaves for good (its session ends), or stays away longer than
//! `limits.share_hold_ms`, gives back the QoS 1/2 messages its client has
//! not received (QoS 2: not answered with PUBREC) [MQTT-4.8.2]: they go
//! to the group's connected members in turn, each member's share ahead of
//! its queue in their order, or, with no member connected, wait in the
//! group's queue until one connects or subscribes. That queue has the
//! bound of a session's (`limits.max_queued_messages`/`max_queued_bytes`);
//! what does not fit is dropped and counted (`share_group_full`). Its
//! messages are kept in the store under the group, so with `[storage]`
//! they outlive the broker.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::{Match, Router};
use crate::codec::{QoS, TopicFilter};
use crate::metrics::{DropReason, Metrics};
use crate::session::{Delivery, QueueBound, Session};
use crate::store::Store;

/// The queues of share groups with messages and no member to take them.
#[derive(Debug)]
pub(super) struct ShareQueues {
    inner: Mutex<Queues>,
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
    /// Oldest first; each as published (QoS, retain flag), with the key
    /// the store keeps it under.
    deliveries: VecDeque<Delivery>,
    /// Topic and payload bytes, as a session's queue counts them.
    bytes: usize,
}

impl Default for ShareQueues {
    fn default() -> ShareQueues {
        let bound = crate::config::Limits::default().queue_bound();
        ShareQueues { inner: Mutex::new(Queues { groups: HashMap::new(), bound }) }
    }
}

fn size(d: &Delivery) -> usize {
    d.message.topic.as_str().len() + d.message.payload.len()
}

impl GroupQueue {
    fn fits(&self, bound: QueueBound, delivery: &Delivery) -> bool {
        let len = self.deliveries.len();
        len < bound.messages && (bound.bytes == 0 || len == 0 || self.bytes + size(delivery) <= bound.bytes)
    }
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
        self.waiting.inner.lock().groups.values().map(|g| g.deliveries.len()).sum()
    }

    /// Puts back what the store kept for share group `share`, whatever
    /// the bound: nothing recovered is dropped.
    pub fn restore_waiting(&self, share: TopicFilter, deliveries: Vec<Delivery>) {
        let mut queues = self.waiting.inner.lock();
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
        message: &Arc<super::Message>,
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
        self.park(share, vec![delivery], store, metrics);
    }

    /// Appends `deliveries` (none of them keyed in the store) to the queue
    /// of share group `share`, keeping each in `store`; what does not fit
    /// is dropped and counted.
    fn park(&self, share: &TopicFilter, deliveries: Vec<Delivery>, store: &dyn Store, metrics: &Metrics) {
        let mut queues = self.waiting.inner.lock();
        let bound = queues.bound;
        let queue = queues.groups.entry(share.clone()).or_default();
        let mut dropped = 0;
        for mut delivery in deliveries {
            if !queue.fits(bound, &delivery) {
                dropped += 1;
                continue;
            }
            // Under the lock, so the store's order is the queue's.
            delivery.stored = store.share_queued(share, &delivery);
            queue.bytes += size(&delivery);
            queue.deliveries.push_back(delivery);
        }
        if queue.deliveries.is_empty() {
            queues.groups.remove(share);
        }
        metrics.dropped(DropReason::ShareGroupFull, dropped);
    }

    /// Hands share groups' messages that a member gave up (none keyed in
    /// the store, none kept by JetStream) to the connected members of
    /// their groups in turn, or to the groups' queues when none is.
    /// The member that gave them up is no candidate: it is gone, or away.
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
            let left = self.spread(&members, batch, store);
            if !left.is_empty() {
                self.park(&share, left, store, metrics);
            }
        }
    }

    /// Gives `batch` to `members` in turn, each member's share ahead of
    /// its queue; returns what no member took (all of it without members,
    /// or a member's share when it went away meanwhile).
    fn spread(&self, members: &[Match], batch: Vec<Delivery>, store: &dyn Store) -> Vec<Delivery> {
        if members.is_empty() {
            return batch;
        }
        let mut shares: Vec<Vec<Delivery>> = vec![Vec::new(); members.len()];
        for (i, delivery) in batch.into_iter().enumerate() {
            shares[i % members.len()].push(for_member(delivery, &members[i % members.len()]));
        }
        let mut left = Vec::new();
        for (member, share) in members.iter().zip(shares) {
            if let Err(back) = hand_to(&member.session, share, store) {
                left.extend(back);
            }
        }
        left
    }

    /// Hands the messages waiting in the share groups of `session` (only
    /// `share`'s when given) to it, now that it is connected and a member;
    /// the store sees each move as one commit.
    pub fn serve_waiting(
        &self,
        session: &Arc<Session>,
        share: Option<&TopicFilter>,
        store: &dyn Store,
        metrics: &Metrics,
    ) {
        if self.waiting.inner.lock().groups.is_empty() {
            return;
        }
        let groups: Vec<TopicFilter> = {
            let state = session.lock();
            match share {
                Some(share) => state.subscriptions.contains_key(share).then(|| share.clone()).into_iter().collect(),
                None => state.subscriptions.keys().filter(|f| f.share_group().is_some()).cloned().collect(),
            }
        };
        for share in groups {
            let taken = {
                let mut queues = self.waiting.inner.lock();
                queues.groups.remove(&share).map(|q| q.deliveries).unwrap_or_default()
            };
            if taken.is_empty() {
                continue;
            }
            let commit = store.group();
            for key in taken.iter().filter_map(|d| d.stored) {
                store.share_taken(&share, key);
            }
            let mut deliveries = Vec::with_capacity(taken.len());
            deliveries.extend(taken.into_iter().map(|d| Delivery { stored: None, ..d }));
            let (filter, group) = (share.filter(), share.share_group().unwrap_or_default());
            let member =
                self.trie.read().group_online(filter, group).into_iter().find(|m| Arc::ptr_eq(&m.session, session));
            let left = match member {
                Some(member) => self.spread(std::slice::from_ref(&member), deliveries, store),
                None => deliveries,
            };
            if !left.is_empty() {
                self.park(&share, left, store, metrics);
            }
            drop(commit);
        }
    }
}

/// Puts `deliveries` ahead of `session`'s queue if it is still connected
/// (kept in the store when the session outlives its connection), and
/// wakes it; hands them back otherwise.
fn hand_to(session: &Arc<Session>, mut deliveries: Vec<Delivery>, store: &dyn Store) -> Result<(), Vec<Delivery>> {
    if deliveries.is_empty() {
        return Ok(());
    }
    {
        let mut state = session.lock();
        if !state.online {
            return Err(deliveries);
        }
        if state.expiry_s > 0 {
            for delivery in deliveries.iter_mut().filter(|d| d.qos != QoS::AtMostOnce) {
                delivery.stored = store.queued(session.client_id(), delivery);
            }
        }
        state.push_front(deliveries);
    }
    session.wake();
    Ok(())
}
