//! Publisher and subscriber loops shared by the message-flow scenarios.
//!
//! Publishers stamp each payload with the send time (nanoseconds since the
//! run's [`Clock`] base) and a sequence number, write in batches, and at
//! QoS 1 keep at most `window` messages unacknowledged and, when asked,
//! record one publish-to-PUBACK latency per message. Subscribers count what
//! arrives, acknowledge QoS 1 deliveries in batches and, when asked, record
//! one latency sample per message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;

use crate::client::{Client, Reader, Writer};
use crate::proto::{self, kind};

/// Bytes of encoded packets gathered before one socket write.
const WRITE_BATCH: usize = 64 * 1024;

/// The time base shared by all connections of one run.
#[derive(Clone, Copy)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    /// Starts a clock now.
    pub fn new() -> Self {
        Self { base: Instant::now() }
    }

    /// Nanoseconds since the clock started.
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

/// Counters that subscribers update once per read, for the coordinator.
#[derive(Default)]
pub struct Progress {
    /// Messages received by all subscribers.
    pub received: AtomicU64,
    /// Clock time of the latest read that carried a message.
    pub last_rx_ns: AtomicU64,
}

/// What one publisher sends.
pub struct PubSpec {
    /// Topic; with `distinct_topics`, the prefix of `topic/N`.
    pub topic: String,
    /// Publish QoS (0 or 1).
    pub qos: u8,
    /// Set the RETAIN flag.
    pub retain: bool,
    /// Publish to `topic/0`, `topic/1`, ... instead of one topic.
    pub distinct_topics: bool,
    /// Messages to send (the count bound).
    pub count: u64,
    /// Payload size in bytes (at least 16).
    pub payload: usize,
    /// Maximum unacknowledged messages at QoS 1.
    pub window: usize,
    /// Messages per second, or as fast as possible when `None`.
    pub rate: Option<f64>,
    /// Stop sending at this instant (the time bound).
    pub deadline: Instant,
    /// Give up waiting for PUBACKs at this instant.
    pub ack_deadline: Instant,
    /// At QoS 1, record the time from writing each PUBLISH to reading its
    /// PUBACK.
    pub record_ack_latency: bool,
}

/// Send times by packet id, and the publish-to-PUBACK samples, of one
/// publisher that records acknowledgement latency.
struct AckTimes {
    sent_ns: Vec<AtomicU64>,
    samples: Mutex<Vec<u64>>,
    clock: Clock,
}

/// What one publisher did.
pub struct PubResult {
    /// Messages written to the socket.
    pub sent: u64,
    /// Messages acknowledged (QoS 1), or `sent` at QoS 0.
    pub acked: u64,
    /// Clock time when the last message was written.
    pub end_ns: u64,
    /// The write half, to disconnect at the end of the run.
    pub writer: Writer,
    /// The read half at QoS 0 (at QoS 1 the PUBACK reader consumed it).
    pub reader: Option<Reader>,
    /// Publish-to-PUBACK samples in nanoseconds (empty unless recorded).
    pub ack_latencies: Vec<u64>,
}

/// Runs one publisher to completion.
pub async fn publish(client: Client, spec: PubSpec, clock: Clock) -> Result<PubResult> {
    let Client { reader, mut writer, version, receive_max } = client;
    let window = spec.window.clamp(1, usize::from(receive_max));
    let sem = Arc::new(Semaphore::new(window));
    let acked = Arc::new(AtomicU64::new(0));
    let times = (spec.qos > 0 && spec.record_ack_latency).then(|| {
        Arc::new(AckTimes {
            sent_ns: (0..=u16::MAX).map(|_| AtomicU64::new(0)).collect(),
            samples: Mutex::new(Vec::with_capacity(spec.count.min(1 << 20) as usize)),
            clock,
        })
    });
    let (ack_task, reader) = if spec.qos > 0 {
        let task = tokio::spawn(read_acks(reader, Arc::clone(&sem), Arc::clone(&acked), times.clone()));
        (Some(task), None)
    } else {
        (None, Some(reader))
    };

    let mut payload = vec![0u8; spec.payload.max(16)];
    let mut topic = spec.topic.clone().into_bytes();
    let base_len = topic.len();
    let msg_len = proto::publish_len(version, base_len + 8, spec.qos, payload.len());
    let batch_msgs = (WRITE_BATCH / msg_len).max(1) as u64;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut pkid = 0u16;
    while sent < spec.count {
        let now = Instant::now();
        if now >= spec.deadline {
            break;
        }
        let mut n = (spec.count - sent).min(batch_msgs);
        if let Some(rate) = spec.rate {
            let due = (((now - start).as_secs_f64() * rate) as u64 + 1).min(spec.count);
            if due <= sent {
                let next = start + Duration::from_secs_f64(sent as f64 / rate);
                tokio::time::sleep_until(next.min(spec.deadline).into()).await;
                continue;
            }
            n = n.min(due - sent);
        }
        if spec.qos > 0 {
            let mut held = 0;
            if sem.available_permits() == 0 {
                match tokio::time::timeout_at(spec.deadline.into(), sem.acquire()).await {
                    Ok(Ok(p)) => p.forget(),
                    _ => break,
                }
                held = 1;
            }
            let extra = sem.available_permits().min((n - held) as usize);
            if extra > 0 {
                sem.try_acquire_many(extra as u32)?.forget();
            }
            n = held + extra as u64;
        }
        let ts = clock.now_ns().to_le_bytes();
        payload[..8].copy_from_slice(&ts);
        for _ in 0..n {
            payload[8..16].copy_from_slice(&sent.to_le_bytes());
            if spec.distinct_topics {
                topic.truncate(base_len);
                topic.push(b'/');
                push_decimal(&mut topic, sent);
            }
            pkid = pkid % u16::MAX + 1;
            if let Some(times) = &times {
                times.sent_ns[usize::from(pkid)].store(u64::from_le_bytes(ts), Ordering::Relaxed);
            }
            let b = &mut writer.buf;
            proto::publish_header(b, version, &topic, spec.qos, spec.retain, pkid, payload.len());
            b.extend_from_slice(&payload);
            sent += 1;
        }
        writer.flush().await?;
    }
    let end_ns = clock.now_ns();
    let acked = match ack_task {
        None => sent,
        Some(task) => {
            let all = tokio::time::timeout_at(spec.ack_deadline.into(), sem.acquire_many(window as u32)).await;
            if task.is_finished() {
                // The PUBACK reader only ends on an error: report it.
                task.await??;
            } else {
                task.abort();
            }
            match all {
                Ok(Ok(_)) => sent,
                _ => acked.load(Ordering::Relaxed),
            }
        }
    };
    let ack_latencies = times.map(|t| std::mem::take(&mut *t.samples.lock().unwrap_or_else(|e| e.into_inner())));
    Ok(PubResult { sent, acked, end_ns, writer, reader, ack_latencies: ack_latencies.unwrap_or_default() })
}

/// Appends `n` in decimal without allocating.
fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Counts PUBACKs and returns their window permits; with `times`, records
/// each one's latency (read time of the batch minus its PUBLISH's send time).
async fn read_acks(
    mut reader: Reader,
    sem: Arc<Semaphore>,
    acked: Arc<AtomicU64>,
    times: Option<Arc<AckTimes>>,
) -> Result<()> {
    let mut batch = Vec::new();
    loop {
        let mut n = 0;
        let now = times.as_ref().map_or(0, |t| t.clock.now_ns());
        while let Some((first, body)) = reader.next_packet()? {
            match first >> 4 {
                kind::PUBACK => {
                    let (pkid, _) = proto::parse_puback(body)?;
                    if let Some(times) = &times {
                        let sent = times.sent_ns[usize::from(pkid)].load(Ordering::Relaxed);
                        batch.push(now.saturating_sub(sent));
                    }
                    n += 1;
                }
                kind::DISCONNECT => bail!("broker sent DISCONNECT to a publisher"),
                _ => {}
            }
        }
        if let Some(times) = times.as_ref().filter(|_| !batch.is_empty()) {
            times.samples.lock().unwrap_or_else(|e| e.into_inner()).append(&mut batch);
        }
        if n > 0 {
            acked.fetch_add(n as u64, Ordering::Relaxed);
            sem.add_permits(n);
        }
        if !reader.fill().await? {
            bail!("broker closed a publisher connection");
        }
    }
}

/// What one subscriber subscribes to.
pub struct SubSpec {
    /// Topic filter.
    pub filter: String,
    /// Maximum QoS requested.
    pub qos: u8,
    /// Record one latency sample per message (payload timestamp to read).
    pub record_latency: bool,
    /// Expected messages, to size the latency buffer.
    pub expected: usize,
}

/// What one subscriber received.
pub struct SubResult {
    /// Messages received.
    pub received: u64,
    /// Latency samples in nanoseconds (empty unless recorded).
    pub latencies: Vec<u64>,
    /// The write half, to disconnect at the end of the run.
    pub writer: Writer,
}

/// A running subscriber.
pub struct SubHandle {
    /// Resolves when the SUBACK has arrived.
    pub ready: oneshot::Receiver<()>,
    /// The subscriber task.
    pub task: JoinHandle<Result<SubResult>>,
}

/// Subscribes and receives until `stop` turns true.
pub fn spawn_subscriber(
    client: Client,
    spec: SubSpec,
    clock: Clock,
    progress: Arc<Progress>,
    stop: watch::Receiver<bool>,
) -> SubHandle {
    let (tx, ready) = oneshot::channel();
    let task = tokio::spawn(subscribe(client, spec, clock, progress, stop, tx));
    SubHandle { ready, task }
}

async fn subscribe(
    client: Client,
    spec: SubSpec,
    clock: Clock,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
    ready: oneshot::Sender<()>,
) -> Result<SubResult> {
    let Client { mut reader, mut writer, version, .. } = client;
    let mut ready = Some(ready);
    let mut latencies = Vec::with_capacity(if spec.record_latency { spec.expected } else { 0 });
    proto::subscribe(&mut writer.buf, version, 1, &spec.filter, spec.qos);
    writer.flush().await?;
    let mut received = 0u64;
    loop {
        let now = clock.now_ns();
        let mut n = 0u64;
        while let Some((first, body)) = reader.next_packet()? {
            match first >> 4 {
                kind::PUBLISH => {
                    let p = proto::parse_publish(version, first, body)?;
                    if p.qos > 0 {
                        proto::puback(&mut writer.buf, p.pkid);
                    }
                    if spec.record_latency && p.payload.len() >= 8 {
                        let mut ts = [0u8; 8];
                        ts.copy_from_slice(&p.payload[..8]);
                        latencies.push(now.saturating_sub(u64::from_le_bytes(ts)));
                    }
                    n += 1;
                }
                kind::SUBACK => {
                    let (_, code) = proto::parse_suback(version, body)?;
                    if code >= 0x80 {
                        bail!("subscription to {} refused: code 0x{code:02x}", spec.filter);
                    }
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                kind::DISCONNECT => bail!("broker sent DISCONNECT to a subscriber"),
                _ => {}
            }
        }
        if n > 0 {
            received += n;
            progress.received.fetch_add(n, Ordering::Relaxed);
            progress.last_rx_ns.fetch_max(now, Ordering::Relaxed);
        }
        writer.flush().await?;
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            more = reader.fill() => if !more? {
                bail!("broker closed a subscriber connection");
            },
        }
    }
    Ok(SubResult { received, latencies, writer })
}
