//! The `conn` scenario: open N connections, then hold them idle.
//!
//! Reports the connect rate (CONNECT to CONNACK, `--concurrency` attempts in
//! flight) and, given `--broker-pid`, the broker's RSS growth per idle
//! connection: `(RSS with all connected and settled - RSS before) / N`.
//! A PINGREQ on every connection afterwards checks they are all alive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::Client;
use crate::proto::Version;
use crate::report::{self, Report, Usage};
use crate::{Args, Scenario};

/// Read buffer of each idle connection: they only ever see CONNACK and PINGRESP.
const IDLE_READ_BUF: usize = 512;
/// Time for the broker to settle before its idle RSS is read.
const SETTLE: Duration = Duration::from_millis(500);

/// Runs the `conn` scenario.
pub async fn run(args: &Args, addr: SocketAddr, v: Version) -> Result<Report> {
    let n = args.connections.max(1);
    let usage = Usage::start(args.broker_pid)?;
    let tag = std::process::id();
    let sem = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.time);
    let mut set = JoinSet::new();
    let mut attempted = 0u64;
    for i in 0..n {
        let permit = Arc::clone(&sem).acquire_owned().await?;
        if Instant::now() >= deadline {
            break;
        }
        attempted += 1;
        set.spawn(async move {
            let id = format!("mb{tag}-c{i}");
            let r = Client::connect_with(addr, v, &id, IDLE_READ_BUF, 0).await;
            drop(permit);
            r
        });
    }
    let mut clients = Vec::with_capacity(n);
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        match joined? {
            Ok(c) => clients.push(c),
            Err(e) => {
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let connect_s = start.elapsed().as_secs_f64();
    let connected = clients.len() as u64;

    tokio::time::sleep(SETTLE).await;
    let mut rep = Report::new(Scenario::Conn.name(), v.number(), 0, json!(null));
    let broker = usage.finish(&mut rep)?;

    let mut set = JoinSet::new();
    for mut c in clients {
        set.spawn(async move {
            let ok = tokio::time::timeout(Duration::from_secs(5), c.ping()).await;
            (matches!(ok, Ok(Ok(()))), c)
        });
    }
    let mut alive = 0u64;
    let mut writers = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (ok, c) = joined?;
        alive += u64::from(ok);
        writers.push(c.writer);
    }
    for w in writers {
        w.disconnect().await;
    }

    rep.set("params", json!({"connections": n, "concurrency": args.concurrency}));
    rep.counts(attempted, attempted, connected, connect_s);
    rep.set("conn_per_sec", json!(report::round(connected as f64 / connect_s, 1)));
    rep.set("alive_after_idle", json!(alive));
    if let Some(e) = first_error {
        rep.set("first_error", json!(e));
    }
    if let Some((b, i)) = broker {
        let grown = i.rss_kib.saturating_sub(b.rss_kib) * 1024;
        rep.set(
            "rss",
            json!({
                "before_kib": b.rss_kib,
                "idle_kib": i.rss_kib,
                "per_conn_bytes": grown.checked_div(connected).unwrap_or(0),
            }),
        );
    }
    Ok(rep)
}
