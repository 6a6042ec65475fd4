//! The message-flow scenarios: `fanin`, `fanout`, `pairs` and `latency`.
//!
//! All four are one shape: some subscribers, then some publishers, each
//! publisher's messages reaching a known number of subscribers. Expected
//! deliveries are `sum(sent by publisher x its receivers)`; whatever has not
//! arrived when every subscriber is done or the grace period is over counts
//! as lost. `latency` records delivery latency (payload timestamp to
//! receipt) and, at QoS 1, publish-to-PUBACK latency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use tokio::sync::watch;

use crate::client::{Client, READ_BUF};
use crate::flow::{self, Clock, Progress, PubSpec, SubSpec};
use crate::proto::Version;
use crate::report::{self, Report, Usage};
use crate::{Args, Scenario, topic_prefix};

/// One publisher of a plan: its topic, message count and receivers.
struct PlanPub {
    topic: String,
    count: u64,
    receivers: u64,
}

/// Who subscribes to what and who publishes what.
struct Plan {
    subs: Vec<String>,
    pubs: Vec<PlanPub>,
    rate: Option<f64>,
    params: serde_json::Value,
}

/// Splits `total` messages over `n` publishers.
fn split(total: u64, n: usize) -> Vec<u64> {
    let n = n.max(1) as u64;
    (0..n).map(|i| total / n + u64::from(i < total % n)).collect()
}

fn plan(args: &Args, prefix: &str) -> Plan {
    let one = |topic: String, count, receivers| PlanPub { topic, count, receivers };
    match args.scenario {
        Scenario::Fanin => {
            let total = args.messages.unwrap_or(200_000);
            let p = args.publishers.max(1);
            Plan {
                subs: vec![format!("{prefix}/#")],
                pubs: split(total, p)
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| one(format!("{prefix}/p{i}"), c, 1))
                    .collect(),
                rate: None,
                params: json!({"publishers": p, "subscribers": 1, "messages": total}),
            }
        }
        Scenario::Fanout => {
            let total = args.messages.unwrap_or(50_000);
            let s = args.subscribers.max(1);
            let topic = format!("{prefix}/t");
            Plan {
                subs: vec![topic.clone(); s],
                pubs: vec![one(topic, total, s as u64)],
                rate: None,
                params: json!({"publishers": 1, "subscribers": s, "messages": total}),
            }
        }
        Scenario::Pairs => {
            let total = args.messages.unwrap_or(200_000);
            let n = args.pairs.max(1);
            let topics: Vec<String> = (0..n).map(|i| format!("{prefix}/pair{i}")).collect();
            Plan {
                subs: topics.clone(),
                pubs: split(total, n).into_iter().zip(topics).map(|(c, t)| one(t, c, 1)).collect(),
                rate: None,
                params: json!({"pairs": n, "messages": total}),
            }
        }
        _ => {
            let total = args.messages.unwrap_or((args.rate * args.time).ceil() as u64);
            let topic = format!("{prefix}/lat");
            Plan {
                subs: vec![topic.clone()],
                pubs: vec![one(topic, total, 1)],
                rate: Some(args.rate),
                params: json!({"rate": args.rate, "messages": total}),
            }
        }
    }
}

/// Connects one client per id, all at once, with that session expiry.
pub async fn connect_all(addr: SocketAddr, v: Version, ids: Vec<String>, session_expiry: u32) -> Result<Vec<Client>> {
    let tasks: Vec<_> = ids
        .into_iter()
        .map(|id| tokio::spawn(async move { Client::connect_with(addr, v, &id, READ_BUF, session_expiry).await }))
        .collect();
    let mut clients = Vec::with_capacity(tasks.len());
    for t in tasks {
        clients.push(t.await??);
    }
    Ok(clients)
}

/// Runs `fanin`, `fanout`, `pairs` or `latency`: publishers on `addr`,
/// subscribers on `sub_addr`.
pub async fn run_flow(args: &Args, addr: SocketAddr, sub_addr: SocketAddr, v: Version) -> Result<Report> {
    let prefix = topic_prefix();
    let plan = plan(args, &prefix);
    let tag = std::process::id();
    let record_latency = args.scenario == Scenario::Latency;
    let expected_each = plan.pubs.iter().map(|p| p.count).sum::<u64>() as usize;

    let clock = Clock::new();
    let progress = Arc::new(Progress::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let sub_ids = (0..plan.subs.len()).map(|i| format!("mb{tag}-s{i}")).collect();
    let mut subs = Vec::new();
    for (client, filter) in connect_all(sub_addr, v, sub_ids, args.session_expiry).await?.into_iter().zip(&plan.subs) {
        let spec = SubSpec {
            filter: match &args.share_group {
                Some(group) => format!("$share/{group}/{filter}"),
                None => filter.clone(),
            },
            qos: args.qos,
            record_latency,
            expected: if record_latency { expected_each } else { 0 },
        };
        subs.push(flow::spawn_subscriber(client, spec, clock, Arc::clone(&progress), stop_rx.clone()));
    }
    let mut tasks = Vec::new();
    for s in &mut subs {
        let ready =
            tokio::time::timeout(Duration::from_secs(10), &mut s.ready).await.context("no SUBACK within 10 s")?;
        if ready.is_err() {
            // The task ended before its SUBACK: surface its error.
            (&mut s.task).await??;
            anyhow::bail!("subscriber ended before its SUBACK");
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let pub_ids = (0..plan.pubs.len()).map(|i| format!("mb{tag}-p{i}")).collect();
    let pub_clients = connect_all(addr, v, pub_ids, 0).await?;

    let usage = Usage::start(args.broker_pid)?;
    let start = Instant::now();
    let start_ns = clock.now_ns();
    let deadline = match plan.rate {
        // A paced run lasts count/rate; allow one extra second of slack.
        Some(rate) => start + Duration::from_secs_f64(expected_each as f64 / rate + 1.0),
        None => start + Duration::from_secs_f64(args.time),
    };
    let ack_deadline = deadline + Duration::from_secs_f64(args.grace);
    for (client, p) in pub_clients.into_iter().zip(&plan.pubs) {
        let spec = PubSpec {
            topic: p.topic.clone(),
            qos: args.qos,
            retain: false,
            distinct_topics: false,
            count: p.count,
            payload: args.payload,
            window: args.inflight,
            rate: plan.rate,
            deadline,
            ack_deadline,
            record_ack_latency: record_latency,
        };
        tasks.push(tokio::spawn(flow::publish(client, spec, clock)));
    }
    let mut sent = 0;
    let mut expected = 0;
    let mut acked = 0;
    let mut pub_end_ns = start_ns;
    let mut writers = Vec::new();
    let mut ack_latencies = Vec::new();
    for (t, p) in tasks.into_iter().zip(&plan.pubs) {
        let mut r = t.await??;
        ack_latencies.append(&mut r.ack_latencies);
        sent += r.sent;
        acked += r.acked;
        expected += r.sent * p.receivers;
        pub_end_ns = pub_end_ns.max(r.end_ns);
        writers.push(r.writer);
    }
    // Wait for deliveries: all expected, or the end of the publishing time
    // bound (or of publishing, if later) plus the grace period. At QoS 0 the
    // publishers finish as soon as the kernel buffers take their bytes, so a
    // broker working through a backlog keeps the whole `--time` for it.
    let drain_deadline = deadline.max(Instant::now()) + Duration::from_secs_f64(args.grace);
    while progress.received.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut rep = Report::new(args.scenario.name(), v.number(), args.qos, json!(null));
    usage.finish(&mut rep)?;
    let _ = stop_tx.send(true);
    let mut received = 0;
    let mut latencies = Vec::new();
    for s in subs {
        let r = s.task.await??;
        received += r.received;
        latencies.extend(r.latencies);
        writers.push(r.writer);
    }
    for w in writers {
        w.disconnect().await;
    }

    let last_rx = progress.last_rx_ns.load(Ordering::Relaxed);
    let end_ns = if received > 0 { last_rx } else { pub_end_ns };
    let duration_s = end_ns.saturating_sub(start_ns) as f64 / 1e9;
    let mut params = plan.params;
    params["payload"] = json!(args.payload);
    if args.qos > 0 {
        params["inflight"] = json!(args.inflight);
    }
    rep.set("params", params);
    rep.counts(sent, expected, received, duration_s);
    rep.set("publish_s", json!(report::round(pub_end_ns.saturating_sub(start_ns) as f64 / 1e9, 4)));
    if args.qos > 0 {
        rep.set("acked", json!(acked));
    }
    if record_latency {
        rep.set("latency_us", report::percentiles(&mut latencies));
        if args.qos > 0 {
            rep.set("ack_latency_us", report::percentiles(&mut ack_latencies));
        }
    }
    Ok(rep)
}
