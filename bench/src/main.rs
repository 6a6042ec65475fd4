//! `moat-bench`: a loopback-only MQTT load generator.
//!
//! It speaks MQTT 3.1.1 and 5.0 through its own small client (see
//! [`proto`] and [`client`]) so that it measures the broker and not a client
//! library, and so that it runs unchanged against Moat, Mosquitto or any
//! other broker. Each run is bounded in message count and in wall time, and
//! prints one JSON line. `bench/run` drives it; `BENCHMARKS.md` describes the
//! method.

mod client;
mod conn;
mod flow;
mod proto;
mod report;
mod retained;
mod scenarios;

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// N concurrent connections: connect rate and broker RSS per idle connection.
    Conn,
    /// P publishers to one wildcard (`#`) subscriber.
    Fanin,
    /// One publisher to S subscribers of the same topic.
    Fanout,
    /// N independent publisher/subscriber pairs.
    Pairs,
    /// One paced publisher to one subscriber: latency percentiles.
    Latency,
    /// R retained messages, then one `#` subscriber: time to receive them all.
    Retained,
}

impl Scenario {
    /// The name printed in results.
    pub fn name(self) -> &'static str {
        match self {
            Self::Conn => "conn",
            Self::Fanin => "fanin",
            Self::Fanout => "fanout",
            Self::Pairs => "pairs",
            Self::Latency => "latency",
            Self::Retained => "retained",
        }
    }
}

/// Command-line options (each scenario uses the ones that apply to it).
#[derive(Parser, Debug)]
#[command(version, about = "Loopback-only MQTT load generator for Moat benchmarks")]
pub struct Args {
    /// Scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Broker host: must resolve to loopback only (127.0.0.0/8 or ::1).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Port the subscribers of `fanin`, `fanout`, `pairs` and `latency`
    /// connect to, when not `--port`: another node of a cluster.
    #[arg(long)]
    pub sub_port: Option<u16>,
    /// Seconds to wait between the last SUBACK and the first publish (a
    /// cluster node subscribes on NATS after its SUBACK); in `conn`,
    /// between the last CONNACK and the RSS reading (at least half a
    /// second; longer shows quiet connections parked, Moat's
    /// `limits.park_after_s`).
    #[arg(long, default_value_t = 0.0)]
    pub settle: f64,
    /// MQTT version: 3 (3.1.1) or 5.
    #[arg(long, default_value_t = 5)]
    pub mqtt: u8,
    /// QoS of publishes and subscriptions: 0 or 1.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Messages published in total (default per scenario: fanin 200000,
    /// fanout 50000, pairs 200000, latency rate x time).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Publishing stops after this many seconds, whatever the count (for
    /// `latency`, whose length is messages / rate, it sets the default count).
    #[arg(long, default_value_t = 5.0)]
    pub time: f64,
    /// Seconds past the publishing bound (or the end of publishing, if later)
    /// to wait for outstanding deliveries and PUBACKs; what has not arrived
    /// by then counts as lost.
    #[arg(long, default_value_t = 2.0)]
    pub grace: f64,
    /// Payload size in bytes (at least 16: timestamp and sequence number).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Unacknowledged QoS 1 messages allowed per publisher.
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
    /// Publishers in `fanin`.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Subscribers in `fanout`.
    #[arg(long, default_value_t = 8)]
    pub subscribers: usize,
    /// Publisher/subscriber pairs in `pairs`.
    #[arg(long, default_value_t = 8)]
    pub pairs: usize,
    /// Messages per second in `latency`.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Connections in `conn`.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Connection attempts in flight at once in `conn`.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Client addresses the `conn` connections come from: 1 is the
    /// system's choice (127.0.0.1); K > 1 spreads them over 127.0.0.2 to
    /// 127.0.0.(K+1), each with its own ~28,000 ephemeral ports.
    #[arg(long, default_value_t = 1)]
    pub sources: usize,
    /// `conn` over TLS, trusting the CA certificates in this PEM file (the
    /// broker's certificate must name 127.0.0.1).
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// `conn` over TLS: every handshake a full one, no session resumed
    /// (by default the client resumes where the broker gave it a ticket).
    #[arg(long)]
    pub no_tls_resumption: bool,
    /// Keep alive of the `conn` connections, seconds (they send PINGREQ
    /// at this interval during `--hold`).
    #[arg(long, default_value_t = 600)]
    pub keep_alive: u16,
    /// Seconds the `conn` connections stay idle after the RSS is read,
    /// with the broker's CPU time over them reported (needs --broker-pid).
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
    /// `conn`: half the connections (every other one) have persistent
    /// sessions (MQTT 3.1.1 only), and after the hold all of them are
    /// dropped at once and reconnect with the same client ids, the
    /// reconnect storm a fleet makes after a network blip; its time,
    /// refusals and resumed sessions are reported.
    #[arg(long)]
    pub storm: bool,
    /// Retained messages in `retained`.
    #[arg(long, default_value_t = 10_000)]
    pub retained: u64,
    /// PID of the broker, to report its RSS and CPU time from /proc.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// `conn` with a broker (`--broker-pid`) running under valgrind's
    /// callgrind: its counters are zeroed before the connects and dumped
    /// after the settle (`callgrind_control -z`, `-d`), so the dump counts
    /// the instructions the connects cost the broker, whatever the load.
    #[arg(long)]
    pub callgrind: bool,
    /// Session Expiry Interval of the subscribers, in seconds; 0 (the
    /// default) is a clean session. Above 0 the subscribers' sessions are
    /// persistent, so a broker with a durable store stores every QoS 1
    /// message queued for them before acknowledging it.
    #[arg(long, default_value_t = 0)]
    pub session_expiry: u32,
    /// Subscribe as members of share groups named so
    /// (`$share/{NAME}/{filter}`): in `fanin`, `pairs` and `latency`,
    /// where each filter has one subscriber, every group has one member
    /// and gets every message, so the counts stay the same.
    #[arg(long)]
    pub share_group: Option<String>,
    /// Tokio worker threads of the load generator; 1 runs it on one
    /// thread (a current-thread runtime).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// Resolves the target and refuses anything that is not loopback.
fn loopback_addr(host: &str, port: u16) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().with_context(|| format!("resolving {host}"))?.collect();
    if addrs.is_empty() {
        bail!("{host} resolved to no address");
    }
    if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!("refusing non-loopback target {bad}: moat-bench only loads 127.0.0.0/8 or ::1");
    }
    Ok(addrs[0])
}

/// A prefix that keeps this run's topics apart from any other run's.
pub fn topic_prefix() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("moat-bench/{}-{nanos}", std::process::id())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.payload < 16 {
        bail!("--payload must be at least 16 bytes");
    }
    if !(args.time > 0.0 && args.grace >= 0.0 && args.rate > 0.0) {
        bail!("--time and --rate must be positive and --grace not negative");
    }
    let addr = loopback_addr(&args.host, args.port)?;
    let sub_addr = loopback_addr(&args.host, args.sub_port.unwrap_or(args.port))?;
    if !(args.hold >= 0.0 && args.hold.is_finite()) {
        bail!("--hold must be a number of seconds, not negative");
    }
    if !(args.settle >= 0.0 && args.settle.is_finite()) {
        bail!("--settle must be a number of seconds, not negative");
    }
    if args.share_group.is_some() && !matches!(args.scenario, Scenario::Fanin | Scenario::Pairs | Scenario::Latency) {
        bail!("--share-group applies to fanin, pairs and latency (one subscriber per filter)");
    }
    // One thread: everything on the calling thread, with no wake-ups
    // between threads (in `conn`, three futex calls per connect with two
    // workers, more of the load generator's CPU than its sockets).
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()?
    };
    // Hard bound on the whole run, whatever the broker does.
    // (The storm reconnects within another `--time`.)
    let storm = if args.storm { args.time } else { 0.0 };
    let limit = Duration::from_secs_f64(args.time * 2.0 + args.grace + args.settle + args.hold + storm + 30.0);
    runtime.block_on(async {
        tokio::time::timeout(limit, run(&args, addr, sub_addr))
            .await
            .with_context(|| format!("run exceeded its {limit:?} wall-time bound"))?
    })
}

async fn run(args: &Args, addr: SocketAddr, sub_addr: SocketAddr) -> Result<()> {
    let version = proto::Version::from_arg(args.mqtt)?;
    let report = match args.scenario {
        Scenario::Conn => conn::run(args, addr, version).await?,
        Scenario::Retained => retained::run(args, addr, version).await?,
        _ => scenarios::run_flow(args, addr, sub_addr, version).await?,
    };
    report.print();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_loopback() {
        assert!(loopback_addr("127.0.0.1", 1883).is_ok());
        assert!(loopback_addr("127.3.2.1", 1883).is_ok());
        assert!(loopback_addr("::1", 1883).is_ok());
        assert!(loopback_addr("10.0.0.1", 1883).is_err());
        assert!(loopback_addr("192.168.1.1", 1883).is_err());
        assert!(loopback_addr("8.8.8.8", 1883).is_err());
    }
}
