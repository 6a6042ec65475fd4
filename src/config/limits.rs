//! `[limits]`: resource limits, with defaults safe for a small fleet on a
//! small machine.

use std::time::Duration;

use serde::Deserialize;

/// Resource limits. Defaults are safe for a small fleet on a small machine.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent connections across all listeners.
    pub max_connections: usize,
    /// New connections per second across all listeners (a token bucket
    /// holding one second's worth), on top of each listener's own
    /// `max_connection_rate`; 0: no limit. A reload applies it at once.
    pub max_connection_rate: u32,
    /// Largest packet accepted from a client, in bytes (v5 Maximum Packet Size).
    pub max_packet_size: u32,
    /// QoS 1/2 messages in flight per direction per client (v5 Receive Maximum).
    pub max_inflight: u16,
    /// Messages queued per session beyond the in-flight window.
    pub max_queued_messages: usize,
    /// Bytes (topic and payload) queued per session (default 16 MiB); 0: no
    /// limit. At either queue bound, queued QoS 0 messages are evicted
    /// (oldest first) before a new message is refused; QoS 1/2 messages are
    /// never evicted.
    pub max_queued_bytes: usize,
    /// Sessions held at once, connected or not. A CONNECT that would start
    /// a new session beyond it is refused (v5 0x97 Quota exceeded, 3.1.1
    /// 0x03 Server unavailable); resuming a session is not. Sessions
    /// recovered from the store at start-up are all kept.
    pub max_sessions: usize,
    /// Time a batch of packets may take to reach the client's socket. A
    /// client that stops reading is disconnected when it runs out (v5
    /// DISCONNECT 0x97, best effort), so its backlog does not stay pinned.
    pub write_timeout_ms: u64,
    /// How long a publisher is held back when a QoS 1/2 message meets the
    /// full queue of a connected subscriber: its acknowledgement and its
    /// next packets wait until that queue drains to half, so a subscriber
    /// that keeps up loses nothing. If the wait runs out, the message is
    /// dropped for that subscriber (counted) and, until its queue drains
    /// to half, so is every message that does not fit, without waiting.
    /// 0: drop at once (Mosquitto's behaviour).
    pub queue_full_wait_ms: u64,
    /// How long a member of a share group that disconnects but keeps its
    /// session keeps the group's QoS 1/2 messages its client has not
    /// received (sent and not acknowledged, QoS 2 not answered with
    /// PUBREC, or queued) before they go to another member, so a member
    /// that never comes back does not hold them for ever. A member whose
    /// session ends gives them up at once. 0: at once too. At most a day.
    pub share_hold_ms: u64,
    /// Retained messages kept; 0: no limit. A retained message on a new
    /// topic beyond it is refused (v5 QoS 1/2: 0x97 Quota exceeded) or, at
    /// QoS 0 and for 3.1.1 clients, delivered but not retained.
    pub max_retained_messages: usize,
    /// Bytes (topic and payload) of retained messages kept; 0: no limit.
    /// Same behaviour at the limit as `max_retained_messages`.
    pub max_retained_bytes: usize,
    /// Levels in a topic name or filter.
    pub max_topic_levels: usize,
    /// Bytes in a topic name or filter (at most 65535, the protocol's own
    /// bound). A PUBLISH or will over it is refused with 0x90 Topic Name
    /// Invalid, a filter in SUBACK with 0x8F Topic Filter Invalid.
    pub max_topic_length: usize,
    /// Subscriptions a client holds at once; 0: no limit. A filter beyond
    /// it is refused in SUBACK (v5 0x97 Quota exceeded, 3.1.1 0x80).
    pub max_subscriptions_per_client: usize,
    /// User properties in one packet (v5); 0: no limit. A packet with more
    /// is refused (CONNACK or DISCONNECT 0x95 Packet too large) before the
    /// surplus is decoded.
    pub max_user_properties: usize,
    /// PUBLISH packets per second a client may send (a token bucket per
    /// connection holding one second's worth); 0: no limit. Over the rate,
    /// QoS 0 is dropped; v5 QoS 1/2 are refused with 0x97 Quota exceeded;
    /// 3.1.1 QoS 1/2 are acknowledged and dropped. All are counted. A
    /// reload applies it to connected clients too.
    pub max_publish_rate: u32,
    /// Time allowed between TCP accept and a complete CONNECT.
    pub connect_timeout_ms: u64,
    /// Largest keep alive granted; larger requests get v5 Server Keep Alive.
    pub max_keepalive_s: u16,
    /// Largest session expiry granted to v5 clients, in seconds.
    pub max_session_expiry_s: u32,
    /// Topic aliases a v5 client may use towards the broker.
    pub topic_alias_maximum: u16,
    /// Grace period for draining connections on shutdown.
    pub shutdown_grace_ms: u64,
    /// Seconds a plain-TCP connection stays quiet (no packet but PINGREQ
    /// read, nothing to deliver) before it is parked: its task ends and its socket
    /// leaves the runtime's reactor, about 300 bytes less per idle client,
    /// until a byte, a delivery, its keep alive or a kick wakes it (a
    /// connection parks one to two periods after its last event). 0:
    /// never. A reload applies it at once.
    pub park_after_s: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 100_000,
            max_connection_rate: 0,
            max_packet_size: 1024 * 1024,
            max_inflight: 64,
            max_queued_messages: crate::session::QueueBound::default().messages,
            max_queued_bytes: crate::session::QueueBound::default().bytes,
            max_sessions: 100_000,
            write_timeout_ms: 30_000,
            queue_full_wait_ms: 1000,
            share_hold_ms: DEFAULT_SHARE_HOLD_MS,
            max_retained_messages: 100_000,
            max_retained_bytes: 256 * 1024 * 1024,
            max_topic_levels: 64,
            max_topic_length: 65_535,
            max_subscriptions_per_client: 1000,
            max_user_properties: 128,
            max_publish_rate: 0,
            connect_timeout_ms: 10_000,
            max_keepalive_s: u16::MAX,
            max_session_expiry_s: u32::MAX,
            topic_alias_maximum: 16,
            shutdown_grace_ms: 5_000,
            park_after_s: 5,
        }
    }
}

/// `limits.share_hold_ms` when not set: a minute, long enough for a
/// member to ride out a network blip and resume its work, short enough
/// that the work does not stall for long without it.
pub const DEFAULT_SHARE_HOLD_MS: u64 = 60_000;

/// The largest `limits.share_hold_ms`: a day.
const MAX_SHARE_HOLD_MS: u64 = 86_400_000;

impl Limits {
    /// `share_hold_ms` as a duration.
    pub fn share_hold(&self) -> Duration {
        Duration::from_millis(self.share_hold_ms)
    }

    /// The bound of each session's queue.
    pub fn queue_bound(&self) -> crate::session::QueueBound {
        crate::session::QueueBound { messages: self.max_queued_messages, bytes: self.max_queued_bytes }
    }

    /// What the decoder accepts in one packet from a client, with the
    /// packet size capped at `max_packet_size` (e.g. smaller for CONNECT).
    pub fn decode_limits(&self, max_packet_size: u32) -> crate::codec::DecodeLimits {
        crate::codec::DecodeLimits {
            max_packet_size: max_packet_size.min(self.max_packet_size),
            max_user_properties: match self.max_user_properties {
                0 => usize::MAX,
                n => n,
            },
        }
    }

    /// `connect_timeout_ms` as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// `write_timeout_ms` as a duration.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// Checks that serde cannot express: zeros where a bound must be
    /// positive, and MQTT's own maxima. Keys are relative to the file.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let positive = [
            ("max_connections", self.max_connections as u64),
            ("max_packet_size", u64::from(self.max_packet_size)),
            ("max_inflight", u64::from(self.max_inflight)),
            ("max_topic_levels", self.max_topic_levels as u64),
            ("max_topic_length", self.max_topic_length as u64),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("max_sessions", self.max_sessions as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err((format!("limits.{key}"), "must be greater than 0".into()));
            }
        }
        if self.max_topic_length > 65_535 {
            return Err(("limits.max_topic_length".into(), "MQTT topics cannot exceed 65535 bytes".into()));
        }
        if self.max_packet_size > 268_435_460 {
            return Err(("limits.max_packet_size".into(), "MQTT packets cannot exceed 268435460 bytes".into()));
        }
        if self.max_packet_size < 64 {
            return Err(("limits.max_packet_size".into(), "must be at least 64 bytes".into()));
        }
        if self.share_hold_ms > MAX_SHARE_HOLD_MS {
            return Err(("limits.share_hold_ms".into(), format!("must be at most {MAX_SHARE_HOLD_MS} (a day)")));
        }
        Ok(())
    }
}
