//! The mutable part of a session, guarded by the session's lock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, DefaultHasher, RandomState};
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

use super::Replica;
use crate::auth::ClientInfo;
use crate::codec::{PacketId, QoS, TopicFilter};
use crate::message::{Delivery, Inflight, InflightState, Owner, Subscription};

/// How much a session's queue may hold (`limits.max_queued_messages` and
/// `limits.max_queued_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBound {
    /// Most queued messages.
    pub messages: usize,
    /// Most queued bytes (topic and payload of each message); 0: no limit.
    /// A message larger than this still fits an empty queue, so it can be
    /// delivered at all.
    pub bytes: usize,
}

impl Default for QueueBound {
    /// The defaults of `limits.max_queued_messages` and
    /// `limits.max_queued_bytes`.
    fn default() -> QueueBound {
        QueueBound { messages: 1000, bytes: 16 * 1024 * 1024 }
    }
}

impl QueueBound {
    /// A bound on the number of messages only.
    pub fn messages(messages: usize) -> QueueBound {
        QueueBound { messages, bytes: 0 }
    }
}

/// Room left in a session's queue ([`SessionState::room`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Messages.
    pub messages: usize,
    /// Bytes (topic and payload); `None` without a byte bound.
    pub bytes: Option<usize>,
    /// Whether the queue is empty: its first message fits whatever its
    /// size, as [`SessionState::push`] takes it.
    pub empty: bool,
}

/// What a queued delivery counts against [`QueueBound::bytes`].
fn queued_size(d: &Delivery) -> usize {
    d.message.topic.as_str().len() + d.message.payload.len()
}

/// How a session's maps hash their keys: SipHash under one random key
/// per process, made on first use. Zero bytes in each map, where std's
/// `RandomState` keeps its 16-byte key in every one (issue 25); clients
/// can predict this key no more than that one, so the maps they fill
/// (topic filters, packet ids) stay safe from collisions chosen for them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Keyed;

impl BuildHasher for Keyed {
    type Hasher = DefaultHasher;

    fn build_hasher(&self) -> DefaultHasher {
        static KEY: OnceLock<RandomState> = OnceLock::new();
        KEY.get_or_init(RandomState::new).build_hasher()
    }
}

/// QoS 2 packet ids received and routed but not yet released (PUBREL): a
/// set made on the first one and kept from then on, as most clients never
/// publish at QoS 2 (an empty `HashSet` took 48 bytes in every session,
/// this takes 8; issue 25).
#[derive(Debug, Default)]
#[expect(clippy::box_collection, reason = "the box is the point: 8 bytes while empty, where the set takes 32")]
pub struct PacketIds(Option<Box<HashSet<PacketId, Keyed>>>);

impl PacketIds {
    /// Whether `id` is in the set.
    pub fn contains(&self, id: &PacketId) -> bool {
        self.0.as_ref().is_some_and(|ids| ids.contains(id))
    }

    /// Adds `id`; whether it was not there yet.
    pub fn insert(&mut self, id: PacketId) -> bool {
        self.0.get_or_insert_with(Box::default).insert(id)
    }

    /// Takes `id` out; whether it was there.
    pub fn remove(&mut self, id: &PacketId) -> bool {
        self.0.as_mut().is_some_and(|ids| ids.remove(id))
    }

    /// How many ids the set holds.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |ids| ids.len())
    }

    /// Whether the set holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &PacketId> {
        self.0.iter().flat_map(|ids| ids.iter())
    }
}

impl Extend<PacketId> for PacketIds {
    fn extend<I: IntoIterator<Item = PacketId>>(&mut self, ids: I) {
        for id in ids {
            self.insert(id);
        }
    }
}

/// Yes-or-no facts about a session, a bit each: five `bool`s took five
/// bytes, and with them the state 8 more (issue 25).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags(u8);

impl Flags {
    /// A will waits for its delay (and is in the store): a reconnect
    /// cancels it there.
    pub const WILL_PENDING: Flags = Flags(1);
    /// The attached connection is still to be told to leave
    /// ([`Session::kick`](super::Session::kick)): set at attach, taken by
    /// the first takeover or kept for an operator's kick.
    pub const KICKABLE: Flags = Flags(2);
    /// Set with the kick when an operator disconnects the client, so the
    /// connection says 0x98 rather than 0x8E (taken over).
    pub const KICKED_BY_ADMIN: Flags = Flags(4);
    /// A publisher holds a delivery this queue refused (full) and waits
    /// for it to drain to half.
    pub const PUBLISHERS_WAITING: Flags = Flags(8);
    /// A publisher waited for room in vain: deliveries that do not fit
    /// are dropped at once until the queue drains to half.
    pub const SLOW: Flags = Flags(16);

    /// Whether `flag` is set.
    pub fn contains(self, flag: Flags) -> bool {
        self.0 & flag.0 == flag.0
    }

    /// Sets `flag` (`on`) or clears it.
    pub fn set(&mut self, flag: Flags, on: bool) {
        if on {
            self.0 |= flag.0;
        } else {
            self.0 &= !flag.0;
        }
    }

    /// Clears `flag`; whether it was set.
    pub fn take(&mut self, flag: Flags) -> bool {
        let was = self.contains(flag);
        self.set(flag, false);
        was
    }
}

/// Who is attached to a session now, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The verified user name (from an authenticator's grant or a
    /// certificate; see `ClientInfo::username`).
    pub username: Option<String>,
    /// The user name CONNECT carried, verified or not.
    pub claimed_username: Option<String>,
    /// Remote address.
    pub peer: std::net::SocketAddr,
    /// Listener name.
    pub listener: String,
    /// Protocol version.
    pub protocol: crate::codec::ProtocolVersion,
    /// When CONNACK was sent.
    pub since: std::time::SystemTime,
}

/// A session's mutable state.
#[derive(Debug)]
pub struct SessionState {
    /// Subscriptions by filter (as sent, including `$share/`).
    pub subscriptions: HashMap<TopicFilter, Subscription, Keyed>,
    /// Deliveries not yet sent (window full or client offline). Read it
    /// freely; add and remove through [`SessionState::push`],
    /// [`SessionState::pop_pending`], [`SessionState::clear_pending`] and
    /// [`SessionState::restore_pending`], which keep the byte count.
    pub pending: VecDeque<Delivery>,
    /// Bytes in `pending`, as [`QueueBound::bytes`] counts them.
    queued_bytes: usize,
    /// Sent QoS 1/2 deliveries awaiting acknowledgement, in send order.
    pub inflight: VecDeque<Inflight>,
    /// QoS 2 packet ids received and routed but not yet released (PUBREL).
    pub incoming_qos2: PacketIds,
    /// Whether a connection is attached.
    pub online: bool,
    /// What else is true of the session, a bit each ([`Flags`]).
    pub flags: Flags,
    /// Bumped (wrapping) on every attach, so timers armed for an earlier
    /// connection (expiry, delayed will) can tell they are stale.
    pub generation: u32,
    /// Cancelled when a connection attaches, so the expiry and delayed-will
    /// timers armed at the last detach end at once. (Each holds the session:
    /// left to run out, a device reconnecting every minute with a day's
    /// expiry would pin 1,440 of them.)
    pub timers: Option<CancellationToken>,
    /// In a cluster: what replication keeps for this session (the
    /// cluster's `SessionReplica`), made when the cluster first deals with
    /// it; `None` for a session that never met a cluster.
    pub replica: Option<Box<dyn Replica>>,
    /// When the attached connection's CONNACK was sent, in seconds since
    /// the Unix epoch, while one is attached; with [`SessionState::client`],
    /// what [`SessionState::connection`] tells. Seconds, as the admin API
    /// shows them: 4 bytes where a `SystemTime` took 16 (issue 25).
    connected_since_s: Option<std::num::NonZeroU32>,
    /// Session expiry interval, seconds, as last negotiated.
    pub expiry_s: u32,
    /// Who the client was at its last (re-)authentication, so a policy
    /// reload can re-authorize the subscriptions of online and offline
    /// sessions alike. `None` for a session restored from the store and not
    /// yet resumed.
    pub client: Option<Arc<ClientInfo>>,
    /// Whom the session belongs to; `None` when not known (recovered from
    /// a store written before owners were kept, or moved from another
    /// node): the next connection to attach claims it.
    pub owner: Option<Owner>,
    next_packet_id: PacketId,
    bound: QueueBound,
}

/// The first packet id handed out; `PacketId::new(1)` cannot fail.
const FIRST_PACKET_ID: PacketId = match PacketId::new(1) {
    Some(id) => id,
    None => unreachable!(),
};

impl SessionState {
    /// A connection attached at `at`, or (`None`) the attached one left.
    pub fn set_connected_since(&mut self, at: Option<std::time::SystemTime>) {
        self.connected_since_s = at.and_then(|at| {
            let s = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
            std::num::NonZeroU32::new(u32::try_from(s).unwrap_or(u32::MAX))
        });
    }

    /// Who is attached now, for the admin API: built from the client
    /// info the session keeps anyway rather than kept as a copy (one per
    /// connected client, issue 25).
    pub fn connection(&self) -> Option<ConnectionInfo> {
        let (since, client) = (self.connected_since_s?, self.client.as_ref()?);
        let since = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(since.get()));
        Some(ConnectionInfo {
            username: client.username.as_deref().map(str::to_owned),
            claimed_username: client.claimed_username.as_deref().map(str::to_owned),
            peer: client.peer_address,
            listener: client.listener.to_string(),
            protocol: client.protocol,
            since,
        })
    }

    /// Whether replication keeps the session's QoS 1/2 messages elsewhere
    /// (JetStream), so none are queued here ([`Replica::kept`]).
    pub fn kept(&self) -> bool {
        self.replica.as_ref().is_some_and(|r| r.kept())
    }

    /// Empty state with a queue bound.
    pub fn new(bound: QueueBound) -> SessionState {
        SessionState {
            subscriptions: HashMap::default(),
            pending: VecDeque::new(),
            queued_bytes: 0,
            inflight: VecDeque::new(),
            incoming_qos2: PacketIds::default(),
            online: false,
            flags: Flags::default(),
            generation: 0,
            timers: None,
            replica: None,
            connected_since_s: None,
            expiry_s: 0,
            client: None,
            owner: None,
            next_packet_id: FIRST_PACKET_ID,
            bound,
        }
    }

    /// Whether the queue holds at most half of what its bound allows: the
    /// point at which waiting publishers are let in again (not at the first
    /// free slot, so each wake lets a batch through).
    pub fn half_empty(&self) -> bool {
        self.pending.len() <= self.bound.messages / 2
            && (self.bound.bytes == 0 || self.queued_bytes <= self.bound.bytes / 2)
    }

    /// Whether `delivery` fits in the queue now.
    pub fn fits(&self, delivery: &Delivery) -> bool {
        self.fits_with(self.pending.len(), self.queued_bytes, delivery)
    }

    fn fits_with(&self, len: usize, bytes: usize, delivery: &Delivery) -> bool {
        len < self.bound.messages
            && (self.bound.bytes == 0 || len == 0 || bytes + queued_size(delivery) <= self.bound.bytes)
    }

    /// Queues a delivery unless it does not fit.
    pub fn push(&mut self, delivery: Delivery) -> bool {
        if !self.fits(&delivery) {
            return false;
        }
        self.queued_bytes += queued_size(&delivery);
        self.pending.push_back(delivery);
        true
    }

    /// Makes room for `incoming` by dropping queued QoS 0 messages, oldest
    /// first, each handed to `dropped`. Returns how many it dropped, or
    /// `None` (dropping nothing) when even dropping every queued QoS 0
    /// message would not make room: QoS 1/2 messages are never evicted.
    /// The scan runs only when the queue is full.
    pub fn make_room(&mut self, incoming: &Delivery, mut dropped: impl FnMut(Delivery)) -> Option<usize> {
        if self.fits(incoming) {
            return Some(0);
        }
        let (n0, bytes0) = self
            .pending
            .iter()
            .filter(|d| d.qos == QoS::AtMostOnce)
            .fold((0, 0), |(n, b), d| (n + 1, b + queued_size(d)));
        if n0 == 0 || !self.fits_with(self.pending.len() - n0, self.queued_bytes - bytes0, incoming) {
            return None;
        }
        let mut evicted = 0;
        while !self.fits(incoming) {
            let Some(pos) = self.pending.iter().position(|d| d.qos == QoS::AtMostOnce) else { break };
            if let Some(old) = self.pending.remove(pos) {
                self.queued_bytes -= queued_size(&old);
                dropped(old);
                evicted += 1;
            }
        }
        Some(evicted)
    }

    /// Takes the oldest queued delivery.
    pub fn pop_pending(&mut self) -> Option<Delivery> {
        let delivery = self.pending.pop_front()?;
        self.queued_bytes -= queued_size(&delivery);
        Some(delivery)
    }

    /// Empties the queue.
    pub fn clear_pending(&mut self) {
        self.pending.clear();
        self.queued_bytes = 0;
    }

    /// Queues what the store recovered, whatever the bound: nothing
    /// recovered is dropped.
    pub fn restore_pending(&mut self, deliveries: impl IntoIterator<Item = Delivery>) {
        for delivery in deliveries {
            self.queued_bytes += queued_size(&delivery);
            self.pending.push_back(delivery);
        }
    }

    /// How many of `deliveries`, in their order, the queue has room for
    /// now (as [`SessionState::push`] would take them one by one).
    pub fn fitting(&self, deliveries: &[Delivery]) -> usize {
        let (mut len, mut bytes) = (self.pending.len(), self.queued_bytes);
        let mut n = 0;
        for delivery in deliveries {
            if !self.fits_with(len, bytes, delivery) {
                break;
            }
            len += 1;
            bytes += queued_size(delivery);
            n += 1;
        }
        n
    }

    /// Room left in the queue.
    pub fn room(&self) -> Room {
        Room {
            messages: self.bound.messages.saturating_sub(self.pending.len()),
            bytes: (self.bound.bytes > 0).then(|| self.bound.bytes.saturating_sub(self.queued_bytes)),
            empty: self.pending.is_empty(),
        }
    }

    /// Puts `deliveries` at the head of the queue, in their order, whatever
    /// the bound (see [`SessionState::fitting`]): share groups' messages
    /// moved here, older than what is queued.
    pub fn push_front(&mut self, deliveries: Vec<Delivery>) {
        for delivery in deliveries.into_iter().rev() {
            self.queued_bytes += queued_size(&delivery);
            self.pending.push_front(delivery);
        }
    }

    /// Takes out the share groups' QoS 1/2 messages that the client has
    /// not received, to go to other members [MQTT-4.8.2]: in-flight ones
    /// not yet acknowledged (QoS 2: no PUBREC yet), in send order, then
    /// queued ones. A QoS 2 message the client sent PUBREC for stays: it
    /// has it, and is only waiting for its PUBREL/PUBCOMP.
    pub fn take_shared(&mut self) -> Vec<Delivery> {
        let mut taken = Vec::new();
        let inflight = std::mem::take(&mut self.inflight);
        for entry in inflight {
            if entry.state != InflightState::AwaitPubComp && entry.delivery.redispatchable() {
                taken.push(entry.delivery);
            } else {
                self.inflight.push_back(entry);
            }
        }
        if self.pending.iter().any(Delivery::redispatchable) {
            let pending = std::mem::take(&mut self.pending);
            self.queued_bytes = 0;
            for delivery in pending {
                if delivery.redispatchable() {
                    taken.push(delivery);
                } else {
                    self.queued_bytes += queued_size(&delivery);
                    self.pending.push_back(delivery);
                }
            }
        }
        taken
    }

    /// Whether the session holds share groups' messages that would go to
    /// other members if it left ([`SessionState::take_shared`]).
    pub fn holds_shared(&self) -> bool {
        let inflight = self.inflight.iter().filter(|i| i.state != InflightState::AwaitPubComp);
        self.pending.iter().chain(inflight.map(|i| &i.delivery)).any(Delivery::redispatchable)
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
    pub fn mark_released(&mut self, id: PacketId) -> (bool, Option<&mut Inflight>) {
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
    pub fn set_queue_bound(&mut self, bound: QueueBound) {
        self.bound = bound;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    /// Every session pays for its state, online or idle (issue 25): what
    /// only a cluster needs sits behind one pointer (`replica`), 280 bytes
    /// where the cluster's fields inline made 304; 264 with the attach
    /// time in seconds and a 32-bit generation, which takes the shared
    /// `Arc<Session>` (16 bytes of counts, 360 of session) from a 400-byte
    /// malloc chunk to a 384-byte one; 200 with the maps' hash key shared
    /// ([`Keyed`]), the QoS 2 ids a set made on first use ([`PacketIds`])
    /// and five flags in a byte ([`Flags`]): a 296-byte `Session`, 312
    /// with the counts, a 320-byte chunk (313 bytes would take 336). Grow
    /// it only knowingly.
    #[test]
    fn session_state_is_small() {
        let size = std::mem::size_of::<SessionState>();
        eprintln!("SessionState: {size} bytes, Session: {} bytes", std::mem::size_of::<super::super::Session>());
        assert!(size <= 200, "SessionState grew to {size} bytes");
        assert!(std::mem::size_of::<super::super::Session>() <= 296, "Session grew past a malloc chunk class");
    }

    /// The attach time is kept to the second (what the admin API shows),
    /// and forgotten when the connection leaves.
    /// The QoS 2 ids and the flags behave as the set and the `bool`s they
    /// replace.
    #[test]
    fn packet_ids_and_flags_hold_what_is_put_in() {
        let mut ids = PacketIds::default();
        let (one, two) = (PacketId::new(1).expect("non-zero"), PacketId::new(2).expect("non-zero"));
        assert!(ids.is_empty() && !ids.contains(&one) && !ids.remove(&one));
        assert!(ids.insert(one) && !ids.insert(one));
        ids.extend([two]);
        assert_eq!((ids.len(), ids.contains(&two)), (2, true));
        assert!(ids.remove(&one) && !ids.contains(&one));
        assert_eq!(ids.iter().copied().collect::<Vec<_>>(), [two]);
        let mut flags = Flags::default();
        flags.set(Flags::SLOW, true);
        flags.set(Flags::KICKABLE, true);
        assert!(flags.contains(Flags::SLOW) && !flags.contains(Flags::WILL_PENDING));
        assert!(flags.take(Flags::SLOW) && !flags.take(Flags::SLOW));
        assert!(flags.contains(Flags::KICKABLE));
        flags.set(Flags::KICKABLE, false);
        assert_eq!(flags, Flags::default());
    }

    #[test]
    fn the_attach_time_is_kept_in_seconds() {
        let mut s = SessionState::new(QueueBound::messages(1));
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_765_000_000_900);
        s.set_connected_since(Some(at));
        assert_eq!(s.connected_since_s.map(|s| s.get()), Some(1_765_000_000));
        s.set_connected_since(None);
        assert_eq!(s.connected_since_s, None);
    }

    #[test]
    fn packet_ids_skip_those_in_flight() {
        let mut s = SessionState::new(QueueBound::messages(10));
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
                jetstream: None,
                share: None,
            },
            state: InflightState::AwaitPubAck,
        });
        assert_eq!(s.allocate_packet_id().get(), 2);
    }

    fn delivery(qos: QoS, payload: &'static [u8]) -> Delivery {
        let msg = Arc::new(Message::new(
            crate::codec::TopicName::new("t").expect("valid"),
            bytes::Bytes::from_static(payload),
            qos,
            false,
            &crate::codec::Properties::default(),
        ));
        Delivery {
            message: msg,
            qos,
            retain: false,
            subscription_ids: vec![],
            stored: None,
            jetstream: None,
            share: None,
        }
    }

    #[test]
    fn the_byte_bound_evicts_qos0_first_and_never_qos1() {
        // 1 (topic) + 9 (payload) = 10 bytes each; room for 3.
        let mut s = SessionState::new(QueueBound { messages: 100, bytes: 30 });
        assert!(s.push(delivery(QoS::AtMostOnce, b"zero-0001")));
        assert!(s.push(delivery(QoS::AtLeastOnce, b"one--0001")));
        assert!(s.push(delivery(QoS::AtMostOnce, b"zero-0002")));
        let next = delivery(QoS::ExactlyOnce, b"two--0001");
        assert!(!s.fits(&next));
        let mut gone = Vec::new();
        assert_eq!(s.make_room(&next, |d| gone.push(d.message.payload.clone())), Some(1));
        assert_eq!(gone, [bytes::Bytes::from_static(b"zero-0001")], "oldest QoS 0 first");
        assert!(s.push(next));
        // Only QoS 1/2 and one QoS 0 left: one more evicts it, then refuse.
        assert_eq!(s.make_room(&delivery(QoS::AtLeastOnce, b"one--0002"), |_| {}), Some(1));
        assert!(s.push(delivery(QoS::AtLeastOnce, b"one--0002")));
        assert_eq!(s.make_room(&delivery(QoS::AtLeastOnce, b"one--0003"), |_| {}), None);
        assert_eq!(s.pending.len(), 3);
        while s.pop_pending().is_some() {}
        assert_eq!(s.queued_bytes, 0);
        // A message larger than the bound still fits an empty queue.
        assert!(s.push(delivery(QoS::AtLeastOnce, &[b'x'; 64])));
    }

    #[test]
    fn a_queued_delivery_stays_small() {
        // Every queued message is one: the share group is a pointer to
        // the subscription's filter, not a copy of it.
        let size = std::mem::size_of::<Delivery>();
        assert!(size <= 72, "a delivery takes {size} bytes");
    }

    #[test]
    fn share_groups_messages_not_yet_received_are_taken_in_order() {
        let share = Some(Arc::new(TopicFilter::new("$share/g/t").expect("valid")));
        let shared = |qos, payload| Delivery { share: share.clone(), ..delivery(qos, payload) };
        let mut s = SessionState::new(QueueBound { messages: 100, bytes: 0 });
        let id = |n| PacketId::new(n).expect("non-zero");
        let states = [InflightState::AwaitPubAck, InflightState::AwaitPubRec, InflightState::AwaitPubComp];
        for (n, (state, payload)) in states.into_iter().zip([&b"ack"[..], b"rec", b"comp"]).enumerate() {
            let delivery = shared(if n == 0 { QoS::AtLeastOnce } else { QoS::ExactlyOnce }, payload);
            s.inflight.push_back(Inflight { packet_id: id(n as u16 + 1), delivery, state });
        }
        s.inflight.push_back(Inflight {
            packet_id: id(9),
            delivery: delivery(QoS::AtLeastOnce, b"plain"),
            state: InflightState::AwaitPubAck,
        });
        for (qos, payload) in [(QoS::AtLeastOnce, &b"q1"[..]), (QoS::AtMostOnce, b"q0"), (QoS::ExactlyOnce, b"q2")] {
            assert!(s.push(shared(qos, payload)));
        }
        assert!(s.push(delivery(QoS::AtLeastOnce, b"plain-queued")));
        assert!(s.holds_shared());
        let taken: Vec<_> = s.take_shared().into_iter().map(|d| d.message.payload.clone()).collect();
        assert_eq!(taken, ["ack", "rec", "q1", "q2"], "in flight first, in order; QoS 0 and PUBREC'd stay");
        assert!(!s.holds_shared());
        let left: Vec<_> = s.inflight.iter().map(|i| i.delivery.message.payload.clone()).collect();
        assert_eq!(left, ["comp", "plain"]);
        let left: Vec<_> = s.pending.iter().map(|d| d.message.payload.clone()).collect();
        assert_eq!(left, ["q0", "plain-queued"]);
        assert_eq!(s.queued_bytes, 1 + 2 + 1 + 12, "the byte count follows");
        s.push_front(vec![shared(QoS::AtLeastOnce, b"back-1"), shared(QoS::AtLeastOnce, b"back-2")]);
        let order: Vec<_> = s.pending.iter().map(|d| d.message.payload.clone()).collect();
        assert_eq!(order, ["back-1", "back-2", "q0", "plain-queued"]);
        assert_eq!(s.queued_bytes, 16 + 7 + 7);
        assert_eq!(s.room(), Room { messages: 96, bytes: None, empty: false });
        // Room for 2 more messages and 9 bytes: one of 5 bytes, not two.
        let mut s = SessionState::new(QueueBound { messages: 3, bytes: 11 });
        assert!(s.push(delivery(QoS::AtLeastOnce, b"x")));
        assert_eq!(s.room(), Room { messages: 2, bytes: Some(9), empty: false });
        let more = [b"abcd", b"efgh", b"ijkl"].map(|p| delivery(QoS::AtLeastOnce, p));
        assert_eq!(s.fitting(&more), 1);
        assert_eq!(SessionState::new(QueueBound::messages(2)).fitting(&more), 2);
    }

    #[test]
    fn queue_is_bounded() {
        let mut s = SessionState::new(QueueBound::messages(1));
        let msg = Arc::new(Message::new(
            crate::codec::TopicName::new("t").expect("valid"),
            bytes::Bytes::new(),
            QoS::AtMostOnce,
            false,
            &crate::codec::Properties::default(),
        ));
        let d = Delivery {
            message: msg,
            qos: QoS::AtMostOnce,
            retain: false,
            subscription_ids: vec![],
            stored: None,
            jetstream: None,
            share: None,
        };
        assert!(s.push(d.clone()));
        assert!(!s.push(d));
    }
}
