//! The long runs behind README.md's "Under faults" table and
//! BENCHMARKS.md's "Partitions": ignored, run by hand.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;

use super::{Fault, Load, Timing, run};
use crate::cluster::Nats;

/// The table of README.md's cluster section: each fault `MOAT_PARTITION_RUNS`
/// times (default 3) at the load (100 messages a second each way
/// for 20 s, the fault from 5 s for 10 s), at QoS 1 and 2. Takes about
/// twenty minutes:
/// `MOAT_NATS_SERVER=.venv/bin/nats-server cargo test --test it partition_report -- --ignored --nocapture`
#[tokio::test]
#[ignore = "long: run by hand for README.md's cluster section"]
async fn partition_report() {
    let runs: usize = std::env::var("MOAT_PARTITION_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let timing = Timing { at: Duration::from_secs(5), length: Duration::from_secs(10) };
    let faults = [
        Fault::Blackhole,
        Fault::Reset,
        Fault::Delay(Duration::from_millis(200)),
        Fault::NatsRestart,
        Fault::KillDuringCut,
        Fault::LeaderCut,
    ];
    // `MOAT_PARTITION_FAULTS=reset,leader` and `MOAT_PARTITION_QOS=2` pick.
    let picked = |var: &str, name: &str| std::env::var(var).map_or(true, |list| list.split(',').any(|n| n == name));
    let mut rows = Vec::new();
    for fault in faults.into_iter().filter(|f| picked("MOAT_PARTITION_FAULTS", f.short_name())) {
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .filter(|q| picked("MOAT_PARTITION_QOS", &(*q as u8).to_string()))
        {
            let load = Load { qos, rate: 100, count: 2000 };
            let (mut acknowledged, mut lost, mut duplicated) = (0, 0, 0);
            for _ in 0..runs {
                let outcome = run(fault, load, timing).await;
                acknowledged += outcome.acknowledged();
                lost += outcome.lost();
                duplicated += outcome.duplicated();
            }
            rows.push(format!("| {fault} | {} | {acknowledged} | {lost} | {duplicated} | {runs} |", qos as u8));
        }
    }
    println!("| Fault | QoS | Acknowledged | Lost | Duplicated | Runs |\n|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}

/// What remembering message ids costs a NATS server: 200,000 JetStream
/// publishes to a stream that keeps one message, with and without a
/// `Nats-Msg-Id`, and the server's resident memory (`/varz` `mem`) before
/// and after each (BENCHMARKS.md, "Partitions"):
/// `MOAT_NATS_SERVER=.venv/bin/nats-server cargo test --test it jetstream_message_ids -- --ignored --nocapture`
#[tokio::test]
#[ignore = "measurement, run by hand for BENCHMARKS.md"]
async fn jetstream_message_ids_cost_server_memory_for_the_duplicate_window() {
    const N: usize = 200_000;
    let nats = Nats::start().await;
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    for (name, ids) in [("PLAIN", false), ("IDS", true)] {
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{name}.>")],
            max_messages: 1,
            ..Default::default()
        })
        .await
        .expect("stream");
        let before = nats.monitor("/varz").await["mem"].as_u64().expect("mem");
        let mut acks = Vec::with_capacity(1000);
        for i in 0..N {
            let mut headers = async_nats::HeaderMap::new();
            if ids {
                headers
                    .insert(async_nats::header::NATS_MESSAGE_ID, format!("moat-node-1.0123456789abcdef.{i}").as_str());
            }
            acks.push(js.publish_with_headers(format!("{name}.x"), headers, "x".into()).await.expect("publish"));
            if acks.len() == 1000 {
                for ack in acks.drain(..) {
                    ack.await.expect("stored");
                }
            }
        }
        for ack in acks.drain(..) {
            ack.await.expect("stored");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = nats.monitor("/varz").await["mem"].as_u64().expect("mem");
        let grown = after.saturating_sub(before);
        println!(
            "{name}: {N} publishes, server memory {before} -> {after} bytes (+{grown}, {} bytes each)",
            grown / N as u64
        );
    }
}
