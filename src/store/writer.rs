//! The single writer of the on-disk store, and the barrier callers await.
//!
//! Every change is sent to one thread (a thread, not a tokio task: `fsync`
//! blocks) that applies what has arrived as one atomic batch followed by
//! one data sync: a group commit. While one sync runs, the next group queues
//! up, so the number of syncs adapts to the load instead of being one per
//! message. In `sync` mode the writer commits as soon as everything a
//! waiting [`Barrier`](super::Barrier) needs has arrived (and whatever else
//! is already queued); with nobody waiting it gathers for about 1 ms, and
//! writes without a sync (see [`SYNC_LAG`]). The sync itself runs on the
//! [`Syncer`]'s thread while the writer stages the next batch. A message
//! queued and acknowledged within one batch is not written at all.
//!
//! Senders never take a lock: each change takes a ticket from an atomic
//! counter, then goes into the (lock-free) channel, so tickets may arrive
//! slightly out of order. The writer publishes how many tickets are
//! durable as the length of the unbroken run from 0 it has committed, and a
//! barrier waits for that to reach the number of tickets handed out when it
//! was taken: everything queued before it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, PersistMode};
use tokio::sync::watch;
use tracing::error;

use super::queue::{Command, Queue};
use super::record::{self, MessageRecord, SessionRecord, SubscriptionRecord, WillRecord};
use super::syncer::Syncer;
use crate::message::Message;
use crate::message::{Delivery, Inflight, Subscription};

/// Most operations applied in one batch.
pub(super) const MAX_BATCH: usize = 1024;

/// How long the writer gathers operations for one sync after the first.
const GATHER: Duration = Duration::from_millis(1);

/// In `sync` mode, how long changes nobody waits for (a PUBACK received,
/// a subscription) may stay written but not synced. They reach the OS at
/// once (a killed process loses none of them), and the next commit someone
/// waits for syncs them too; a sync of their own would only hold up the
/// next one that is awaited.
const SYNC_LAG: Duration = Duration::from_millis(5);

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
    /// Append one message, under its key, to a session's queue; `true`:
    /// the key is fresh (never written before).
    Append(Arc<str>, u64, Delivery, bool),
    /// A stored message's in-flight state changed.
    Update(Arc<str>, u64, Inflight),
    /// A stored message was acknowledged.
    Remove(Arc<str>, u64),
    /// A QoS 2 packet id was received (true) or released (false).
    Incoming(Arc<str>, u16, bool),
    /// A will waits for its delay, or no longer does.
    Will(Arc<str>, Option<super::PendingWill>),
    /// A message waits, under its (fresh) key, in a share group's queue
    /// (named by its shared subscription).
    ShareAppend(Arc<str>, u64, Delivery),
    /// A message left a share group's queue.
    ShareRemove(Arc<str>, u64),
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

/// Starts the writer thread.
pub(super) fn start(
    parts: Parts,
    mode: Durability,
    next_seq: u64,
) -> std::io::Result<(Queue, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (durable_tx, durable) = watch::channel(0);
    let next_seq = Arc::new(AtomicU64::new(next_seq));
    let written = Arc::new(AtomicU64::new(0));
    let (durable_tx, syncer) = match mode {
        Durability::Sync => (None, Some(Syncer::start(parts.db.clone(), durable_tx)?)),
        _ => (Some(durable_tx), None),
    };
    let writer = Writer {
        parts,
        mode,
        next_seq: next_seq.clone(),
        staged: BTreeMap::new(),
        live: HashSet::new(),
        now: (Instant::now(), record::now_ms()),
        durable: durable_tx,
        written: written.clone(),
        syncer,
        tickets: Tickets::default(),
        durable_count: 0,
        wanted: 0,
        closing: false,
        groups: 0,
    };
    let handle = std::thread::Builder::new().name("moat-store".to_owned()).spawn(move || writer.run(&rx))?;
    Ok((Queue::new(tx, next_seq, (durable, written), mode), handle))
}

/// The tickets the writer has received: all below `next`, and those in
/// `ahead`, which overtook one that has not arrived yet.
#[derive(Debug, Default)]
struct Tickets {
    next: u64,
    ahead: BinaryHeap<Reverse<u64>>,
}

impl Tickets {
    fn received(&mut self, ticket: u64) {
        if ticket != self.next {
            self.ahead.push(Reverse(ticket));
            return;
        }
        self.next += 1;
        while self.ahead.peek() == Some(&Reverse(self.next)) {
            self.ahead.pop();
            self.next += 1;
        }
    }
}

/// One key's write in the batch being gathered.
struct Staged {
    /// The value, or `None` to delete the key.
    value: Option<Vec<u8>>,
    /// The key was fresh when first written in this batch: it is not on
    /// disk, so deleting it needs no write at all. A message acknowledged
    /// within the batch that queued it costs nothing.
    fresh: bool,
}

struct Writer {
    parts: Parts,
    mode: Durability,
    next_seq: Arc<AtomicU64>,
    /// This batch's writes by key, last one wins (a batch's entries share a
    /// sequence number, so two writes to one key must not both be in it).
    staged: BTreeMap<(Part, Vec<u8>), Staged>,
    /// Sessions known to have a record, staged or stored: most changes
    /// apply only to those, and looking the record up for each message
    /// was a good part of the writer's time.
    live: HashSet<Arc<str>>,
    /// When the batch being gathered began (clock and ms since the epoch):
    /// the time records are written at.
    now: (Instant, u64),
    /// Where the durable count is published, but in `sync` mode, where the
    /// [`Syncer`] does it.
    durable: Option<watch::Sender<u64>>,
    /// The same count, read by [`Queue::barrier`] on every acknowledgement
    /// in `none` and `periodic` modes to see how far the writer is behind.
    written: Arc<AtomicU64>,
    /// In `sync` mode: the thread that syncs what the writer committed.
    syncer: Option<Syncer>,
    tickets: Tickets,
    /// `tickets.next` at the last sync asked for (in `sync` mode; else at
    /// the last commit): what barriers will see durable without any more
    /// commits.
    durable_count: u64,
    /// The highest ticket a waiting barrier asked for (exclusive).
    wanted: u64,
    /// [`Command::Close`] was received.
    closing: bool,
    /// Groups open in what was received so far.
    groups: usize,
}

impl Writer {
    fn run(mut self, rx: &Receiver<Command>) {
        let mut last_sync = Instant::now();
        // Since when something written is not synced.
        let mut dirty: Option<Instant> = None;
        loop {
            let wait = match (self.mode, dirty) {
                (Durability::Periodic(every), Some(_)) => every.saturating_sub(last_sync.elapsed()),
                (Durability::Sync, Some(since)) => SYNC_LAG.saturating_sub(since.elapsed()),
                _ => Duration::from_secs(3600),
            };
            let (first, closed) = match rx.recv_timeout(wait) {
                Ok(command) => (Some(command), false),
                Err(RecvTimeoutError::Timeout) => (None, false),
                Err(RecvTimeoutError::Disconnected) => (None, true),
            };
            let count = match first {
                Some(command) => self.gather(command, rx),
                None => 0,
            };
            if count > 0 && dirty.is_none() {
                dirty = Some(Instant::now());
            }
            let sync = dirty.is_some()
                && match self.mode {
                    Durability::Sync => {
                        self.wanted > self.durable_count || dirty.is_some_and(|since| since.elapsed() >= SYNC_LAG)
                    }
                    Durability::Periodic(every) => last_sync.elapsed() >= every,
                    Durability::None => false,
                }
                || closed
                || self.closing;
            if let Err(e) = self.commit(sync) {
                error!(error = %e, "store write failed; the store stops taking writes (restart to recover)");
                return;
            }
            if sync && let Some(syncer) = &self.syncer {
                if !syncer.request(self.tickets.next) {
                    return;
                }
                self.durable_count = self.tickets.next;
            }
            if sync {
                last_sync = Instant::now();
                dirty = None;
            }
            if let Some(durable) = &self.durable
                && self.durable_count != self.tickets.next
            {
                self.durable_count = self.tickets.next;
                self.written.store(self.durable_count, Ordering::Release);
                durable.send_replace(self.durable_count);
            }
            if closed || self.closing {
                return;
            }
        }
    }

    /// Applies `first` and what follows it; returns the number of
    /// operations applied. In sync mode it stops as soon as every ticket a
    /// waiting barrier needs is in, taking along what is already queued, or
    /// else after [`GATHER`], so one sync covers e.g. a whole read buffer
    /// of PUBLISHes without holding up anyone waiting.
    fn gather(&mut self, first: Command, rx: &Receiver<Command>) -> usize {
        let gather = if self.mode == Durability::Sync { GATHER } else { Duration::ZERO };
        self.now = (Instant::now(), record::now_ms());
        let until = self.now.0 + gather;
        let mut command = first;
        let mut count = 0;
        loop {
            match command {
                Command::Close => {
                    self.closing = true;
                    return count;
                }
                Command::Flush(ticket) => self.wanted = self.wanted.max(ticket),
                Command::GroupBegin => self.groups += 1,
                Command::GroupEnd => self.groups = self.groups.saturating_sub(1),
                Command::Op(ticket, op) => {
                    self.apply(op);
                    self.tickets.received(ticket);
                    count += 1;
                }
            }
            if self.groups > 0 {
                // Inside a group: no commit before its end.
                command = match rx.recv_timeout(GROUP_WAIT) {
                    Ok(command) => command,
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
            command = match rx.try_recv() {
                Ok(command) => command,
                // Someone waits for what is staged (or written): no reason
                // to wait for more.
                Err(_) if self.wanted > self.durable_count && self.tickets.next >= self.wanted => return count,
                Err(_) => match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(command) => command,
                    Err(_) => return count,
                },
            };
        }
    }

    /// Writes the staged batch to the journal, and then to the OS (unless
    /// the [`Syncer`] is about to sync it), or syncs it (`sync` without a
    /// syncer).
    fn commit(&mut self, sync: bool) -> fjall::Result<()> {
        let mut written = false;
        if !self.staged.is_empty() {
            let mut batch = self.parts.db.batch();
            for ((part, key), staged) in std::mem::take(&mut self.staged) {
                let keyspace = self.parts.keyspace(part);
                match staged.value {
                    Some(value) => batch.insert(keyspace, key, value),
                    None if staged.fresh => {}
                    None => batch.remove(keyspace, key),
                }
            }
            if !batch.is_empty() {
                batch.commit()?;
                written = true;
            }
        }
        match (sync, &self.syncer) {
            (true, Some(_)) => Ok(()),
            (true, None) => self.parts.db.persist(PersistMode::SyncData),
            (false, _) if written => self.parts.db.persist(PersistMode::Buffer),
            // Nothing new: no need to wait for the journal (a sync may hold it).
            (false, _) => Ok(()),
        }
    }

    fn apply(&mut self, op: Op) {
        let now = self.now;
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
                self.live.insert(client);
            }
            Op::SessionOwner(client, owner) => {
                if let Some(mut session) = self.session(&client) {
                    session.owner = Some(owner.0);
                    self.stage(Part::Sessions, client.as_bytes().to_vec(), Some(record::encode(&session)));
                }
            }
            Op::SessionEnded(client) => {
                self.live.remove(&client);
                self.stage(Part::Sessions, client.as_bytes().to_vec(), None);
                self.remove_prefix(Part::Subscriptions, &client_prefix(&client));
                self.remove_prefix(Part::Messages, &client_prefix(&client));
                self.remove_prefix(Part::Incoming, &client_prefix(&client));
                self.stage(Part::Wills, client.as_bytes().to_vec(), None);
            }
            Op::Subscribed(client, filter, sub) => {
                if self.has_session(&client) {
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
            Op::Append(client, seq, delivery, fresh) => {
                if self.has_session(&client) {
                    let record = record::encode_delivery(&delivery, None, now.0, now.1);
                    self.stage_fresh(Part::Messages, message_key(&client, seq), Some(record), fresh);
                }
            }
            Op::Update(client, seq, inflight) => {
                if self.has_session(&client) {
                    self.put_inflight(&client, seq, &inflight, now);
                }
            }
            Op::Remove(client, seq) => self.stage(Part::Messages, message_key(&client, seq), None),
            Op::Incoming(client, id, received) => {
                let mut key = client_prefix(&client);
                key.extend_from_slice(&id.to_be_bytes());
                let value = if received && self.has_session(&client) { Some(record::encode(&())) } else { None };
                self.stage(Part::Incoming, key, value);
            }
            Op::Will(client, will) => {
                let value = match will {
                    Some(w) if self.has_session(&client) => Some(record::encode(&WillRecord {
                        message: MessageRecord::from_message(&w.message, now.0, now.1),
                        expiry_s: w.expiry_s,
                        due_ms: w.due_ms,
                    })),
                    _ => None,
                };
                self.stage(Part::Wills, client.as_bytes().to_vec(), value);
            }
            Op::ShareAppend(share, seq, delivery) => {
                let record = record::encode_delivery(&delivery, None, now.0, now.1);
                self.stage_fresh(Part::Shares, message_key(&share, seq), Some(record), true);
            }
            Op::ShareRemove(share, seq) => self.stage(Part::Shares, message_key(&share, seq), None),
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
            self.put_inflight(client, key(i.delivery.stored), i, now);
        }
        for d in pending {
            let record = record::encode_delivery(d, None, now.0, now.1);
            self.stage(Part::Messages, message_key(client, key(d.stored)), Some(record));
        }
    }

    fn put_inflight(&mut self, client: &str, seq: u64, inflight: &Inflight, now: (Instant, u64)) {
        let record = record::encode_delivery(&inflight.delivery, Some(record::inflight_state(inflight)), now.0, now.1);
        self.stage(Part::Messages, message_key(client, seq), Some(record));
    }

    /// Whether the session has a record, staged or stored.
    fn has_session(&mut self, client: &Arc<str>) -> bool {
        if self.live.contains(client) {
            return true;
        }
        let found = self.session(client).is_some();
        if found {
            self.live.insert(client.clone());
        }
        found
    }

    /// The session's record, staged or stored.
    fn session(&self, client: &str) -> Option<SessionRecord> {
        let key = (Part::Sessions, client.as_bytes().to_vec());
        let bytes = match self.staged.get(&key) {
            Some(staged) => staged.value.clone(),
            None => self.parts.sessions.get(client.as_bytes()).ok().flatten().map(|v| v.to_vec()),
        };
        bytes.and_then(|b| SessionRecord::decode(&b).ok())
    }

    fn stage(&mut self, part: Part, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.stage_fresh(part, key, value, false);
    }

    /// Stages a write; `fresh`: the key was never written before.
    fn stage_fresh(&mut self, part: Part, key: Vec<u8>, value: Option<Vec<u8>>, fresh: bool) {
        match self.staged.entry((part, key)) {
            std::collections::btree_map::Entry::Occupied(mut staged) => staged.get_mut().value = value,
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(Staged { value, fresh });
            }
        }
    }

    fn remove_prefix(&mut self, part: Part, prefix: &[u8]) {
        let stored: Vec<Vec<u8>> =
            self.parts.keyspace(part).prefix(prefix).filter_map(|kv| kv.key().ok()).map(|k| k.to_vec()).collect();
        for key in stored {
            self.stage(part, key, None);
        }
        for ((_, _), staged) in self
            .staged
            .range_mut((part, prefix.to_vec())..)
            .take_while(|((p, k), _)| *p == part && k.starts_with(prefix))
        {
            staged.value = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Tickets;

    #[test]
    fn tickets_count_only_the_unbroken_run_from_zero() {
        let mut tickets = Tickets::default();
        tickets.received(0);
        assert_eq!(tickets.next, 1);
        // 2 and 3 overtook 1: nothing past 1 counts until it arrives.
        tickets.received(3);
        tickets.received(2);
        assert_eq!(tickets.next, 1);
        tickets.received(1);
        assert_eq!(tickets.next, 4);
        assert!(tickets.ahead.is_empty());
        tickets.received(5);
        assert_eq!(tickets.next, 4);
    }
}
