//! The on-disk store: a `fjall` database (an LSM tree with a journal) in
//! one directory, with a keyspace each for retained messages, sessions,
//! subscriptions, session messages, incoming QoS 2 packet ids, pending
//! wills and the messages waiting in share groups.
//!
//! Reads happen once, at [`DiskStore::open`], which decodes everything so a
//! corrupt store stops start-up there, naming the directory. Writes go
//! through the single writer thread of [`super::writer`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use fjall::{Database, KeyspaceCreateOptions};
use parking_lot::Mutex;

use super::queue::Queue;
use super::record::{self, DeliveryRecord, MessageRecord, SessionRecord, SubscriptionRecord, WillRecord};
use super::writer::{self, Durability, Op, Parts};
use super::{Barrier, Group, PendingWill, Recovered, Store, StoreError, StoredSession};
use crate::codec::{PacketId, TopicFilter};
use crate::message::Message;
use crate::message::{Delivery, Inflight, Owner, Subscription};

/// A [`Store`] in a directory on disk.
#[derive(Debug)]
pub struct DiskStore {
    path: PathBuf,
    queue: Queue,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// What [`DiskStore::open`] read, handed out by the first `recover`.
    recovered: Mutex<Option<Recovered>>,
}

impl DiskStore {
    /// Opens (or creates, owner-only) the store in `path` and reads it back.
    ///
    /// # Errors
    /// [`StoreError::Open`] when the database cannot be opened,
    /// [`StoreError::Corrupt`] when a record cannot be decoded. Both name
    /// the path.
    pub fn open(path: &Path, durability: Durability) -> Result<DiskStore, StoreError> {
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open { path: path.to_owned(), message: e.to_string() };
        create_private_dir(path).map_err(|e| open_err(&e))?;
        let db = Database::builder(path).manual_journal_persist(true).open().map_err(|e| open_err(&e))?;
        let keyspace = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default).map_err(|e| open_err(&e));
        let parts = Parts {
            retained: keyspace("retained")?,
            sessions: keyspace("sessions")?,
            subscriptions: keyspace("subscriptions")?,
            messages: keyspace("messages")?,
            incoming: keyspace("incoming")?,
            wills: keyspace("wills")?,
            shares: keyspace("shares")?,
            db: db.clone(),
        };
        restrict_permissions(path).map_err(|e| open_err(&e))?;
        let (recovered, next_seq, expired) =
            read_all(&parts).map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
        let (queue, handle) = writer::start(parts, durability, next_seq).map_err(|e| open_err(&e))?;
        // Sessions that expired while the broker was down are deleted with
        // everything they held, so a new session under the same client id
        // never inherits their subscriptions, messages, ids or will.
        for client_id in expired {
            queue.send(Op::SessionEnded(client_id));
        }
        Ok(DiskStore {
            path: path.to_owned(),
            queue,
            writer: Mutex::new(Some(handle)),
            recovered: Mutex::new(Some(recovered)),
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames a bad store directory aside (`<dir>.corrupt-<unix seconds>`)
    /// so the broker can start with an empty one. Returns the new name.
    ///
    /// # Errors
    /// The I/O error of the rename.
    pub fn quarantine(path: &Path) -> std::io::Result<PathBuf> {
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".corrupt-{}", record::now_ms() / 1000));
        let aside = PathBuf::from(aside);
        std::fs::rename(path, &aside)?;
        Ok(aside)
    }

    /// Stops the writer after it has written and synced everything queued.
    pub fn close(&self) {
        self.queue.close();
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl Store for DiskStore {
    fn retain(&self, message: &Arc<Message>) {
        self.queue.send(Op::Retain(message.clone()));
    }

    fn session_opened(&self, client_id: &Arc<str>, expiry_s: u32) {
        self.queue.send(Op::SessionOpened(client_id.clone(), expiry_s));
    }

    fn session_owner(&self, client_id: &Arc<str>, owner: &Owner) {
        self.queue.send(Op::SessionOwner(client_id.clone(), owner.clone()));
    }

    fn session_ended(&self, client_id: &str) {
        self.queue.send(Op::SessionEnded(client_id.into()));
    }

    fn subscribed(&self, client_id: &str, filter: &TopicFilter, subscription: &Subscription) {
        self.queue.send(Op::subscribed(client_id, filter.as_str(), subscription));
    }

    fn unsubscribed(&self, client_id: &str, filter: &TopicFilter) {
        self.queue.send(Op::Unsubscribed(client_id.into(), filter.as_str().to_owned()));
    }

    fn session_messages(&self, client_id: &str, pending: Vec<Delivery>, inflight: Vec<Inflight>) {
        self.queue.send(Op::Replace(client_id.into(), pending, inflight));
    }

    fn queued(&self, client_id: &Arc<str>, delivery: &Delivery) -> Option<u64> {
        let (seq, fresh) = match delivery.stored {
            Some(seq) => (seq, false),
            None => (self.queue.next_seq(), true),
        };
        self.queue.send(Op::Append(client_id.clone(), seq, delivery.clone(), fresh));
        Some(seq)
    }

    fn message_key(&self) -> Option<u64> {
        Some(self.queue.next_seq())
    }

    fn delivery_state(&self, client_id: &Arc<str>, inflight: &Inflight) {
        if let Some(seq) = inflight.delivery.stored {
            self.queue.send(Op::Update(client_id.clone(), seq, inflight.clone()));
        }
    }

    fn delivered(&self, client_id: &Arc<str>, stored: u64) {
        self.queue.send(Op::Remove(client_id.clone(), stored));
    }

    fn incoming_qos2(&self, client_id: &Arc<str>, packet_id: PacketId, received: bool) {
        self.queue.send(Op::Incoming(client_id.clone(), packet_id.get(), received));
    }

    fn will(&self, client_id: &Arc<str>, will: Option<&PendingWill>) {
        self.queue.send(Op::Will(client_id.clone(), will.cloned()));
    }

    fn share_queued(&self, share: &TopicFilter, delivery: &Delivery) -> Option<u64> {
        let seq = self.queue.next_seq();
        self.queue.send(Op::ShareAppend(share.as_str().into(), seq, delivery.clone()));
        Some(seq)
    }

    fn share_taken(&self, share: &TopicFilter, key: u64) {
        self.queue.send(Op::ShareRemove(share.as_str().into(), key));
    }

    fn group(&self) -> Group {
        self.queue.group()
    }

    fn barrier(&self) -> Barrier {
        self.queue.barrier()
    }

    fn recover(&self) -> Result<Recovered, StoreError> {
        Ok(self.recovered.lock().take().unwrap_or_default())
    }
}

/// Creates `path` (mode 0700 on Unix) and tightens it if it already exists.
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// Owner-only permissions on the directory tree: 0700 directories, 0600
/// files. Files fjall creates later are inside the 0700 directory.
///
/// The store directory itself may be a link the operator made; inside it,
/// links are never followed: a link planted there (to `/etc/shadow`, or to
/// someone's home) would otherwise have its target's permissions changed
/// by the broker's user. Links are left alone and reported. A directory is
/// made 0700 before its entries are looked at, so nobody but its owner can
/// swap an entry for a link between the look and the change.
fn restrict_permissions(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let meta = std::fs::metadata(path)?;
        restrict_entry(path, &meta)?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// [`restrict_permissions`] for one entry whose own metadata (not a
/// link's target's) is `meta`.
#[cfg(unix)]
fn restrict_entry(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if meta.is_dir() { 0o700 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let meta = std::fs::symlink_metadata(entry.path())?;
            if meta.file_type().is_symlink() {
                tracing::warn!(path = %entry.path().display(), "store: a symbolic link inside the store is left alone");
                continue;
            }
            restrict_entry(&entry.path(), &meta)?;
        }
    }
    Ok(())
}

/// Decodes every record; drops sessions past their expiry and expired
/// queued messages. Returns the next message sequence number and the
/// client ids of the expired sessions.
fn read_all(parts: &Parts) -> Result<(Recovered, u64, Vec<Arc<str>>), String> {
    let mut expired = Vec::new();
    let (now, now_ms) = (Instant::now(), record::now_ms());
    let mut recovered = Recovered::default();
    for kv in parts.retained.iter() {
        let (key, value) = kv.into_inner().map_err(|e| e.to_string())?;
        let record: MessageRecord = record::decode(&value).map_err(|e| bad("retained", &key, &e))?;
        if !record.is_expired(now_ms) {
            let message = record.into_message(now, now_ms).map_err(|e| bad("retained", &key, &e))?;
            recovered.retained.push(Arc::new(message));
        }
    }
    for kv in parts.sessions.iter() {
        let (key, value) = kv.into_inner().map_err(|e| e.to_string())?;
        let record = SessionRecord::decode(&value).map_err(|e| bad("sessions", &key, &e))?;
        let client_id: Arc<str> = std::str::from_utf8(&key).map_err(|e| bad("sessions", &key, &e))?.into();
        // Crashed while online: the expiry starts now.
        let offline_ms = now_ms.saturating_sub(record.offline_since_ms.unwrap_or(now_ms));
        let left_s = if record.expiry_s == u32::MAX {
            u32::MAX
        } else {
            let left = u64::from(record.expiry_s).saturating_mul(1000).saturating_sub(offline_ms);
            if left == 0 {
                expired.push(client_id);
                continue;
            }
            u32::try_from(left.div_ceil(1000)).unwrap_or(u32::MAX)
        };
        let mut session = StoredSession {
            client_id,
            expiry_s: left_s,
            subscriptions: Vec::new(),
            pending: Vec::new(),
            inflight: Vec::new(),
            incoming_qos2: Vec::new(),
            will: None,
            owner: record.owner.map(Owner),
        };
        read_session(parts, &mut session, (now, now_ms))?;
        recovered.sessions.push(session);
    }
    let mut next_seq = 0;
    for kv in parts.messages.iter() {
        let key = kv.key().map_err(|e| e.to_string())?;
        if let Some(seq) = key_seq(&key) {
            next_seq = next_seq.max(seq + 1);
        }
    }
    next_seq = next_seq.max(read_shares(parts, &mut recovered, (now, now_ms))?);
    Ok((recovered, next_seq, expired))
}

/// Reads the messages waiting in share groups (expired ones left out);
/// returns the sequence number after the highest key.
fn read_shares(parts: &Parts, recovered: &mut Recovered, now: (Instant, u64)) -> Result<u64, String> {
    let mut next_seq = 0;
    for kv in parts.shares.iter() {
        let (key, value) = kv.into_inner().map_err(|e| e.to_string())?;
        let seq = key_seq(&key).ok_or_else(|| bad("shares", &key, &"short key"))?;
        next_seq = next_seq.max(seq + 1);
        // `share`, 0, `seq`.
        let share = key.len().checked_sub(9).and_then(|end| key.get(..end)).and_then(|s| std::str::from_utf8(s).ok());
        let share = share
            .and_then(|s| TopicFilter::new(s).ok())
            .filter(|f| f.share_group().is_some())
            .ok_or_else(|| bad("shares", &key, &"not a shared subscription"))?;
        let record = DeliveryRecord::decode(&value).map_err(|e| bad("shares", &key, &e))?;
        if record.message.is_expired(now.1) {
            continue;
        }
        let Ok(delivery) = record.into_parts(seq, now.0, now.1).map_err(|e| bad("shares", &key, &e))? else {
            return Err(bad("shares", &key, &"in flight"));
        };
        match recovered.shared.last_mut() {
            Some((last, deliveries)) if *last == share => deliveries.push(delivery),
            _ => recovered.shared.push((share, vec![delivery])),
        }
    }
    Ok(next_seq)
}

/// The sequence number at the end of a message key.
fn key_seq(key: &[u8]) -> Option<u64> {
    key.len()
        .checked_sub(8)
        .and_then(|at| key.get(at..))
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
}

fn read_session(parts: &Parts, session: &mut StoredSession, now: (Instant, u64)) -> Result<(), String> {
    let prefix = writer::client_prefix(&session.client_id);
    for kv in parts.subscriptions.prefix(&prefix) {
        let (key, value) = kv.into_inner().map_err(|e| e.to_string())?;
        let filter = key.get(prefix.len()..).and_then(|f| std::str::from_utf8(f).ok()).unwrap_or_default();
        let filter = TopicFilter::new(filter).map_err(|e| bad("subscriptions", &key, &e))?;
        let record: SubscriptionRecord = record::decode(&value).map_err(|e| bad("subscriptions", &key, &e))?;
        let subscription = record.into_subscription().map_err(|e| bad("subscriptions", &key, &e))?;
        session.subscriptions.push((filter, subscription));
    }
    for kv in parts.incoming.prefix(&prefix) {
        let key = kv.key().map_err(|e| e.to_string())?;
        let id = key.get(prefix.len()..).and_then(|b| <[u8; 2]>::try_from(b).ok()).map(u16::from_be_bytes);
        let id = id.and_then(PacketId::new).ok_or_else(|| bad("incoming", &key, &"bad packet id"))?;
        session.incoming_qos2.push(id);
    }
    if let Some(value) = parts.wills.get(session.client_id.as_bytes()).map_err(|e| e.to_string())? {
        let key = session.client_id.as_bytes();
        let record: WillRecord = record::decode(&value).map_err(|e| bad("wills", key, &e))?;
        let message = record.message.into_message(now.0, now.1).map_err(|e| bad("wills", key, &e))?;
        session.will =
            Some(PendingWill { message: Arc::new(message), expiry_s: record.expiry_s, due_ms: record.due_ms });
    }
    for kv in parts.messages.prefix(&prefix) {
        let (key, value) = kv.into_inner().map_err(|e| e.to_string())?;
        let record = DeliveryRecord::decode(&value).map_err(|e| bad("messages", &key, &e))?;
        if record.inflight.is_none() && record.message.is_expired(now.1) {
            continue;
        }
        let seq = key_seq(&key).ok_or_else(|| bad("messages", &key, &"short key"))?;
        match record.into_parts(seq, now.0, now.1).map_err(|e| bad("messages", &key, &e))? {
            Ok(delivery) => session.pending.push(delivery),
            Err(inflight) => session.inflight.push(inflight),
        }
    }
    Ok(())
}

fn bad(part: &str, key: &[u8], e: &dyn std::fmt::Display) -> String {
    format!("bad record in `{part}` at key {:?}: {e}", String::from_utf8_lossy(key))
}
