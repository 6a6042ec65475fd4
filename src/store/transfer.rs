//! Encodings of what cluster nodes hand each other through NATS: a whole
//! session moving between nodes, and a connected client's will registered
//! for another node to publish. Built from the store's record types, so a
//! session travels as it is stored.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::record::{
    DecodeError, DeliveryRecord, MessageRecord, SubscriptionRecord, decode, decode_extended, encode, encode_extended,
    now_ms,
};
use super::{PendingWill, StoredSession};
use crate::codec::{PacketId, TopicFilter, Will};
use crate::message::JetStreamAck;
use crate::message::Message;

/// A whole session on its way from one cluster node to another (not
/// stored: the receiving node stores it its own way).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct TransferRecord {
    client_id: String,
    expiry_s: u32,
    subscriptions: Vec<(String, SubscriptionRecord)>,
    /// In-flight deliveries first (in send order), then pending ones.
    messages: Vec<DeliveryRecord>,
    incoming_qos2: Vec<u16>,
    /// For each of `messages`, how to acknowledge it to JetStream if
    /// JetStream keeps it: stream sequence and reply subject.
    jetstream: Vec<Option<(u64, String)>>,
}

/// Encodes `session` (its will left out) for another node: see
/// [`decode_session`]. The shared subscription of each message, added
/// later, follows the record (one `Option` per message), where nodes
/// from before it do not look.
pub(crate) fn encode_session(session: &StoredSession) -> Vec<u8> {
    let (now, now_ms) = (Instant::now(), now_ms());
    let inflight = session.inflight.iter().map(|i| DeliveryRecord::inflight(i, now, now_ms));
    let pending = session.pending.iter().map(|d| DeliveryRecord::pending(d, now, now_ms));
    let messages: Vec<DeliveryRecord> = inflight.chain(pending).collect();
    let shares: Vec<Option<String>> = messages.iter().map(|m| m.share.clone()).collect();
    let shares = shares.iter().any(Option::is_some).then_some(&shares);
    let record = TransferRecord {
        client_id: session.client_id.to_string(),
        expiry_s: session.expiry_s,
        subscriptions: session
            .subscriptions
            .iter()
            .map(|(f, s)| (f.as_str().to_owned(), SubscriptionRecord::from_subscription(s)))
            .collect(),
        messages,
        incoming_qos2: session.incoming_qos2.iter().map(|id| id.get()).collect(),
        jetstream: (session.inflight.iter().map(|i| &i.delivery).chain(&session.pending))
            .map(|d| d.jetstream.as_ref().map(|j| (j.seq, j.reply.to_string())))
            .collect(),
    };
    encode_extended(&record, shares)
}

/// A session another node encoded with [`encode_session`]. Its messages
/// carry no store key (this node's store gives them one) and expiry keeps
/// running by the wall clock.
///
/// # Errors
/// [`DecodeError`] for bytes that are no such session.
pub(crate) fn decode_session(bytes: &[u8]) -> Result<StoredSession, DecodeError> {
    let (record, shares) = decode_extended::<TransferRecord, Vec<Option<String>>>(bytes)?;
    let (now, now_ms) = (Instant::now(), now_ms());
    let mut shares = shares.unwrap_or_default().into_iter();
    let mut session = StoredSession {
        client_id: record.client_id.into(),
        expiry_s: record.expiry_s,
        subscriptions: Vec::with_capacity(record.subscriptions.len()),
        pending: Vec::new(),
        inflight: Vec::new(),
        incoming_qos2: Vec::with_capacity(record.incoming_qos2.len()),
        will: None,
        // Not carried between nodes: the next connection claims it.
        owner: None,
    };
    for (filter, subscription) in record.subscriptions {
        let filter = TopicFilter::new(&filter).map_err(|e| DecodeError(format!("filter {filter:?}: {e}")))?;
        session.subscriptions.push((filter, subscription.into_subscription()?));
    }
    let mut acks = record.jetstream.into_iter();
    for mut message in record.messages {
        message.share = shares.next().flatten();
        let jetstream = acks.next().flatten().map(|(seq, reply)| Box::new(JetStreamAck { seq, reply: reply.into() }));
        // An expired one JetStream keeps still travels: the node that would
        // have sent it acknowledges it there instead.
        if message.message.is_expired(now_ms) && jetstream.is_none() {
            continue;
        }
        match message.into_parts(0, now, now_ms)? {
            Ok(mut delivery) => {
                (delivery.stored, delivery.jetstream) = (None, jetstream);
                session.pending.push(delivery);
            }
            Err(mut inflight) => {
                (inflight.delivery.stored, inflight.delivery.jetstream) = (None, jetstream);
                session.inflight.push(inflight);
            }
        }
    }
    for id in record.incoming_qos2 {
        session.incoming_qos2.push(PacketId::new(id).ok_or_else(|| DecodeError("packet id 0".to_owned()))?);
    }
    Ok(session)
}

/// The will of a connected client, registered with the cluster so that
/// another node can publish it if this one dies.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct LiveWillRecord {
    message: MessageRecord,
    /// Message Expiry Interval, seconds, from publication.
    expiry_s: Option<u32>,
    /// Seconds to wait before publishing it.
    delay_s: u32,
}

/// Encodes `will`, to be published `delay_s` after its connection is
/// found gone: see [`decode_will`].
pub(crate) fn encode_will(will: &Will, delay_s: u32) -> Vec<u8> {
    let mut message = Message::new(will.topic.clone(), will.payload.clone(), will.qos, will.retain, &will.properties);
    // Its expiry starts when it is published.
    message.expires_at = None;
    encode(&LiveWillRecord {
        message: MessageRecord::from_message(&message, Instant::now(), now_ms()),
        expiry_s: will.properties.message_expiry_interval,
        delay_s,
    })
}

/// A will encoded by [`encode_will`], due its delay from now.
///
/// # Errors
/// [`DecodeError`] for bytes that are no such will.
pub(crate) fn decode_will(bytes: &[u8]) -> Result<PendingWill, DecodeError> {
    let record: LiveWillRecord = decode(bytes)?;
    let (now, now_ms) = (Instant::now(), now_ms());
    Ok(PendingWill {
        message: Arc::new(record.message.into_message(now, now_ms)?),
        expiry_s: record.expiry_s,
        due_ms: now_ms + u64::from(record.delay_s) * 1000,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::codec::{Properties, QoS, SubscriptionOptions, TopicName};
    use crate::message::{Delivery, Inflight, InflightState, Subscription};

    fn message() -> Message {
        let props = Properties {
            message_expiry_interval: Some(60),
            content_type: Some("text/plain".to_owned()),
            ..Properties::default()
        };
        Message::new(
            TopicName::new("a/b").expect("valid"),
            Bytes::from_static(b"hello"),
            QoS::AtLeastOnce,
            false,
            &props,
        )
    }

    #[test]
    fn a_session_moves_whole_between_nodes() {
        let delivery = |payload: &'static str, stored| Delivery {
            message: Arc::new(Message { payload: Bytes::from_static(payload.as_bytes()), ..message() }),
            qos: QoS::ExactlyOnce,
            retain: true,
            subscription_ids: vec![1, 2],
            stored,
            jetstream: None,
            share: None,
        };
        let ack = JetStreamAck { seq: 12, reply: "$JS.ACK.Q.s1.1.12.3.0.0".into() };
        let sent = Inflight {
            packet_id: PacketId::new(9).expect("non-zero"),
            delivery: Delivery {
                jetstream: Some(Box::new(ack.clone())),
                share: Some(Arc::new(TopicFilter::new("$share/g/a/#").expect("valid"))),
                ..delivery("sent", Some(4))
            },
            state: InflightState::AwaitPubRec,
        };
        let mut expired = delivery("expired", None);
        Arc::make_mut(&mut expired.message).expires_at = Some(Instant::now());
        let subscription = Subscription { options: SubscriptionOptions::default(), id: Some(5) };
        let session = StoredSession {
            client_id: "dev/ü".into(),
            expiry_s: 3600,
            subscriptions: vec![(TopicFilter::new("a/+/#").expect("valid"), subscription.clone())],
            pending: vec![delivery("queued", Some(5)), expired],
            inflight: vec![sent],
            incoming_qos2: vec![PacketId::new(77).expect("non-zero")],
            will: None,
            owner: None,
        };
        let back = decode_session(&encode_session(&session)).expect("decodes");
        assert_eq!((&*back.client_id, back.expiry_s), ("dev/ü", 3600));
        assert_eq!(back.subscriptions, session.subscriptions);
        assert_eq!(back.incoming_qos2, session.incoming_qos2);
        // The expired message stays behind; store keys stay with the old node.
        let [queued] = &back.pending[..] else { panic!("one pending: {:?}", back.pending) };
        assert_eq!((&queued.message.payload[..], queued.stored, queued.retain), (&b"queued"[..], None, true));
        assert_eq!(queued.subscription_ids, vec![1, 2]);
        let [sent] = &back.inflight[..] else { panic!("one in flight") };
        assert_eq!((sent.packet_id.get(), sent.state, sent.delivery.stored), (9, InflightState::AwaitPubRec, None));
        assert_eq!((sent.delivery.jetstream.as_deref(), queued.jetstream.as_deref()), (Some(&ack), None));
        assert_eq!(sent.delivery.share.as_deref().map(TopicFilter::as_str), Some("$share/g/a/#"));
        assert!(queued.share.is_none());
        assert!(decode_session(b"\x01garbage").is_err());
    }

    #[test]
    fn a_live_will_keeps_its_properties_and_is_due_after_its_delay() {
        let props = Properties { message_expiry_interval: Some(30), ..message().properties.to_properties() };
        let will = Will {
            topic: TopicName::new("dead/1").expect("valid"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: props,
        };
        let before = now_ms();
        let back = decode_will(&encode_will(&will, 5)).expect("decodes");
        assert!((before + 5000..=now_ms() + 5000).contains(&back.due_ms));
        assert_eq!(back.expiry_s, Some(30));
        let m = &back.message;
        assert_eq!(
            (m.topic.as_str(), &m.payload[..], m.qos, m.retain),
            ("dead/1", &b"gone"[..], QoS::AtLeastOnce, true)
        );
        assert_eq!(m.expires_at, None, "its expiry starts at publication");
        assert_eq!(m.properties.content_type.as_deref(), Some("text/plain"));
    }
}
