//! The task that hands this node's messages to NATS, and the one that
//! tells their publishers when JetStream has them.
//!
//! While a session is kept somewhere ([`super::queue`]), a QoS 1/2
//! message goes to NATS as a JetStream publish, and its publisher's
//! PUBACK/PUBREC waits until JetStream answered that it stored it
//! ([`super::Cluster::stored`]). A message JetStream does not answer for
//! in time (the connection dropped with it in flight, NATS or JetStream
//! is away, a leader is being elected) is published again once the
//! connection is back and every kept session's consumer is up to date
//! ([`Link::ready`]), until JetStream answers. Nothing is acknowledged to
//! a publisher that JetStream has not stored: a publisher whose message
//! waits longer than `[cluster] store_timeout_s` is disconnected without
//! its acknowledgement, and resends.
//!
//! A retry may find the first copy stored (only its answer was lost).
//! QoS 1 allows the second copy. A QoS 2 message carries a `Nats-Msg-Id`
//! (its [`MessageId`], made with the message), and JetStream
//! stores an id once within the stream's duplicate window (two minutes by
//! default). Only QoS 2 carries one: JetStream remembers each id for the
//! whole window, about 200 bytes on every server holding the stream
//! (BENCHMARKS.md, "Partitions"), which at QoS 1 rates would cost more
//! than the duplicates it saves.
//!
//! A retry is marked (in its envelope, [`envelope::wrap`]): nodes take QoS 1/2
//! messages marked so from JetStream only, not from core NATS, which
//! would otherwise deliver the first copy and the retry to clean sessions
//! (at most once there, as before).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::{Subject, jetstream};
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{Link, OUTBOUND_BATCH, OUTBOUND_CAPACITY, Outgoing, envelope, queued_size};
use crate::broker::Node;
use crate::codec::QoS;
use crate::config::WireFormat;
use crate::message::{Message, MessageId};
use crate::metrics::DropReason;

/// How long JetStream has to answer for a message before it is published
/// again (once NATS is there to take it).
const STORE_WAIT: Duration = Duration::from_secs(2);
/// Messages awaiting JetStream's answer that are published again at once,
/// when the first of them is found missing, if their own answer is overdue
/// too (or they were never sent): they were most likely lost with it.
const RETRY_WINDOW: usize = 256;
/// How often a task waiting for the connection (and the kept sessions'
/// consumers) to be back looks again.
const READY_POLL: Duration = Duration::from_millis(50);
/// Longest pause between two rounds of retries.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);
/// Rounds of retries after which the wait is logged (at warn, once).
const RETRIES_BEFORE_WARNING: u32 = 10;

/// What a QoS 1/2 message handed to NATS still waits for before its
/// publisher may be acknowledged.
pub(super) enum Pending {
    /// Nothing, for this many messages in a row: sent to the running nodes
    /// over core NATS (or dropped, counted), since no session is kept
    /// anywhere. One entry per run, so the acknowledging task (and
    /// whoever waits on [`super::Cluster::stored`]) wakes once for it.
    Sent(u64),
    /// JetStream storing it.
    Stored(Box<Storing>),
}

/// Where the publishing tasks write what they hand to the NATS client:
/// each message's subject and payload are split off one block that many
/// share, rather than allocated (twice) each.
#[derive(Default)]
struct Wire {
    block: BytesMut,
    subject: String,
}

impl Wire {
    /// What a block holds at least: many small messages.
    const BLOCK: usize = 64 * 1024;

    /// The subject, headers and NATS payload of `message`
    /// ([`envelope::wrap`], or [`envelope::headers`] and the bare payload),
    /// sent with `id` as its `Nats-Msg-Id` unless none: a QoS 2 message
    /// carries its id over core NATS too, since the queue stream captures
    /// that copy as well, and a session becoming kept tells it by its id
    /// from the one its node routed (`queue::Taken`).
    fn encode(
        &mut self,
        link: &Link,
        message: &Message,
        publisher: Option<&str>,
        retry: bool,
        now: Instant,
        id: MessageId,
    ) -> (Subject, Option<async_nats::HeaderMap>, Bytes) {
        // No kept session or share group takes a QoS 0 message from the
        // queue stream: it goes where the stream does not sequence it
        // (unless older nodes, which subscribe to the stream's subjects
        // only, must see it).
        let captured = message.qos != QoS::AtMostOnce || link.wire_format != WireFormat::Split;
        link.subjects.topic_into(message.topic.as_str(), captured, &mut self.subject);
        let with_id = |mut headers: async_nats::HeaderMap| {
            if !id.is_none() {
                headers.insert(async_nats::header::NATS_MESSAGE_ID, id.header().as_str());
            }
            headers
        };
        if link.wire_format == WireFormat::Headers {
            let headers = with_id(envelope::headers(&link.node_id, message, publisher, retry, now));
            return (Subject::from(self.subject.as_str()), Some(headers), message.payload.clone());
        }
        // Room for the subject, the envelope as it usually is, the
        // payload; the block grows past it for a large envelope.
        let need = self.subject.len() + 64 + link.node_id.len() + publisher.map_or(0, str::len) + message.payload.len();
        if self.block.capacity() - self.block.len() < need {
            self.block.reserve(need.max(Self::BLOCK));
        }
        self.block.extend_from_slice(self.subject.as_bytes());
        let subject =
            Subject::from_utf8(self.block.split().freeze()).unwrap_or_else(|_| Subject::from(self.subject.as_str()));
        let headers = (!id.is_none()).then(|| with_id(async_nats::HeaderMap::new()));
        (subject, headers, envelope::wrap(&mut self.block, &link.node_id, message, publisher, retry, now))
    }
}

/// A message on its way into JetStream.
pub(super) struct Storing {
    message: Arc<Message>,
    /// Its publisher's client id (No Local of kept sessions).
    publisher: Option<Arc<str>>,
    /// The `Nats-Msg-Id` every attempt of a QoS 2 message carries.
    id: MessageId,
    attempt: Attempt,
}

/// Where a message stands with JetStream.
enum Attempt {
    /// Not published yet (the connection was not ready), or to be
    /// published again.
    Due,
    /// Published; JetStream's answer is due by the instant.
    Sent(jetstream::context::PublishAckFuture, Instant),
    /// NATS can never take it (larger than the server's `max_payload`):
    /// it stays on this node, counted as not forwarded.
    Refused,
}

impl Storing {
    /// Whether JetStream stored it (or never will, or it expired
    /// meanwhile: nobody is owed it any more).
    async fn settle(&mut self) -> bool {
        if self.message.is_expired(Instant::now()) {
            return true;
        }
        match std::mem::replace(&mut self.attempt, Attempt::Due) {
            Attempt::Due => false,
            Attempt::Refused => true,
            Attempt::Sent(ack, due) => match tokio::time::timeout_at(due.into(), ack.into_future()).await {
                Ok(Ok(_)) => true,
                Ok(Err(e)) => {
                    debug!(error = %e, "cluster: JetStream did not store a message; it goes again");
                    false
                }
                Err(_) => {
                    debug!("cluster: JetStream did not answer for a message in time; it goes again");
                    false
                }
            },
        }
    }
}

impl Link {
    /// Publishes this node's messages until shutdown, taking from the
    /// queue what is there (up to [`OUTBOUND_BATCH`]) in one go. Handing a
    /// message to the client waits while the client's own command queue is
    /// full, so the NATS connection paces this task; local publishers only
    /// ever `try_send` into the queue in front of it and never wait.
    pub(super) async fn publish(
        self: Arc<Self>,
        client: async_nats::Client,
        mut rx: mpsc::Receiver<Outgoing>,
        node: Node,
    ) {
        let mut batch = Vec::with_capacity(OUTBOUND_BATCH);
        let mut wire = Wire::default();
        let js = jetstream::new(client.clone());
        let (acks, pending) = mpsc::channel(OUTBOUND_CAPACITY);
        node.spawn(self.clone().acknowledge(client.clone(), pending, node.clone()));
        // `recv_many` takes nothing only when every sender is gone.
        'batches: while let Some(1..) =
            node.shutdown().run_until_cancelled(rx.recv_many(&mut batch, OUTBOUND_BATCH)).await
        {
            let now = Instant::now();
            // Stored by JetStream before acknowledged while a session is
            // kept somewhere; sent now only if it can be stored now.
            let store = self.queue.wanted();
            let ready = store && self.ready(&client);
            // QoS 1/2 messages sent (not stored) since the last entry
            // handed to the acknowledging task.
            let mut sent = 0u64;
            for (message, publisher) in batch.drain(..) {
                self.queued_bytes.fetch_sub(queued_size(&message), Ordering::Relaxed);
                if message.qos == QoS::AtMostOnce {
                    if !message.is_expired(now) {
                        self.send(&client, &mut wire, &message, None, now, &node).await;
                    }
                    continue;
                }
                if message.is_expired(now) {
                    sent += 1;
                } else if store {
                    // The message's own id (`Wire::encode`); a fresh one
                    // for a QoS 2 message restored from disk without one.
                    let id = match message.qos {
                        QoS::ExactlyOnce if message.id.is_none() => MessageId::next(),
                        _ => message.id,
                    };
                    let mut storing = Box::new(Storing { message, publisher, id, attempt: Attempt::Due });
                    if ready {
                        storing.attempt = self.store(&js, &mut wire, &storing, false, &node).await;
                    }
                    // Those before it first: the task settles in order.
                    let before = std::mem::take(&mut sent);
                    if (before > 0 && acks.send(Pending::Sent(before)).await.is_err())
                        || acks.send(Pending::Stored(storing)).await.is_err()
                    {
                        break 'batches;
                    }
                } else {
                    self.send(&client, &mut wire, &message, publisher.as_deref(), now, &node).await;
                    sent += 1;
                }
            }
            if sent > 0 && acks.send(Pending::Sent(sent)).await.is_err() {
                break;
            }
        }
        // Hand what was published to the server before the process ends.
        let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
    }

    /// Publishes `message` over core NATS (at most once); a failure is
    /// counted.
    async fn send(
        &self,
        client: &async_nats::Client,
        wire: &mut Wire,
        message: &Message,
        publisher: Option<&str>,
        now: Instant,
        node: &Node,
    ) {
        // `forward` let only topics whose subject fits through.
        let sent = match wire.encode(self, message, publisher, false, now, message.id) {
            (subject, Some(headers), payload) => client.publish_with_headers(subject, headers, payload).await,
            (subject, None, payload) => client.publish(subject, payload).await,
        };
        if let Err(e) = sent {
            debug!(error = %e, "cluster: publish to NATS failed");
            node.dropped(DropReason::Cluster, 1);
        }
    }

    /// Publishes `storing` to JetStream (`again`: a retry), and returns
    /// where it stands.
    async fn store(
        &self,
        js: &jetstream::Context,
        wire: &mut Wire,
        storing: &Storing,
        again: bool,
        node: &Node,
    ) -> Attempt {
        let now = Instant::now();
        let (subject, headers, payload) =
            wire.encode(self, &storing.message, storing.publisher.as_deref(), again, now, storing.id);
        let published = match headers {
            None => js.publish(subject, payload).await,
            Some(headers) => js.publish_with_headers(subject, headers, payload).await,
        };
        match published {
            Ok(ack) => Attempt::Sent(ack, now + STORE_WAIT),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
                debug!(error = %e, "cluster: message too large for NATS; it stays on this node");
                node.dropped(DropReason::Cluster, 1);
                Attempt::Refused
            }
            Err(e) => {
                debug!(error = %e, "cluster: JetStream publish not sent; it goes again");
                Attempt::Due
            }
        }
    }

    /// Whether a message can be stored now: the connection is up and no
    /// kept session's consumer lags behind its subscriptions (JetStream
    /// would drop what such a session should get).
    fn ready(&self, client: &async_nats::Client) -> bool {
        client.connection_state() == async_nats::connection::State::Connected && self.queue.consumers_current()
    }

    /// Waits until [`Link::ready`]; `None` at shutdown.
    async fn until_ready(&self, client: &async_nats::Client, node: &Node) -> Option<()> {
        while !self.ready(client) {
            node.shutdown().run_until_cancelled(tokio::time::sleep(READY_POLL)).await?;
        }
        Some(())
    }

    /// Advances [`super::Cluster::stored`] over each QoS 1/2 message in
    /// queue order, once JetStream has stored it; publishes again what
    /// JetStream did not answer for, until it does (or shutdown).
    async fn acknowledge(
        self: Arc<Self>,
        client: async_nats::Client,
        mut pending: mpsc::Receiver<Pending>,
        node: Node,
    ) {
        let js = jetstream::new(client.clone());
        let mut wire = Wire::default();
        let mut window: VecDeque<Pending> = VecDeque::new();
        // Rounds of retries since JetStream last stored a message, and
        // when the first of them began.
        let mut retries = 0u32;
        let mut since = Instant::now();
        loop {
            if window.is_empty() {
                match node.shutdown().run_until_cancelled(pending.recv()).await {
                    Some(Some(next)) => window.push_back(next),
                    _ => return,
                }
            }
            while window.len() < RETRY_WINDOW {
                let Ok(next) = pending.try_recv() else { break };
                window.push_back(next);
            }
            let settled = match window.front_mut() {
                Some(Pending::Stored(storing)) => {
                    node.shutdown().run_until_cancelled(storing.settle()).await.unwrap_or(false).then_some(1)
                }
                Some(Pending::Sent(n)) => Some(*n),
                None => Some(0),
            };
            if let Some(n) = settled {
                window.pop_front();
                self.stored.send_modify(|done| *done += n);
                retries = 0;
                continue;
            }
            if retries == 0 {
                since = Instant::now();
            } else if retries == RETRIES_BEFORE_WARNING {
                warn!(
                    waiting = window.len(),
                    for_s = since.elapsed().as_secs(),
                    "cluster: JetStream does not store this node's QoS 1/2 messages; their publishers wait"
                );
            }
            retries = retries.saturating_add(1);
            // A pause between rounds, so a JetStream that answers with an
            // error at once is not asked in a loop.
            let pause = super::setup_retry_delay(retries).min(RETRY_PAUSE_MAX);
            if node.shutdown().run_until_cancelled(tokio::time::sleep(pause)).await.is_none()
                || self.until_ready(&client, &node).await.is_none()
            {
                return;
            }
            // Those whose answer may still come keep waiting for it: a copy
            // sent now could be stored beside the first (QoS 1 carries no
            // id).
            let now = Instant::now();
            for next in &mut window {
                if let Pending::Stored(storing) = next
                    && match storing.attempt {
                        Attempt::Due => true,
                        Attempt::Sent(_, due) => due <= now,
                        Attempt::Refused => false,
                    }
                {
                    storing.attempt = self.store(&js, &mut wire, storing, true, &node).await;
                }
            }
        }
    }
}
