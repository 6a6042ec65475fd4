//! Share groups kept in JetStream: a durable consumer per group and
//! filter, pulled by each node with a member of the group connected, each
//! message queued for one member there ([`Queue::share`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::feeder::{pause, redelivered};
use super::{Pulled, Queue, SHARE_ACK_PENDING, SHARE_BATCH, SHARE_IDLE_MIN, SHARE_PULL, branch, share_consumer_name};
use crate::broker::Node;
use crate::cluster::subject::disjoint;
use crate::codec::QoS;
use crate::message::Delivery;

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
        durable: Arc<AtomicBool>,
        stop: CancellationToken,
        node: Node,
    ) {
        let mut failures = 0;
        let mut connects = self.connects.subscribe();
        loop {
            if let Some(stream) = self.stream() {
                let config = self.share_config(&filter, &group, &node);
                match stop.run_until_cancelled(self.set_consumer(&stream, config)).await {
                    None => break,
                    Some(Ok(consumer)) => {
                        failures = 0;
                        durable.store(true, Ordering::Release);
                        if self.serve_share(&consumer, &filter, &group, &stop, &node).await.is_none() {
                            break;
                        }
                    }
                    // Once set up, the consumer stays in JetStream while
                    // this node cannot reach it (NATS away), and keeps the
                    // group's messages: the group is still served from it.
                    Some(Err(e)) if !durable.load(Ordering::Acquire) && failures == 0 => {
                        warn!(error = %e, %group, %filter, "cluster: share group not kept in JetStream; NATS spreads its messages, at most once, meanwhile");
                    }
                    Some(Err(e)) => {
                        debug!(error = %e, %group, %filter, "cluster: share group's consumer still unavailable")
                    }
                }
            }
            failures += 1;
            if stop.run_until_cancelled(pause(failures, &mut connects)).await.is_none() {
                break;
            }
        }
        durable.store(false, Ordering::Release);
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
