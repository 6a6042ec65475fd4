//! The session lifecycle around connections: attach (with the takeover
//! and, in a cluster, the claim), detach, discard, restore, and sessions
//! moving between nodes; the messages a session's end saves.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{AttachRefused, Broker};
use crate::codec::Will;
use crate::message::{Delivery, Message};
use crate::session::{Attached, Flags, Session};
use crate::store::{PendingWill, StoredSession};

impl Broker {
    /// Registers `stored` (its will aside) as an offline session and
    /// subscribes it.
    pub(super) fn restore(&self, stored: StoredSession) -> Arc<Session> {
        let session = self.sessions.restore(stored.client_id.clone(), self.config().limits.queue_bound());
        {
            let mut state = session.lock();
            state.expiry_s = stored.expiry_s;
            state.owner = stored.owner;
            state.restore_pending(stored.pending);
            state.inflight.extend(stored.inflight);
            state.incoming_qos2.extend(stored.incoming_qos2);
        }
        for (filter, subscription) in stored.subscriptions {
            self.router.subscribe(&session, &filter, &subscription);
            session.lock().subscriptions.insert(filter, subscription);
        }
        session
    }

    /// Ends the session of `client_id` here for another node, which takes
    /// it over: the attached connection leaves (v5: 0x8E Session taken
    /// over), a will waiting for its delay is cancelled as a reconnect
    /// cancels it, and unless `keep` is false the session is returned to
    /// be moved. `None` when there is no session to move.
    pub(super) async fn hand_over(&self, client_id: &str, keep: bool) -> Option<StoredSession> {
        let taken = self.sessions.take(client_id, |session| {
            let moved = {
                let mut state = session.lock();
                if let Some(timers) = state.timers.take() {
                    timers.cancel();
                }
                // Its replica (in a cluster) leaves with it.
                if let Some(replica) = &mut state.replica {
                    replica.leave();
                }
                if state.flags.take(Flags::WILL_PENDING) {
                    self.store.will(session.client_id(), None);
                }
                keep.then(|| StoredSession {
                    client_id: session.client_id().clone(),
                    expiry_s: state.expiry_s,
                    subscriptions: state.subscriptions.iter().map(|(f, s)| (f.clone(), s.clone())).collect(),
                    // Taken, not copied: the deliveries move to the new
                    // node, which answers JetStream for them; the discard
                    // below gives back only what stays.
                    pending: std::mem::take(&mut state.pending).into(),
                    inflight: std::mem::take(&mut state.inflight).into(),
                    incoming_qos2: state.incoming_qos2.iter().copied().collect(),
                    will: None,
                    owner: state.owner.clone(),
                })
            };
            self.discard(session);
            moved
        });
        taken.await.flatten()
    }

    /// Takes in a session another node handed over: it replaces any
    /// session this node still had for that client (left from before the
    /// other node took the client over), and goes to the store as a
    /// session that outlives its connection would.
    pub(super) fn adopt(&self, stored: StoredSession) {
        if let Some(stale) = self.sessions.get(&stored.client_id) {
            self.discard(&stale);
        }
        let session = self.restore(stored);
        let client_id = session.client_id();
        let state = session.lock();
        self.store.session_opened(client_id, state.expiry_s);
        for (filter, subscription) in &state.subscriptions {
            self.store.subscribed(client_id, filter, subscription);
        }
        for id in state.incoming_qos2.iter() {
            self.store.incoming_qos2(client_id, *id, true);
        }
        drop(state);
        self.save_messages(&session);
    }

    /// Attaches a connection to the session of `client_id`.
    ///
    /// # Errors
    /// [`AttachRefused`]: the previous connection did not let go, or a new
    /// session would exceed `limits.max_sessions` (checked without a lock
    /// across the attach, so concurrent CONNECTs may pass it together).
    pub async fn attach(&self, client_id: &Arc<str>, clean_start: bool) -> Result<Attached, AttachRefused> {
        let (max_sessions, bound) = {
            let config = self.config();
            (config.limits.max_sessions, config.limits.queue_bound())
        };
        // The count first: the lookup only at the limit (issue 25).
        if self.sessions.len() >= max_sessions && self.sessions.get(client_id).is_none() {
            return Err(AttachRefused::TooManySessions);
        }
        let claimed = self.claim(client_id, clean_start).await;
        let attached = self
            .sessions
            .attach(client_id, clean_start, bound, |old| self.discard(old))
            .await
            .ok_or(AttachRefused::Busy)?;
        if let (Some(cluster), Some(revision)) = (&self.replication, claimed) {
            cluster.claimed(&mut attached.session.lock(), revision);
        }
        // A reconnect cancels a will waiting for its delay [MQTT-3.1.3-9].
        if attached.session.lock().flags.take(Flags::WILL_PENDING) {
            self.store.will(client_id, None);
        }
        Ok(attached)
    }

    /// In a cluster, before a connection attaches: claims the session of
    /// `client_id` for this node, bringing it over from the node that held
    /// it, or back from its consumer's record if that node is gone
    /// (`cluster::ownership`, `cluster::queue`). Returns the revision of
    /// the claim, if one was made.
    pub(super) async fn claim(&self, client_id: &Arc<str>, clean_start: bool) -> Option<u64> {
        if let Some(cluster) = &self.replication {
            let mut claim = cluster.claim(client_id, clean_start).await;
            let mut moved = claim.moved.take();
            let local = self.sessions.get(client_id);
            if clean_start {
                if claim.kept || local.is_some_and(|s| s.lock().kept()) {
                    cluster.forget_session(client_id);
                }
                return claim.revision;
            }
            if claim.kept && moved.is_none() && local.is_none() {
                // Kept by a node that is gone (or forgot it).
                moved = cluster.recover(client_id).await;
            }
            if let Some(moved) = moved {
                self.adopt(moved);
            }
            // JetStream keeps its messages (whoever held it said so): none
            // are queued here until its connection feeds from the consumer.
            if claim.kept
                && let Some(session) = self.sessions.get(client_id)
            {
                cluster.keep_elsewhere(&mut session.lock());
            }
            return claim.revision;
        }
        None
    }

    /// Ends a session: removes its subscriptions, sends the share groups'
    /// messages its client has not received on to other members
    /// [MQTT-4.8.2], and forgets it.
    pub fn discard(&self, session: &Arc<Session>) {
        let (filters, claimed, shared): (Vec<_>, _, _) = {
            let mut state = session.lock();
            let claimed = state.replica.as_mut().and_then(|replica| {
                replica.stop_feeding();
                replica.take_claim()
            });
            let shared = state.take_shared();
            // What JetStream delivered for it goes back, to be delivered
            // again at once (to another member of a share group).
            if let Some(cluster) = &self.replication {
                let inflight = state.inflight.iter().map(|i| &i.delivery);
                for ack in state.pending.iter().chain(inflight).filter_map(|d| d.jetstream.as_deref()) {
                    cluster.give_back(ack);
                }
            }
            state.clear_pending();
            state.inflight.clear();
            (state.subscriptions.drain().map(|(f, _)| f).collect(), claimed, shared)
        };
        for filter in &filters {
            self.router.unsubscribe(session, filter);
        }
        // No member any more: the others take what it gave up.
        self.redispatch(session, shared);
        if self.sessions.remove(session) {
            self.store.session_ended(session.client_id());
            if let (Some(cluster), Some(revision)) = (&self.replication, claimed) {
                cluster.release(session.client_id(), revision);
            }
        }
    }

    /// A session that ended was `kept` in JetStream: its consumer goes.
    pub(super) fn forget_kept(&self, session: &Session, kept: bool) {
        if let Some(cluster) = self.replication.as_ref().filter(|_| kept) {
            cluster.forget_session(session.client_id());
        }
    }

    /// Saves every session's messages to the store (at shutdown).
    pub fn persist_sessions(&self) {
        for session in self.sessions.all() {
            self.save_messages(&session);
        }
    }

    pub(super) fn save_messages(&self, session: &Arc<Session>) {
        // Under the lock, so messages queued to the store later
        // (`Store::queued`) come after this snapshot, never before. Messages
        // without a key get one here, so their delivery deletes them.
        // Messages JetStream keeps are not stored twice: after a restart,
        // JetStream delivers them again.
        let mut state = session.lock();
        let state = &mut *state;
        let unkeyed = state.inflight.iter_mut().map(|i| &mut i.delivery).chain(state.pending.iter_mut());
        for delivery in unkeyed.filter(|d| d.stored.is_none() && d.jetstream.is_none()) {
            delivery.stored = self.store.message_key();
        }
        let pending = state.pending.iter().filter(|d| d.jetstream.is_none()).cloned().collect();
        let inflight = state.inflight.iter().filter(|i| i.delivery.jetstream.is_none()).cloned().collect();
        self.store.session_messages(session.client_id(), pending, inflight);
    }

    /// A delivery is done with (the client acknowledged it, or it was
    /// dropped on its way out): the store forgets it and, in a cluster,
    /// JetStream stops keeping it.
    pub(crate) fn delivered(&self, client_id: &Arc<str>, delivery: &Delivery) {
        if let Some(stored) = delivery.stored {
            self.store.delivered(client_id, stored);
        }
        if let Some(ack) = &delivery.jetstream {
            self.acknowledged(ack);
        }
    }

    /// Tells JetStream that a message it keeps for a session reached its
    /// client (or never will).
    pub(crate) fn acknowledged(&self, ack: &crate::message::JetStreamAck) {
        if let Some(cluster) = &self.replication {
            cluster.acknowledge(ack);
        }
    }

    /// Called when a connection ends: publishes or schedules the will,
    /// and ends the session now or arms its expiry timer.
    pub fn detach(self: &Arc<Self>, attached: Attached, will: Option<Will>, expiry_s: u32) {
        let session = attached.session.clone();
        let generation = attached.generation;
        let (kept, expiry_changed) = {
            let mut state = session.lock();
            state.online = false;
            state.flags.set(Flags::KICKABLE, false);
            state.set_connected_since(None);
            session.forget_connection();
            let expiry_changed = std::mem::replace(&mut state.expiry_s, expiry_s) != expiry_s;
            if let Some(replica) = &mut state.replica {
                replica.stop_feeding();
            }
            (state.kept(), expiry_changed)
        };
        // Publishers holding deliveries for it offer them again: offline,
        // a full queue drops rather than holds.
        session.release_waiting();
        // A will that waits for its delay is stored while this connection
        // still holds the session, so a reconnect's cancel comes after it.
        let mut delayed = None;
        let mut now = None;
        if let Some(will) = will {
            let delay = will.properties.will_delay_interval.unwrap_or(0);
            let mut message = Message::new(will.topic, will.payload, will.qos, will.retain, &will.properties);
            if delay == 0 || expiry_s == 0 {
                now = Some(message);
            } else {
                // The will waits for the delay or the session's end, whichever
                // comes first, and is cancelled by a reconnect [MQTT-3.1.3-9].
                // Its expiry starts when it is published.
                message.expires_at = None;
                let wait_s = delay.min(expiry_s);
                let pending = PendingWill {
                    message: Arc::new(message),
                    expiry_s: will.properties.message_expiry_interval,
                    due_ms: crate::store::now_ms() + u64::from(wait_s) * 1000,
                };
                session.lock().flags.set(Flags::WILL_PENDING, true);
                self.store.will(session.client_id(), Some(&pending));
                delayed = Some((pending, Duration::from_secs(u64::from(wait_s))));
            }
        }
        let timers = if expiry_s == 0 {
            // End the session while this connection still holds it, so a
            // client taking over waits for the end and then starts afresh.
            self.discard(&session);
            self.forget_kept(&session, kept);
            None
        } else {
            // Made only for a session that outlives its connection (issue
            // 25); while this connection holds it, nobody can attach and
            // cancel them before they are set.
            let timers = CancellationToken::new();
            session.lock().timers = Some(timers.clone());
            self.save_messages(&session);
            self.hold_shared(session.clone(), generation, timers.clone());
            self.arm_expiry(session.clone(), generation, expiry_s, timers.clone());
            // The consumer records the expiry: rewritten only if the
            // DISCONNECT changed it.
            if let Some(cluster) = self.replication.as_ref().filter(|_| kept && expiry_changed) {
                cluster.park(session.clone(), usize::from(self.config().limits.max_inflight));
            }
            Some(timers)
        };
        drop(attached);
        if let Some(message) = now {
            self.publish(message, Some(&session));
        }
        // A delayed will only with an expiry, so with timers.
        if let (Some((will, wait)), Some(timers)) = (delayed, timers) {
            self.schedule_will(session, generation, will, wait, timers);
        }
    }
}
