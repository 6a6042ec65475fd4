//! The feeder of a kept session: takes its messages from its consumer
//! while its connection is attached, matched as the router would.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{FEED_HEARTBEAT, Pulled, Queue, SessionReplica};
use crate::codec::QoS;
use crate::message::{Delivery, JetStreamAck, MessageId, Subscription};
use crate::session::{Session, SessionState};

/// Takes a kept session's messages from its consumer while its connection
/// is attached.
pub(super) struct Feeder {
    pub(super) queue: Arc<Queue>,
    pub(super) session: Arc<Session>,
    /// Messages asked for at once: the client's window.
    pub(super) window: usize,
    /// Cancelled when the connection ends (or the session is no longer
    /// kept).
    pub(super) stop: CancellationToken,
}

impl Feeder {
    /// Pulls from `consumer` until stopped, starting over (after a pause)
    /// whenever the pull ends or fails, as it does while JetStream is away.
    pub(super) async fn run(self, consumer: consumer::Consumer<consumer::pull::Config>) {
        let mut failures = 0;
        let mut connects = self.queue.connects.subscribe();
        loop {
            let pulling = consumer.stream().max_messages_per_batch(self.window).heartbeat(FEED_HEARTBEAT).messages();
            match self.stop.run_until_cancelled(pulling).await {
                None => return,
                Some(Ok(mut messages)) => {
                    while let Some(Some(next)) = self.stop.run_until_cancelled(messages.next()).await {
                        match next {
                            Ok(message) => {
                                failures = 0;
                                self.take_in(message);
                            }
                            Err(e) => {
                                debug!(error = %e, "cluster: taking a kept session's messages failed; again");
                                break;
                            }
                        }
                    }
                }
                Some(Err(e)) => debug!(error = %e, "cluster: cannot take a kept session's messages; again"),
            }
            failures += 1;
            if self.stop.run_until_cancelled(pause(failures, &mut connects)).await.is_none() {
                return;
            }
        }
    }

    /// Queues one message from the consumer for the session, or
    /// acknowledges it at once when the session has no use for it.
    fn take_in(&self, message: jetstream::Message) {
        let Some(Pulled { ack, delivered, published }) = Pulled::of(&message) else { return };
        let received = self.queue.decode(message.message, published);
        let own = received
            .as_ref()
            .and_then(|r| r.publisher.as_ref())
            .is_some_and(|c| c == self.session.client_id().as_bytes());
        let decoded = received.map(|r| r.message);
        let id = decoded.as_ref().map_or(MessageId::NONE, |m| m.id);
        // JetStream may also deliver a message again as if for the first
        // time (the consumer's state rolled back: its server was killed,
        // or its leader cut off before the acknowledgement spread), or
        // hold two copies of one published again: a QoS 2 message is
        // looked for whatever its delivery count.
        let exactly_once = decoded.as_ref().is_some_and(|m| m.qos == QoS::ExactlyOnce);
        let mut state = self.session.lock();
        if (delivered > 1 || exactly_once) && redelivered(&mut state, &ack) {
            return;
        }
        let taken = SessionReplica::get(&state).and_then(|r| r.taken.as_ref());
        if (delivered > 1 || exactly_once) && taken.is_some_and(|t| t.contains(ack.seq, id)) {
            // Taken already and done with; its acknowledgement was lost.
            drop(state);
            self.queue.acknowledge(&ack);
            return;
        }
        let Some(mut delivery) = decoded.and_then(|m| self::delivery(Arc::new(m), &state.subscriptions, own)) else {
            drop(state);
            self.queue.acknowledge(&ack);
            return;
        };
        let (seq, qos) = (ack.seq, delivery.qos);
        delivery.jetstream = Some(Box::new(ack));
        if state.push(delivery) {
            if qos == QoS::ExactlyOnce {
                let window = self.queue.taken_window();
                let taken = SessionReplica::of(&mut state).taken.get_or_insert_default();
                taken.remember(seq, id, Instant::now(), window);
            }
            drop(state);
            self.session.wake();
        } else {
            debug!("cluster: a kept session's queue is full; JetStream delivers the message again later");
        }
    }
}

/// Waits before pulling again after `failures` failed pulls, or until the
/// NATS connection is made again (JetStream has what was stored
/// meanwhile), whichever comes first.
pub(super) async fn pause(failures: u32, connects: &mut watch::Receiver<u64>) {
    tokio::select! {
        () = tokio::time::sleep(crate::cluster::setup_retry_delay(failures)) => {}
        _ = connects.changed() => {}
    }
}

/// Whether the session still holds the message JetStream delivered again
/// as `ack` (its acknowledgement was lost, or the client is slow): if so,
/// it is acknowledged with the new delivery's subject when its time comes.
pub(super) fn redelivered(state: &mut SessionState, ack: &JetStreamAck) -> bool {
    let state = &mut *state;
    let held = state.inflight.iter_mut().map(|i| &mut i.delivery).chain(state.pending.iter_mut());
    for delivery in held {
        if let Some(mine) = delivery.jetstream.as_mut().filter(|j| j.seq == ack.seq) {
            mine.reply = ack.reply.clone();
            return true;
        }
    }
    false
}

/// The delivery of `message` to a session with `subscriptions`, as the
/// router would make it (with No Local applied when the session's own
/// client published it: `own`); `None` unless some non-shared
/// subscription matches at QoS 1 or 2.
pub(super) fn delivery(
    message: Arc<crate::message::Message>,
    subscriptions: &HashMap<crate::codec::TopicFilter, Subscription, crate::session::Keyed>,
    own: bool,
) -> Option<Delivery> {
    let mut granted = None;
    let (mut retain, mut ids) = (false, Vec::new());
    for (filter, sub) in subscriptions {
        if filter.share_group().is_some()
            || (own && sub.options.no_local)
            || !crate::codec::topic::filter_matches(filter.filter(), message.topic.as_str())
        {
            continue;
        }
        granted = granted.max(Some(sub.options.qos));
        retain |= sub.options.retain_as_published;
        ids.extend(sub.id);
    }
    let qos = message.qos.min(granted?);
    (qos != QoS::AtMostOnce).then(|| Delivery {
        retain: message.retain && retain,
        message,
        qos,
        subscription_ids: ids,
        stored: None,
        jetstream: None,
        share: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Properties, SubscriptionOptions, TopicFilter, TopicName};

    #[test]
    fn a_taken_message_is_delivered_as_the_router_would() {
        let sub = |qos, id, rap| Subscription {
            options: SubscriptionOptions { qos, retain_as_published: rap, ..SubscriptionOptions::default() },
            id,
        };
        let subscriptions: HashMap<_, _, crate::session::Keyed> = HashMap::from_iter([
            (TopicFilter::new("a/#").expect("valid"), sub(QoS::AtLeastOnce, Some(1), false)),
            (TopicFilter::new("a/+").expect("valid"), sub(QoS::ExactlyOnce, Some(2), true)),
            (TopicFilter::new("$share/g/a/b").expect("valid"), sub(QoS::ExactlyOnce, Some(3), true)),
            (TopicFilter::new("zero/#").expect("valid"), sub(QoS::AtMostOnce, None, false)),
        ]);
        let message = |topic: &str, qos| {
            let topic = TopicName::new(topic).expect("valid");
            Arc::new(crate::message::Message::new(topic, bytes::Bytes::new(), qos, true, &Properties::default()))
        };
        let d = delivery(message("a/b", QoS::ExactlyOnce), &subscriptions, false).expect("matches");
        let mut ids = d.subscription_ids.clone();
        ids.sort_unstable();
        assert_eq!((d.qos, d.retain, ids), (QoS::ExactlyOnce, true, vec![1, 2]));
        let d = delivery(message("a/b/c", QoS::ExactlyOnce), &subscriptions, false).expect("matches");
        assert_eq!((d.qos, d.retain, d.subscription_ids), (QoS::AtLeastOnce, false, vec![1]));
        assert!(delivery(message("zero/1", QoS::AtLeastOnce), &subscriptions, false).is_none(), "granted QoS 0");
        assert!(delivery(message("a/b", QoS::AtMostOnce), &subscriptions, false).is_none(), "published at QoS 0");
        assert!(delivery(message("b", QoS::AtLeastOnce), &subscriptions, false).is_none());
        let mut mine = sub(QoS::AtLeastOnce, Some(4), false);
        mine.options.no_local = true;
        let subscriptions: HashMap<_, _, crate::session::Keyed> =
            HashMap::from_iter([(TopicFilter::new("own/#").expect("valid"), mine)]);
        assert!(delivery(message("own/1", QoS::AtLeastOnce), &subscriptions, true).is_none(), "No Local");
        assert!(delivery(message("own/1", QoS::AtLeastOnce), &subscriptions, false).is_some());
    }
}
