//! Wills of clients whose node died: registered in JetStream while their
//! connection lives, published by a surviving node.
//!
//! A node that dies cannot publish the wills of its clients, whose
//! connections it took down with it. So each connection with a will (one
//! the policy allows) registers it, at CONNECT, in the key-value bucket
//! `{PREFIX}_WILLS` under `{node id}.{client key}`, and removes it when the
//! connection ends on a live node (which then publishes, delays or drops
//! the will itself, as always).
//!
//! Each node also puts a heartbeat into `{PREFIX}_NODES` (key: its id)
//! three times per `node_timeout_s`, and watches the others' heartbeats. A
//! node whose heartbeat has not changed for `node_timeout_s` (measured on
//! the watcher's clock, so clocks need not agree) is dead: every node that
//! notices lists its registered wills and, for each, deletes the
//! registration with compare-and-swap; the one whose delete wins publishes
//! the will, after its Will Delay Interval (counted from then), so each
//! will goes out once. A node starting up does the same for registrations
//! it left behind itself (it crashed, so their connections ended without
//! their wills).
//!
//! Not covered: a client that reconnects before its old node is found
//! dead still gets its will published, and a will whose delay outlives
//! the node publishing it is published at that node's shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::TryStreamExt;
use parking_lot::Mutex;
use tracing::{debug, info, warn};

use super::JETSTREAM_WAIT;
use super::ownership::key;
use crate::broker::Node;
use crate::codec::Will;
use crate::config::ClusterConfig;

/// This node's side of the wills of dead nodes.
#[derive(Debug)]
pub(super) struct Wills {
    wills_bucket: kv::Config,
    nodes_bucket: kv::Config,
    node_id: Arc<str>,
    timeout: Duration,
    /// The wills bucket, once set up.
    wills: Mutex<Option<kv::Store>>,
}

impl Wills {
    /// Wills for the cluster of `config`, for node `node_id`.
    pub(super) fn new(config: &ClusterConfig, node_id: Arc<str>) -> Wills {
        Wills {
            wills_bucket: super::bucket_config(config, "WILLS", "moat: wills of connected clients, by node"),
            nodes_bucket: super::bucket_config(config, "NODES", "moat: node heartbeats"),
            node_id,
            timeout: Duration::from_secs(u64::from(config.node_timeout_s)),
            wills: Mutex::new(None),
        }
    }

    /// Registers the will of `client_id`'s connection, to be published
    /// `delay_s` after this node is found dead. Returns the registration's
    /// revision, for [`Wills::unregister`]; `None` when JetStream is not
    /// there (the will is then this node's alone).
    pub(super) async fn register(&self, client_id: &str, will: &Will, delay_s: u32) -> Option<u64> {
        let wills = self.wills.lock().clone()?;
        let value = Bytes::from(crate::store::encode_will(will, delay_s));
        let put = tokio::time::timeout(JETSTREAM_WAIT, wills.put(self.key(client_id), value));
        match put.await {
            Ok(Ok(revision)) => Some(revision),
            Ok(Err(e)) => {
                debug!(error = %e, "cluster: will not registered; it is published only if this node lives");
                None
            }
            Err(_) => None,
        }
    }

    /// Removes the registration `revision` of `client_id`'s will: its
    /// connection ended on this node, which takes care of the will. In the
    /// background; a newer registration (a reconnect) is left alone.
    pub(super) fn unregister(&self, client_id: &str, revision: u64, node: &Node) {
        let Some(wills) = self.wills.lock().clone() else { return };
        let key = self.key(client_id);
        node.spawn(async move {
            let deleting = wills.delete_expect_revision(key, Some(revision));
            let _ = tokio::time::timeout(JETSTREAM_WAIT, deleting).await;
        });
    }

    fn key(&self, client_id: &str) -> String {
        format!("{}.{}", self.node_id, key(client_id))
    }

    /// Sets up the buckets, publishes what this node left behind, then
    /// beats and watches the other nodes' hearts until shutdown.
    pub(super) async fn run(self: Arc<Self>, client: async_nats::Client, local: Node) {
        let configs = [self.wills_bucket.clone(), self.nodes_bucket.clone()];
        let without = "wills of clients of nodes that die are lost";
        let Some([wills, nodes]) = super::open_buckets(&client, configs, &local, without).await else { return };
        *self.wills.lock() = Some(wills.clone());
        let own = self.node_id.clone();
        self.publish_wills_of(&own, &wills, &local).await;
        // By node: its heartbeat's revision, and since when (here) it has
        // not changed.
        let mut hearts: HashMap<String, (u64, Instant)> = HashMap::new();
        let mut ticks = tokio::time::interval(self.timeout / 3);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while local.shutdown().run_until_cancelled(ticks.tick()).await.is_some() {
            let now_ms = crate::store::now_ms().to_string();
            if let Err(e) = nodes.put(&*self.node_id, now_ms.into()).await {
                debug!(error = %e, "cluster: heartbeat not written");
            }
            match self.dead_nodes(&nodes, &mut hearts).await {
                Ok(dead) => {
                    for (node, revision) in dead {
                        warn!(%node, "cluster: node silent for node_timeout_s; publishing its clients' wills");
                        self.publish_wills_of(&node, &wills, &local).await;
                        // Gone from the list unless it came back meanwhile.
                        let _ = nodes.delete_expect_revision(&node, Some(revision)).await;
                    }
                }
                Err(e) => debug!(error = %e, "cluster: heartbeats not read"),
            }
        }
        // A clean stop is no death: the connections ended here already.
        let _ = nodes.delete(&*self.node_id).await;
    }

    /// Reads the heartbeats into `hearts` and returns the nodes silent for
    /// longer than the timeout, with their heartbeat's revision.
    async fn dead_nodes(
        &self,
        nodes: &kv::Store,
        hearts: &mut HashMap<String, (u64, Instant)>,
    ) -> Result<Vec<(String, u64)>, async_nats::Error> {
        let listed: Vec<String> = nodes.keys().await?.try_collect().await?;
        let now = Instant::now();
        let mut dead = Vec::new();
        hearts.retain(|node, _| listed.contains(node));
        for node in listed {
            if *node == *self.node_id {
                continue;
            }
            let Some(entry) = nodes.entry(node.as_str()).await? else { continue };
            if entry.operation != kv::Operation::Put {
                hearts.remove(&node);
                continue;
            }
            let heart = hearts.entry(node.clone()).or_insert((entry.revision, now));
            if heart.0 != entry.revision {
                *heart = (entry.revision, now);
            } else if now.duration_since(heart.1) >= self.timeout {
                dead.push((node.clone(), entry.revision));
                hearts.remove(&node);
            }
        }
        Ok(dead)
    }

    /// Publishes the wills registered by `node`, each once across the
    /// cluster: only the node whose delete of the registration wins.
    async fn publish_wills_of(&self, node: &str, wills: &kv::Store, local: &Node) {
        let listing = async {
            let filter = format!("{}{node}.>", wills.prefix);
            let mut subjects = wills.stream.info_with_subjects(filter).await?;
            let mut keys = Vec::new();
            while let Some((subject, _)) = subjects.try_next().await? {
                keys.extend(subject.strip_prefix(wills.prefix.as_str()).map(str::to_owned));
            }
            Ok::<_, async_nats::Error>(keys)
        };
        let keys = match listing.await {
            Ok(keys) => keys,
            Err(e) => {
                warn!(%node, error = %e, "cluster: wills of a dead node not listed");
                return;
            }
        };
        let mut published = 0usize;
        for key in keys {
            let Ok(Some(entry)) = wills.entry(key.as_str()).await else { continue };
            if entry.operation != kv::Operation::Put
                || wills.delete_expect_revision(key.as_str(), Some(entry.revision)).await.is_err()
            {
                continue;
            }
            match crate::store::decode_will(&entry.value) {
                Ok(will) => {
                    local.publish_will_later(will);
                    published += 1;
                }
                Err(e) => warn!(%node, error = %e, "cluster: a registered will cannot be read; dropped"),
            }
        }
        if published > 0 {
            info!(%node, published, "cluster: wills of a dead node's clients published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_keyed_under_their_node() {
        let config = ClusterConfig { subject_prefix: "acme.moat".into(), replicas: 3, ..ClusterConfig::new(vec![]) };
        let wills = Wills::new(&config, "n-1".into());
        assert_eq!(wills.key("a"), "n-1.61");
        let (w, n) = (&wills.wills_bucket, &wills.nodes_bucket);
        assert_eq!((w.bucket.as_str(), n.bucket.as_str()), ("ACME_MOAT_WILLS", "ACME_MOAT_NODES"));
        assert_eq!((w.num_replicas, n.history), (3, 1));
    }
}
