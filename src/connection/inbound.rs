//! Packets from the client after CONNECT.

use std::sync::Arc;

use tokio::time::Instant;

use super::{Close, Connection, Park};
use crate::auth::Action;
use crate::broker::Refused;
use crate::codec::{Packet, Properties, PubResp, Publish, QoS, ReasonCode, TopicName};
use crate::message::InflightState;
use crate::message::Message;
use crate::metrics::{DropReason, Limit};
use crate::session::{Held, Refusal, Session};

/// A publish some of whose deliveries met full queues of connected
/// subscribers. The connection holds them, and a QoS 1/2 publish's
/// acknowledgement, and reads nothing more from its client until they are
/// queued or `limits.queue_full_wait_ms` runs out: the publisher is paced
/// by the slowest subscriber it shares a topic with, as TCP would pace it,
/// rather than acknowledged and then dropped (QoS 0 too, issue 25: a full
/// queue mostly means this task routed a burst before the subscriber's
/// task ran). Held copies for persistent
/// sessions are stored all the same, in the commit that stores a QoS 2
/// packet id, so a crash while holding keeps the copies and the id
/// together, as for a publish that was not held.
pub(super) struct HeldPublish {
    deliveries: Vec<Held>,
    /// PUBACK or PUBREC, sent once nothing is held.
    ack: Option<Packet>,
    until: Instant,
}

/// Packets handled in one turn before the connection yields, so the
/// subscribers of the batch's QoS 0 messages (woken once, at its end:
/// `session::wakes`) write it. Each then writes up to this many per
/// wake-up and
/// socket write (issue 25: at 64, a QoS 0 fan-out made 4x the writes of
/// rumqttd, which writes up to 200). A queue the batch fills holds the
/// publisher (QoS 0 too), so a larger batch costs a slow subscriber
/// nothing.
const INPUT_BATCH: usize = 256;

/// Deliveries one turn may route before the connection yields: a batch to
/// a topic with thousands of subscribers ends early, so one publisher
/// cannot keep a worker thread from the others for long (at most about
/// this many queue pushes, a few milliseconds).
const ROUTE_BUDGET: u16 = 16 * 1024;

impl<S> Connection<S>
where
    S: Park,
{
    /// Decodes and handles every complete packet in the read buffer, up to
    /// a publish that has to be held. Polled inside
    /// [`crate::session::wakes::once_per_poll`]: the subscribers of the batch's messages
    /// are woken once, when the batch is routed, not at each first
    /// delivery (issue 25).
    pub(super) async fn process_input(&mut self) -> Result<(), Close> {
        let limits = self.broker.config().limits.decode_limits(u32::MAX);
        self.input_pending = false;
        self.routed = 0;
        for _ in 0..INPUT_BATCH {
            if self.held().is_some() {
                return Ok(());
            }
            if self.routed >= ROUTE_BUDGET {
                break;
            }
            match crate::codec::decode_with(&mut self.rbuf, self.version, limits) {
                Ok(Some(packet)) => self.handle(packet).await?,
                Ok(None) => return Ok(()),
                Err(crate::codec::DecodeError::TooManyUserProperties) => {
                    self.broker.metrics.limit_hit(Limit::UserProperties);
                    return Err(Close::Protocol(ReasonCode::PACKET_TOO_LARGE, "too many user properties"));
                }
                Err(e) => return Err(Close::Protocol(e.reason_code(), "malformed packet")),
            }
        }
        self.input_pending = true;
        Ok(())
    }

    /// Dispatches one packet. Asynchronous only where a plugin may be
    /// asked (PUBLISH, SUBSCRIBE, AUTH); a plugin that answers at once
    /// (nearly all calls) costs no suspension.
    pub(super) async fn handle(&mut self, packet: Packet) -> Result<(), Close> {
        // A client that only pings is quiet: it may still be parked
        // (`parked`), whatever its keep alive.
        self.stirred |= !matches!(packet, Packet::PingReq);
        match packet {
            Packet::Publish(publish) => self.on_publish(publish).await,
            Packet::PubAck(ack) => {
                self.on_ack(ack, InflightState::AwaitPubAck);
                Ok(())
            }
            Packet::PubRec(rec) => {
                self.on_pubrec(rec);
                Ok(())
            }
            Packet::PubRel(rel) => {
                self.on_pubrel(rel);
                Ok(())
            }
            Packet::PubComp(comp) => {
                self.on_ack(comp, InflightState::AwaitPubComp);
                Ok(())
            }
            // Boxed: rare, and their futures are the largest here.
            Packet::Subscribe(subscribe) => Box::pin(self.on_subscribe(subscribe)).await,
            Packet::Unsubscribe(unsubscribe) => {
                self.on_unsubscribe(unsubscribe);
                Ok(())
            }
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(disconnect) => Err(self.on_disconnect(&disconnect)),
            Packet::Connect(_) => Err(Close::Protocol(ReasonCode::PROTOCOL_ERROR, "second CONNECT")),
            Packet::Auth(auth) => Box::pin(self.on_auth(auth)).await,
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(Close::Protocol(ReasonCode::PROTOCOL_ERROR, "packet only a server may send"))
            }
        }
    }

    async fn on_publish(&mut self, mut publish: Publish) -> Result<(), Close> {
        self.counts.received(publish.qos);
        publish.topic = self.resolve_alias(&publish)?;
        let running = self.broker.config();
        let now = std::time::Instant::now();
        if !self.publish_within_limits(&publish, &running.limits, now)? {
            return Ok(());
        }
        let policy = self.broker.policy();
        // `$SYS/...` belongs to the broker: no client publishes there.
        let permitted = !is_reserved(publish.topic.as_str())
            && self
                .allowed_by(&policy, now, Action::Publish, publish.topic.as_str(), publish.qos, publish.retain)
                .await;
        if !permitted {
            self.broker.metrics.dropped(DropReason::NotAuthorized, 1);
            if self.version.is_v5() {
                self.refuse_unauthorized(publish.qos, publish.packet_id);
                return Ok(());
            }
        }
        let Some(store_id) = self.receive_qos2(&publish)? else { return Ok(()) };
        let (qos, packet_id) = (publish.qos, publish.packet_id);
        // 3.1.1 has no way to refuse a PUBLISH: it is acknowledged and
        // dropped, as Mosquitto does.
        let message = Message::new(publish.topic, publish.payload, publish.qos, publish.retain, &publish.properties);
        let transformed = if !permitted {
            None
        } else if policy.wants_transform(message.topic.as_str()) {
            // Boxed: transforms are rare next to publishes, and the future
            // is large next to the connection's (kept for its whole life).
            Some(Box::pin(self.transform(&policy, message)).await)
        } else {
            Some(Some(message))
        };
        self.route_publish(transformed, qos, packet_id, store_id, running.limits.queue_full_wait_ms)
    }

    /// Whether a PUBLISH may go on: its topic within the length and level
    /// limits (else the connection closes) and the client within its
    /// publish rate (else the message is refused or dropped here).
    fn publish_within_limits(
        &mut self,
        publish: &Publish,
        limits: &crate::config::Limits,
        now: std::time::Instant,
    ) -> Result<bool, Close> {
        if let Some(limit) = super::topic_over_limit(limits, publish.topic.as_str()) {
            // Closing rather than a PUBACK 0x90 (which the spec also allows
            // at QoS 1/2): a QoS 0 publisher could not be told otherwise.
            self.broker.metrics.limit_hit(limit);
            return Err(Close::Protocol(ReasonCode::TOPIC_NAME_INVALID, "topic over the length or level limit"));
        }
        // A reload may have changed the rate; a new one starts full.
        let per_second = limits.max_publish_rate;
        if per_second > 0 || self.rare.as_ref().is_some_and(|r| r.publish_rate.is_some()) {
            crate::rate::TokenBucket::follow(&mut self.rare().publish_rate, per_second, now);
        }
        if let Some(bucket) = self.rare.as_mut().and_then(|r| r.publish_rate.as_mut())
            && !bucket.try_take(now)
        {
            self.over_publish_rate(publish.qos, publish.packet_id);
            return Ok(false);
        }
        Ok(true)
    }

    /// Tells a v5 publisher its QoS 1/2 PUBLISH was not authorized. The
    /// reason code ends the exchange, so no QoS 2 state is kept.
    fn refuse_unauthorized(&mut self, qos: QoS, packet_id: Option<crate::codec::PacketId>) {
        let refusal =
            |id| PubResp { packet_id: id, reason: ReasonCode::NOT_AUTHORIZED, properties: Properties::default() };
        match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.send(&Packet::PubAck(refusal(id))),
            (QoS::ExactlyOnce, Some(id)) => self.send(&Packet::PubRec(refusal(id))),
            _ => {}
        }
    }

    /// Starts the receiving side of a QoS 2 exchange: `None` when the
    /// PUBLISH is a resend of one already routed (acknowledged again here,
    /// not routed), else the packet id to store with the routed copies
    /// when the session outlives the connection (`Some(None)`: nothing to
    /// store, as for QoS 0 and 1).
    fn receive_qos2(&mut self, publish: &Publish) -> Result<Option<Option<crate::codec::PacketId>>, Close> {
        if publish.qos != QoS::ExactlyOnce {
            return Ok(Some(None));
        }
        let Some(id) = publish.packet_id else {
            return Err(Close::Protocol(ReasonCode::PROTOCOL_ERROR, "QoS 2 without packet id"));
        };
        let mut state = self.attached.session.lock();
        if state.incoming_qos2.contains(&id) {
            // A resend of a message already routed: acknowledge only,
            // which is what makes QoS 2 exactly once [MQTT-4.3.3-10];
            // like the first PUBREC, once what it waited for is done:
            // the id durable, the copies in JetStream (the client may
            // resend because that wait ran out).
            drop(state);
            self.await_store();
            self.send(&Packet::PubRec(PubResp::success(id)));
            return Ok(None);
        }
        if state.incoming_qos2.len() >= usize::from(self.broker.config().limits.max_inflight) {
            return Err(Close::Protocol(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded"));
        }
        state.incoming_qos2.insert(id);
        Ok(Some((state.expiry_s > 0).then_some(id)))
    }

    /// Routes what the policy let through (`None`: refused; `Some(None)`:
    /// dropped by a transform), stores the QoS 2 packet id with the copies,
    /// and acknowledges, or holds the acknowledgement while deliveries wait
    /// for full queues.
    fn route_publish(
        &mut self,
        transformed: Option<Option<Message>>,
        qos: QoS,
        packet_id: Option<crate::codec::PacketId>,
        mut store_id: Option<crate::codec::PacketId>,
        wait_ms: u64,
    ) -> Result<(), Close> {
        // The copies for persistent sessions and the packet id are
        // committed together, so a crash keeps both or neither.
        let group = store_id.map(|_| self.broker.store.group());
        // A v5 QoS 1/2 publisher can be told the retained store is full;
        // anyone else's message is delivered without being retained.
        let refuse = self.version.is_v5() && qos != QoS::AtMostOnce;
        let mut held = Vec::new();
        let hold = (wait_ms > 0).then_some(&mut held);
        let routed = match transformed {
            Some(Some(message)) => {
                let acknowledged = qos != QoS::AtMostOnce;
                self.broker.publish_shared(Arc::new(message), Some(&self.attached.session), refuse, acknowledged, hold)
            }
            Some(None) => {
                self.broker.metrics.dropped(DropReason::Transform, 1);
                Ok(0)
            }
            None => Ok(0),
        };
        if let Ok(deliveries) = routed {
            self.routed = self.routed.saturating_add(u16::try_from(deliveries).unwrap_or(u16::MAX));
        }
        if routed.is_err()
            && let Some(id) = store_id.take().or(packet_id.filter(|_| qos == QoS::ExactlyOnce))
        {
            // The refusal ends the QoS 2 exchange: no state is kept.
            self.attached.session.lock().incoming_qos2.remove(&id);
        }
        if routed == Err(Refused::NotForwarded) && !self.version.is_v5() {
            // 3.1.1 cannot refuse a PUBLISH: without its acknowledgement,
            // the client sends it again when it reconnects.
            return Err(Close::Protocol(ReasonCode::SERVER_BUSY, "the cluster cannot take the message now"));
        }
        if let Some(id) = store_id {
            // Once durable, a resend after a crash is known as one.
            self.broker.store.incoming_qos2(self.attached.session.client_id(), id, true);
        }
        drop(group);
        if qos != QoS::AtMostOnce {
            // Durable store (issue 9): the ack below waits for this.
            self.await_store();
        }
        self.acknowledge_publish(routed, qos, packet_id, held, wait_ms);
        Ok(())
    }

    /// Sends the PUBACK or PUBREC of a routed publish, or holds it with
    /// the deliveries that met full queues (see [`HeldPublish`]).
    fn acknowledge_publish(
        &mut self,
        routed: Result<usize, Refused>,
        qos: QoS,
        packet_id: Option<crate::codec::PacketId>,
        held: Vec<Held>,
        wait_ms: u64,
    ) {
        let reason = match routed {
            Err(_) => ReasonCode::QUOTA_EXCEEDED,
            // Other nodes may have subscribers this node cannot see.
            Ok(0) if self.version.is_v5() && !self.broker.is_clustered() => ReasonCode::NO_MATCHING_SUBSCRIBERS,
            Ok(_) => ReasonCode::SUCCESS,
        };
        let ack = |id| PubResp { packet_id: id, reason, properties: Properties::default() };
        let ack = match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => Some(Packet::PubAck(ack(id))),
            (QoS::ExactlyOnce, Some(id)) => Some(Packet::PubRec(ack(id))),
            _ => None,
        };
        if held.is_empty() {
            if let Some(ack) = ack {
                self.send(&ack);
            }
        } else {
            let until = Instant::now() + std::time::Duration::from_millis(wait_ms);
            self.withheld().held = Some(Box::new(HeldPublish { deliveries: held, ack, until }));
        }
    }

    /// Waits, without reading from the client, for room for a held
    /// publish (see [`HeldPublish`]), still delivering to this
    /// client meanwhile.
    pub(super) async fn wait_held(&mut self) -> Result<(), Close> {
        let own = self.attached.session.clone();
        // Every held session's room, not only the first's: a subscriber
        // that has room gets its copy then, whatever the others do.
        let sessions: Vec<Arc<Session>> =
            self.held().map(|h| h.deliveries.iter().map(|h| h.session.clone()).collect()).unwrap_or_default();
        if sessions.is_empty() {
            return self.offer_held().map(drop);
        }
        // Registered before offering again, so a wake in between counts.
        let mut rooms: Vec<_> = sessions.iter().map(|s| Box::pin(s.room())).collect();
        for room in &mut rooms {
            room.as_mut().enable();
        }
        if self.offer_held()? {
            return Ok(());
        }
        let any_room = std::future::poll_fn(|cx| {
            if rooms.iter_mut().any(|room| room.as_mut().poll(cx).is_ready()) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        });
        let until = self.held().map_or_else(Instant::now, |h| h.until);
        let signalled = std::future::poll_fn(|cx| own.poll_signals(cx));
        tokio::select! {
            biased;
            bits = signalled => match super::leave_reason(bits, &own) {
                Some(close) => Err(close),
                None => {
                    self.want_drain = true;
                    Ok(())
                }
            },
            () = any_room => Ok(()),
            () = tokio::time::sleep_until(until) => {
                // A last offer, so a queue that has room now is not given up.
                if self.offer_held()? { Ok(()) } else { self.give_up_held() }
            }
        }
    }

    /// Offers the held deliveries of a publish again; once none is left
    /// (queued, or dropped for another reason such as the subscriber
    /// going offline), acknowledges it and reads on. Returns whether it
    /// got that far.
    pub(super) fn offer_held(&mut self) -> Result<bool, Close> {
        let Some(held) = self.withheld.as_mut().and_then(|w| w.held.as_mut()) else { return Ok(true) };
        let (store, metrics) = (&*self.broker.store, &self.broker.metrics);
        for Held { session, delivery } in std::mem::take(&mut held.deliveries) {
            // Not left to JetStream: a session kept since its consumer was
            // made after the message (it takes only new ones).
            let away = Held::offer(&session, delivery, false, store, metrics, &mut held.deliveries);
            if let Some(delivery) = away {
                // Its share group's member left meanwhile: another takes it.
                self.broker.router.redispatch(vec![delivery], store, metrics);
            }
        }
        if !held.deliveries.is_empty() {
            return Ok(false);
        }
        self.release_held()?;
        Ok(true)
    }

    /// `limits.queue_full_wait_ms` ran out: drops what is still held
    /// (counted), marks those subscribers slow, acknowledges and reads on.
    pub(super) fn give_up_held(&mut self) -> Result<(), Close> {
        if let Some(held) = self.withheld.as_mut().and_then(|w| w.held.as_mut()) {
            for Held { session, delivery } in held.deliveries.drain(..) {
                session.mark_slow();
                self.broker.metrics.dropped(DropReason::QueueFull, 1);
                self.broker.delivered(session.client_id(), &delivery);
            }
        }
        self.release_held()
    }

    /// The connection ends while it holds a publish: each held delivery is
    /// offered once more, and what still does not fit is dropped (counted,
    /// and forgotten by the store) as when the wait runs out. The
    /// publisher got no acknowledgement, but its session remembers a QoS 2
    /// packet id, so a resend is acknowledged and not routed again.
    pub(super) fn drop_held(&mut self) {
        let Some(held) = self.take_held() else { return };
        let (store, metrics) = (&*self.broker.store, &self.broker.metrics);
        for Held { session, delivery } in held.deliveries {
            match session.enqueue_and_store(delivery, Some(store), false) {
                Ok(evicted) => metrics.dropped(DropReason::QueueFull, evicted as u64),
                Err(Refusal::Dropped(reason)) => metrics.dropped(reason, 1),
                // Its share group's member left meanwhile: another takes it.
                Err(Refusal::Away(delivery)) => self.broker.router.redispatch(vec![delivery], store, metrics),
                // `enqueue_and_store` drops what does not fit.
                Err(Refusal::Full(_)) => metrics.dropped(DropReason::QueueFull, 1),
            }
        }
    }

    /// Acknowledges a held publish; the packets that arrived while it was
    /// held are handled next.
    fn release_held(&mut self) -> Result<(), Close> {
        let Some(held) = self.take_held() else { return Ok(()) };
        // The client's keep alive counts from here: it was the broker
        // that was not reading.
        self.move_keep_alive();
        // The copies queued since the publish were stored again since.
        self.await_store();
        if let Some(ack) = held.ack {
            self.send(&ack);
        }
        self.input_pending = true;
        Ok(())
    }

    /// Answers a PUBLISH over `limits.max_publish_rate` and drops it.
    ///
    /// v5 QoS 1/2 get 0x97 Quota exceeded: 0x96 Message rate too high is
    /// defined for DISCONNECT only, and closing would make a well-behaved
    /// client reconnect and resend at once. 3.1.1 cannot refuse, so QoS 1/2
    /// are acknowledged and dropped, as Mosquitto does for a publish it
    /// refuses (EMQX throttles by reading slower instead, which holds the
    /// connection's buffers; dropping keeps the cost bounded and counted).
    fn over_publish_rate(&mut self, qos: QoS, packet_id: Option<crate::codec::PacketId>) {
        self.broker.metrics.limit_hit(Limit::PublishRate);
        self.broker.metrics.dropped(DropReason::PublishRate, 1);
        let reason = if self.version.is_v5() { ReasonCode::QUOTA_EXCEEDED } else { ReasonCode::SUCCESS };
        let ack = |id| PubResp { packet_id: id, reason, properties: Properties::default() };
        match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.send(&Packet::PubAck(ack(id))),
            // No QoS 2 state is kept: a v5 refusal ends the exchange, and a
            // 3.1.1 PUBREL that follows is answered PUBCOMP like any other.
            (QoS::ExactlyOnce, Some(id)) => self.send(&Packet::PubRec(ack(id))),
            _ => {}
        }
    }

    /// Applies the v5 topic alias rules [MQTT-3.3.2-*] and returns the
    /// full topic name.
    fn resolve_alias(&mut self, publish: &Publish) -> Result<TopicName, Close> {
        let Some(alias) = publish.properties.topic_alias else {
            if publish.topic.is_empty() {
                return Err(Close::Protocol(ReasonCode::PROTOCOL_ERROR, "empty topic without alias"));
            }
            return Ok(publish.topic.clone());
        };
        if alias == 0 || alias > self.broker.config().limits.topic_alias_maximum {
            return Err(Close::Protocol(ReasonCode::TOPIC_ALIAS_INVALID, "topic alias out of range"));
        }
        if publish.topic.is_empty() {
            let known = self.rare.as_ref().and_then(|r| r.aliases.get(&alias)).cloned();
            known.ok_or(Close::Protocol(ReasonCode::PROTOCOL_ERROR, "unknown topic alias"))
        } else {
            self.rare().aliases.insert(alias, publish.topic.clone());
            Ok(publish.topic.clone())
        }
    }

    fn on_ack(&mut self, ack: PubResp, expected: InflightState) {
        let done = self.attached.session.lock().take_inflight(ack.packet_id, expected);
        if let Some(done) = done {
            self.want_drain = true;
            self.broker.delivered(self.attached.session.client_id(), &done.delivery);
        }
    }

    fn on_pubrec(&mut self, rec: PubResp) {
        let id = rec.packet_id;
        if !rec.reason.is_success() {
            // The receiver refused the message; the exchange ends here.
            self.on_ack(rec, InflightState::AwaitPubRec);
            return;
        }
        let (known, stored) = {
            let mut state = self.attached.session.lock();
            let (known, mut moved) = state.mark_released(id);
            // The client has the message: JetStream need not keep it.
            if let Some(ack) = moved.as_mut().and_then(|e| e.delivery.jetstream.take()) {
                self.broker.acknowledged(&ack);
            }
            let moved = moved.map(|e| &*e).filter(|e| e.delivery.stored.is_some());
            if let Some(entry) = moved {
                self.broker.store.delivery_state(self.attached.session.client_id(), entry);
            }
            (known, moved.is_some())
        };
        if stored {
            // The PUBREL below waits until a resend after a crash would be a
            // PUBREL too, not a second PUBLISH.
            self.await_store();
        }
        let reason = if known { ReasonCode::SUCCESS } else { ReasonCode::PACKET_IDENTIFIER_NOT_FOUND };
        self.send(&Packet::PubRel(PubResp { packet_id: id, reason, properties: Properties::default() }));
    }

    fn on_pubrel(&mut self, rel: PubResp) {
        let (known, persistent) = {
            let mut state = self.attached.session.lock();
            (state.incoming_qos2.remove(&rel.packet_id), state.expiry_s > 0)
        };
        if known && persistent {
            // PUBCOMP frees the id for the client's next message: once sent,
            // a crash must not bring the id back as "already received".
            self.broker.store.incoming_qos2(self.attached.session.client_id(), rel.packet_id, false);
            self.await_store();
        }
        let reason = if known { ReasonCode::SUCCESS } else { ReasonCode::PACKET_IDENTIFIER_NOT_FOUND };
        let comp = PubResp { packet_id: rel.packet_id, reason, properties: Properties::default() };
        self.send(&Packet::PubComp(comp));
    }

    fn on_disconnect(&mut self, disconnect: &crate::codec::Disconnect) -> Close {
        if let Some(expiry) = disconnect.properties.session_expiry_interval {
            if self.connect_expiry_zero && expiry != 0 {
                return Close::Protocol(ReasonCode::PROTOCOL_ERROR, "session expiry set on DISCONNECT after 0");
            }
            self.session_expiry_s = expiry.min(self.broker.config().limits.max_session_expiry_s);
        }
        Close::ClientDisconnect { will: disconnect.reason == ReasonCode::DISCONNECT_WITH_WILL }
    }
}

/// Topics only the broker publishes to (`$SYS/...`, as Mosquitto).
pub(super) fn is_reserved(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}
