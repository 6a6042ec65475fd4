//! What the broker counts, for operators; the admin layer renders it as
//! the Prometheus text at `/metrics` and the `$SYS/broker/...` topics.
//!
//! [`Metrics`] is owned by the [`Broker`](crate::broker::Broker) and is made
//! of relaxed atomics only: no lock and no allocation on the message path.
//! A connection counts its messages and bytes in a plain [`LocalCounts`]
//! and adds them to the shared counters once per read/write batch, so a
//! busy publisher touches the shared cache lines once per batch rather than
//! once per message. Gauges that the broker already knows (retained
//! messages, sessions, queued messages, subscriptions) are read at scrape
//! time instead of being maintained on the hot path, into [`Gauges`] and
//! [`QueueTotals`], so what renders them reads no broker internals.

mod histogram;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

pub use histogram::{BUCKETS_US, Histogram, HistogramSnapshot};

use crate::codec::QoS;

/// What the broker holds now, read when a scrape or the `$SYS` timer asks
/// ([`crate::broker::Broker::gauges`]): counts it keeps anyway, no walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gauges {
    /// Sessions, connected or not.
    pub sessions: usize,
    /// Messages waiting in share groups for a member.
    pub share_waiting: usize,
    /// Retained messages stored.
    pub retained: usize,
    /// Subscriptions in the index.
    pub subscriptions: usize,
}

/// Totals over every session's queue: a walk taking each session's lock
/// in turn, so only a scrape asks for it
/// ([`crate::broker::Broker::queue_totals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueTotals {
    /// Messages waiting in session queues.
    pub queued: usize,
    /// Outgoing QoS 1/2 messages awaiting acknowledgement.
    pub inflight: usize,
}

/// Why a connection was refused before it was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_connections` was reached.
    MaxConnections,
    /// The listener's `max_connections` was reached.
    ListenerMaxConnections,
    /// The listener's `max_connection_rate` was exceeded.
    ConnectionRate,
    /// The PROXY header, TLS handshake or WebSocket upgrade failed or
    /// timed out (or the PROXY header came from an untrusted address).
    Transport,
    /// No valid CONNECT (timeout, not MQTT, malformed, unsupported version).
    Protocol,
    /// CONNECT was refused by the limits (client id, keep alive, will).
    Invalid,
    /// Authentication denied the client.
    NotAuthorized,
    /// The previous connection of the same client id did not let go.
    Busy,
    /// A new session would exceed `limits.max_sessions`.
    MaxSessions,
    /// The client's address failed to log in too often (`[auth]`).
    LoginThrottled,
    /// The session of the client id belongs to another user (`[auth]
    /// bind_sessions`).
    SessionOwner,
}

impl Refusal {
    /// Every reason, in label order.
    pub const ALL: [Refusal; 11] = [
        Refusal::MaxConnections,
        Refusal::ListenerMaxConnections,
        Refusal::ConnectionRate,
        Refusal::Transport,
        Refusal::Protocol,
        Refusal::Invalid,
        Refusal::NotAuthorized,
        Refusal::Busy,
        Refusal::MaxSessions,
        Refusal::LoginThrottled,
        Refusal::SessionOwner,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::ListenerMaxConnections => "listener_max_connections",
            Refusal::ConnectionRate => "connection_rate",
            Refusal::Transport => "transport",
            Refusal::Protocol => "protocol",
            Refusal::Invalid => "invalid_connect",
            Refusal::NotAuthorized => "not_authorized",
            Refusal::Busy => "busy",
            Refusal::MaxSessions => "max_sessions",
            Refusal::LoginThrottled => "login_throttled",
            Refusal::SessionOwner => "session_owner",
        }
    }
}

/// Why a message was not delivered to a receiver (or not routed at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The receiving session's queue was full (`limits.max_queued_messages`
    /// or `max_queued_bytes`): the new message, or a queued QoS 0 message
    /// evicted to make room for it.
    QueueFull,
    /// A QoS 0 message for a session with no connection attached.
    OfflineQos0,
    /// The message expired before it could be sent.
    Expired,
    /// Larger than the receiver's Maximum Packet Size.
    TooLarge,
    /// Refused by authorization (publish or receive).
    NotAuthorized,
    /// A transform plugin dropped it.
    Transform,
    /// A retained message the retained store had no room for
    /// (`limits.max_retained_messages` / `max_retained_bytes`): refused, or
    /// routed without being retained.
    RetainedFull,
    /// Not forwarded to the other nodes of the cluster: the queue towards
    /// NATS was full (NATS slow or away), the topic too long for a subject,
    /// or NATS refused it.
    Cluster,
    /// Sent by another node but dropped on arrival: this node's NATS client
    /// buffered as much of a subscription as it may (a slow consumer).
    /// Counted as the client reports them, which may be fewer.
    ClusterInbound,
    /// Over the publisher's `limits.max_publish_rate`.
    PublishRate,
    /// A share group's message with no member connected to take it, and
    /// no room left in the group's queue (`limits.max_queued_messages` or
    /// `max_queued_bytes`).
    ShareGroupFull,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 11] = [
        DropReason::QueueFull,
        DropReason::OfflineQos0,
        DropReason::Expired,
        DropReason::TooLarge,
        DropReason::NotAuthorized,
        DropReason::Transform,
        DropReason::RetainedFull,
        DropReason::Cluster,
        DropReason::ClusterInbound,
        DropReason::PublishRate,
        DropReason::ShareGroupFull,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::OfflineQos0 => "offline_qos0",
            DropReason::Expired => "expired",
            DropReason::TooLarge => "too_large",
            DropReason::NotAuthorized => "not_authorized",
            DropReason::Transform => "transform",
            DropReason::RetainedFull => "retained_full",
            DropReason::Cluster => "cluster",
            DropReason::ClusterInbound => "cluster_inbound",
            DropReason::PublishRate => "publish_rate",
            DropReason::ShareGroupFull => "share_group_full",
        }
    }
}

/// A configured limit that a client ran into. Each hit is counted once,
/// whatever else it causes (a refused connection, a dropped message, a
/// refused subscription or a closed connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `limits.max_connections`.
    MaxConnections,
    /// A listener's `max_connections`.
    ListenerMaxConnections,
    /// A listener's `max_connection_rate`.
    ConnectionRate,
    /// `limits.max_topic_levels`.
    TopicLevels,
    /// `limits.max_topic_length`.
    TopicLength,
    /// `limits.max_subscriptions_per_client`.
    Subscriptions,
    /// `limits.max_user_properties`.
    UserProperties,
    /// `limits.max_publish_rate`.
    PublishRate,
    /// `limits.max_sessions`.
    MaxSessions,
    /// `limits.write_timeout_ms`: a client did not take what was sent to it.
    WriteTimeout,
    /// The open-file limit (`RLIMIT_NOFILE`) or the system's: an accept
    /// failed for want of a descriptor.
    OpenFiles,
}

impl Limit {
    /// Every limit, in label order.
    pub const ALL: [Limit; 11] = [
        Limit::MaxConnections,
        Limit::ListenerMaxConnections,
        Limit::ConnectionRate,
        Limit::TopicLevels,
        Limit::TopicLength,
        Limit::Subscriptions,
        Limit::UserProperties,
        Limit::PublishRate,
        Limit::MaxSessions,
        Limit::WriteTimeout,
        Limit::OpenFiles,
    ];

    /// The `limit` label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::MaxConnections => "max_connections",
            Limit::ListenerMaxConnections => "listener_max_connections",
            Limit::ConnectionRate => "max_connection_rate",
            Limit::TopicLevels => "max_topic_levels",
            Limit::TopicLength => "max_topic_length",
            Limit::Subscriptions => "max_subscriptions_per_client",
            Limit::UserProperties => "max_user_properties",
            Limit::PublishRate => "max_publish_rate",
            Limit::MaxSessions => "max_sessions",
            Limit::WriteTimeout => "write_timeout",
            Limit::OpenFiles => "open_files",
        }
    }

    /// The `$SYS` topic of its counter.
    pub fn sys_topic(self) -> &'static str {
        match self {
            Limit::MaxConnections => "$SYS/broker/limits/max_connections",
            Limit::ListenerMaxConnections => "$SYS/broker/limits/listener_max_connections",
            Limit::ConnectionRate => "$SYS/broker/limits/max_connection_rate",
            Limit::TopicLevels => "$SYS/broker/limits/max_topic_levels",
            Limit::TopicLength => "$SYS/broker/limits/max_topic_length",
            Limit::Subscriptions => "$SYS/broker/limits/max_subscriptions_per_client",
            Limit::UserProperties => "$SYS/broker/limits/max_user_properties",
            Limit::PublishRate => "$SYS/broker/limits/max_publish_rate",
            Limit::MaxSessions => "$SYS/broker/limits/max_sessions",
            Limit::WriteTimeout => "$SYS/broker/limits/write_timeout",
            Limit::OpenFiles => "$SYS/broker/limits/open_files",
        }
    }
}

/// Broker-wide counters and gauges. Every field is a relaxed atomic: the
/// values are for humans and dashboards, and need no ordering with the
/// messages they count.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    started_at: SystemTime,
    ready: AtomicBool,
    connections_current: AtomicU64,
    connections_parked: AtomicU64,
    connections_total: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    received: [AtomicU64; 3],
    sent: [AtomicU64; 3],
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    limit_hits: [AtomicU64; Limit::ALL.len()],
    auth_successes: AtomicU64,
    auth_failures: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    redispatched: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            started: Instant::now(),
            started_at: SystemTime::now(),
            ready: AtomicBool::new(false),
            connections_current: AtomicU64::new(0),
            connections_parked: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            refused: Default::default(),
            received: Default::default(),
            sent: Default::default(),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            dropped: Default::default(),
            limit_hits: Default::default(),
            auth_successes: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            redispatched: AtomicU64::new(0),
        }
    }
}

/// A copy of the counters at one moment, for rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Seconds since the broker started.
    pub uptime_s: u64,
    /// Connections open now (after CONNACK).
    pub connections_current: u64,
    /// Of those, connections parked while quiet (`limits.park_after_s`).
    pub connections_parked: u64,
    /// Connections accepted (CONNACK success) since start.
    pub connections_total: u64,
    /// Connections refused, per [`Refusal::ALL`].
    pub refused: [u64; Refusal::ALL.len()],
    /// PUBLISH packets received from clients, per QoS.
    pub received: [u64; 3],
    /// PUBLISH packets sent to clients, per QoS.
    pub sent: [u64; 3],
    /// Bytes read from clients (MQTT bytes, after TLS and WebSocket).
    pub bytes_received: u64,
    /// Bytes written to clients.
    pub bytes_sent: u64,
    /// Messages dropped, per [`DropReason::ALL`].
    pub dropped: [u64; DropReason::ALL.len()],
    /// Limit hits, per [`Limit::ALL`].
    pub limit_hits: [u64; Limit::ALL.len()],
    /// Clients admitted at CONNECT (by a plugin, a certificate or as anonymous).
    pub auth_successes: u64,
    /// Clients refused by authentication.
    pub auth_failures: u64,
    /// Plugin reloads that put a new set in force.
    pub reloads_ok: u64,
    /// Plugin reloads that failed (the previous set kept serving).
    pub reloads_failed: u64,
    /// Share groups' QoS 1/2 messages a member gave up (its session
    /// ended, or it stayed away past `limits.share_hold_ms`), sent on to
    /// another member or to the group's queue.
    pub redispatched: u64,
}

impl Snapshot {
    /// Messages received, all QoS levels.
    pub fn received_total(&self) -> u64 {
        self.received.iter().sum()
    }

    /// Messages sent, all QoS levels.
    pub fn sent_total(&self) -> u64 {
        self.sent.iter().sum()
    }
}

fn add(counter: &AtomicU64, n: u64) {
    if n != 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl Metrics {
    /// When the broker started (wall clock), for the admin API.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// Marks the broker ready: listeners bound and plugins loaded.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the broker is ready (`/ready`).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// A connection got CONNACK success.
    pub fn connection_opened(&self) {
        self.connections_current.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection that got CONNACK success ended.
    pub fn connection_closed(&self) {
        self.connections_current.fetch_sub(1, Ordering::Relaxed);
    }

    /// A quiet connection was parked (`true`) or runs again (`false`).
    pub fn connection_parked(&self, parked: bool) {
        if parked {
            self.connections_parked.fetch_add(1, Ordering::Relaxed);
        } else {
            self.connections_parked.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Connections open now.
    pub fn connections_current(&self) -> u64 {
        self.connections_current.load(Ordering::Relaxed)
    }

    /// A connection was refused before it was served.
    pub fn refused(&self, reason: Refusal) {
        self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Messages were dropped.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        add(&self.dropped[reason as usize], n);
    }

    /// A client ran into a configured limit.
    pub fn limit_hit(&self, limit: Limit) {
        self.limit_hits[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Limit hits of one kind so far.
    pub fn limit_hits(&self, limit: Limit) -> u64 {
        self.limit_hits[limit as usize].load(Ordering::Relaxed)
    }

    /// Connections refused for one reason so far.
    pub fn refusals(&self, reason: Refusal) -> u64 {
        self.refused[reason as usize].load(Ordering::Relaxed)
    }

    /// Messages dropped for one reason so far.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    /// The outcome of authentication at CONNECT.
    pub fn authenticated(&self, success: bool) {
        let counter = if success { &self.auth_successes } else { &self.auth_failures };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A plugin reload finished (for the hot-reload entry point).
    pub fn reloaded(&self, success: bool) {
        let counter = if success { &self.reloads_ok } else { &self.reloads_failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Share groups' messages a member gave up went on to the others.
    pub fn redispatched(&self, n: u64) {
        add(&self.redispatched, n);
    }

    /// Adds a connection's local counts and resets them.
    pub fn flush(&self, local: &mut LocalCounts) {
        if local.is_empty() {
            return;
        }
        for (shared, n) in self.received.iter().zip(local.received) {
            add(shared, u64::from(n));
        }
        for (shared, n) in self.sent.iter().zip(local.sent) {
            add(shared, u64::from(n));
        }
        add(&self.bytes_received, u64::from(local.bytes_received));
        add(&self.bytes_sent, u64::from(local.bytes_sent));
        *local = LocalCounts::default();
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            uptime_s: self.started.elapsed().as_secs(),
            connections_current: load(&self.connections_current),
            connections_parked: load(&self.connections_parked),
            connections_total: load(&self.connections_total),
            refused: std::array::from_fn(|i| load(&self.refused[i])),
            received: std::array::from_fn(|i| load(&self.received[i])),
            sent: std::array::from_fn(|i| load(&self.sent[i])),
            bytes_received: load(&self.bytes_received),
            bytes_sent: load(&self.bytes_sent),
            dropped: std::array::from_fn(|i| load(&self.dropped[i])),
            limit_hits: std::array::from_fn(|i| load(&self.limit_hits[i])),
            auth_successes: load(&self.auth_successes),
            auth_failures: load(&self.auth_failures),
            reloads_ok: load(&self.reloads_ok),
            reloads_failed: load(&self.reloads_failed),
            redispatched: load(&self.redispatched),
        }
    }
}

/// A connection's own counts between two flushes into [`Metrics`]: plain
/// integers, so counting a message costs an add in the task's own memory.
/// Packets and bytes are counted in `u32`: a connection flushes once per
/// turn, and a turn handles at most a batch of input and a queue's worth
/// of output, one read and one write batch (every connection carries
/// these, issue 25; bytes in 32 bits put the connection in a 256-byte
/// malloc chunk instead of 272). A count that would pass `u32::MAX`
/// within one turn (a single write batch over 4 GiB) stops there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalCounts {
    /// PUBLISH packets received, per QoS.
    pub received: [u32; 3],
    /// PUBLISH packets sent, per QoS.
    pub sent: [u32; 3],
    /// Bytes read.
    pub bytes_received: u32,
    /// Bytes written.
    pub bytes_sent: u32,
}

impl LocalCounts {
    /// Counts a PUBLISH received.
    pub fn received(&mut self, qos: QoS) {
        self.received[qos as usize] += 1;
    }

    /// Counts a PUBLISH sent.
    pub fn sent(&mut self, qos: QoS) {
        self.sent[qos as usize] += 1;
    }

    /// Counts `n` bytes read.
    pub fn read(&mut self, n: usize) {
        self.bytes_received = saturating_add(self.bytes_received, n);
    }

    /// Counts `n` bytes written.
    pub fn wrote(&mut self, n: usize) {
        self.bytes_sent = saturating_add(self.bytes_sent, n);
    }

    fn is_empty(&self) -> bool {
        *self == LocalCounts::default()
    }
}

/// `count + n`, at most `u32::MAX`.
fn saturating_add(count: u32, n: usize) -> u32 {
    count.saturating_add(u32::try_from(n).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_tables_follow_the_enums() {
        assert!(Refusal::ALL.iter().enumerate().all(|(i, r)| *r as usize == i));
        assert!(DropReason::ALL.iter().enumerate().all(|(i, r)| *r as usize == i));
        assert!(Limit::ALL.iter().enumerate().all(|(i, l)| *l as usize == i));
        assert!(Limit::ALL.iter().all(|l| l.sys_topic().ends_with(l.label())));
    }

    #[test]
    fn local_counts_reach_the_shared_counters_on_flush() {
        let metrics = Metrics::default();
        let mut local = LocalCounts::default();
        local.received(QoS::AtLeastOnce);
        local.sent(QoS::AtMostOnce);
        local.bytes_received = 10;
        assert_eq!(metrics.snapshot().received_total(), 0);
        metrics.flush(&mut local);
        let s = metrics.snapshot();
        assert_eq!(s.received, [0, 1, 0]);
        assert_eq!(s.sent, [1, 0, 0]);
        assert_eq!(s.bytes_received, 10);
        assert_eq!(local, LocalCounts::default());
    }
}
