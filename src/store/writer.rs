//! The single writer of the on-disk store, and the barrier callers await.
//!
//! Every change is sent to one thread (a thread, not a tokio task: `fsync`
//! blocks) that applies what arrives within about 1 ms of the first
//! operation (or [`MAX_BATCH`] operations) as one atomic batch followed by
//! one data sync: a group commit. While one sync runs, the next group queues
//! up, so the number of syncs adapts to the load instead of being one per
//! message.
//!
//! Operations are numbered in the order they are queued (under a mutex, so
//! the number and the channel order agree); after a sync the writer
//! publishes how many are durable. A [`Barrier`] waits for that count to
//! reach the number queued when it was taken.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, PersistMode};
use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::error;

use super::record::{self, DeliveryRecord, MessageRecord, SessionRecord, SubscriptionRecord, WillRecord};
use crate::message::Message;
use crate::message::{Delivery, Inflight, Subscription};

/// Most operations applied in one batch.
pub(super) const MAX_BATCH: usize = 1024;

/// How long the writer gathers operations for one sync after the first.
const GATHER: Duration = Duration::from_millis(1);

/// How long the writer waits for the end of an open group before it
/// commits anyway. The end follows at once (no await in between), so this
/// only bounds the damage of a caller that never ends one.
const GROUP_WAIT: Duration = Duration::from_secs(1);

/// When the store's writes become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every batch is synced before its barrier resolves.
    Sync,
    /// Batches reach the OS at once; a data sync runs at this interval.
    Periodic(Duration),
    /// Batches reach the OS at once; never synced before a clean close.
    None,
}

/// One change, as sent to the writer.
#[derive(Debug)]
pub(crate) enum Op {
    Retain(Arc<Message>),
    SessionOpened(Arc<str>, u32),
    SessionOwner(Arc<str>, crate::message::Owner),
    SessionEnded(Arc<str>),
    Subscribed(Arc<str>, String, SubscriptionRecord),
    Unsubscribed(Arc<str>, String),
    /// Replace every message of the session; it went offline.
    Replace(Arc<str>, Vec<Delivery>, Vec<Inflight>),
    /// Append one message, under its key, to a session's queue.
    Append(Arc<str>, u64, Delivery),
    /// A stored message's in-flight state changed.
    Update(Arc<str>, u64, Inflight),
    /// A stored message was acknowledged.
    Remove(Arc<str>, u64),
    /// A QoS 2 packet id was received (true) or released (false).
    Incoming(Arc<str>, u16, bool),
    /// A will waits for its delay, or no longer does.
    Will(Arc<str>, Option<super::PendingWill>),
    /// A message waits, under its key, in a share group's queue (named by
    /// its shared subscription).
    ShareAppend(Arc<str>, u64, Delivery),
    /// A message left a share group's queue.
    ShareRemove(Arc<str>, u64),
    /// Opens a group: no commit until its [`Op::GroupEnd`] (see
    /// [`super::Store::group`]). Not counted.
    GroupBegin,
    /// Closes a group. Not counted.
    GroupEnd,
    /// Someone awaits a barrier: stop gathering and commit now. Not
    /// counted as an operation.
    Flush,
    /// The store is closing: commit, sync and exit. Not counted.
    Close,
}

impl Op {
    pub(super) fn subscribed(client_id: &str, filter: &str, s: &Subscription) -> Op {
        Op::Subscribed(client_id.into(), filter.to_owned(), SubscriptionRecord::from_subscription(s))
    }
}

/// The keyspaces the store keeps, in the order of [`Part`].
#[derive(Clone)]
pub(super) struct Parts {
    pub db: Database,
    pub retained: Keyspace,
    pub sessions: Keyspace,
    pub subscriptions: Keyspace,
    pub messages: Keyspace,
    pub incoming: Keyspace,
    pub wills: Keyspace,
    pub shares: Keyspace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Retained,
    Sessions,
    Subscriptions,
    Messages,
    Incoming,
    Wills,
    Shares,
}

impl Parts {
    fn keyspace(&self, part: Part) -> &Keyspace {
        match part {
            Part::Retained => &self.retained,
            Part::Sessions => &self.sessions,
            Part::Subscriptions => &self.subscriptions,
            Part::Messages => &self.messages,
            Part::Incoming => &self.incoming,
            Part::Wills => &self.wills,
            Part::Shares => &self.shares,
        }
    }
}

/// `client_id`, 0: the prefix of a session's subscription and message keys.
/// Client ids never contain U+0000 [MQTT-1.5.4-2].
pub(super) fn client_prefix(client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(client_id.len() + 9);
    key.extend_from_slice(client_id.as_bytes());
    key.push(0);
    key
}

/// `client_id`, 0, `seq`: the key of one of a session's messages; and
/// `share`, 0, `seq`: of a message waiting in a share group (named by its
/// shared subscription, which has no U+0000 either).
pub(super) fn message_key(client_id: &str, seq: u64) -> Vec<u8> {
    let mut key = client_prefix(client_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The sending side, shared by every caller.
#[derive(Debug)]
pub(super) struct Queue {
    tx: Mutex<(u64, Option<Sender<Op>>)>,
    /// The next message key, shared with the writer: keys are handed out
    /// when a message is queued, in queue order per session.
    next_seq: Arc<AtomicU64>,
    durable: watch::Receiver<u64>,
    mode: Durability,
}

impl Queue {
    /// Queues `op`. After the writer stopped (a fatal disk error, already
    /// logged) it is dropped and barriers fail.
    pub(super) fn send(&self, op: Op) {
        let mut tx = self.tx.lock();
        if let Some(sender) = &tx.1
            && sender.send(op).is_ok()
        {
            tx.0 += 1;
        }
    }

    /// A fresh message key.
    pub(super) fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Opens a group of changes committed together.
    pub(super) fn group(&self) -> super::Group {
        let tx = self.tx.lock();
        match &tx.1 {
            Some(sender) if sender.send(Op::GroupBegin).is_ok() => super::Group(Some(sender.clone())),
            _ => super::Group(None),
        }
    }

    /// Resolves once everything queued so far is durable (`sync` only).
    pub(super) fn barrier(&self) -> super::Barrier {
        if self.mode != Durability::Sync {
            return super::Barrier::ready();
        }
        let tx = self.tx.lock();
        super::Barrier::waiting(self.durable.clone(), tx.0, tx.1.clone())
    }

    /// Stops taking operations; the writer writes and syncs what is
    /// queued, then exits (even while a barrier still holds a sender).
    pub(super) fn close(&self) {
        if let Some(sender) = self.tx.lock().1.take() {
            let _ = sender.send(Op::Close);
        }
    }
}

/// Starts the writer thread.
pub(super) fn start(
    parts: Parts,
    mode: Durability,
    next_seq: u64,
) -> std::io::Result<(Queue, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (durable_tx, durable) = watch::channel(0);
    let next_seq = Arc::new(AtomicU64::new(next_seq));
    let writer = Writer {
        parts,
        mode,
        next_seq: next_seq.clone(),
        staged: BTreeMap::new(),
        durable: durable_tx,
        done: 0,
        closing: false,
        groups: 0,
    };
    let handle = std::thread::Builder::new().name("moat-store".to_owned()).spawn(move || writer.run(&rx))?;
    Ok((Queue { tx: Mutex::new((0, Some(tx))), next_seq, durable, mode }, handle))
}

struct Writer {
    parts: Parts,
    mode: Durability,
    next_seq: Arc<AtomicU64>,
    /// This batch's writes by key, last one wins (a batch's entries share a
    /// sequence number, so two writes to one key must not both be in it).
    staged: BTreeMap<(Part, Vec<u8>), Option<Vec<u8>>>,
    durable: watch::Sender<u64>,
    done: u64,
    /// [`Op::Close`] was received.
    closing: bool,
    /// Groups open in what was received so far.
    groups: usize,
}

impl Writer {
    fn run(mut self, rx: &Receiver<Op>) {
        let mut last_sync = Instant::now();
        let mut dirty = false;
        loop {
            let wait = match self.mode {
                Durability::Periodic(every) if dirty => every.saturating_sub(last_sync.elapsed()),
                _ => Duration::from_secs(3600),
            };
            let (first, closed) = match rx.recv_timeout(wait) {
                Ok(op) => (Some(op), false),
                Err(RecvTimeoutError::Timeout) => (None, false),
                Err(RecvTimeoutError::Disconnected) => (None, true),
            };
            let count = match first {
                Some(op) => self.gather(op, rx),
                None => 0,
            };
            let sync = match self.mode {
                Durability::Sync => count > 0,
                Durability::Periodic(every) => (dirty || count > 0) && last_sync.elapsed() >= every,
                Durability::None => false,
            } || closed
                || self.closing;
            if let Err(e) = self.commit(sync) {
                error!(error = %e, "store write failed; the store stops taking writes (restart to recover)");
                return;
            }
            dirty = (dirty || count > 0) && !sync;
            if sync {
                last_sync = Instant::now();
            }
            self.done += count as u64;
            self.durable.send_replace(self.done);
            if closed || self.closing {
                return;
            }
        }
    }

    /// Applies `first` and what follows it: in sync mode whatever arrives
    /// within [`GATHER`] unless a waiter asks for a flush first, so one sync
    /// covers e.g. a whole read buffer of PUBLISHes. Returns the number of
    /// operations applied.
    fn gather(&mut self, first: Op, rx: &Receiver<Op>) -> usize {
        let gather = if self.mode == Durability::Sync { GATHER } else { Duration::ZERO };
        let until = Instant::now() + gather;
        let mut op = first;
        let mut count = 0;
        loop {
            match op {
                Op::Close => {
                    self.closing = true;
                    return count;
                }
                Op::Flush => {
                    if count > 0 && self.groups == 0 {
                        return count;
                    }
                }
                Op::GroupBegin => self.groups += 1,
                Op::GroupEnd => self.groups = self.groups.saturating_sub(1),
                op => {
                    self.apply(op);
                    count += 1;
                }
            }
            if self.groups > 0 {
                // Inside a group: no commit before its end.
                op = match rx.recv_timeout(GROUP_WAIT) {
                    Ok(op) => op,
                    Err(_) => {
                        error!("a store group stayed open; committing it anyway");
                        self.groups = 0;
                        return count;
                    }
                };
                continue;
            }
            if count >= MAX_BATCH {
                return count;
            }
            op = match rx.try_recv() {
                Ok(op) => op,
                Err(_) => match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(op) => op,
                    Err(_) => return count,
                },
            };
        }
    }

    fn commit(&mut self, sync: bool) -> fjall::Result<()> {
        if !self.staged.is_empty() {
            let mut batch = self.parts.db.batch();
            for ((part, key), value) in std::mem::take(&mut self.staged) {
                let keyspace = self.parts.keyspace(part);
                match value {
                    Some(value) => batch.insert(keyspace, key, value),
                    None => batch.remove(keyspace, key),
                }
            }
            batch.commit()?;
        }
        self.parts.db.persist(if sync { PersistMode::SyncData } else { PersistMode::Buffer })
    }

    fn apply(&mut self, op: Op) {
        let now = (Instant::now(), record::now_ms());
        match op {
            Op::Retain(m) => {
                let value =
                    (!m.payload.is_empty()).then(|| record::encode(&MessageRecord::from_message(&m, now.0, now.1)));
                self.stage(Part::Retained, m.topic.as_str().as_bytes().to_vec(), value);
            }
            Op::SessionOpened(client, expiry_s) => {
                let owner = self.session(&client).and_then(|s| s.owner);
                let value = record::encode(&SessionRecord { expiry_s, offline_since_ms: None, owner });
                self.stage(Part::Sessions, client.as_bytes().to_vec(), Some(value));
            }
            Op::SessionOwner(client, owner) => {
                if let Some(mut session) = self.session(&client) {
                    session.owner = Some(owner.0);
                    self.stage(Part::Sessions, client.as_bytes().to_vec(), Some(record::encode(&session)));
                }
            }
            Op::SessionEnded(client) => {
                self.stage(Part::Sessions, client.as_bytes().to_vec(), None);
                self.remove_prefix(Part::Subscriptions, &client_prefix(&client));
                self.remove_prefix(Part::Messages, &client_prefix(&client));
                self.remove_prefix(Part::Incoming, &client_prefix(&client));
                self.stage(Part::Wills, client.as_bytes().to_vec(), None);
            }
            Op::Subscribed(client, filter, sub) => {
                if self.session(&client).is_some() {
                    let mut key = client_prefix(&client);
                    key.extend_from_slice(filter.as_bytes());
                    self.stage(Part::Subscriptions, key, Some(record::encode(&sub)));
                }
            }
            Op::Unsubscribed(client, filter) => {
                let mut key = client_prefix(&client);
                key.extend_from_slice(filter.as_bytes());
                self.stage(Part::Subscriptions, key, None);
            }
            Op::Replace(client, pending, inflight) => self.replace(&client, &pending, &inflight, now),
            Op::Append(client, seq, delivery) => {
                if self.session(&client).is_some() {
                    self.put_message(&client, seq, &DeliveryRecord::pending(&delivery, now.0, now.1));
                }
            }
            Op::Update(client, seq, inflight) => {
                if self.session(&client).is_some() {
                    self.put_message(&client, seq, &DeliveryRecord::inflight(&inflight, now.0, now.1));
                }
            }
            Op::Remove(client, seq) => self.stage(Part::Messages, message_key(&client, seq), None),
            Op::Incoming(client, id, received) => {
                let mut key = client_prefix(&client);
                key.extend_from_slice(&id.to_be_bytes());
                let value = if received && self.session(&client).is_some() { Some(record::encode(&())) } else { None };
                self.stage(Part::Incoming, key, value);
            }
            Op::Will(client, will) => {
                let value = match will {
                    Some(w) if self.session(&client).is_some() => Some(record::encode(&WillRecord {
                        message: MessageRecord::from_message(&w.message, now.0, now.1),
                        expiry_s: w.expiry_s,
                        due_ms: w.due_ms,
                    })),
                    _ => None,
                };
                self.stage(Part::Wills, client.as_bytes().to_vec(), value);
            }
            Op::ShareAppend(share, seq, delivery) => {
                let record = DeliveryRecord::pending(&delivery, now.0, now.1);
                self.stage(Part::Shares, message_key(&share, seq), Some(record.encode()));
            }
            Op::ShareRemove(share, seq) => self.stage(Part::Shares, message_key(&share, seq), None),
            Op::Flush | Op::Close | Op::GroupBegin | Op::GroupEnd => {}
        }
    }

    fn replace(&mut self, client: &str, pending: &[Delivery], inflight: &[Inflight], now: (Instant, u64)) {
        let Some(mut session) = self.session(client) else { return };
        session.offline_since_ms = Some(now.1);
        self.stage(Part::Sessions, client.as_bytes().to_vec(), Some(record::encode(&session)));
        self.remove_prefix(Part::Messages, &client_prefix(client));
        // Messages keep the key they were queued under (the connection that
        // resumes the session deletes them by it); in-flight ones go first,
        // as they were sent first.
        let next_seq = self.next_seq.clone();
        let key = |stored: Option<u64>| stored.unwrap_or_else(|| next_seq.fetch_add(1, Ordering::Relaxed));
        for i in inflight {
            self.put_message(client, key(i.delivery.stored), &DeliveryRecord::inflight(i, now.0, now.1));
        }
        for d in pending {
            self.put_message(client, key(d.stored), &DeliveryRecord::pending(d, now.0, now.1));
        }
    }

    fn put_message(&mut self, client: &str, seq: u64, record: &DeliveryRecord) {
        self.stage(Part::Messages, message_key(client, seq), Some(record.encode()));
    }

    /// The session's record, staged or stored.
    fn session(&self, client: &str) -> Option<SessionRecord> {
        let key = (Part::Sessions, client.as_bytes().to_vec());
        let bytes = match self.staged.get(&key) {
            Some(staged) => staged.clone(),
            None => self.parts.sessions.get(client.as_bytes()).ok().flatten().map(|v| v.to_vec()),
        };
        bytes.and_then(|b| SessionRecord::decode(&b).ok())
    }

    fn stage(&mut self, part: Part, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.staged.insert((part, key), value);
    }

    fn remove_prefix(&mut self, part: Part, prefix: &[u8]) {
        let stored: Vec<Vec<u8>> =
            self.parts.keyspace(part).prefix(prefix).filter_map(|kv| kv.key().ok()).map(|k| k.to_vec()).collect();
        for key in stored {
            self.staged.insert((part, key), None);
        }
        for ((_, _), value) in self
            .staged
            .range_mut((part, prefix.to_vec())..)
            .take_while(|((p, k), _)| *p == part && k.starts_with(prefix))
        {
            *value = None;
        }
    }
}
