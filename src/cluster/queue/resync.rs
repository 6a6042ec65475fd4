//! What a node does for its kept sessions when its NATS connection comes
//! back (or JetStream answers again): consumers that could not follow a
//! session's subscriptions meanwhile are brought up to date before the
//! node stores anything more ([`Queue::consumers_current`]), feeders pull
//! again at once ([`Queue::connected`]), and sessions that could not be
//! kept meanwhile are kept once what this node published meanwhile is in
//! JetStream.
//!
//! Why that order: a session kept already skips the QoS 1/2 messages
//! published here (JetStream has them for it), so its consumer must
//! capture every subscription before those messages are stored. A
//! session not kept yet took them into its own queue instead, so its
//! consumer, which takes only messages stored after it is made, must be
//! made after they are stored, or it would get them twice.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tracing::{debug, info};

use super::Queue;
use crate::broker::Node;
use crate::cluster::Cluster;
use crate::session::Session;

/// How often lagging consumers are tried again while connected.
const RESYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Sessions brought up to date at once.
const CONCURRENT: usize = 16;

impl Queue {
    /// Brings lagging consumers up to date whenever the NATS connection
    /// is made again, and every [`RESYNC_INTERVAL`] while some lag, until
    /// shutdown.
    pub(in crate::cluster) async fn resync(
        self: Arc<Self>,
        client: async_nats::Client,
        store_wait: Duration,
        node: Node,
    ) {
        let mut connects = self.connects.subscribe();
        loop {
            let lagging = !self.lagging.lock().is_empty();
            let changed = async {
                if lagging {
                    tokio::select! {
                        changed = connects.changed() => changed.is_ok(),
                        () = tokio::time::sleep(RESYNC_INTERVAL) => false,
                    }
                } else {
                    connects.changed().await.is_ok()
                }
            };
            let Some(reconnected) = node.shutdown().run_until_cancelled(changed).await else { return };
            if client.connection_state() != async_nats::connection::State::Connected || self.stream().is_none() {
                continue;
            }
            // Kept sessions first: nothing is stored until they are done.
            let kept = self.lagging_sessions(true, &node);
            self.keep_all(kept, &node).await;
            let fresh = if reconnected {
                // What this node published while away goes to JetStream
                // now; sessions that queued it themselves are kept after.
                if let Some(barrier) = Cluster::plugged(node.replication()).and_then(Cluster::backlog) {
                    let waited = node.shutdown().run_until_cancelled(tokio::time::timeout(store_wait, barrier.wait()));
                    if waited.await.is_none() {
                        return;
                    }
                }
                let unkept: Vec<_> = node
                    .sessions()
                    .into_iter()
                    .filter(|s| {
                        let state = s.lock();
                        state.online && !state.kept() && state.expiry_s > 0
                    })
                    .collect();
                unkept
            } else {
                self.lagging_sessions(false, &node)
            };
            self.keep_all(fresh, &node).await;
        }
    }

    /// The sessions whose consumer lagged, kept already (`kept`) or not;
    /// forgets those that ended or left this node meanwhile.
    fn lagging_sessions(&self, kept: bool, node: &Node) -> Vec<Arc<Session>> {
        let ids: Vec<Arc<str>> =
            self.lagging.lock().iter().filter(|(_, lag)| lag.kept == kept).map(|(id, _)| id.clone()).collect();
        let mut sessions = Vec::with_capacity(ids.len());
        for id in ids {
            match node.session(&id) {
                Some(session) if session.lock().kept() == kept => sessions.push(session),
                _ => {
                    self.lagging.lock().remove(&id);
                }
            }
        }
        sessions
    }

    /// Keeps each of `sessions` as it is now (`Cluster::keep`), a few at a
    /// time.
    async fn keep_all(&self, sessions: Vec<Arc<Session>>, node: &Node) {
        if sessions.is_empty() {
            return;
        }
        let Some(cluster) = Cluster::plugged(node.replication()) else { return };
        let window = node.max_inflight();
        let count = sessions.len();
        futures_util::stream::iter(sessions)
            .for_each_concurrent(CONCURRENT, |session| async move {
                cluster.keep(&session, window, false).await;
            })
            .await;
        let left = self.lagging.lock().len();
        if left == 0 {
            info!(sessions = count, "cluster: kept sessions' consumers are up to date again");
        } else {
            debug!(sessions = count, left, "cluster: some kept sessions' consumers still lag");
        }
    }
}
