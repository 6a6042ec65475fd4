//! Routing: the subscription index, retained messages and fan-out.
//!
//! The publisher's task does the routing itself: it matches the topic under
//! a read lock, then pushes an `Arc`-shared message into each receiving
//! session's bounded queue. It never waits for a slow subscriber.

mod retained;
mod share;
mod trie;

use std::sync::Arc;

use parking_lot::RwLock;

pub use retained::Retained;
#[cfg(fuzzing)]
pub(crate) use trie::Trie as FuzzTrie;
pub use trie::{Match, Subscriber};

use crate::codec::{QoS, TopicFilter};
use crate::message::{Delivery, Message};
use crate::metrics::{DropReason, Metrics};
use crate::session::{Held, Refusal, Session};
use crate::store::Store;

/// Which subscriptions a message is routed to.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Every matching subscription, one member per share group.
    All {
        /// Whether the cluster's queue stream holds the message, so that
        /// sessions kept in JetStream take it from there
        /// ([`crate::session::SessionState::kept`]).
        in_queue: bool,
    },
    /// Matching subscriptions outside share groups (the cluster picks the
    /// node that serves each group).
    Plain {
        /// As for [`Scope::All`].
        in_queue: bool,
    },
    /// One member of share group `group` of exactly `filter`.
    Group {
        /// The shared subscription's filter, without `$share/{group}/`.
        filter: &'a str,
        /// The share group's name.
        group: &'a str,
    },
}

/// A change of local interest, reported by the router in trie order to whoever
/// follows it (the cluster link): a
/// filter (without `$share/{group}/`) and, for a shared subscription, its
/// share group.
#[derive(Debug)]
pub enum Interest {
    /// A session subscribed to this filter.
    Add(Box<str>, Option<Box<str>>),
    /// A session's subscription to this filter went away.
    Remove(Box<str>, Option<Box<str>>),
}

/// Subscriptions and retained messages.
#[derive(Debug, Default)]
pub struct Router {
    trie: RwLock<trie::Trie>,
    retained: Retained,
    /// Share groups' messages waiting for a member to connect.
    waiting: share::ShareQueues,
    /// Where subscriptions added and removed are reported, in trie order,
    /// when the node is part of a cluster.
    interest: Option<tokio::sync::mpsc::UnboundedSender<Interest>>,
}

impl Router {
    /// A router that reports every subscription added and removed to the
    /// cluster link.
    pub fn with_interest(interest: tokio::sync::mpsc::UnboundedSender<Interest>) -> Router {
        Router { interest: Some(interest), ..Router::default() }
    }

    /// Adds or replaces `session`'s subscription. Returns whether the
    /// session already had a subscription with this filter.
    pub fn subscribe(&self, session: &Arc<Session>, filter: &TopicFilter, sub: &crate::message::Subscription) -> bool {
        let share = filter.share_group().is_some().then(|| Arc::new(filter.clone()));
        let subscriber = Subscriber { session: session.clone(), options: sub.options, id: sub.id, share };
        let mut trie = self.trie.write();
        let existed = trie.insert(filter.filter(), filter.share_group(), subscriber);
        // Reported under the lock, so the cluster link sees adds and
        // removes of one filter in the order the trie applied them.
        if !existed && let Some(interest) = &self.interest {
            let _ = interest.send(Interest::Add(filter.filter().into(), filter.share_group().map(Into::into)));
        }
        existed
    }

    /// One connected member of share group `group` of exactly `filter`,
    /// chosen in turn as for a routed message.
    pub fn share_member(&self, filter: &str, group: &str) -> Option<Match> {
        self.trie.read().group_member(filter, group)
    }

    /// The sessions of every member of share group `group` of `filter`.
    pub fn share_members(&self, filter: &str, group: &str) -> Vec<Arc<Session>> {
        self.trie.read().group_sessions(filter, group)
    }

    /// Removes `session`'s subscription. Returns whether it existed.
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &TopicFilter) -> bool {
        let mut trie = self.trie.write();
        let removed = trie.remove(filter.filter(), filter.share_group(), session);
        if removed && let Some(interest) = &self.interest {
            let _ = interest.send(Interest::Remove(filter.filter().into(), filter.share_group().map(Into::into)));
        }
        removed
    }

    /// Number of subscriptions in the index.
    pub fn subscription_count(&self) -> usize {
        self.trie.read().len()
    }

    /// The retained message store.
    pub fn retained(&self) -> &Retained {
        &self.retained
    }

    /// Routes a message to every matching session; `publisher` is used for
    /// No Local. Messages queued for offline sessions go to `store` too.
    /// Returns the number of sessions it was delivered to.
    /// Drops (full queues, QoS 0 for offline sessions) are counted in
    /// `metrics`. With `held`, QoS 1/2 deliveries that a full queue of an
    /// online session refuses are put there instead of being dropped
    /// ([`Session::offer`]); they count as delivered.
    pub fn route(
        &self,
        message: &Arc<Message>,
        publisher: Option<&Arc<Session>>,
        store: &dyn Store,
        metrics: &Metrics,
        held: Option<&mut Vec<Held>>,
    ) -> usize {
        self.route_scoped(message, publisher, Scope::All { in_queue: false }, store, metrics, held)
    }

    /// [`Router::route`] to the subscriptions `scope` names.
    pub fn route_scoped(
        &self,
        message: &Arc<Message>,
        publisher: Option<&Arc<Session>>,
        scope: Scope<'_>,
        store: &dyn Store,
        metrics: &Metrics,
        mut held: Option<&mut Vec<Held>>,
    ) -> usize {
        let mut matches = Vec::new();
        // Share groups with no member connected: they keep the message.
        let mut unserved = Vec::new();
        // How many subscriber lists the matches came from: from one, no
        // session is there twice.
        let (in_queue, lists) = match scope {
            Scope::All { in_queue } => {
                (in_queue, self.trie.read().matches_scoped(message.topic.as_str(), true, &mut matches, &mut unserved))
            }
            Scope::Plain { in_queue } => {
                (in_queue, self.trie.read().matches_scoped(message.topic.as_str(), false, &mut matches, &mut unserved))
            }
            Scope::Group { filter, group } => {
                let trie = self.trie.read();
                match trie.group_member(filter, group) {
                    Some(member) => matches.push(member),
                    None => unserved.extend(trie.group_key(filter, group)),
                }
                (false, 1)
            }
        };
        for share in &unserved {
            self.wait_in_group(share, message, store, metrics);
        }
        let mut delivered = unserved.len();
        if let Some(me) = publisher {
            matches.retain(|m| !(m.no_local && Arc::ptr_eq(&m.session, me)));
        }
        // Overlapping subscriptions of one session get one delivery at the
        // highest granted QoS carrying every subscription identifier
        // [MQTT-3.3.4-2], [MQTT-3.3.4-3]. A share group's copy is a
        // delivery of its own, even to a member that also has a plain
        // subscription matching [MQTT-4.8.2]: it goes to another member
        // should this one leave. Those come last. Matches from one list
        // (the common fan-out: one filter, many subscribers) need no sort.
        if lists > 1 {
            matches.sort_unstable_by_key(|m| (m.share.is_some(), Arc::as_ptr(&m.session)));
        }
        let plain = matches.iter().take_while(|m| m.share.is_none()).count();
        let (matches, shared) = matches.split_at(plain);
        let mut i = 0;
        while i < matches.len() {
            let mut j = i + 1;
            while j < matches.len() && Arc::ptr_eq(&matches[i].session, &matches[j].session) {
                j += 1;
            }
            let group = &matches[i..j];
            let granted = group.iter().map(|m| m.qos).max().unwrap_or(QoS::AtMostOnce);
            let delivery = Delivery {
                message: message.clone(),
                qos: message.qos.min(granted),
                retain: message.retain && group.iter().any(|m| m.retain_as_published),
                subscription_ids: group.iter().filter_map(|m| m.id).collect(),
                stored: None,
                jetstream: None,
                share: None,
            };
            // A kept session's consumer has the message (share groups have
            // their own).
            let target = Target { session: &group[0].session, covered: in_queue, publisher };
            target.offer(self, delivery, store, metrics, held.as_deref_mut());
            delivered += 1;
            i = j;
        }
        for member in shared {
            let delivery = Delivery {
                message: message.clone(),
                qos: message.qos.min(member.qos),
                retain: message.retain && member.retain_as_published,
                subscription_ids: member.id.into_iter().collect(),
                stored: None,
                jetstream: None,
                share: member.share.clone(),
            };
            let target = Target { session: &member.session, covered: false, publisher };
            target.offer(self, delivery, store, metrics, held.as_deref_mut());
            delivered += 1;
        }
        delivered
    }
}

/// A session a routed message goes to.
struct Target<'a> {
    session: &'a Arc<Session>,
    /// Whether the cluster's queue stream holds the message for it, should
    /// the session be kept in JetStream.
    covered: bool,
    publisher: Option<&'a Arc<Session>>,
}

impl Target<'_> {
    /// Queues `delivery` (a full queue still counts as a matching
    /// subscriber for the v5 PUBACK reason; the drop is counted instead),
    /// or, with `held`, hands back what a full queue refuses. A share
    /// group's delivery whose member left meanwhile goes to another.
    fn offer(
        &self,
        router: &Router,
        delivery: Delivery,
        store: &dyn Store,
        metrics: &Metrics,
        held: Option<&mut Vec<Held>>,
    ) {
        // Never the publisher's own session: its queue drains as its
        // client acknowledges, which the held-back publisher would not
        // be reading.
        let own = self.publisher.is_some_and(|me| Arc::ptr_eq(me, self.session));
        let away = match held.filter(|_| !own) {
            Some(held) => Held::offer(self.session, delivery, self.covered, store, metrics, held),
            None => match self.session.enqueue_and_store(delivery, Some(store), self.covered) {
                Ok(evicted) => {
                    metrics.dropped(DropReason::QueueFull, evicted as u64);
                    None
                }
                Err(Refusal::Away(delivery)) => Some(delivery),
                Err(Refusal::Dropped(reason)) => {
                    metrics.dropped(reason, 1);
                    None
                }
                Err(Refusal::Full(_)) => {
                    metrics.dropped(DropReason::QueueFull, 1);
                    None
                }
            },
        };
        if let Some(delivery) = away {
            router.redispatch(vec![delivery], store, metrics);
        }
    }
}
