//! Tests of the on-disk store: recovery after a close, expiry across the
//! downtime, the barrier, and corrupt data.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::codec::{Properties, QoS, SubscriptionOptions, TopicFilter, TopicName};

fn message(topic: &str, payload: &'static [u8], retain: bool, expiry_s: Option<u32>) -> Arc<Message> {
    let props = Properties { message_expiry_interval: expiry_s, ..Properties::default() };
    let topic = TopicName::new(topic).expect("valid");
    Arc::new(Message::new(topic, Bytes::from_static(payload), QoS::AtLeastOnce, retain, &props))
}

fn delivery(m: &Arc<Message>) -> Delivery {
    Delivery {
        message: m.clone(),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![],
        stored: None,
        jetstream: None,
        share: None,
    }
}

fn subscription() -> Subscription {
    Subscription { options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..SubscriptionOptions::default() }, id: None }
}

fn open(dir: &std::path::Path) -> DiskStore {
    DiskStore::open(dir, Durability::Sync).expect("opens")
}

#[test]
fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let client: Arc<str> = "c1".into();
    let filter = TopicFilter::new("a/#").expect("valid");
    {
        let store = open(&path);
        store.retain(&message("r/1", b"kept", true, None));
        store.retain(&message("r/2", b"gone", true, None));
        store.retain(&message("r/2", b"", true, None));
        store.session_opened(&client, 3600);
        store.subscribed(&client, &filter, &subscription());
        store.subscribed("no-session", &filter, &subscription());
        let a = message("a/1", b"one", false, None);
        let mut one = delivery(&a);
        one.stored = store.message_key();
        store.session_messages(&client, vec![one], vec![]);
        let _ = store.queued(&client, &delivery(&message("a/2", b"two", false, None)));
        let _ = store.queued(&client, &delivery(&message("a/3", b"expired", false, Some(0))));
        store.close();
    }
    let store = open(&path);
    let recovered = store.recover().expect("recovers");
    assert_eq!(recovered.retained.len(), 1);
    assert_eq!(recovered.retained[0].payload, Bytes::from_static(b"kept"));
    assert_eq!(recovered.sessions.len(), 1);
    let s = &recovered.sessions[0];
    assert_eq!(&*s.client_id, "c1");
    assert!(s.expiry_s > 3590 && s.expiry_s <= 3600, "{}", s.expiry_s);
    assert_eq!(s.subscriptions, vec![(filter, subscription())]);
    let payloads: Vec<_> = s.pending.iter().map(|d| d.message.payload.clone()).collect();
    assert_eq!(payloads, vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]);
}

#[test]
fn ended_and_expired_sessions_are_not_recovered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    {
        let store = open(&path);
        let (ended, short, forever): (Arc<str>, Arc<str>, Arc<str>) =
            ("ended".into(), "short".into(), "forever".into());
        store.session_opened(&ended, 60);
        store.session_ended(&ended);
        store.session_opened(&short, 1);
        store.session_messages(&short, vec![], vec![]);
        store.session_opened(&forever, u32::MAX);
        store.session_messages(&forever, vec![], vec![]);
        store.close();
    }
    std::thread::sleep(Duration::from_millis(1100));
    let recovered = open(&path).recover().expect("recovers");
    let ids: Vec<_> = recovered.sessions.iter().map(|s| s.client_id.to_string()).collect();
    assert_eq!(ids, vec!["forever".to_owned()]);
    assert_eq!(recovered.sessions[0].expiry_s, u32::MAX);
}

#[tokio::test]
async fn barrier_resolves_once_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("store"));
    assert!(store.barrier().is_ready());
    for i in 0..100 {
        store.retain(&message(&format!("t/{i}"), b"x", true, None));
    }
    let barrier = store.barrier();
    tokio::time::timeout(Duration::from_secs(10), barrier.wait()).await.expect("in time").expect("durable");
    assert!(store.barrier().is_ready());
    store.close();
    assert!(matches!(store.barrier().wait().await, Ok(())), "nothing queued after close");
}

/// Senders take no lock: changes from racing threads may reach the writer
/// out of ticket order. Every barrier still resolves, and only once what
/// was queued before it is written: each thread's changes are all there
/// after the reopen.
#[test]
fn barriers_of_racing_senders_resolve_once_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = Arc::new(open(&path));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
                for i in 0..200 {
                    store.retain(&message(&format!("t/{t}/{i}"), b"x", true, None));
                    let barrier = store.barrier();
                    let waited =
                        rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), barrier.wait()).await });
                    assert!(matches!(waited, Ok(Ok(()))), "thread {t}, change {i}: {waited:?}");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("no panic");
    }
    assert!(store.barrier().is_ready());
    store.close();
    drop(store);
    assert_eq!(open(&path).recover().expect("recovers").retained.len(), 800);
}

/// The writer remembers which sessions have a record: a message queued
/// after its session ended is not kept, one queued after the session was
/// opened again is, whether the steps share a batch or not.
#[test]
fn messages_follow_the_session_record_through_end_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    for separate_batches in [false, true] {
        let path = dir.path().join(format!("store-{separate_batches}"));
        let client: Arc<str> = "c".into();
        {
            let store = open(&path);
            let step = |store: &DiskStore| {
                if separate_batches {
                    let waited = rt.block_on(async {
                        tokio::time::timeout(Duration::from_secs(20), store.barrier().wait()).await
                    });
                    assert!(matches!(waited, Ok(Ok(()))), "{waited:?}");
                }
            };
            store.session_opened(&client, 60);
            let _ = store.queued(&client, &delivery(&message("a/1", b"one", false, None)));
            step(&store);
            store.session_ended(&client);
            step(&store);
            let _ = store.queued(&client, &delivery(&message("a/2", b"two", false, None)));
            step(&store);
            store.session_opened(&client, 60);
            step(&store);
            let _ = store.queued(&client, &delivery(&message("a/3", b"three", false, None)));
            store.close();
        }
        let recovered = open(&path).recover().expect("recovers");
        assert_eq!(recovered.sessions.len(), 1);
        let payloads: Vec<_> = recovered.sessions[0].pending.iter().map(|d| d.message.payload.clone()).collect();
        assert_eq!(payloads, vec![Bytes::from_static(b"three")], "separate batches: {separate_batches}");
    }
}

#[tokio::test]
async fn periodic_and_none_barriers_are_ready_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    for mode in [Durability::Periodic(Duration::from_millis(50)), Durability::None] {
        let path = dir.path().join(format!("{mode:?}"));
        let store = DiskStore::open(&path, mode).expect("opens");
        store.retain(&message("t", b"x", true, None));
        assert!(store.barrier().is_ready());
        drop(store);
        assert_eq!(DiskStore::open(&path, mode).expect("opens").recover().expect("recovers").retained.len(), 1);
    }
}

#[test]
fn a_corrupt_record_stops_recovery_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    {
        let db = fjall::Database::builder(&path).open().expect("opens");
        let ks = db.keyspace("retained", fjall::KeyspaceCreateOptions::default).expect("keyspace");
        ks.insert("t", [1u8, 0xff, 0xff]).expect("insert");
        db.persist(fjall::PersistMode::SyncAll).expect("persist");
    }
    let err = DiskStore::open(&path, Durability::Sync).expect_err("corrupt");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("--repair"), "{msg}");
    let aside = DiskStore::quarantine(&path).expect("moved");
    assert!(aside.exists() && !path.exists());
    assert!(open(&path).recover().expect("empty").retained.is_empty());
}

#[cfg(unix)]
#[test]
fn files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    drop(open(&path));
    let store = open(&path);
    assert_eq!(std::fs::metadata(&path).expect("dir").permissions().mode() & 0o777, 0o700);
    for entry in std::fs::read_dir(&path).expect("list") {
        let meta = entry.expect("entry").metadata().expect("meta");
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(meta.permissions().mode() & 0o777, want);
    }
    drop(store);
}

/// The permission fix-up never follows a link planted in the store: the
/// file or directory it points at keeps its permissions.
#[cfg(unix)]
#[test]
fn the_permission_fix_up_does_not_follow_links() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    drop(open(&path));
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).expect("dir");
    let victim = outside.join("victim");
    std::fs::write(&victim, "not the broker's").expect("file");
    for p in [&outside, &victim] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::os::unix::fs::symlink(&victim, path.join("to-a-file")).expect("link");
    std::os::unix::fs::symlink(&outside, path.join("to-a-dir")).expect("link");
    let store = open(&path);
    for p in [&outside, &victim] {
        assert_eq!(std::fs::metadata(p).expect("meta").permissions().mode() & 0o777, 0o755, "{}", p.display());
    }
    assert!(std::fs::symlink_metadata(path.join("to-a-file")).expect("link").file_type().is_symlink());
    drop(store);
}

#[test]
fn close_does_not_wait_for_a_barrier_still_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = open(&path);
    store.retain(&message("t", b"x", true, None));
    let held = store.barrier();
    store.close();
    assert!(held.is_ready(), "close wrote and synced everything queued");
    drop(store);
    assert_eq!(open(&path).recover().expect("recovers").retained.len(), 1);
}

#[test]
fn messages_are_kept_by_key_until_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let client: Arc<str> = "online".into();
    {
        let store = open(&path);
        store.session_opened(&client, 60);
        let mut keys = Vec::new();
        for payload in [&b"acked"[..], b"sent", b"queued"] {
            let mut d = delivery(&message("a", b"x", false, None));
            d.message = Arc::new(Message { payload: Bytes::copy_from_slice(payload), ..(*d.message).clone() });
            d.stored = store.queued(&client, &d);
            keys.push(d);
        }
        let acked = keys[0].stored.expect("kept");
        store.delivered(&client, acked);
        let packet_id = crate::codec::PacketId::new(9).expect("non-zero");
        let sent =
            Inflight { packet_id, delivery: keys[1].clone(), state: crate::message::InflightState::AwaitPubComp };
        store.delivery_state(&client, &sent);
        store.close();
    }
    let recovered = open(&path).recover().expect("recovers");
    let s = &recovered.sessions[0];
    assert_eq!(s.inflight.len(), 1);
    assert_eq!(s.inflight[0].packet_id.get(), 9);
    assert_eq!(s.inflight[0].delivery.message.payload, Bytes::from_static(b"sent"));
    assert_eq!(s.pending.len(), 1);
    assert_eq!(s.pending[0].message.payload, Bytes::from_static(b"queued"));
    assert!(s.pending[0].stored.is_some(), "recovered messages keep their key");
}

/// A delivery held for a full queue is kept at once; queued later under
/// the same key, it is written again, so replacing the session's messages
/// in between (its connection ended) does not lose it.
#[test]
fn a_held_delivery_keeps_its_key_when_queued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let client: Arc<str> = "slow".into();
    let key = {
        let store = open(&path);
        store.session_opened(&client, 60);
        let mut held = delivery(&message("a", b"held", false, None));
        held.stored = store.queued(&client, &held);
        store.session_messages(&client, vec![], vec![]);
        let key = store.queued(&client, &held);
        assert_eq!(key, held.stored, "the same key");
        store.close();
        key
    };
    let recovered = open(&path).recover().expect("recovers");
    let pending = &recovered.sessions[0].pending;
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].stored, &pending[0].message.payload), (key, &Bytes::from_static(b"held")));
}

#[test]
fn share_groups_waiting_messages_survive_until_taken_and_keys_stay_unique() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let (g, h) = (TopicFilter::new("$share/g/a/#").expect("valid"), TopicFilter::new("$share/g/a").expect("valid"));
    let client: Arc<str> = "member".into();
    let taken;
    {
        let store = open(&path);
        store.session_opened(&client, 60);
        let mut held = delivery(&message("a/1", b"held", false, None));
        held.share = Some(Arc::new(g.clone()));
        // A member's message keeps its share group through the store.
        held.stored = store.queued(&client, &held);
        let keys: Vec<u64> = [&b"one"[..], b"two", b"three"]
            .iter()
            .map(|p| {
                let d = delivery(&Arc::new(Message {
                    payload: Bytes::copy_from_slice(p),
                    ..(*message("a/1", b"", false, None)).clone()
                }));
                store.share_queued(&g, &Delivery { share: Some(Arc::new(g.clone())), ..d }).expect("kept")
            })
            .collect();
        store.share_queued(&h, &delivery(&message("a", b"other group", false, None))).expect("kept");
        store.share_queued(&g, &delivery(&message("a/2", b"expired", false, Some(1)))).expect("kept");
        taken = keys[1];
        store.share_taken(&g, taken);
        store.close();
    }
    std::thread::sleep(Duration::from_millis(1100));
    let store = open(&path);
    let recovered = store.recover().expect("recovers");
    assert_eq!(recovered.sessions[0].pending[0].share.as_deref(), Some(&g));
    let groups: Vec<(&str, Vec<&[u8]>)> = recovered
        .shared
        .iter()
        .map(|(share, ds)| (share.as_str(), ds.iter().map(|d| &d.message.payload[..]).collect()))
        .collect();
    assert_eq!(groups, [("$share/g/a", vec![&b"other group"[..]]), ("$share/g/a/#", vec![&b"one"[..], b"three"])]);
    // New keys come after every recovered one.
    let next = store.message_key().expect("keyed");
    assert!(recovered.shared.iter().flat_map(|(_, ds)| ds).all(|d| d.stored.is_some_and(|k| k < next)));
    assert!(next > taken);
}

#[test]
fn incoming_qos2_ids_and_pending_wills_survive_until_released() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let (client, ended): (Arc<str>, Arc<str>) = ("pub".into(), "ended".into());
    let id = |n| crate::codec::PacketId::new(n).expect("non-zero");
    let will = PendingWill { message: message("w/t", b"bye", false, None), expiry_s: Some(30), due_ms: 1234 };
    {
        let store = open(&path);
        store.session_opened(&client, 60);
        store.incoming_qos2(&client, id(7), true);
        store.incoming_qos2(&client, id(8), true);
        store.incoming_qos2(&client, id(7), false);
        store.will(&client, Some(&will));
        store.session_opened(&ended, 60);
        store.incoming_qos2(&ended, id(1), true);
        store.will(&ended, Some(&will));
        store.session_ended(&ended);
        // No session, nothing kept.
        store.incoming_qos2(&"none".into(), id(1), true);
        store.close();
    }
    let recovered = open(&path).recover().expect("recovers");
    assert_eq!(recovered.sessions.len(), 1);
    let s = &recovered.sessions[0];
    assert_eq!(s.incoming_qos2, vec![id(8)]);
    let back = s.will.as_ref().expect("will kept");
    assert_eq!(
        (back.message.payload.clone(), back.expiry_s, back.due_ms),
        (Bytes::from_static(b"bye"), Some(30), 1234)
    );
    {
        let store = open(&path);
        store.will(&client, None);
        store.close();
    }
    assert!(open(&path).recover().expect("recovers").sessions[0].will.is_none(), "a cancelled will is gone");
}

#[test]
fn a_session_that_expired_while_down_leaves_nothing_to_a_new_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let client: Arc<str> = "c".into();
    let filter = TopicFilter::new("old/#").expect("valid");
    {
        let store = open(&path);
        store.session_opened(&client, 1);
        store.subscribed(&client, &filter, &subscription());
        store.incoming_qos2(&client, crate::codec::PacketId::new(3).expect("non-zero"), true);
        store.will(
            &client,
            Some(&PendingWill { message: message("w", b"old", false, None), expiry_s: None, due_ms: 1 }),
        );
        store.session_messages(&client, vec![], vec![]);
        store.close();
    }
    std::thread::sleep(Duration::from_millis(1100));
    {
        let store = open(&path);
        assert!(store.recover().expect("recovers").sessions.is_empty());
        store.session_opened(&client, 60);
        store.close();
    }
    let recovered = open(&path).recover().expect("recovers");
    let s = &recovered.sessions[0];
    assert!(s.subscriptions.is_empty() && s.incoming_qos2.is_empty() && s.will.is_none(), "{s:?}");
}
