//! The `conn` scenario: open N connections, then hold them idle.
//!
//! Reports the connect rate (TCP connect, and the TLS handshake with
//! `--tls-ca`, to CONNACK, `--concurrency` attempts in flight) and, given
//! `--broker-pid`, the broker's RSS growth per idle connection:
//! `(RSS with all connected and settled - RSS before) / N`. With `--hold S`
//! the connections then stay idle for S seconds, each sending PINGREQ every
//! `--keep-alive` seconds, and the broker's CPU time over the hold is
//! reported. A PINGREQ on every connection at the end checks they are all
//! alive.
//!
//! One client address has about 28,000 ephemeral ports towards one broker
//! port; `--sources K` spreads the connections over 127.0.0.2 to
//! 127.0.0.(K+1) (all loopback) to get past that.
//!
//! With `--storm` every other connection has a persistent session (MQTT
//! 3.1.1, clean session 0), and after the hold all are dropped at once
//! (closed without DISCONNECT) and reconnect with the same client ids,
//! `--concurrency` in flight: the report's `storm` says how long that
//! took, how many were refused (by CONNACK code) or failed, and how many
//! persistent sessions were resumed (Session Present).
//!
//! With `--callgrind` (the broker under valgrind's callgrind) the broker's
//! counters are zeroed before the connects and dumped after the settle.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::proto::{self, FrameInfo, Version, kind};
use crate::report::{self, Proc, Report, Usage};
use crate::{Args, Scenario};

/// Time for the broker to settle before its idle RSS is read, at least
/// (`--settle` may ask for more).
const SETTLE: Duration = Duration::from_millis(500);
/// Time allowed for the TCP connect, TLS handshake and CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest packet an idle connection expects (CONNACK, PINGRESP).
const IDLE_PACKET: usize = 256;

/// Runs the `conn` scenario.
pub async fn run(args: &Args, addr: SocketAddr, v: Version) -> Result<Report> {
    let n = args.connections.max(1);
    let sources = source_addrs(args.sources)?;
    let tls = match &args.tls_ca {
        Some(ca) => Some(tls_connector(ca, !args.no_tls_resumption)?),
        None => None,
    };
    ensure!(!args.storm || v.number() == 3, "--storm runs MQTT 3.1.1 (--mqtt 3): its v5 CONNECT always starts clean");
    let callgrind = match (args.callgrind, args.broker_pid) {
        (true, Some(pid)) => Some(pid),
        (true, None) => bail!("--callgrind needs --broker-pid"),
        (false, _) => None,
    };
    if let Some(pid) = callgrind {
        callgrind_control(pid, "-z")?;
    }
    let usage = Usage::start(args.broker_pid)?;
    let plan = Plan {
        addr,
        sources,
        tls: tls.clone(),
        v,
        keep_alive: args.keep_alive,
        tag: std::process::id(),
        concurrency: args.concurrency.max(1),
        persistent_half: args.storm,
    };
    let start = Instant::now();
    let wave = plan.connect_all(n, start + Duration::from_secs_f64(args.time)).await?;
    let connect_s = start.elapsed().as_secs_f64();
    let (mut clients, attempted, first_error, tls_resumed) =
        (wave.clients, wave.attempted, wave.first_error, wave.tls_resumed);
    let connected = clients.len() as u64;

    tokio::time::sleep(SETTLE.max(Duration::from_secs_f64(args.settle))).await;
    let mut rep = Report::new(Scenario::Conn.name(), v.number(), 0, json!(null));
    let broker = usage.finish(&mut rep)?;
    if let Some(pid) = callgrind {
        callgrind_control(pid, "-d")?;
    }

    let hold = match (args.hold, args.broker_pid) {
        (hold, Some(pid)) if hold > 0.0 => {
            let (held, figures) = hold_idle(clients, Duration::from_secs_f64(hold), args.keep_alive, pid).await?;
            clients = held;
            Some(figures)
        }
        _ => None,
    };
    let storm = if args.storm {
        let (again, figures) = plan.storm(clients, Duration::from_secs_f64(args.time), args.broker_pid).await?;
        clients = again;
        Some(figures)
    } else {
        None
    };

    let mut set = JoinSet::new();
    for mut c in clients {
        set.spawn(async move {
            let ok = tokio::time::timeout(Duration::from_secs(5), c.ping()).await;
            (matches!(ok, Ok(Ok(()))), c)
        });
    }
    let mut alive = 0u64;
    let mut done = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (ok, c) = joined?;
        alive += u64::from(ok);
        done.push(c);
    }
    for c in done {
        c.disconnect().await;
    }

    let params = json!({
        "connections": n,
        "concurrency": args.concurrency,
        "sources": args.sources,
        "tls": tls.is_some(),
        "tls_resumption": tls.is_some() && !args.no_tls_resumption,
        "keep_alive_s": args.keep_alive,
    });
    rep.set("params", params);
    rep.counts(attempted, attempted, connected, connect_s);
    rep.set("conn_per_sec", json!(report::round(connected as f64 / connect_s, 1)));
    rep.set("alive_after_idle", json!(alive));
    if tls.is_some() {
        rep.set("tls_resumed", json!(tls_resumed));
    }
    if let Some(hold) = hold {
        rep.set("hold", hold);
    }
    if let Some(storm) = storm {
        rep.set("storm", storm);
    }
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

/// Runs `callgrind_control OP PID` (`-z` zeroes the broker's counters,
/// `-d` dumps them to its callgrind output file).
fn callgrind_control(pid: u32, op: &str) -> Result<()> {
    let status = std::process::Command::new("callgrind_control")
        .args([op, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running callgrind_control (valgrind)")?;
    ensure!(status.success(), "callgrind_control {op} {pid} failed: {status}");
    Ok(())
}

/// How the connections are made: where to, from where, and how.
struct Plan {
    addr: SocketAddr,
    sources: Option<Vec<IpAddr>>,
    tls: Option<tokio_rustls::TlsConnector>,
    v: Version,
    keep_alive: u16,
    /// Makes this run's client ids its own.
    tag: u32,
    concurrency: usize,
    /// Every other connection (even `i`) has a persistent session.
    persistent_half: bool,
}

/// What one wave of connects gave.
struct Wave {
    clients: Vec<Idle>,
    attempted: u64,
    first_error: Option<String>,
    /// CONNACK refusals by return code.
    refused: std::collections::BTreeMap<u8, u64>,
    /// Other failures (socket errors, timeouts).
    failed: u64,
    /// Connections whose CONNACK said Session Present.
    resumed: u64,
    /// TLS connections whose handshake resumed an earlier session.
    tls_resumed: u64,
}

impl Plan {
    /// Connects clients `0..n` (`concurrency` in flight), starting no
    /// attempt after `deadline`.
    async fn connect_all(&self, n: usize, deadline: Instant) -> Result<Wave> {
        let sem = Arc::new(Semaphore::new(self.concurrency));
        let mut set = JoinSet::new();
        let mut attempted = 0u64;
        for i in 0..n {
            let permit = Arc::clone(&sem).acquire_owned().await?;
            if Instant::now() >= deadline {
                break;
            }
            attempted += 1;
            let source = self.sources.as_ref().map(|s| s[i % s.len()]);
            let (tls, v, keep_alive, addr) = (self.tls.clone(), self.v, self.keep_alive, self.addr);
            let expiry = if self.persistent_half && i % 2 == 0 { 3600 } else { 0 };
            let id = format!("mb{}-c{i}", self.tag);
            set.spawn(async move {
                let r =
                    tokio::time::timeout(CONNECT_TIMEOUT, Idle::connect(addr, source, tls, v, &id, keep_alive, expiry))
                        .await;
                drop(permit);
                r.unwrap_or_else(|_| Err(Failure::Other(anyhow::anyhow!("connect timed out"))))
            });
        }
        let mut wave = Wave {
            clients: Vec::with_capacity(n),
            attempted,
            first_error: None,
            refused: Default::default(),
            failed: 0,
            resumed: 0,
            tls_resumed: 0,
        };
        while let Some(joined) = set.join_next().await {
            match joined? {
                Ok(c) => {
                    wave.resumed += u64::from(c.session_present);
                    wave.tls_resumed += u64::from(c.tls_resumed);
                    wave.clients.push(c.idle);
                }
                Err(e) => {
                    match &e {
                        Failure::Refused(code) => *wave.refused.entry(*code).or_default() += 1,
                        Failure::Other(_) => wave.failed += 1,
                    }
                    wave.first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        Ok(wave)
    }

    /// Drops every connection at once, then reconnects them all with the
    /// same client ids; reports the wave's time, refusals and resumed
    /// sessions, and the broker's CPU time over it.
    async fn storm(
        &self,
        clients: Vec<Idle>,
        within: Duration,
        pid: Option<u32>,
    ) -> Result<(Vec<Idle>, serde_json::Value)> {
        let n = clients.len();
        let broker = pid.map(Proc::new);
        let before = broker.as_ref().map(Proc::sample).transpose()?;
        // Closed without DISCONNECT, as a network failure leaves them:
        // the broker learns of each from the socket.
        drop(clients);
        let start = Instant::now();
        let wave = self.connect_all(n, start + within).await?;
        let took = start.elapsed().as_secs_f64();
        let cpu = match (&broker, before) {
            (Some(b), Some(before)) => Some(b.sample()?.cpu_s - before.cpu_s),
            _ => None,
        };
        let refused: serde_json::Map<String, serde_json::Value> =
            wave.refused.iter().map(|(code, count)| (code.to_string(), json!(count))).collect();
        let figures = json!({
            "connections": n,
            "reconnected": wave.clients.len(),
            "persistent": n.div_ceil(2),
            "resumed": wave.resumed,
            "refused": refused,
            "failed": wave.failed,
            "first_error": wave.first_error,
            "seconds": report::round(took, 3),
            "conn_per_sec": report::round(wave.clients.len() as f64 / took, 1),
            "broker_cpu_s": cpu.map(|c| report::round(c, 3)),
        });
        Ok((wave.clients, figures))
    }
}

/// Why a connect did not give a connection.
#[derive(Debug)]
enum Failure {
    /// The broker refused it in CONNACK with this code.
    Refused(u8),
    /// Anything else.
    Other(anyhow::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(code) => write!(f, "CONNACK refused the connection: code {code}"),
            Failure::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Other(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::Other(e.into())
    }
}

/// `None` for the default (the system picks 127.0.0.1), else `k` loopback
/// addresses from 127.0.0.2.
fn source_addrs(k: usize) -> Result<Option<Vec<IpAddr>>> {
    ensure!((1..=250).contains(&k), "--sources must be 1 to 250");
    if k == 1 {
        return Ok(None);
    }
    Ok(Some((0..k).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8))).collect()))
}

/// Keeps every connection idle for `hold`, each sending PINGREQ every
/// `keep_alive` seconds (spread over the interval, as a fleet's would be),
/// and reports the broker's CPU time over the hold.
async fn hold_idle(
    clients: Vec<Idle>,
    hold: Duration,
    keep_alive: u16,
    pid: u32,
) -> Result<(Vec<Idle>, serde_json::Value)> {
    let broker = Proc::new(pid);
    let before = broker.sample()?;
    let started = Instant::now();
    let interval = Duration::from_secs(u64::from(keep_alive.max(1)));
    let n = clients.len().max(1) as u32;
    let mut set = JoinSet::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let first = interval * i as u32 / n;
        set.spawn(async move {
            let mut at = started + first;
            let mut pings = 0u64;
            let mut failed = false;
            while at < started + hold {
                tokio::time::sleep_until(at.into()).await;
                if tokio::time::timeout(Duration::from_secs(5), c.ping()).await.map_or(true, |r| r.is_err()) {
                    failed = true;
                    break;
                }
                pings += 1;
                at += interval;
            }
            tokio::time::sleep_until((started + hold).into()).await;
            (c, pings, failed)
        });
    }
    let (mut clients, mut pings, mut failed) = (Vec::new(), 0u64, 0u64);
    while let Some(joined) = set.join_next().await {
        let (c, p, f) = joined?;
        clients.push(c);
        pings += p;
        failed += u64::from(f);
    }
    let after = broker.sample()?;
    let cpu = after.cpu_s - before.cpu_s;
    let held = started.elapsed().as_secs_f64();
    let figures = json!({
        "seconds": report::round(held, 2),
        "pings": pings,
        "ping_failures": failed,
        "broker_cpu_s": report::round(cpu, 3),
        "broker_cpu_percent": report::round(cpu / held * 100.0, 2),
        "broker_rss_kib": after.rss_kib,
    });
    Ok((clients, figures))
}

/// A TLS client configuration trusting the certificates in `ca` (PEM);
/// `resume`: keeps the broker's tickets and resumes with them (rustls's
/// default), else every handshake is a full one.
fn tls_connector(ca: &std::path::Path, resume: bool) -> Result<tokio_rustls::TlsConnector> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))? {
        roots.add(cert.with_context(|| format!("a certificate in {}", ca.display()))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The stream of an idle connection.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A connection made, and how.
struct Connected {
    idle: Idle,
    /// CONNACK's Session Present.
    session_present: bool,
    /// The TLS handshake resumed an earlier session.
    tls_resumed: bool,
}

/// One idle connection: it reads only CONNACK and PINGRESP, so a small
/// buffer and no split.
struct Idle {
    stream: Stream,
    buf: Vec<u8>,
}

impl Idle {
    async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
        tls: Option<tokio_rustls::TlsConnector>,
        v: Version,
        client_id: &str,
        keep_alive: u16,
        session_expiry: u32,
    ) -> Result<Connected, Failure> {
        let tcp = match source {
            None => TcpStream::connect(addr).await,
            Some(ip) => {
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(ip, 0)).with_context(|| format!("binding {ip}"))?;
                socket.connect(addr).await
            }
        }
        .with_context(|| format!("connecting to {addr}"))?;
        // TCP_NODELAY for TLS only: its handshake's last flight and
        // CONNECT go out back to back, which Nagle would hold. Plain MQTT
        // writes each packet whole and awaits its answer, so Nagle never
        // holds one back, and the call would cost every connect a system
        // call.
        if tls.is_some() {
            tcp.set_nodelay(true)?;
        }
        let stream = match tls {
            None => Stream::Tcp(tcp),
            Some(tls) => {
                let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
                Stream::Tls(Box::new(tls.connect(name, tcp).await.context("TLS handshake")?))
            }
        };
        let tls_resumed = match &stream {
            Stream::Tls(s) => s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            Stream::Tcp(_) => false,
        };
        let mut idle = Idle { stream, buf: Vec::with_capacity(IDLE_PACKET) };
        let mut out = Vec::with_capacity(64);
        proto::connect(&mut out, v, client_id, keep_alive, session_expiry);
        idle.write(&out).await?;
        let (first, body) = idle.recv().await?;
        if first >> 4 != kind::CONNACK {
            return Err(anyhow::anyhow!("expected CONNACK, got type {}", first >> 4).into());
        }
        let ack = proto::parse_connack(v, &body)?;
        if ack.code != 0 {
            return Err(Failure::Refused(ack.code));
        }
        Ok(Connected { idle, session_present: ack.session_present, tls_resumed })
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        match &mut self.stream {
            Stream::Tcp(s) => write_all(s, bytes).await,
            Stream::Tls(s) => write_all(s.as_mut(), bytes).await,
        }
    }

    /// The next packet's first byte and body.
    async fn recv(&mut self) -> Result<(u8, Vec<u8>)> {
        loop {
            if let Some(FrameInfo { first, body_start, end }) = proto::parse_frame(&self.buf)? {
                let body = self.buf[body_start..end].to_vec();
                self.buf.drain(..end);
                return Ok((first, body));
            }
            let mut chunk = [0u8; IDLE_PACKET];
            let n = match &mut self.stream {
                Stream::Tcp(s) => s.read(&mut chunk).await?,
                Stream::Tls(s) => s.read(&mut chunk).await?,
            };
            if n == 0 {
                bail!("connection closed by the broker");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends PINGREQ and waits for PINGRESP.
    async fn ping(&mut self) -> Result<()> {
        let mut out = Vec::with_capacity(2);
        proto::pingreq(&mut out);
        self.write(&out).await?;
        loop {
            let (first, _) = self.recv().await?;
            if first >> 4 == kind::PINGRESP {
                return Ok(());
            }
        }
    }

    /// Sends DISCONNECT and closes; errors are ignored (the run is over).
    async fn disconnect(mut self) {
        let mut out = Vec::with_capacity(2);
        proto::disconnect(&mut out);
        let _ = self.write(&out).await;
        let _ = match &mut self.stream {
            Stream::Tcp(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
        };
    }
}

async fn write_all<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await?;
    Ok(())
}
