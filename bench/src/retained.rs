//! The `retained` scenario: store R retained messages, then time one `#`
//! subscriber receiving them all.
//!
//! The messages go to R distinct topics under a per-run prefix. Before the
//! subscriber starts, the publisher makes sure the broker has handled every
//! publish (all PUBACKs at QoS 1, a PINGREQ round trip at QoS 0). The clock
//! runs from SUBSCRIBE to the last retained message. Afterwards the topics
//! are cleared with empty retained messages so that a long-lived broker is
//! left as it was.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use tokio::sync::watch;

use crate::client::{self, Client};
use crate::flow::{self, Clock, Progress, PubSpec, SubSpec};
use crate::proto::{self, Version};
use crate::report::{self, Report, Usage};
use crate::{Args, Scenario, topic_prefix};

/// Runs the `retained` scenario.
pub async fn run(args: &Args, addr: SocketAddr, v: Version) -> Result<Report> {
    let prefix = format!("{}/r", topic_prefix());
    let tag = std::process::id();
    let count = args.retained.max(1);
    let clock = Clock::new();
    let grace = Duration::from_secs_f64(args.grace);

    // 1. Store the retained messages.
    let publisher = Client::connect(addr, v, &format!("mb{tag}-rp")).await?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.time);
    let pub_start_ns = clock.now_ns();
    let spec = PubSpec {
        topic: prefix.clone(),
        qos: args.qos,
        retain: true,
        distinct_topics: true,
        count,
        payload: args.payload,
        window: args.inflight,
        rate: None,
        deadline,
        ack_deadline: deadline + grace,
        record_ack_latency: false,
    };
    let mut stored = flow::publish(publisher, spec, clock).await?;
    if let Some(reader) = stored.reader.as_mut() {
        tokio::time::timeout(grace, client::ping(reader, &mut stored.writer))
            .await
            .context("no PINGRESP after storing retained messages")??;
    }
    let sent = stored.sent;
    let store_s = stored.end_ns.saturating_sub(pub_start_ns) as f64 / 1e9;

    // 2. One subscriber to `prefix/#`, timed from SUBSCRIBE to the last message.
    let sub_client = Client::connect(addr, v, &format!("mb{tag}-rs")).await?;
    let usage = Usage::start(args.broker_pid)?;
    let progress = Arc::new(Progress::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let sub_start_ns = clock.now_ns();
    let sub = flow::spawn_subscriber(
        sub_client,
        SubSpec { filter: format!("{prefix}/#"), qos: args.qos, record_latency: false, expected: 0 },
        clock,
        Arc::clone(&progress),
        stop_rx,
    );
    let receive_deadline = Instant::now() + Duration::from_secs_f64(args.time) + grace;
    while progress.received.load(Ordering::Relaxed) < sent && Instant::now() < receive_deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut rep = Report::new(Scenario::Retained.name(), v.number(), args.qos, json!(null));
    if let Some((stored, _)) = usage.finish(&mut rep)? {
        // The broker's RSS with every message stored, before the subscribe
        // (`bench/retained` takes bytes per retained message from it).
        rep.set("stored_rss_kib", json!(stored.rss_kib));
    }
    let _ = stop_tx.send(true);
    let got = sub.task.await??;
    got.writer.disconnect().await;

    // 3. Clear the topics (QoS 0 empty retained messages, then a ping barrier).
    let mut cleaner = Client::connect(addr, v, &format!("mb{tag}-rc")).await?;
    for i in 0..sent {
        let topic = format!("{prefix}/{i}");
        proto::publish_header(&mut cleaner.writer.buf, v, topic.as_bytes(), 0, true, 0, 0);
        if cleaner.writer.buf.len() >= 64 * 1024 {
            cleaner.writer.flush().await?;
        }
    }
    tokio::time::timeout(grace, cleaner.ping()).await.context("no PINGRESP after clearing retained messages")??;
    cleaner.writer.disconnect().await;
    stored.writer.disconnect().await;

    let last = progress.last_rx_ns.load(Ordering::Relaxed);
    let duration_s = last.saturating_sub(sub_start_ns) as f64 / 1e9;
    let mut params = json!({"retained": count, "payload": args.payload});
    if args.qos > 0 {
        params["inflight"] = json!(args.inflight);
    }
    rep.set("params", params);
    rep.counts(sent, sent, got.received, duration_s);
    rep.set("store_s", json!(report::round(store_s, 4)));
    Ok(rep)
}
