//! Messages to the client: draining the session queue within the client's
//! Receive Maximum, and resending unacknowledged messages on resume.

use std::sync::Arc;

use super::{Close, Connection, Park};
use crate::auth::Action;
use crate::codec::{self, Packet, Properties, PubResp, Publish, QoS};
use crate::message::{Delivery, Inflight, InflightState};
use crate::metrics::DropReason;
use crate::session::{Session, SessionState};

/// Bytes of deliveries moved into the write buffer before it is flushed:
/// a client that reads slowly or not at all holds at most this (and one
/// packet) in its write buffer, its backlog staying in the bounded queue.
const DRAIN_BUDGET: usize = 64 * 1024;

/// What one [`Connection::drain_locked`] dropped, and whether it stored
/// the state of a QoS 2 delivery (which the connection then waits for).
#[derive(Debug, Default)]
struct Drained {
    expired: u64,
    refused: u64,
    too_large: u64,
    stored_qos2: bool,
}

impl<S> Connection<S>
where
    S: Park,
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
        let client_id = session.client_id();
        let mut state = session.lock();
        let mut drained = Drained::default();
        let mut undecided = None;
        loop {
            // `retained_send`: a retained message sent because of a new
            // subscription (one receiver: its QoS 0 bytes are not kept).
            let (delivery, verdict, retained_send) = match decided.take() {
                Some((delivery, allowed)) => (delivery, Some(allowed), false),
                None => match self.next_to_send(&session, &mut state) {
                    Some((delivery, retained_send)) => (delivery, None, retained_send),
                    None => break,
                },
            };
            if delivery.message.is_expired(now) {
                self.broker.delivered(client_id, &delivery);
                drained.expired += 1;
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
            match verdict {
                None => {
                    undecided = Some(delivery);
                    break;
                }
                Some(false) => {
                    self.broker.delivered(client_id, &delivery);
                    drained.refused += 1;
                }
                Some(true) => self.send_delivery(delivery, retained_send, client_id, &mut state, &mut drained),
            }
        }
        session.notify_room(&mut state);
        drop(state);
        if let Some(rare) = self.rare.as_mut().filter(|r| r.retained.is_empty() && r.retained.capacity() > 64) {
            // A subscription matched many retained messages: all sent,
            // their queue's room goes back.
            rare.retained = std::collections::VecDeque::new();
        }
        if drained.stored_qos2 {
            self.await_store();
        }
        let metrics = &self.broker.metrics;
        metrics.dropped(DropReason::Expired, drained.expired);
        metrics.dropped(DropReason::NotAuthorized, drained.refused);
        metrics.dropped(DropReason::TooLarge, drained.too_large);
        undecided
    }

    /// The next delivery to send, if the budget and the client's window
    /// let one go: retained messages for new subscriptions first, then the
    /// queue; and whether it is such a retained message.
    fn next_to_send(&mut self, session: &Session, state: &mut SessionState) -> Option<(Delivery, bool)> {
        let retained = self.retained_waiting();
        let front = retained.and_then(|r| r.front()).or(state.pending.front())?;
        if self.wbuf.len() >= DRAIN_BUDGET {
            // The rest stays queued (where the queue's bounds apply) until
            // this much is written; the wake-up brings us back.
            session.wake();
            return None;
        }
        if front.qos != QoS::AtMostOnce && state.inflight.len() >= usize::from(self.send_window) {
            return None;
        }
        match self.rare.as_mut().filter(|r| !r.retained.is_empty()) {
            Some(rare) => rare.retained.pop_front().map(|d| (d, true)),
            None => state.pop_pending().map(|d| (d, false)),
        }
    }

    /// Encodes an allowed delivery into the write buffer and, at QoS 1/2,
    /// records it in flight; one the client cannot take counts as
    /// delivered [MQTT-3.1.2-25].
    fn send_delivery(
        &mut self,
        delivery: Delivery,
        retained_send: bool,
        client_id: &Arc<str>,
        state: &mut SessionState,
        drained: &mut Drained,
    ) {
        if delivery.qos == QoS::AtMostOnce
            && let Some(sent) = self.send_qos0_shared(&delivery, retained_send)
        {
            if sent {
                self.counts.sent(delivery.qos);
            } else {
                drained.too_large += 1;
            }
            self.broker.delivered(client_id, &delivery);
            return;
        }
        let packet_id = (delivery.qos != QoS::AtMostOnce).then(|| state.allocate_packet_id());
        let publish = Packet::Publish(self.publish_packet(&delivery, packet_id, false));
        if !self.fits_client(&publish) {
            self.broker.delivered(client_id, &delivery);
            drained.too_large += 1;
            return;
        }
        self.send(&publish);
        self.counts.sent(delivery.qos);
        let Some(packet_id) = packet_id else {
            // A QoS 0 message kept when the connection ended is done.
            self.broker.delivered(client_id, &delivery);
            return;
        };
        let waiting =
            if delivery.qos == QoS::AtLeastOnce { InflightState::AwaitPubAck } else { InflightState::AwaitPubRec };
        let mut entry = Inflight { packet_id, delivery, state: waiting };
        if waiting == InflightState::AwaitPubRec {
            drained.stored_qos2 |= self.store_qos2_sent(client_id, state, &mut entry);
        }
        state.inflight.push_back(entry);
    }

    /// Writes the state of a QoS 2 delivery going out to a session that
    /// outlives its connection; whether it wrote. Its packet id must be
    /// stored before it goes: resent after a crash it must carry the same
    /// id, or the client would take it for a new message (and a new one
    /// under an id it still holds for a resend). A retained message sent
    /// because of a subscription was never queued, so it gets its key
    /// here. (QoS 1 may be resent under a new id, so it skips this write.)
    fn store_qos2_sent(&self, client_id: &Arc<str>, state: &SessionState, entry: &mut Inflight) -> bool {
        let store = &*self.broker.store;
        let delivery = &mut entry.delivery;
        if delivery.stored.is_none() && delivery.jetstream.is_none() && state.expiry_s > 0 {
            delivery.stored = store.message_key();
        }
        if delivery.stored.is_none() {
            return false;
        }
        store.delivery_state(client_id, entry);
        true
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
        if self.client_max_packet.is_some_and(|max| bytes.len() > max.get() as usize) {
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
            Some(max) => codec::encoded_len(packet, self.version).is_ok_and(|len| len <= max.get() as usize),
        }
    }
}
