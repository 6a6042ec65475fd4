//! Measures the cost of warm plugin calls through `Policy`: one authorize
//! (topic-prefix fixture), one authorize answered by an `AuthzCache`, and one
//! transform (payload-upper fixture, 64-byte payload).
//!
//! Run with `cargo run --release --example plugin_call [DIR]` (it builds the
//! fixture plugins first, in the dev profile; pass a directory holding
//! `topic_prefix.wasm` and `payload_upper.wasm` to measure other builds of
//! them, e.g. `plugins/target/wasm32-wasip2/release`). Not a test: it prints figures and each plugin's
//! counters. `PLUGIN_CALL_ITERATIONS=N` measures N calls per figure instead
//! of 200,000 (after N/10 warm-up calls), e.g. for a run under callgrind;
//! `PLUGIN_CALL_ONLY=NAME` measures only that figure (`authorize`, `bare`,
//! `cached`, `transform`, `bypass`), so two callgrind runs with different N
//! give one call's instructions by difference.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moat::auth::{Action, AuthzCache, ClientInfo, PluginMessage, Policy};
use moat::codec::{ProtocolVersion, QoS, TopicName};
use moat::plugin::fixtures::fixtures;
use moat::plugin::{PluginHost, PluginSettings};

/// Calls per figure unless `PLUGIN_CALL_ITERATIONS` says otherwise (fewer
/// make a run under callgrind affordable).
const ITERATIONS: u32 = 200_000;

fn iterations() -> u32 {
    std::env::var("PLUGIN_CALL_ITERATIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(ITERATIONS)
}

/// A current-thread runtime, as a connection task runs its calls: each
/// call is awaited where it is made.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let host = PluginHost::new()?;
    let prefix = PluginSettings::parse("[config]\nprefix = \"bench/\"\n")?;
    let upper = PluginSettings::parse("[config]\nfilters = [\"upper/#\"]\n")?;
    let (prefix_wasm, upper_wasm) = match std::env::args_os().nth(1).map(PathBuf::from) {
        Some(dir) => (dir.join("topic_prefix.wasm"), dir.join("payload_upper.wasm")),
        None => (fixtures()?.wasm("topic-prefix"), fixtures()?.wasm("payload-upper")),
    };
    println!("components: {} and {}", prefix_wasm.display(), upper_wasm.display());
    let policy = Policy::new(host.load(vec![(prefix_wasm, prefix), (upper_wasm, upper)])?);
    let client = ClientInfo {
        client_id: "bench-client".into(),
        username: Some("bench".into()),
        claimed_username: Some("bench".into()),
        peer_address: "127.0.0.1:40000".parse()?,
        listener: std::sync::Arc::new("tcp".to_owned()),
        protocol: ProtocolVersion::V5,
        tls: None,
        attributes: Default::default(),
    };

    let authorize = measure("authorize", async || {
        let v = policy.authorize(&client, Action::Publish, black_box("bench/sensor/1"), QoS::AtMostOnce, false).await;
        black_box(v);
    })
    .await;
    println!("warm authorize (wasm):   {:>8.0} ns/call", authorize);

    // The same question with empty strings: shows how much of a call is
    // copying the client record into the guest (one guest allocation per
    // non-empty string).
    let bare = ClientInfo { client_id: "".into(), listener: Default::default(), ..client.clone() };
    let bare_cost = measure("bare", async || {
        black_box(policy.authorize(&bare, Action::Publish, black_box("bench/1"), QoS::AtMostOnce, false).await);
    })
    .await;
    println!("authorize, bare client:  {:>8.0} ns/call", bare_cost);

    let mut cache = AuthzCache::new(1024);
    let cached = measure("cached", async || {
        let check = cache.check(&policy, &client, Action::Publish, black_box("bench/sensor/1"), QoS::AtMostOnce, false);
        black_box(check.await);
    })
    .await;
    println!("authorize, cache hit:    {:>8.0} ns/call", cached);

    let message =
        PluginMessage::new(TopicName::new("upper/sensor/1")?, Bytes::from(vec![b'a'; 64]), QoS::AtMostOnce, false);
    let transform = measure("transform", async || {
        black_box(policy.transform(&client, black_box(&message)).await);
    })
    .await;
    println!("warm transform (wasm):   {:>8.0} ns/call", transform);

    let bypass = measure("bypass", async || {
        black_box(policy.wants_transform(black_box("plain/sensor/1")));
    })
    .await;
    println!("wants_transform bypass:  {:>8.0} ns/call", bypass);
    // On a loaded machine a descheduled thread can miss the 10 ms wall-clock
    // deadline; such calls fail closed and show up here.
    for (name, stats) in policy.stats() {
        println!("{name}: {stats:?}");
    }
    Ok(())
}

/// Mean nanoseconds per call of `f`, after a warm-up; not a number when
/// `PLUGIN_CALL_ONLY` names another figure.
async fn measure(name: &str, mut f: impl AsyncFnMut()) -> f64 {
    if std::env::var("PLUGIN_CALL_ONLY").is_ok_and(|only| only != name) {
        return f64::NAN;
    }
    let iterations = iterations().max(1);
    for _ in 0..iterations / 10 {
        f().await;
    }
    let started = Instant::now();
    for _ in 0..iterations {
        f().await;
    }
    let elapsed: Duration = started.elapsed();
    elapsed.as_nanos() as f64 / f64::from(iterations)
}
