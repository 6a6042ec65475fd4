//! QoS 1 publish throughput into an offline persistent session, by store
//! durability: `sync`, `periodic`, `none` (on disk, never synced) and the
//! in-memory store. Not a test: run it and read the figures.
//!
//! ```text
//! cargo run --example durable_throughput -- [messages] [window]
//! ```
//!
//! One publisher pipelines QoS 1 PUBLISHes with at most `window` awaiting
//! PUBACK into one persistent session (Clean Session 0), which is first
//! offline (every message is queued for it and, with a disk store, stored),
//! then connected and acknowledging (every message is stored when queued
//! and deleted on its PUBACK). Reports msgs/s and the p50/p99
//! publish-to-PUBACK latency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moat::Server;
use moat::config::{Config, ListenerConfig};
use moat::store::{DiskStore, Durability, MemoryStore, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let messages: u32 = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let window: u32 = args.next().map_or(Ok(64), |a| a.parse())?;
    println!("{messages} QoS 1 messages of 64 bytes, window {window}, into one persistent session");
    println!("{:<22} {:<8} {:>10} {:>10} {:>10}", "store", "session", "msgs/s", "p50 ms", "p99 ms");
    let modes = [
        ("disk, sync", Some(Durability::Sync)),
        ("disk, periodic 1000ms", Some(Durability::Periodic(Duration::from_secs(1)))),
        ("disk, none", Some(Durability::None)),
        ("memory", None),
    ];
    for online in [false, true] {
        for (name, mode) in modes {
            let dir = tempfile::tempdir()?;
            let store: Arc<dyn Store> = match mode {
                Some(mode) => Arc::new(DiskStore::open(&dir.path().join("store"), mode)?),
                None => Arc::new(MemoryStore::default()),
            };
            let (rate, p50, p99) = run(store, messages, window, online).await?;
            let session = if online { "online" } else { "offline" };
            println!("{name:<22} {session:<8} {rate:>10.0} {p50:>10.2} {p99:>10.2}");
        }
    }
    Ok(())
}

async fn run(store: Arc<dyn Store>, messages: u32, window: u32, online: bool) -> anyhow::Result<(f64, f64, f64)> {
    let mut config = Config {
        listeners: vec![ListenerConfig::tcp("bench", SocketAddr::from(([127, 0, 0, 1], 0)))],
        ..Config::default()
    };
    config.limits.max_queued_messages = usize::try_from(messages)? + 10;
    let server = Server::bind_with_store(config, store).await?;
    let addr = server.local_addrs()[0].1;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let mut sub = connect(addr, "bench-sub", false).await?;
    sub.write_all(&frame(0x82, &[0, 1, 0, 3, b'b', b'/', b'#', 1])).await?;
    read_packet(&mut sub).await?;
    let consumer = if online {
        // Acknowledges every PUBLISH, so each stored message is deleted.
        Some(tokio::spawn(async move {
            for _ in 0..messages {
                let (_, body) = read_packet(&mut sub).await?;
                let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                sub.write_all(&[0x40, 2, body[2 + topic_len], body[3 + topic_len]]).await?;
            }
            anyhow::Ok(())
        }))
    } else {
        sub.write_all(&[0xe0, 0]).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        None
    };

    let publisher = connect(addr, "bench-pub", true).await?;
    let (mut rd, mut wr) = publisher.into_split();
    // PUBACKs come back in order, so the oldest send time is the one acked.
    let sent_at = Arc::new(parking_lot::Mutex::new(std::collections::VecDeque::<Instant>::new()));
    let (credit_tx, mut credit_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let times = sent_at.clone();
    let reader = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(usize::try_from(messages).unwrap_or(0));
        for _ in 0..messages {
            read_packet(&mut rd).await?;
            if let Some(at) = times.lock().pop_front() {
                latencies.push(at.elapsed());
            }
            let _ = credit_tx.send(());
        }
        anyhow::Ok(latencies)
    });
    let start = Instant::now();
    let payload = [b'x'; 64];
    for i in 0..messages {
        if i >= window {
            credit_rx.recv().await;
        }
        let id = u16::try_from(i % 65_535 + 1)?;
        let mut body = vec![0, 3, b'b', b'/', b'x'];
        body.extend(id.to_be_bytes());
        body.extend(payload);
        sent_at.lock().push_back(Instant::now());
        wr.write_all(&frame(0x32, &body)).await?;
    }
    let mut latencies = reader.await??;
    let elapsed = start.elapsed();
    if let Some(consumer) = consumer {
        consumer.await??;
    }
    let _ = stop.send(());
    let _ = task.await;
    latencies.sort();
    let pct = |p: usize| latencies.get(latencies.len() * p / 100).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    Ok((f64::from(messages) / elapsed.as_secs_f64(), pct(50), pct(99)))
}

async fn connect(addr: SocketAddr, id: &str, clean: bool) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, if clean { 0x02 } else { 0 }, 0, 60];
    body.extend(u16::try_from(id.len())?.to_be_bytes());
    body.extend(id.as_bytes());
    stream.write_all(&frame(0x10, &body)).await?;
    read_packet(&mut stream).await?;
    Ok(stream)
}

async fn read_packet(stream: &mut (impl AsyncReadExt + Unpin)) -> anyhow::Result<(u8, Vec<u8>)> {
    let first = stream.read_u8().await?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = stream.read_u8().await?;
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await?;
    Ok((first, body))
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = u8::try_from(len % 128).unwrap_or(0);
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}
