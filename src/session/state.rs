//! The mutable part of a session, guarded by the session's lock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::ClientInfo;
use crate::codec::{PacketId, QoS, SubscriptionOptions, TopicFilter};
use crate::router::Message;

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub message: Arc<Message>,
    /// QoS for this receiver: the lower of the published and granted QoS.
    pub qos: QoS,
    /// Retain flag as this receiver sees it (Retain As Published, or a
    /// retained message sent because of a new subscription).
    pub retain: bool,
    /// v5 subscription identifiers of every matching subscription.
    pub subscription_ids: Vec<u32>,
    /// The key under which the store keeps this delivery for its session
    /// (a QoS 1/2 message for a session that outlives its connection), so
    /// the acknowledgement that completes it can delete it.
    pub stored: Option<u64>,
}

/// Where an outgoing QoS 1/2 message is in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightState {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    AwaitPubAck,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    AwaitPubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitPubComp,
}

/// An outgoing QoS 1/2 message that the client has not finished
/// acknowledging; resent with DUP on session resume.
#[derive(Debug, Clone)]
pub struct Inflight {
    /// Packet identifier it was sent with.
    pub packet_id: PacketId,
    /// The delivery.
    pub delivery: Delivery,
    /// Handshake position.
    pub state: InflightState,
}

/// Who is attached to a session now, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The user name in force (from CONNECT, a certificate or a grant).
    pub username: Option<String>,
    /// Remote address.
    pub peer: std::net::SocketAddr,
    /// Listener name.
    pub listener: String,
    /// Protocol version.
    pub protocol: crate::codec::ProtocolVersion,
    /// When CONNACK was sent.
    pub since: std::time::SystemTime,
}

/// A subscription as the session remembers it, to restore or remove it.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// Options granted (QoS already capped).
    pub options: SubscriptionOptions,
    /// v5 subscription identifier.
    pub id: Option<u32>,
}

/// A session's mutable state.
#[derive(Debug)]
pub struct SessionState {
    /// Subscriptions by filter (as sent, including `$share/`).
    pub subscriptions: HashMap<TopicFilter, Subscription>,
    /// Deliveries not yet sent (window full or client offline).
    pub pending: VecDeque<Delivery>,
    /// Sent QoS 1/2 deliveries awaiting acknowledgement, in send order.
    pub inflight: VecDeque<Inflight>,
    /// QoS 2 packet ids received and routed but not yet released (PUBREL).
    pub incoming_qos2: HashSet<PacketId>,
    /// Whether a connection is attached.
    pub online: bool,
    /// Bumped on every attach, so timers armed for an earlier connection
    /// (expiry, delayed will) can tell they are stale.
    pub generation: u64,
    /// Cancelled to make the attached connection leave (takeover, kick).
    pub kick: Option<CancellationToken>,
    /// Set with `kick` cancelled when an operator disconnects the client,
    /// so the connection says 0x98 rather than 0x8E (taken over).
    pub kicked_by_admin: bool,
    /// The attached connection, while one is.
    pub connection: Option<ConnectionInfo>,
    /// Session expiry interval, seconds, as last negotiated.
    pub expiry_s: u32,
    /// Who the client was at its last (re-)authentication, so a policy
    /// reload can re-authorize the subscriptions of online and offline
    /// sessions alike. `None` for a session restored from the store and not
    /// yet resumed.
    pub client: Option<Arc<ClientInfo>>,
    next_packet_id: PacketId,
    max_queued: usize,
}

/// The first packet id handed out; `PacketId::new(1)` cannot fail.
const FIRST_PACKET_ID: PacketId = match PacketId::new(1) {
    Some(id) => id,
    None => unreachable!(),
};

impl SessionState {
    /// Empty state with a queue bound.
    pub fn new(max_queued: usize) -> SessionState {
        SessionState {
            subscriptions: HashMap::new(),
            pending: VecDeque::new(),
            inflight: VecDeque::new(),
            incoming_qos2: HashSet::new(),
            online: false,
            generation: 0,
            kick: None,
            kicked_by_admin: false,
            connection: None,
            expiry_s: 0,
            client: None,
            next_packet_id: FIRST_PACKET_ID,
            max_queued,
        }
    }

    /// Whether the queue is at its bound.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.max_queued
    }

    /// Queues a delivery unless the queue is full.
    pub fn push(&mut self, delivery: Delivery) -> bool {
        if self.is_full() {
            return false;
        }
        self.pending.push_back(delivery);
        true
    }

    /// A packet id not used by any in-flight message.
    pub fn allocate_packet_id(&mut self) -> PacketId {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = id.next();
            if !self.inflight.iter().any(|i| i.packet_id == id) {
                return id;
            }
        }
    }

    /// Removes the in-flight entry with `id` if it is in `expected` state.
    pub fn take_inflight(&mut self, id: PacketId, expected: InflightState) -> Option<Inflight> {
        let pos = self.inflight.iter().position(|i| i.packet_id == id && i.state == expected)?;
        self.inflight.remove(pos)
    }

    /// Moves a QoS 2 entry from awaiting PUBREC to awaiting PUBCOMP.
    /// Returns whether the id is known, and the entry if it changed state.
    pub fn mark_released(&mut self, id: PacketId) -> (bool, Option<&Inflight>) {
        match self.inflight.iter().position(|i| i.packet_id == id && i.state == InflightState::AwaitPubRec) {
            Some(pos) => match self.inflight.get_mut(pos) {
                Some(entry) => {
                    entry.state = InflightState::AwaitPubComp;
                    (true, Some(entry))
                }
                None => (false, None),
            },
            None => (self.inflight.iter().any(|i| i.packet_id == id && i.state == InflightState::AwaitPubComp), None),
        }
    }

    /// Changes the queue bound (a config reload may change it).
    pub fn set_max_queued(&mut self, max_queued: usize) {
        self.max_queued = max_queued;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_skip_those_in_flight() {
        let mut s = SessionState::new(10);
        let first = s.allocate_packet_id();
        assert_eq!(first.get(), 1);
        s.next_packet_id = first;
        let msg = Arc::new(Message::new(
            crate::codec::TopicName::new("t").expect("valid"),
            bytes::Bytes::new(),
            QoS::AtLeastOnce,
            false,
            &crate::codec::Properties::default(),
        ));
        s.inflight.push_back(Inflight {
            packet_id: first,
            delivery: Delivery {
                message: msg,
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: vec![],
                stored: None,
            },
            state: InflightState::AwaitPubAck,
        });
        assert_eq!(s.allocate_packet_id().get(), 2);
    }

    #[test]
    fn queue_is_bounded() {
        let mut s = SessionState::new(1);
        let msg = Arc::new(Message::new(
            crate::codec::TopicName::new("t").expect("valid"),
            bytes::Bytes::new(),
            QoS::AtMostOnce,
            false,
            &crate::codec::Properties::default(),
        ));
        let d = Delivery { message: msg, qos: QoS::AtMostOnce, retain: false, subscription_ids: vec![], stored: None };
        assert!(s.push(d.clone()));
        assert!(!s.push(d));
    }
}
