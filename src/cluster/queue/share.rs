//! Share groups kept in JetStream: a durable consumer per group and
//! filter, pulled by each node with a member of the group connected, each
//! message queued for one member there ([`Queue::share`]).
//!
//! A group's QoS 1/2 messages reach a node two ways: from the group's
//! consumer and through the group's NATS queue group. Once the consumer is
//! set up they come from it only; before, and while JetStream cannot be
//! reached, through the queue group (at most once). While a node sets the
//! consumer up, what the queue group brings it is held ([`ShareRoute`]):
//! if the consumer was there before the node began holding, the consumer
//! has those messages too (another node takes them from it), and they are
//! dropped; a consumer just made may have only some of them, and they are
//! delivered (a message published while a group's consumer is first made
//! may come twice: README).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::feeder::{pause, redelivered};
use super::{Pulled, Queue, SHARE_ACK_PENDING, SHARE_BATCH, SHARE_IDLE_MIN, SHARE_PULL, branch, share_consumer_name};
use crate::broker::Node;
use crate::cluster::JETSTREAM_WAIT;
use crate::cluster::link::queued_size;
use crate::cluster::subject::disjoint;
use crate::codec::QoS;
use crate::message::{Delivery, Message};

/// How much earlier than a node began holding a group's messages its
/// consumer must have been made, by JetStream's clock, for the node to
/// drop what it held. A node holds from before it subscribes to the
/// group's queue group, so every message the queue group brings it was
/// published after it began, and JetStream stored it after that: in a
/// consumer made before, all of them. The margin covers the clocks of
/// two NATS servers (the consumer's leader, which dates it, and the one
/// answering) and their adjustments.
const HELD_MARGIN: Duration = Duration::from_millis(200);
/// Bytes of a group's messages a node holds while it sets the consumer
/// up (for at most `JETSTREAM_WAIT`, usually milliseconds); past them it
/// delivers what comes at once, as without a consumer, so a flood during
/// a slow set-up costs no more memory than this per group.
const HELD_BYTES: usize = 1 << 20;

/// [`ShareRoute`]'s states.
const DIRECT: u8 = 0;
const HOLDING: u8 = 1;
const DURABLE: u8 = 2;

/// How the QoS 1/2 messages of one share group reach its members on this
/// node: through its NATS queue group, held while its consumer is set up,
/// or from its consumer (the module's text).
#[derive(Debug)]
pub(in crate::cluster) struct ShareRoute {
    /// `DIRECT`, `HOLDING` or `DURABLE`; changed under `held`'s lock.
    state: AtomicU8,
    held: Mutex<Held>,
}

/// What a group's queue group brought while its consumer was set up.
#[derive(Debug)]
struct Held {
    /// When the node began holding.
    since: Instant,
    messages: Vec<Arc<Message>>,
    bytes: usize,
}

impl ShareRoute {
    /// A group's route on a node whose queue stream is set up (`ready`:
    /// it holds until the group's consumer is) or not yet.
    pub(in crate::cluster) fn new(ready: bool) -> ShareRoute {
        ShareRoute {
            state: AtomicU8::new(if ready { HOLDING } else { DIRECT }),
            held: Mutex::new(Held { since: Instant::now(), messages: Vec::new(), bytes: 0 }),
        }
    }

    /// Whether the group is served from its consumer.
    pub(in crate::cluster) fn durable(&self) -> bool {
        self.state.load(Ordering::Acquire) == DURABLE
    }

    /// A QoS 1/2 message of the group from its NATS queue group: `Some`
    /// to deliver now; `None` when held or left to the consumer.
    pub(in crate::cluster) fn arrived(&self, message: Message) -> Option<Arc<Message>> {
        match self.state.load(Ordering::Acquire) {
            DIRECT => return Some(Arc::new(message)),
            DURABLE => return None,
            _ => {}
        }
        let mut held = self.held.lock();
        match self.state.load(Ordering::Acquire) {
            DIRECT => Some(Arc::new(message)),
            DURABLE => None,
            _ if held.bytes + queued_size(&message) > HELD_BYTES => Some(Arc::new(message)),
            _ => {
                held.bytes += queued_size(&message);
                held.messages.push(Arc::new(message));
                None
            }
        }
    }

    /// The consumer is being set up: hold what the queue group brings
    /// (unless served from the consumer already).
    fn hold(&self) {
        let mut held = self.held.lock();
        if self.state.load(Ordering::Acquire) == DIRECT {
            held.since = Instant::now();
            self.state.store(HOLDING, Ordering::Release);
        }
    }

    /// The consumer is set up: messages come from it from now on. Returns
    /// what was held, and since when ([`Queue::settle_held`]).
    fn kept(&self) -> (Vec<Arc<Message>>, Instant) {
        self.leave(|_| DURABLE)
    }

    /// The consumer could not be set up: unless it was before (then it
    /// keeps the group's messages meanwhile), they come through the queue
    /// group. Returns what was held, and since when.
    fn direct(&self) -> (Vec<Arc<Message>>, Instant) {
        self.leave(|state| if state == DURABLE { DURABLE } else { DIRECT })
    }

    /// This node serves the group no more: what the queue group still
    /// brings goes straight to the router. Returns what was held, and
    /// since when.
    fn end(&self) -> (Vec<Arc<Message>>, Instant) {
        self.leave(|_| DIRECT)
    }

    /// Moves to the state `next` gives for the current one, under the
    /// lock, and hands over what was held.
    fn leave(&self, next: impl FnOnce(u8) -> u8) -> (Vec<Arc<Message>>, Instant) {
        let mut held = self.held.lock();
        self.state.store(next(self.state.load(Ordering::Acquire)), Ordering::Release);
        held.bytes = 0;
        (std::mem::take(&mut held.messages), held.since)
    }
}

/// The part of JetStream's consumer info that tells how long the consumer
/// has been there, both by the server's clock (servers before 2.10 send
/// no `ts`: what was held is then delivered, as when in doubt).
#[derive(serde::Deserialize)]
struct Age {
    #[serde(with = "time::serde::rfc3339")]
    created: time::OffsetDateTime,
    /// When the server answered.
    #[serde(with = "time::serde::rfc3339")]
    ts: time::OffsetDateTime,
}

impl Queue {
    /// Serves share group `group` of `filter` from its consumer until
    /// `stop` (this node's last member of it left): sets the consumer up
    /// once the stream is, raises `durable` while it is (QoS 1/2 messages
    /// then reach the group from the consumer only, not through its NATS
    /// queue group), and takes messages while a member is online here.
    /// JetStream spreads them over the nodes that take.
    pub(in crate::cluster) async fn share(
        self: Arc<Self>,
        filter: Box<str>,
        group: Box<str>,
        route: Arc<ShareRoute>,
        stop: CancellationToken,
        node: Node,
    ) {
        let mut failures = 0;
        let mut connects = self.connects.subscribe();
        loop {
            if let Some(stream) = self.stream() {
                route.hold();
                let config = self.share_config(&filter, &group, &node);
                match stop.run_until_cancelled(self.set_consumer(&stream, config)).await {
                    None => break,
                    Some(Ok(consumer)) => {
                        failures = 0;
                        self.settle_held(route.kept(), &filter, &group, &node).await;
                        if self.serve_share(&consumer, &filter, &group, &stop, &node).await.is_none() {
                            break;
                        }
                    }
                    // Once set up, the consumer stays in JetStream while
                    // this node cannot reach it (NATS away), and keeps the
                    // group's messages: the group is still served from it.
                    Some(Err(e)) => {
                        let durable = route.durable();
                        self.settle_held(route.direct(), &filter, &group, &node).await;
                        if !durable && failures == 0 {
                            warn!(error = %e, %group, %filter, "cluster: share group not kept in JetStream; NATS spreads its messages, at most once, meanwhile");
                        } else {
                            debug!(error = %e, %group, %filter, "cluster: share group's consumer still unavailable");
                        }
                    }
                }
            }
            failures += 1;
            if stop.run_until_cancelled(pause(failures, &mut connects)).await.is_none() {
                break;
            }
        }
        // Left while being set up (or at shutdown, when nothing is
        // delivered any more).
        if !node.shutdown().is_cancelled() {
            self.settle_held(route.end(), &filter, &group, &node).await;
        }
    }

    /// Delivers what group `group`'s queue group brought this node, held
    /// `since`, while its consumer was set up, unless the consumer was made
    /// well before that (by JetStream's clock): then the consumer has all
    /// of it, and a node taking from it delivers it.
    async fn settle_held(&self, (held, since): (Vec<Arc<Message>>, Instant), filter: &str, group: &str, node: &Node) {
        if held.is_empty() {
            return;
        }
        let existed = match self.client.get() {
            Some(client) => {
                let info = format!("CONSUMER.INFO.{}.{}", self.config.name, share_consumer_name(filter, group));
                let (js, empty) = (jetstream::new(client.clone()), serde_json::json!({}));
                match tokio::time::timeout(JETSTREAM_WAIT, js.request(info, &empty)).await {
                    Ok(Ok(jetstream::response::Response::Ok(Age { created, ts }))) => {
                        // Read after the answer, so at least as long as
                        // the server's `ts` is after the holding began.
                        let holding = since.elapsed();
                        ts - created > holding + HELD_MARGIN
                    }
                    _ => false,
                }
            }
            None => false,
        };
        if existed {
            debug!(messages = held.len(), %group, %filter, "cluster: share group's consumer has what came meanwhile");
            return;
        }
        for message in held {
            node.deliver_shared(message, filter, group);
        }
    }

    /// The consumer of share group `group` of `filter`. It outlives the
    /// last node pulling from it by the longest session expiry among the
    /// members here, at least [`SHARE_IDLE_MIN`].
    fn share_config(&self, filter: &str, group: &str, node: &Node) -> consumer::pull::Config {
        let expiry = node.share_members(filter, group).iter().map(|s| s.lock().expiry_s).max().unwrap_or(0);
        consumer::pull::Config {
            durable_name: Some(share_consumer_name(filter, group)),
            description: Some("moat: a share group".to_owned()),
            filter_subjects: disjoint(self.subjects.filter(filter), |p| branch(&self.prefix, p)),
            deliver_policy: consumer::DeliverPolicy::New,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_ack_pending: SHARE_ACK_PENDING,
            inactive_threshold: match expiry {
                u32::MAX => Duration::ZERO,
                s => Duration::from_secs(u64::from(s)).max(SHARE_IDLE_MIN),
            },
            ..consumer::pull::Config::default()
        }
    }

    /// Takes share group messages from `consumer` while a member is online
    /// here. `None` once stopped; `Some` when the consumer failed (it is
    /// set up again).
    async fn serve_share(
        &self,
        consumer: &consumer::Consumer<consumer::pull::Config>,
        filter: &str,
        group: &str,
        stop: &CancellationToken,
        node: &Node,
    ) -> Option<()> {
        loop {
            if !node.share_member(filter, group).is_some_and(|m| m.session.lock().online) {
                stop.run_until_cancelled(tokio::time::sleep(SHARE_PULL)).await?;
                continue;
            }
            let pulling = consumer.batch().max_messages(SHARE_BATCH).expires(SHARE_PULL).messages();
            let mut batch = match stop.run_until_cancelled(pulling).await? {
                Ok(batch) => batch,
                Err(e) => {
                    debug!(error = %e, "cluster: cannot take a share group's messages; again");
                    return Some(());
                }
            };
            while let Some(next) = stop.run_until_cancelled(batch.next()).await? {
                match next {
                    Ok(message) => self.take_shared(message, filter, group, node),
                    Err(e) => {
                        debug!(error = %e, "cluster: taking a share group's messages failed; again");
                        return Some(());
                    }
                }
            }
        }
    }

    /// Queues one QoS 1/2 message from a share group's consumer for an
    /// online member, acknowledged to JetStream once its client has it;
    /// gives it back when no member here can take it now.
    fn take_shared(&self, message: jetstream::Message, filter: &str, group: &str, node: &Node) {
        let Some(Pulled { ack, delivered, published }) = Pulled::of(&message) else { return };
        // QoS 0 messages reach share groups through NATS queue groups.
        let decoded = self.decode(message.message, published).map(|r| r.message);
        let Some(message) = decoded.filter(|m| m.qos != QoS::AtMostOnce) else {
            self.acknowledge(&ack);
            return;
        };
        if delivered > 1 && node.share_members(filter, group).iter().any(|s| redelivered(&mut s.lock(), &ack)) {
            return;
        }
        let Some(member) = node.share_member(filter, group) else {
            self.give_back(&ack);
            return;
        };
        let qos = message.qos.min(member.qos);
        let delivery = Delivery {
            retain: message.retain && member.retain_as_published,
            message: Arc::new(message),
            qos,
            subscription_ids: member.id.into_iter().collect(),
            stored: None,
            // Granted QoS 0: handled once queued.
            jetstream: (qos != QoS::AtMostOnce).then(|| Box::new(ack.clone())),
            share: member.share.clone(),
        };
        let mut state = member.session.lock();
        if !(state.online && state.push(delivery)) {
            drop(state);
            self.give_back(&ack);
            return;
        }
        drop(state);
        member.session.wake();
        if qos == QoS::AtMostOnce {
            self.acknowledge(&ack);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::codec::{Properties, TopicName};

    fn message(bytes: usize) -> Message {
        let topic = TopicName::new("s/1").expect("a topic");
        Message::new(topic, Bytes::from(vec![0; bytes]), QoS::ExactlyOnce, false, &Properties::default())
    }

    #[test]
    fn a_group_is_held_until_its_consumer_is_set_up_then_left_to_it() {
        let route = ShareRoute::new(true);
        assert!(route.arrived(message(10)).is_none(), "held");
        assert!(route.arrived(message(10)).is_none(), "held");
        let (held, _) = route.kept();
        assert_eq!(held.len(), 2);
        assert!(route.durable());
        assert!(route.arrived(message(10)).is_none(), "the consumer has it");
        // A failed set-up later leaves a group served from its consumer.
        assert!(route.direct().0.is_empty());
        assert!(route.arrived(message(10)).is_none(), "the consumer still has it");
        // Until this node serves it no more.
        assert!(route.end().0.is_empty());
        assert!(route.arrived(message(10)).is_some());
    }

    #[test]
    fn without_a_consumer_a_groups_messages_go_through_at_once() {
        let route = ShareRoute::new(false);
        assert!(route.arrived(message(10)).is_some());
        route.hold();
        assert!(route.arrived(message(10)).is_none(), "held");
        assert_eq!(route.direct().0.len(), 1, "a failed set-up hands on what was held");
        assert!(route.arrived(message(10)).is_some());
    }

    #[test]
    fn what_is_held_is_bounded() {
        let route = ShareRoute::new(true);
        assert!(route.arrived(message(HELD_BYTES / 2)).is_none());
        assert!(route.arrived(message(HELD_BYTES / 2)).is_some(), "past the bound: delivered");
        assert!(route.arrived(message(10)).is_none(), "smaller ones still held");
        assert_eq!(route.kept().0.len(), 2);
    }
}
