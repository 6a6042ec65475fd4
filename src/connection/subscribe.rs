//! SUBSCRIBE and UNSUBSCRIBE: limits, the policy, the router, the store,
//! and the retained messages a new subscription is owed.

use super::{Close, Connection, Park};
use crate::auth::Action;
use crate::codec::{
    Packet, Properties, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions, TopicFilter, UnsubAck,
    Unsubscribe,
};
use crate::message::{Delivery, Subscription};
use crate::metrics::{DropReason, Limit};

impl<S> Connection<S>
where
    S: Park,
{
    pub(super) async fn on_subscribe(&mut self, subscribe: Subscribe) -> Result<(), Close> {
        let sub_id = subscribe.properties.subscription_identifiers.first().copied();
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        let running = self.broker.config();
        for (filter, options) in subscribe.filters {
            if let Some(refused) = self.subscription_refused(&filter, &options, &running.limits)? {
                reasons.push(refused);
                continue;
            }
            let Some((options, existed)) = self.subscribe_filter(&filter, options, sub_id).await else {
                reasons.push(ReasonCode::NOT_AUTHORIZED);
                continue;
            };
            reasons.push(ReasonCode(options.qos as u8));
            let shared = filter.share_group().is_some();
            if shared {
                // What the group kept while no member was connected.
                self.broker.serve_waiting(&self.attached.session, Some(&filter));
                self.want_drain = true;
            }
            // Retained messages are never sent to shared subscriptions.
            let send_retained = !shared
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                self.retained_matching(&filter, options.qos, sub_id, &mut retained).await;
            }
        }
        let suback = SubAck { packet_id: subscribe.packet_id, properties: Properties::default(), reasons };
        self.send(&Packet::SubAck(suback));
        #[cfg(feature = "cluster")]
        {
            self.subscriptions_changed = true;
        }
        self.keep_retained(retained);
        Ok(())
    }

    /// Why one filter of a SUBSCRIBE is refused before the policy is asked:
    /// over the topic limits or the subscription quota (a SUBACK reason), or
    /// No Local on a shared subscription (a protocol error, which closes).
    fn subscription_refused(
        &self,
        filter: &TopicFilter,
        options: &SubscriptionOptions,
        limits: &crate::config::Limits,
    ) -> Result<Option<ReasonCode>, Close> {
        if filter.share_group().is_some() && options.no_local {
            return Err(Close::Protocol(ReasonCode::PROTOCOL_ERROR, "No Local on a shared subscription"));
        }
        let over = if filter.as_str().len() > limits.max_topic_length {
            Some(Limit::TopicLength)
        } else if filter.filter().split('/').count() > limits.max_topic_levels {
            Some(Limit::TopicLevels)
        } else {
            None
        };
        if let Some(limit) = over {
            self.broker.metrics.limit_hit(limit);
            return Ok(Some(ReasonCode::TOPIC_FILTER_INVALID));
        }
        if limits.max_subscriptions_per_client > 0 {
            let state = self.attached.session.lock();
            let full = state.subscriptions.len() >= limits.max_subscriptions_per_client
                && !state.subscriptions.contains_key(filter);
            drop(state);
            if full {
                // 3.1.1 SUBACK turns every failure into 0x80.
                self.broker.metrics.limit_hit(Limit::Subscriptions);
                return Ok(Some(ReasonCode::QUOTA_EXCEEDED));
            }
        }
        Ok(None)
    }

    /// Asks the policy and, if it allows, adds the subscription to the
    /// router, the store and the session. Returns the options granted and
    /// whether the session already had this filter; `None`: not authorized.
    async fn subscribe_filter(
        &mut self,
        filter: &TopicFilter,
        mut options: SubscriptionOptions,
        sub_id: Option<u32>,
    ) -> Option<(SubscriptionOptions, bool)> {
        let policy = self.broker.policy();
        let now = std::time::Instant::now();
        if !self.allowed_by(&policy, now, Action::Subscribe, filter.as_str(), options.qos, false).await {
            return None;
        }
        options.qos = options.qos.min(QoS::ExactlyOnce);
        let subscription = Subscription { options, id: sub_id };
        let existed = self.broker.router.subscribe(&self.attached.session, filter, &subscription);
        self.broker.store.subscribed(self.attached.session.client_id(), filter, &subscription);
        self.attached.session.lock().subscriptions.insert(filter.clone(), subscription);
        // A plugin reload that swapped the policy after the check above
        // may have swept the session's subscriptions before this one was
        // added; ask the policy in force now, so none slips through.
        if self.broker.policy().generation() != policy.generation()
            && !self.allowed(Action::Subscribe, filter.as_str(), options.qos, false).await
        {
            self.attached.session.lock().subscriptions.remove(filter);
            self.broker.router.unsubscribe(&self.attached.session, filter);
            self.broker.store.unsubscribed(self.attached.session.client_id(), filter);
            return None;
        }
        Some((options, existed))
    }

    /// The retained messages `filter` matches that the client may receive,
    /// as deliveries at the granted QoS, added to `out`.
    async fn retained_matching(
        &mut self,
        filter: &TopicFilter,
        granted: QoS,
        sub_id: Option<u32>,
        out: &mut Vec<Delivery>,
    ) {
        for message in self.broker.router.retained().matching(filter) {
            if !self.allowed(Action::Retained, message.topic.as_str(), message.qos, true).await {
                continue;
            }
            out.push(Delivery {
                qos: message.qos.min(granted),
                message,
                retain: true,
                subscription_ids: sub_id.into_iter().collect(),
                stored: None,
                jetstream: None,
                share: None,
            });
        }
    }

    /// Keeps the retained messages a SUBSCRIBE matched, to send ahead of
    /// the queue.
    fn keep_retained(&mut self, retained: Vec<Delivery>) {
        if retained.is_empty() {
            return;
        }
        // Not through the session's queue, whose bound is for messages
        // arriving faster than the client reads: a `#` subscription
        // may match many more retained messages than that, and each is
        // owed. They are sent ahead of the queue, within the window.
        // Bounded by the store's size, so re-subscribing in a loop
        // cannot pile up copies.
        let waiting = self.retained_waiting().map_or(0, std::collections::VecDeque::len);
        let room = self.broker.router.retained().len().saturating_sub(waiting);
        let over = retained.len().saturating_sub(room);
        self.broker.metrics.dropped(DropReason::QueueFull, over as u64);
        self.rare().retained.extend(retained.into_iter().take(room));
        self.want_drain = true;
    }

    pub(super) fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            let removed = self.attached.session.lock().subscriptions.remove(filter).is_some();
            self.broker.router.unsubscribe(&self.attached.session, filter);
            self.broker.store.unsubscribed(self.attached.session.client_id(), filter);
            reasons.push(if removed { ReasonCode::SUCCESS } else { ReasonCode::NO_SUBSCRIPTION_EXISTED });
        }
        #[cfg(feature = "cluster")]
        {
            self.subscriptions_changed = true;
        }
        let unsuback = UnsubAck { packet_id: unsubscribe.packet_id, properties: Properties::default(), reasons };
        self.send(&Packet::UnsubAck(unsuback));
    }
}
