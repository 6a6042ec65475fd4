//! Session ownership across nodes: one node holds a client's session at a
//! time, recorded in the JetStream key-value bucket `{PREFIX}_SESSIONS`
//! (key: the client id, value: the owning node's id).
//!
//! A client connecting to a node claims its entry first, with
//! compare-and-swap on the entry's revision, so of two nodes claiming at
//! once one wins and the other reads again. When the entry named another
//! node, the new owner asks that node (a NATS request on
//! `{prefix}.n.{node id}.takeover`) to let the client go: it disconnects
//! the client's connection there (v5: DISCONNECT 0x8E Session taken over),
//! cancels a will waiting for its delay (a reconnect cancels it
//! [MQTT-3.1.3-9]), ends the session there and answers with it (its
//! subscriptions, queued and in-flight messages and QoS 2 state) unless
//! the client asked for a clean start. The new owner adopts it and the
//! client resumes it with Session Present, whichever node it had.
//!
//! The entry is removed when the session ends for good (expiry, or a
//! connection without a session ending), only if it still has the
//! revision this node's claim wrote: a later claim, on any node, keeps it.
//!
//! What this does not cover yet (issue 12): a node that dies takes the
//! sessions it held with it until it restarts (the claim asks it in vain
//! and the client starts afresh elsewhere), and messages published in the
//! moment between the old node unsubscribing and the new one subscribing
//! are not queued for the moved session. Without JetStream (or while it
//! is away) claims are skipped after [`JETSTREAM_WAIT`] and each node keeps
//! its own sessions, as before clustering.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tracing::{debug, info, warn};

use super::JETSTREAM_WAIT;
use crate::broker::Claim;
use crate::broker::Node;
use crate::config::ClusterConfig;

/// Claims retried when another node changed the entry in between.
const CLAIM_ATTEMPTS: usize = 3;
/// Client ids longer than this are keyed by their SHA-256: a key is part
/// of a NATS subject.
const MAX_PLAIN_KEY: usize = 256;

/// The value of an entry: the owner's node id, and ` parked` once it
/// keeps the session in JetStream (node ids have no spaces).
fn entry_value(node: &str, kept: bool) -> Bytes {
    Bytes::from(if kept { format!("{node} {KEPT}") } else { node.to_owned() })
}

/// The marker of a session kept in JetStream in an entry's value (its
/// first name, kept so that nodes of the previous version understand it).
const KEPT: &str = "parked";

/// This node's side of session ownership.
#[derive(Debug)]
pub(super) struct Ownership {
    bucket: kv::Config,
    node_id: Arc<str>,
    /// The request subject of node `{id}` is this plus `{id}.takeover`.
    node_prefix: String,
    /// The bucket and a client for requests, once set up.
    link: Mutex<Option<(kv::Store, async_nats::Client)>>,
    /// Whether a claim failed since the last one that worked: only the
    /// first failure of a run is logged at warn.
    failing: AtomicBool,
}

impl Ownership {
    /// Ownership for the cluster of `config`, for node `node_id`.
    pub(super) fn new(config: &ClusterConfig, node_id: Arc<str>) -> Ownership {
        Ownership {
            bucket: super::bucket_config(config, "SESSIONS", "moat: which node holds each client's session"),
            node_prefix: format!("{}.n.", config.subject_prefix),
            node_id,
            link: Mutex::new(None),
            failing: AtomicBool::new(false),
        }
    }

    fn takeover_subject(&self, node: &str) -> String {
        format!("{}{node}.takeover", self.node_prefix)
    }

    /// Claims the session of `client_id` for this node, bringing it over
    /// from the node that held it (dropped there when `clean_start`).
    /// Waits at most [`JETSTREAM_WAIT`].
    pub(super) async fn claim(&self, client_id: &str, clean_start: bool) -> Claim {
        let Some((kv, client)) = self.link.lock().clone() else { return Claim::default() };
        // NATS away: do not make every connecting client wait for it.
        if client.connection_state() != async_nats::connection::State::Connected {
            return Claim::default();
        }
        let claiming = async {
            let (revision, previous) = self.claim_key(&kv, &key(client_id)).await?;
            let (mut moved, mut kept) = (None, false);
            if let Some(previous) = previous {
                let (node, state) = previous.split_once(' ').unwrap_or((&previous, ""));
                kept = state == KEPT;
                if node == &*self.node_id {
                    return Ok(Claim { revision: Some(revision), moved, kept });
                }
                let mut request = Vec::with_capacity(1 + client_id.len());
                request.push(u8::from(clean_start));
                request.extend_from_slice(client_id.as_bytes());
                match client.request(self.takeover_subject(node), request.into()).await {
                    Ok(reply) if reply.payload.is_empty() => {}
                    Ok(reply) => match crate::store::decode_session(&reply.payload) {
                        Ok(session) if &*session.client_id == client_id => moved = Some(session),
                        Ok(_) => warn!(%node, "cluster: a node handed over another client's session; ignored"),
                        Err(e) => warn!(%node, error = %e, "cluster: a handed-over session cannot be read; ignored"),
                    },
                    // Gone (no responders) or too slow: the session stays
                    // where it was, the client starts afresh here.
                    Err(e) => info!(%node, error = %e, "cluster: the node that held this session did not hand it over"),
                }
            }
            Ok::<_, async_nats::Error>(Claim { revision: Some(revision), moved, kept })
        };
        match tokio::time::timeout(JETSTREAM_WAIT, claiming).await {
            Ok(Ok(claim)) => {
                self.failing.store(false, Ordering::Relaxed);
                claim
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                if self.failing.swap(true, Ordering::Relaxed) {
                    debug!(%error, "cluster: session ownership not claimed");
                } else {
                    warn!(%error, bucket = %self.bucket.bucket, "cluster: session ownership not claimed; this node serves the client without it");
                }
                Claim::default()
            }
        }
    }

    /// Writes this node into the entry `key` with compare-and-swap; returns
    /// the revision written and the value the entry had before (if any).
    async fn claim_key(&self, kv: &kv::Store, key: &str) -> Result<(u64, Option<String>), async_nats::Error> {
        let mine = entry_value(&self.node_id, false);
        let mut last_error: async_nats::Error = "no attempt".into();
        for _ in 0..CLAIM_ATTEMPTS {
            let entry = kv.entry(key).await?;
            let written = match entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    let previous = String::from_utf8_lossy(&entry.value).into_owned();
                    kv.update(key, mine.clone(), entry.revision).await.map(|r| (r, Some(previous))).map_err(Into::into)
                }
                _ => kv.create(key, mine.clone()).await.map(|r| (r, None)).map_err(Into::into),
            };
            match written {
                Ok(written) => return Ok(written),
                // Another claim came in between: read again.
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    /// Marks the entry of `client_id`, claimed with `revision`, as kept in JetStream
    /// (unless a claim came since), so whoever claims it next knows to look
    /// in JetStream. The new revision, if written.
    pub(super) async fn mark_kept(&self, client_id: &str, revision: u64) -> Option<u64> {
        let (kv, _) = self.link.lock().clone()?;
        let marking = kv.update(key(client_id), entry_value(&self.node_id, true), revision);
        tokio::time::timeout(JETSTREAM_WAIT, marking).await.ok()?.ok()
    }

    /// Removes the entry of `client_id` if it still has `revision` (its
    /// session ended here and no claim came since). In the background:
    /// the session's end does not wait for NATS.
    pub(super) fn release(&self, client_id: &str, revision: u64, node: &Node) {
        let Some((kv, _)) = self.link.lock().clone() else { return };
        let key = key(client_id);
        node.spawn(async move {
            // Fails when a later claim changed the entry: as it should.
            let _ = tokio::time::timeout(JETSTREAM_WAIT, kv.delete_expect_revision(key, Some(revision))).await;
        });
    }

    /// Sets up the bucket (retrying while JetStream is away), then answers
    /// other nodes' takeover requests until shutdown.
    pub(super) async fn run(self: Arc<Self>, client: async_nats::Client, node: Node) {
        let without = "each node keeps its own sessions until it is back";
        let Some([kv]) = super::open_buckets(&client, [self.bucket.clone()], &node, without).await else { return };
        // Claims work from here on; requests from others once subscribed.
        *self.link.lock() = Some((kv, client.clone()));
        let mut requests = match client.subscribe(self.takeover_subject(&self.node_id)).await {
            Ok(requests) => requests,
            Err(e) => {
                warn!(error = %e, "cluster: cannot take takeover requests; sessions stay on their nodes");
                return;
            }
        };
        info!(bucket = %self.bucket.bucket, "cluster: session ownership across nodes");
        while let Some(Some(request)) = node.shutdown().run_until_cancelled(requests.next()).await {
            let (node, client) = (node.clone(), client.clone());
            node.clone().spawn(async move {
                let Some(reply) = request.reply else { return };
                let Some((&clean_start, id)) = request.payload.split_first() else { return };
                let Ok(client_id) = std::str::from_utf8(id) else { return };
                let moved = node.hand_over(client_id, clean_start == 0).await;
                debug!(client_id, moved = moved.is_some(), "cluster: session handed over to another node");
                let answer = moved.map(|s| crate::store::encode_session(&s)).unwrap_or_default();
                let _ = client.publish(reply, answer.into()).await;
            });
        }
    }
}

/// The bucket key of `client_id`: its bytes in hex (a key allows few
/// characters), or for a long id `h` and the hex SHA-256 of it.
pub(super) fn key(client_id: &str) -> String {
    if client_id.len() <= MAX_PLAIN_KEY {
        super::hex(client_id.as_bytes())
    } else {
        format!("h{}", super::hex(ring::digest::digest(&ring::digest::SHA256, client_id.as_bytes()).as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_and_distinct() {
        let long = "x".repeat(1000);
        let keys = [key("a"), key("A"), key("dev/1.x"), key("ünï"), key(&long), key(&long[..999])];
        for k in &keys {
            assert!(k.chars().all(|c| c.is_ascii_alphanumeric()), "{k}");
            assert!(k.len() <= 2 * MAX_PLAIN_KEY, "{k}");
        }
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
    }
}
