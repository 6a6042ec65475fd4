//! Messages to the client: draining the session queue within the client's
//! Receive Maximum, and resending unacknowledged messages on resume.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Close, Connection};
use crate::auth::Action;
use crate::codec::{self, Packet, Properties, PubResp, Publish, QoS};
use crate::message::{Delivery, Inflight, InflightState};
use crate::metrics::DropReason;

/// Bytes of deliveries moved into the write buffer before it is flushed:
/// a client that reads slowly or not at all holds at most this (and one
/// packet) in its write buffer, its backlog staying in the bounded queue.
const DRAIN_BUDGET: usize = 64 * 1024;

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Resends what the previous connection left unacknowledged, in order,
    /// with DUP set [MQTT-4.4.0-1], once the state these packets show is
    /// durable: what the end of that connection reported to the store (the
    /// session's messages again) may still be on its way. Each message is
    /// authorized again for this connection (`receive`): the session may
    /// have been taken over by another principal, or the policy changed,
    /// since it was sent. One it may not receive is dropped from the session
    /// (and counted), as a queued one is in `drain`. A PUBREL carries no
    /// message and goes out.
    pub(super) async fn resume(&mut self) -> Result<(), Close> {
        let inflight: Vec<Inflight> = self.attached.session.lock().inflight.iter().cloned().collect();
        if !inflight.is_empty() {
            self.await_store();
        }
        let policy = self.broker.policy();
        let now = std::time::Instant::now();
        let mut refused = Vec::new();
        for entry in inflight {
            match entry.state {
                InflightState::AwaitPubAck | InflightState::AwaitPubRec => {
                    let (delivery, topic) = (&entry.delivery, entry.delivery.message.topic.as_str());
                    if !self.allowed_by(&policy, now, Action::Receive, topic, delivery.qos, delivery.retain).await {
                        refused.push((entry.packet_id, entry.state));
                        continue;
                    }
                    let publish = self.publish_packet(&entry.delivery, Some(entry.packet_id), true);
                    self.send(&Packet::Publish(publish));
                }
                InflightState::AwaitPubComp => {
                    self.send(&Packet::PubRel(PubResp::success(entry.packet_id)));
                }
            }
        }
        self.drop_inflight(&refused);
        self.await_durable().await?;
        self.flush().await
    }

    /// Takes the in-flight messages `refused` out of the session as if
    /// acknowledged (the store forgets them), and counts them.
    fn drop_inflight(&mut self, refused: &[(crate::codec::PacketId, InflightState)]) {
        if refused.is_empty() {
            return;
        }
        let session = self.attached.session.clone();
        let client_id = session.client_id();
        let mut state = session.lock();
        for &(packet_id, expected) in refused {
            if let Some(entry) = state.take_inflight(packet_id, expected) {
                self.broker.delivered(client_id, &entry.delivery);
            }
        }
        drop(state);
        self.broker.metrics.dropped(DropReason::NotAuthorized, refused.len() as u64);
    }

    /// Moves queued deliveries into the write buffer while the client's
    /// window has room.
    ///
    /// Each delivery passes the receive-side authorization, so a policy
    /// change reaches queued messages and a policy can hide topics from a
    /// subscriber. The queue is worked under the session lock while the
    /// connection's cache knows the verdicts; a delivery it does not know
    /// is taken out, and the plugins are asked with the lock released, so
    /// a plugin that waits never holds up the publishers queueing to this
    /// session.
    pub(super) async fn drain(&mut self) {
        let Some(undecided) = self.drain_locked(None) else { return };
        // Boxed: a plugin's verdict is rare next to cached ones, and its
        // wait would otherwise be part of every idle connection's task.
        Box::pin(self.drain_asking(undecided)).await;
    }

    /// The rest of [`Connection::drain`] once a delivery needs a plugin's
    /// verdict: asks, with the session lock released, and goes on.
    async fn drain_asking(&mut self, undecided: Delivery) {
        let mut next = Some(undecided);
        while let Some(delivery) = next {
            let policy = self.broker.policy();
            let (topic, qos, retain) = (delivery.message.topic.clone(), delivery.qos, delivery.retain);
            let now = std::time::Instant::now();
            let allowed = self.allowed_by(&policy, now, Action::Receive, topic.as_str(), qos, retain).await;
            next = self.drain_locked(Some((delivery, allowed)));
        }
    }

    /// The part of [`Connection::drain`] under the session lock: starts
    /// with `decided` (a delivery taken out and its verdict), then the
    /// retained messages of new subscriptions, then the queue. Encodes
    /// under the lock: it is CPU work only, and it keeps packet-id
    /// allocation and the in-flight list consistent. Returns the delivery
    /// whose verdict only a plugin can give.
    fn drain_locked(&mut self, mut decided: Option<(Delivery, bool)>) -> Option<Delivery> {
        let now = std::time::Instant::now();
        let policy = self.broker.policy();
        let session = self.attached.session.clone();
        let mut state = session.lock();
        let mut stored_qos2 = false;
        let client_id = session.client_id();
        let broker = self.broker.clone();
        let store = &*broker.store;
        let (mut expired, mut refused, mut too_large) = (0, 0, 0);
        let mut undecided = None;
        // Whether the delivery at hand is a retained message sent because
        // of a new subscription (one receiver: its QoS 0 bytes not kept).
        let mut retained_send = false;
        loop {
            let (delivery, verdict) = match decided.take() {
                Some((delivery, allowed)) => (delivery, Some(allowed)),
                None => {
                    // Retained messages for new subscriptions first, then the queue.
                    let retained = self.retained_waiting();
                    let Some(front) = retained.and_then(|r| r.front()).or(state.pending.front()) else { break };
                    if self.wbuf.len() >= DRAIN_BUDGET {
                        // The rest stays queued (where the queue's bounds
                        // apply) until this much is written; the wake-up
                        // brings us back.
                        session.wake();
                        break;
                    }
                    if front.qos != QoS::AtMostOnce && state.inflight.len() >= self.send_window {
                        break;
                    }
                    let next = match self.rare.as_mut().filter(|r| !r.retained.is_empty()) {
                        Some(rare) => {
                            retained_send = true;
                            rare.retained.pop_front()
                        }
                        None => {
                            retained_send = false;
                            state.pop_pending()
                        }
                    };
                    let Some(delivery) = next else { break };
                    (delivery, None)
                }
            };
            if delivery.message.is_expired(now) {
                broker.delivered(client_id, &delivery);
                expired += 1;
                continue;
            }
            let message = &delivery.message;
            let verdict = verdict.or_else(|| {
                self.allowed_cached(
                    &policy,
                    now,
                    Action::Receive,
                    message.topic.as_str(),
                    delivery.qos,
                    delivery.retain,
                )
            });
            let Some(allowed) = verdict else {
                undecided = Some(delivery);
                break;
            };
            if !allowed {
                broker.delivered(client_id, &delivery);
                refused += 1;
                continue;
            }
            if delivery.qos == QoS::AtMostOnce
                && let Some(sent) = self.send_qos0_shared(&delivery, retained_send)
            {
                if sent {
                    self.counts.sent(delivery.qos);
                } else {
                    too_large += 1;
                }
                broker.delivered(client_id, &delivery);
                continue;
            }
            let packet_id = (delivery.qos != QoS::AtMostOnce).then(|| state.allocate_packet_id());
            let publish = Packet::Publish(self.publish_packet(&delivery, packet_id, false));
            if !self.fits_client(&publish) {
                // The client cannot take it; behave as if delivered
                // [MQTT-3.1.2-25].
                broker.delivered(client_id, &delivery);
                too_large += 1;
                continue;
            }
            self.send(&publish);
            self.counts.sent(delivery.qos);
            let Some(packet_id) = packet_id else {
                // A QoS 0 message kept when the connection ended is done.
                broker.delivered(client_id, &delivery);
                continue;
            };
            let waiting =
                if delivery.qos == QoS::AtLeastOnce { InflightState::AwaitPubAck } else { InflightState::AwaitPubRec };
            let mut entry = Inflight { packet_id, delivery, state: waiting };
            if waiting == InflightState::AwaitPubRec {
                // A QoS 2 message to a session that outlives its
                // connection goes out only once its packet id is stored:
                // resent after a crash it must carry the same id, or the
                // client would take it for a new message (and a new one
                // under an id it still holds for a resend). A retained
                // message sent because of a subscription was never
                // queued, so it gets its key here. QoS 1 may be resent
                // under a new id, so it skips this write.
                let delivery = &mut entry.delivery;
                if delivery.stored.is_none() && delivery.jetstream.is_none() && state.expiry_s > 0 {
                    delivery.stored = store.message_key();
                }
                if delivery.stored.is_some() {
                    store.delivery_state(client_id, &entry);
                    stored_qos2 = true;
                }
            }
            state.inflight.push_back(entry);
        }
        session.notify_room(&mut state);
        drop(state);
        if let Some(rare) = self.rare.as_mut().filter(|r| r.retained.is_empty() && r.retained.capacity() > 64) {
            // A subscription matched many retained messages: all sent,
            // their queue's room goes back.
            rare.retained = std::collections::VecDeque::new();
        }
        if stored_qos2 {
            self.await_store();
        }
        let metrics = &self.broker.metrics;
        metrics.dropped(DropReason::Expired, expired);
        metrics.dropped(DropReason::NotAuthorized, refused);
        metrics.dropped(DropReason::TooLarge, too_large);
        undecided
    }

    /// Queues a QoS 0 delivery as the message's shared encoding
    /// ([`crate::router::Message::qos0_packet`]): one copy, no packet built.
    /// `Some(false)` when the client's Maximum Packet Size refuses it,
    /// `None` when this delivery needs its own packet (v5 subscription
    /// identifiers, an expiry). A retained message sent because of a new
    /// subscription (`unshared`) keeps no encoding in the retained store.
    fn send_qos0_shared(&mut self, delivery: &Delivery, unshared: bool) -> Option<bool> {
        if self.version.is_v5() && !delivery.subscription_ids.is_empty() {
            return None;
        }
        let once;
        let bytes = if unshared {
            once = delivery.message.qos0_packet_unshared(self.version)?;
            &once
        } else {
            delivery.message.qos0_packet(self.version)?
        };
        if self.client_max_packet.is_some_and(|max| bytes.len() > max as usize) {
            return Some(false);
        }
        let at = self.wbuf.len();
        self.wbuf.extend_from_slice(bytes);
        if delivery.retain {
            self.wbuf[at] |= 0x01;
        }
        Some(true)
    }

    fn publish_packet(&self, delivery: &Delivery, packet_id: Option<crate::codec::PacketId>, dup: bool) -> Publish {
        let message = &delivery.message;
        let properties = if self.version.is_v5() {
            let mut p = message.properties.to_properties();
            p.message_expiry_interval = message.remaining_expiry(std::time::Instant::now());
            p.subscription_identifiers.clone_from(&delivery.subscription_ids);
            p
        } else {
            Properties::default()
        };
        Publish {
            dup,
            qos: delivery.qos,
            retain: delivery.retain,
            topic: message.topic.clone(),
            packet_id,
            properties,
            payload: message.payload.clone(),
        }
    }

    fn fits_client(&self, packet: &Packet) -> bool {
        match self.client_max_packet {
            None => true,
            Some(max) => codec::encoded_len(packet, self.version).is_ok_and(|len| len <= max as usize),
        }
    }
}
