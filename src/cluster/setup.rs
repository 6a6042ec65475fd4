//! JetStream set-up shared by the cluster's parts: names, bucket
//! settings, and retrying while JetStream is away.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use tracing::{debug, warn};

use crate::broker::Node;
use crate::config::ClusterConfig;

/// The name of the JetStream stream or bucket `suffix` of the cluster
/// under subject `prefix`: `moat` gives `MOAT_{suffix}`.
pub(super) fn jetstream_name(prefix: &str, suffix: &str) -> String {
    format!("{}_{suffix}", prefix.replace('.', "_").to_uppercase())
}

/// A key-value bucket of one value per key, on file storage with the
/// configured replicas.
pub(super) fn bucket_config(config: &ClusterConfig, suffix: &str, description: &str) -> kv::Config {
    kv::Config {
        bucket: jetstream_name(&config.subject_prefix, suffix),
        description: description.to_owned(),
        history: 1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: config.replicas,
        ..kv::Config::default()
    }
}

/// Longest a node waits for one JetStream exchange made for a client that
/// connects or leaves (a claim, a consumer set up, a look at one), so that
/// JetStream being slow or away delays the client rather than stalls it.
pub(super) const JETSTREAM_WAIT: Duration = Duration::from_secs(3);

/// Longest wait between attempts to set up JetStream streams and buckets.
const SETUP_RETRY_MAX: Duration = Duration::from_secs(5);

/// The wait before the next attempt to set up JetStream after `failures`
/// failed ones: a quarter second more per failure, at most
/// [`SETUP_RETRY_MAX`].
pub(super) fn setup_retry_delay(failures: u32) -> Duration {
    Duration::from_millis(250 * u64::from(failures.min(20))).min(SETUP_RETRY_MAX)
}

/// Runs `attempt` until it succeeds, retrying while JetStream is away: the
/// first failure is logged at warn, naming `what` and saying what its
/// absence means (`without`), later ones at debug. `None` at shutdown.
pub(super) async fn set_up<T, F>(node: &Node, what: &str, without: &str, mut attempt: impl FnMut() -> F) -> Option<T>
where
    F: std::future::Future<Output = Result<T, async_nats::Error>>,
{
    let mut failures = 0u32;
    loop {
        match node.shutdown().run_until_cancelled(attempt()).await? {
            Ok(done) => return Some(done),
            Err(e) if failures == 0 => warn!(error = %e, "cluster: no JetStream {what}; {without}"),
            Err(e) => debug!(error = %e, "cluster: JetStream {what} still unavailable"),
        }
        failures = failures.saturating_add(1);
        node.shutdown().run_until_cancelled(tokio::time::sleep(setup_retry_delay(failures))).await?;
    }
}

/// Opens the key-value buckets of `configs`, creating those missing, and
/// retries while JetStream is away ([`set_up`]; `without` says what their
/// absence means). `None` at shutdown.
pub(super) async fn open_buckets<const N: usize>(
    client: &async_nats::Client,
    configs: [kv::Config; N],
    node: &Node,
    without: &str,
) -> Option<[kv::Store; N]> {
    let js = jetstream::new(client.clone());
    let names: Vec<_> = configs.iter().map(|c| c.bucket.as_str()).collect();
    let what = format!("buckets {}", names.join(", "));
    let buckets = set_up(node, &what, without, || async {
        let mut buckets = Vec::with_capacity(N);
        for config in &configs {
            let bucket = match js.get_key_value(config.bucket.as_str()).await {
                Ok(bucket) => bucket,
                Err(_) => js.create_key_value(config.clone()).await?,
            };
            buckets.push(bucket);
        }
        Ok(buckets)
    })
    .await?;
    buckets.try_into().ok()
}
