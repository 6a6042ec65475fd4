//! The on-disk encoding of what the store keeps: serde structs of plain
//! types, written with `postcard` (compact, varint lengths, no schema in
//! the bytes). Each record starts with a format version byte so a later
//! release can tell old records apart.
//!
//! Message expiry is kept as wall-clock time (milliseconds since the Unix
//! epoch), converted from and to [`Instant`] at this edge only, so a
//! message's expiry keeps running while the broker is down.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec::{PacketId, Properties, QoS, RetainHandling, SubscriptionOptions, TopicFilter, TopicName};
use crate::message::Message;
use crate::message::{Delivery, Inflight, InflightState, Subscription};

/// Version byte in front of every record.
const FORMAT: u8 = 1;

/// A record that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub(super) String);

/// Encodes `value` behind the format byte.
pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    encode_into(value, Vec::new())
}

/// [`encode`] into `out` (empty; its capacity a guess of the size).
fn encode_into<T: Serialize>(value: &T, mut out: Vec<u8>) -> Vec<u8> {
    out.push(FORMAT);
    // Serializing plain structs into a Vec cannot fail.
    postcard::to_extend(value, out).unwrap_or_else(|_| vec![FORMAT])
}

/// Decodes a record written by [`encode`].
pub(super) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    decode_extended::<T, ()>(bytes).map(|(value, _)| value)
}

/// [`encode`] of `value` followed by `extension`, if any: an addition to
/// a record type that readers before it ignore (postcard stops at the end
/// of the value), and that [`decode_extended`] reads back from records
/// written before it as `None`.
#[cfg(any(test, feature = "cluster"))]
pub(super) fn encode_extended<T: Serialize, E: Serialize + ?Sized>(value: &T, extension: Option<&E>) -> Vec<u8> {
    encode_extended_into(value, extension, Vec::new())
}

/// [`encode_extended`] into `out` (empty; its capacity a guess of the size).
fn encode_extended_into<T: Serialize, E: Serialize + ?Sized>(
    value: &T,
    extension: Option<&E>,
    out: Vec<u8>,
) -> Vec<u8> {
    let mut out = encode_into(value, out);
    if let Some(extension) = extension
        && let Ok(bytes) = postcard::to_extend(extension, Vec::new())
    {
        out.extend_from_slice(&bytes);
    }
    out
}

/// Decodes a record written by [`encode_extended`] (or [`encode`]).
pub(super) fn decode_extended<'a, T: Deserialize<'a>, E: Deserialize<'a>>(
    bytes: &'a [u8],
) -> Result<(T, Option<E>), DecodeError> {
    let bad = |e: postcard::Error| DecodeError(e.to_string());
    match bytes.split_first() {
        Some((&FORMAT, rest)) => {
            let (value, rest) = postcard::take_from_bytes(rest).map_err(bad)?;
            let extension = if rest.is_empty() { None } else { Some(postcard::from_bytes(rest).map_err(bad)?) };
            Ok((value, extension))
        }
        Some((v, _)) => Err(DecodeError(format!("unknown record format {v}"))),
        None => Err(DecodeError("empty record".to_owned())),
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A session's own record (key: client id).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(super) struct SessionRecord {
    /// Session expiry interval, seconds.
    pub expiry_s: u32,
    /// When its connection ended (ms since the epoch); `None` while online.
    pub offline_since_ms: Option<u64>,
    /// Whom the session belongs to (`session::Owner`); `None`: not known.
    /// Last, so that older releases, which read the fields before it,
    /// still read the record.
    pub owner: Option<Option<String>>,
}

/// A session record as releases before session owners wrote it.
#[derive(Deserialize)]
struct LegacySessionRecord {
    expiry_s: u32,
    offline_since_ms: Option<u64>,
}

impl SessionRecord {
    /// Decodes a record written by [`encode`], by this release or by one
    /// before session owners (whose records lack the field: owner unknown).
    pub fn decode(bytes: &[u8]) -> Result<SessionRecord, DecodeError> {
        decode::<SessionRecord>(bytes).or_else(|_| {
            let LegacySessionRecord { expiry_s, offline_since_ms } = decode(bytes)?;
            Ok(SessionRecord { expiry_s, offline_since_ms, owner: None })
        })
    }
}

/// A subscription (key: client id, 0, filter).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(super) struct SubscriptionRecord {
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
    id: Option<u32>,
}

impl SubscriptionRecord {
    pub fn from_subscription(s: &Subscription) -> SubscriptionRecord {
        SubscriptionRecord {
            qos: s.options.qos as u8,
            no_local: s.options.no_local,
            retain_as_published: s.options.retain_as_published,
            retain_handling: s.options.retain_handling as u8,
            id: s.id,
        }
    }

    pub fn into_subscription(self) -> Result<Subscription, DecodeError> {
        let retain_handling = match self.retain_handling {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            n => return Err(DecodeError(format!("bad retain handling {n}"))),
        };
        let options = SubscriptionOptions {
            qos: qos(self.qos)?,
            no_local: self.no_local,
            retain_as_published: self.retain_as_published,
            retain_handling,
        };
        Ok(Subscription { options, id: self.id })
    }
}

/// An application message.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(super) struct MessageRecord {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
    payload_format_indicator: Option<u8>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<Vec<u8>>,
    user_properties: Vec<(String, String)>,
    /// Expiry as wall-clock milliseconds since the epoch.
    expires_at_ms: Option<u64>,
}

/// [`MessageRecord`] borrowed from a message, for writing: the same fields
/// in the same order, so the same bytes (serde writes a slice as it writes
/// a `Vec`), without copying the message first.
#[derive(Serialize)]
struct MessageRecordRef<'a> {
    topic: &'a str,
    payload: &'a [u8],
    qos: u8,
    retain: bool,
    payload_format_indicator: Option<u8>,
    content_type: Option<&'a str>,
    response_topic: Option<&'a str>,
    correlation_data: Option<&'a [u8]>,
    user_properties: &'a [(String, String)],
    expires_at_ms: Option<u64>,
}

impl<'a> MessageRecordRef<'a> {
    fn new(m: &'a Message, now: Instant, now_ms: u64) -> MessageRecordRef<'a> {
        let p = &m.properties;
        MessageRecordRef {
            topic: m.topic.as_str(),
            payload: &m.payload,
            qos: m.qos as u8,
            retain: m.retain,
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.as_deref(),
            response_topic: p.response_topic.as_ref().map(|t| t.as_str()),
            correlation_data: p.correlation_data.as_deref(),
            user_properties: &p.user_properties,
            expires_at_ms: m.expires_at.map(|at| {
                let left = u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX);
                now_ms.saturating_add(left)
            }),
        }
    }
}

/// [`DeliveryRecord`] borrowed from a delivery, for writing (see
/// [`MessageRecordRef`]).
#[derive(Serialize)]
struct DeliveryRecordRef<'a> {
    message: MessageRecordRef<'a>,
    qos: u8,
    retain: bool,
    subscription_ids: &'a [u32],
    inflight: Option<(u16, u8)>,
}

/// An in-flight entry's packet id and handshake state, as recorded.
pub(super) fn inflight_state(i: &Inflight) -> (u16, u8) {
    let state = match i.state {
        InflightState::AwaitPubAck => 0,
        InflightState::AwaitPubRec => 1,
        InflightState::AwaitPubComp => 2,
    };
    (i.packet_id.get(), state)
}

/// The bytes of [`DeliveryRecord::pending`]'s `encode`, or with
/// `inflight` of [`DeliveryRecord::inflight`]'s, written straight from the
/// delivery: the store writes one for every message it keeps.
pub(super) fn encode_delivery(d: &Delivery, inflight: Option<(u16, u8)>, now: Instant, now_ms: u64) -> Vec<u8> {
    let record = DeliveryRecordRef {
        message: MessageRecordRef::new(&d.message, now, now_ms),
        qos: d.qos as u8,
        retain: d.retain,
        subscription_ids: &d.subscription_ids,
        inflight,
    };
    let size = d.message.payload.len() + d.message.topic.as_str().len() + 32;
    encode_extended_into(&record, d.share.as_ref().map(|f| f.as_str()), Vec::with_capacity(size))
}

impl MessageRecord {
    pub fn from_message(m: &Message, now: Instant, now_ms: u64) -> MessageRecord {
        let p = &m.properties;
        MessageRecord {
            topic: m.topic.as_str().to_owned(),
            payload: m.payload.to_vec(),
            qos: m.qos as u8,
            retain: m.retain,
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.as_ref().map(|t| t.as_str().to_owned()),
            correlation_data: p.correlation_data.as_ref().map(|b| b.to_vec()),
            user_properties: p.user_properties.clone(),
            expires_at_ms: m.expires_at.map(|at| {
                let left = u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX);
                now_ms.saturating_add(left)
            }),
        }
    }

    /// Whether the message had expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    pub fn into_message(self, now: Instant, now_ms: u64) -> Result<Message, DecodeError> {
        let topic = |t: &str| TopicName::new(t).map_err(|e| DecodeError(format!("bad topic {t:?}: {e}")));
        let response_topic = self.response_topic.as_deref().map(topic).transpose()?;
        Ok(Message {
            topic: topic(&self.topic)?,
            payload: Bytes::from(self.payload),
            qos: qos(self.qos)?,
            retain: self.retain,
            properties: Properties {
                payload_format_indicator: self.payload_format_indicator,
                content_type: self.content_type,
                response_topic,
                correlation_data: self.correlation_data.map(Bytes::from),
                user_properties: self.user_properties,
                ..Properties::default()
            }
            .into(),
            expires_at: self.expires_at_ms.map(|at| now + Duration::from_millis(at.saturating_sub(now_ms))),
            encoded: Default::default(),
            // Only a message on its way to JetStream needs one.
            id: crate::message::MessageId::NONE,
        })
    }
}

/// A will waiting for its delay (key: client id).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(super) struct WillRecord {
    pub message: MessageRecord,
    /// Message Expiry Interval, seconds, from publication.
    pub expiry_s: Option<u32>,
    /// When it is due, ms since the Unix epoch.
    pub due_ms: u64,
}

/// A queued or in-flight delivery (key: client id, 0, sequence number).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(super) struct DeliveryRecord {
    pub message: MessageRecord,
    qos: u8,
    retain: bool,
    subscription_ids: Vec<u32>,
    /// For an in-flight message: its packet id and handshake state.
    pub inflight: Option<(u16, u8)>,
    /// The shared subscription that chose the session for it, if any.
    /// Added after the first release: written after the record proper
    /// ([`DeliveryRecord::encode`]), so records without it still read.
    #[serde(skip)]
    pub share: Option<String>,
}

impl DeliveryRecord {
    #[cfg(any(test, feature = "cluster"))]
    pub fn pending(d: &Delivery, now: Instant, now_ms: u64) -> DeliveryRecord {
        DeliveryRecord {
            message: MessageRecord::from_message(&d.message, now, now_ms),
            qos: d.qos as u8,
            retain: d.retain,
            subscription_ids: d.subscription_ids.clone(),
            inflight: None,
            share: d.share.as_ref().map(|f| f.as_str().to_owned()),
        }
    }

    /// The record's bytes, its shared subscription after the rest.
    #[cfg(test)]
    pub fn encode(&self) -> Vec<u8> {
        encode_extended(self, self.share.as_ref())
    }

    /// Reads a record written by [`DeliveryRecord::encode`].
    pub fn decode(bytes: &[u8]) -> Result<DeliveryRecord, DecodeError> {
        let (mut record, share) = decode_extended::<DeliveryRecord, String>(bytes)?;
        record.share = share;
        Ok(record)
    }

    #[cfg(any(test, feature = "cluster"))]
    pub fn inflight(i: &Inflight, now: Instant, now_ms: u64) -> DeliveryRecord {
        DeliveryRecord { inflight: Some(inflight_state(i)), ..DeliveryRecord::pending(&i.delivery, now, now_ms) }
    }

    /// Back to a pending delivery or an in-flight entry, kept under `seq`.
    pub fn into_parts(self, seq: u64, now: Instant, now_ms: u64) -> Result<Result<Delivery, Inflight>, DecodeError> {
        let share = match self.share.as_deref().map(TopicFilter::new).transpose() {
            Ok(share) => share.filter(|f| f.share_group().is_some()).map(Arc::new),
            Err(e) => return Err(DecodeError(format!("bad shared subscription: {e}"))),
        };
        let delivery = Delivery {
            message: Arc::new(self.message.into_message(now, now_ms)?),
            qos: qos(self.qos)?,
            retain: self.retain,
            subscription_ids: self.subscription_ids,
            stored: Some(seq),
            jetstream: None,
            share,
        };
        let Some((id, state)) = self.inflight else { return Ok(Ok(delivery)) };
        let packet_id = PacketId::new(id).ok_or_else(|| DecodeError("packet id 0".to_owned()))?;
        let state = match state {
            0 => InflightState::AwaitPubAck,
            1 => InflightState::AwaitPubRec,
            2 => InflightState::AwaitPubComp,
            n => return Err(DecodeError(format!("bad in-flight state {n}"))),
        };
        Ok(Err(Inflight { packet_id, delivery, state }))
    }
}

fn qos(n: u8) -> Result<QoS, DecodeError> {
    QoS::from_u8(n).ok_or_else(|| DecodeError(format!("bad QoS {n}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_records_with_and_without_an_owner_read_both_ways() {
        #[derive(Serialize)]
        struct Before {
            expiry_s: u32,
            offline_since_ms: Option<u64>,
        }
        let old = encode(&Before { expiry_s: 60, offline_since_ms: Some(5) });
        let read = SessionRecord::decode(&old).expect("an older record reads");
        assert_eq!(read, SessionRecord { expiry_s: 60, offline_since_ms: Some(5), owner: None });
        for owner in [Some(Some("alice".to_owned())), Some(None), None] {
            let record = SessionRecord { expiry_s: 7, offline_since_ms: None, owner };
            let bytes = encode(&record);
            assert_eq!(SessionRecord::decode(&bytes).expect("reads"), record);
            // What a release before owners reads from it.
            let LegacySessionRecord { expiry_s, offline_since_ms } = decode(&bytes).expect("older release reads");
            assert_eq!((expiry_s, offline_since_ms), (7, None));
        }
    }

    fn message() -> Message {
        let props = Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            content_type: Some("text/plain".to_owned()),
            response_topic: Some(TopicName::new("reply/here").expect("valid")),
            correlation_data: Some(Bytes::from_static(b"corr")),
            user_properties: vec![("k".to_owned(), "v".to_owned())],
            ..Properties::default()
        };
        Message::new(
            TopicName::new("a/b").expect("valid"),
            Bytes::from_static(b"hello"),
            QoS::ExactlyOnce,
            true,
            &props,
        )
    }

    #[test]
    fn message_round_trips_with_expiry_as_wall_clock() {
        let m = message();
        let (now, ms) = (Instant::now(), now_ms());
        let bytes = encode(&MessageRecord::from_message(&m, now, ms));
        let record: MessageRecord = decode(&bytes).expect("decodes");
        assert!(!record.is_expired(ms));
        assert!(record.is_expired(ms + 61_000));
        let back = record.into_message(now, ms).expect("valid");
        assert_eq!(back.topic, m.topic);
        assert_eq!(back.payload, m.payload);
        assert_eq!(back.qos, m.qos);
        assert!(back.retain);
        assert_eq!(back.properties, m.properties);
        assert_eq!(back.remaining_expiry(now), Some(60));
        // Recovered 10 s later: 50 s left.
        let record: MessageRecord = decode(&bytes).expect("decodes");
        let later = record.into_message(now, ms + 10_000).expect("valid");
        assert_eq!(later.remaining_expiry(now), Some(50));
    }

    #[test]
    fn deliveries_are_written_as_the_record_is() {
        let mut delivery = Delivery {
            message: Arc::new(message()),
            qos: QoS::AtLeastOnce,
            retain: true,
            subscription_ids: vec![7, 9],
            stored: None,
            jetstream: None,
            share: None,
        };
        let (now, ms) = (Instant::now(), now_ms());
        for share in [None, Some(Arc::new(TopicFilter::new("$share/g/a/#").expect("valid")))] {
            delivery.share = share;
            let written = encode_delivery(&delivery, None, now, ms);
            assert_eq!(written, DeliveryRecord::pending(&delivery, now, ms).encode());
            let inflight = Inflight {
                packet_id: PacketId::new(42).expect("non-zero"),
                delivery: delivery.clone(),
                state: InflightState::AwaitPubRec,
            };
            let written = encode_delivery(&delivery, Some(inflight_state(&inflight)), now, ms);
            assert_eq!(written, DeliveryRecord::inflight(&inflight, now, ms).encode());
        }
    }

    #[test]
    fn inflight_and_subscription_round_trip() {
        let delivery = Delivery {
            message: Arc::new(message()),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![7],
            stored: None,
            jetstream: None,
            share: Some(Arc::new(TopicFilter::new("$share/g/a/#").expect("valid"))),
        };
        let packet_id = PacketId::new(42).expect("non-zero");
        let inflight = Inflight { packet_id, delivery, state: InflightState::AwaitPubComp };
        let (now, ms) = (Instant::now(), now_ms());
        let bytes = DeliveryRecord::inflight(&inflight, now, ms).encode();
        let back = DeliveryRecord::decode(&bytes).expect("decodes").into_parts(3, now, ms).expect("valid");
        let Err(back) = back else { panic!("expected in-flight") };
        assert_eq!(back.packet_id, packet_id);
        assert_eq!(back.state, InflightState::AwaitPubComp);
        assert_eq!(back.delivery.subscription_ids, vec![7]);
        assert_eq!(back.delivery.qos, QoS::AtLeastOnce);
        assert_eq!(back.delivery.share.as_deref().map(TopicFilter::as_str), Some("$share/g/a/#"));
        // A record written before the shared subscription was (none after
        // the record proper) reads as one without.
        let old = encode(&DeliveryRecord::inflight(&inflight, now, ms));
        assert!(bytes.starts_with(&old) && bytes.len() > old.len());
        let back = DeliveryRecord::decode(&old).expect("decodes").into_parts(3, now, ms).expect("valid");
        assert!(back.is_err_and(|i| i.delivery.share.is_none() && i.delivery.subscription_ids == [7]));
        // ... and a reader from before it reads the new record.
        assert!(decode::<DeliveryRecord>(&bytes).is_ok());

        let sub = Subscription {
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
            id: Some(3),
        };
        let bytes = encode(&SubscriptionRecord::from_subscription(&sub));
        let back = decode::<SubscriptionRecord>(&bytes).expect("decodes").into_subscription().expect("valid");
        assert_eq!(back, sub);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode::<MessageRecord>(&[]).is_err());
        assert!(decode::<MessageRecord>(&[9, 1, 2]).is_err());
        assert!(decode::<MessageRecord>(&[FORMAT, 0xff, 0xff, 0xff]).is_err());
    }
}
