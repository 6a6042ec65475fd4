//! `[cluster]`: nodes exchanging publishes over NATS.

use serde::Deserialize;

/// Clustering over NATS (`[cluster]`): nodes exchange publishes through
/// the NATS servers listed in `nats`.
///
/// ```toml
/// [cluster]
/// nats = ["nats://10.0.0.5:4222", "nats://10.0.0.6:4222"]
/// node_id = "moat-1"             # default: random at each start
/// subject_prefix = "moat"        # NATS subjects are `moat.t.<topic levels>`
/// node_timeout_s = 15            # silent this long: dead, its clients' wills go out
/// redelivery_s = 30              # a kept message unacknowledged this long is sent again
/// store_timeout_s = 30           # a QoS 1/2 publisher waits this long for JetStream, then is disconnected
/// replicas = 1                  # of the JetStream streams and buckets Moat creates
/// wire_format = "split"          # "payload" or "headers" while upgrading a cluster (README)
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:port` or `tls://host:port`); the
    /// client connects to one and fails over to the others.
    pub nats: Vec<String>,
    /// This node's name in the cluster, unique among the nodes; unset, a
    /// random one is made at start-up.
    #[serde(default)]
    pub node_id: Option<String>,
    /// First subject token(s) of every NATS subject Moat uses, so several
    /// clusters can share one NATS deployment.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// Seconds without a heartbeat after which the other nodes count a
    /// node as dead and publish the wills of the clients it had.
    #[serde(default = "default_node_timeout_s")]
    pub node_timeout_s: u32,
    /// Seconds JetStream waits for a client to acknowledge a message it
    /// keeps for a persistent session before delivering it again: also
    /// how long the messages a dead node had sent its clients, unacknowledged,
    /// take to reach them again through another node.
    #[serde(default = "default_redelivery_s")]
    pub redelivery_s: u32,
    /// Seconds a QoS 1/2 publisher's PUBACK/PUBREC may wait for JetStream
    /// to store its message while a session is kept somewhere (NATS away,
    /// JetStream electing a leader); past it the client is disconnected
    /// without the acknowledgement, so it publishes again.
    #[serde(default = "default_store_timeout_s")]
    pub store_timeout_s: u32,
    /// Replicas of the JetStream streams and buckets a node creates when
    /// they do not exist yet (retained messages, session owners, wills,
    /// heartbeats): 1 for a single JetStream server, 3 for a cluster of
    /// three that should survive losing one.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// How a node sends messages to the others. Every node reads all
    /// formats; older nodes read only what they send themselves, so a
    /// cluster with such nodes is upgraded sending their format, then
    /// switched to `split` (README, Clustering).
    #[serde(default)]
    pub wire_format: WireFormat,
}

/// `cluster.wire_format`: how a message travels between nodes — where
/// its envelope (origin node, publisher, QoS, expiry, properties) goes,
/// and on which subjects. Every node reads all three.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireFormat {
    /// As `Payload`, with QoS 0 messages on subjects JetStream's queue
    /// stream does not capture, so nats-server does not sequence them
    /// (issue 25).
    #[default]
    Split,
    /// In front of the payload, every message on the stream's subjects:
    /// what nodes before `split` send, and all they subscribe to.
    Payload,
    /// In NATS headers, as nodes before the payload format sent it.
    Headers,
}

fn default_replicas() -> usize {
    1
}

/// The `cluster.node_timeout_s` when not set.
pub const DEFAULT_NODE_TIMEOUT_S: u32 = 15;

fn default_node_timeout_s() -> u32 {
    DEFAULT_NODE_TIMEOUT_S
}

/// The `cluster.redelivery_s` when not set.
pub const DEFAULT_REDELIVERY_S: u32 = 30;

fn default_redelivery_s() -> u32 {
    DEFAULT_REDELIVERY_S
}

/// The `cluster.store_timeout_s` when not set.
pub const DEFAULT_STORE_TIMEOUT_S: u32 = 30;

fn default_store_timeout_s() -> u32 {
    DEFAULT_STORE_TIMEOUT_S
}

/// The `cluster.subject_prefix` when not set.
pub const DEFAULT_SUBJECT_PREFIX: &str = "moat";

fn default_subject_prefix() -> String {
    DEFAULT_SUBJECT_PREFIX.to_owned()
}

/// Characters of a node id and of a subject prefix token: safe in any NATS
/// subject, queue group and log line.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

impl ClusterConfig {
    /// A cluster on the NATS servers `nats`, everything else by default.
    pub fn new(nats: Vec<String>) -> ClusterConfig {
        ClusterConfig {
            nats,
            node_id: None,
            subject_prefix: default_subject_prefix(),
            node_timeout_s: DEFAULT_NODE_TIMEOUT_S,
            redelivery_s: DEFAULT_REDELIVERY_S,
            store_timeout_s: DEFAULT_STORE_TIMEOUT_S,
            replicas: default_replicas(),
            wire_format: WireFormat::default(),
        }
    }

    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if cfg!(not(feature = "cluster")) {
            return Err(("cluster".into(), "this moat was built without the `cluster` feature".into()));
        }
        if self.nats.is_empty() {
            return Err(("cluster.nats".into(), "needs at least one NATS server URL".into()));
        }
        for (i, url) in self.nats.iter().enumerate() {
            let rest = url.strip_prefix("nats://").or_else(|| url.strip_prefix("tls://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                return Err((format!("cluster.nats[{i}]"), format!("{url:?} is not a nats:// or tls:// URL")));
            }
        }
        if let Some(id) = &self.node_id
            && (id.is_empty() || id.len() > 64 || !id.chars().all(is_name_char))
        {
            return Err(("cluster.node_id".into(), "must be 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'".into()));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(("cluster.replicas".into(), "must be 1 to 5 (JetStream's limit)".into()));
        }
        if !(1..=3600).contains(&self.node_timeout_s) {
            return Err(("cluster.node_timeout_s".into(), "must be 1 to 3600 seconds".into()));
        }
        if !(1..=3600).contains(&self.redelivery_s) {
            return Err(("cluster.redelivery_s".into(), "must be 1 to 3600 seconds".into()));
        }
        if !(1..=3600).contains(&self.store_timeout_s) {
            return Err(("cluster.store_timeout_s".into(), "must be 1 to 3600 seconds".into()));
        }
        let prefix = &self.subject_prefix;
        if prefix.split('.').any(|t| t.is_empty() || !t.chars().all(is_name_char)) {
            return Err((
                "cluster.subject_prefix".into(),
                "must be dot-separated tokens of A-Z, a-z, 0-9, '-' and '_'".into(),
            ));
        }
        Ok(())
    }
}
