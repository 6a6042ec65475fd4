//! Result lines, latency percentiles and broker figures from `/proc`.

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

/// Linux clock ticks per second for `/proc/PID/stat` CPU times
/// (`sysconf(_SC_CLK_TCK)`, 100 on every mainstream Linux build).
const CLK_TCK: f64 = 100.0;

/// One result line under construction.
pub struct Report {
    fields: Map<String, Value>,
}

impl Report {
    /// Starts a line with the fields every scenario prints.
    pub fn new(scenario: &str, mqtt: u8, qos: u8, params: Value) -> Self {
        let mut fields = Map::new();
        fields.insert("scenario".into(), json!(scenario));
        fields.insert("mqtt".into(), json!(mqtt));
        fields.insert("qos".into(), json!(qos));
        fields.insert("params".into(), params);
        Self { fields }
    }

    /// Sets one field.
    pub fn set(&mut self, key: &str, value: Value) -> &mut Self {
        self.fields.insert(key.into(), value);
        self
    }

    /// Records counts and the rate of received messages.
    ///
    /// `lost` is `expected - received`, never negative.
    pub fn counts(&mut self, sent: u64, expected: u64, received: u64, duration_s: f64) {
        let rate = if duration_s > 0.0 { received as f64 / duration_s } else { 0.0 };
        self.set("sent", json!(sent));
        self.set("expected", json!(expected));
        self.set("received", json!(received));
        self.set("lost", json!(expected.saturating_sub(received)));
        self.set("duration_s", json!(round(duration_s, 4)));
        self.set("msgs_per_sec", json!(round(rate, 1)));
    }

    /// Prints the line as JSON on stdout.
    pub fn print(&self) {
        println!("{}", Value::Object(self.fields.clone()));
    }
}

/// Rounds to `digits` decimals for readable output.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Latency percentiles in microseconds from samples in nanoseconds.
pub fn percentiles(samples: &mut [u64]) -> Value {
    if samples.is_empty() {
        return Value::Null;
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        round(samples[i] as f64 / 1000.0, 1)
    };
    json!({
        "samples": samples.len(),
        "p50": at(0.50),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": at(1.0),
    })
}

/// A process (the broker, or this one) observed through `/proc`.
#[derive(Clone, Copy, Debug)]
pub struct Proc {
    pid: u32,
}

/// Figures read from `/proc/PID/status` and `/proc/PID/stat`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Peak resident set size, KiB.
    pub hwm_kib: u64,
    /// User plus system CPU time, seconds.
    pub cpu_s: f64,
    /// Of which in the kernel (system time), seconds.
    pub sys_s: f64,
    /// Time its live threads spent runnable but waiting for a CPU, seconds
    /// (from `/proc/PID/task/*/schedstat`): how much other load got in the way.
    pub wait_s: f64,
}

impl Proc {
    /// Watches the process `pid`.
    pub fn new(pid: u32) -> Self {
        Self { pid }
    }

    /// Watches the load generator itself.
    pub fn own() -> Self {
        Self::new(std::process::id())
    }

    /// Reads the current figures.
    pub fn sample(&self) -> Result<ProcSample> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .with_context(|| format!("reading /proc/{}/status", self.pid))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .with_context(|| format!("reading /proc/{}/stat", self.pid))?;
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 of the whole line, 12 and 13 after the name.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let times: Vec<u64> = after.split_whitespace().skip(11).take(2).filter_map(|n| n.parse().ok()).collect();
        let (ticks, sys): (u64, u64) = (times.iter().sum(), times.get(1).copied().unwrap_or(0));
        Ok(ProcSample {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
            cpu_s: ticks as f64 / CLK_TCK,
            sys_s: sys as f64 / CLK_TCK,
            wait_s: self.run_queue_wait() as f64 / 1e9,
        })
    }

    /// Sum of the second `schedstat` field (ns waiting on a run queue) over
    /// the live threads; 0 when the kernel does not provide it.
    fn run_queue_wait(&self) -> u64 {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return 0;
        };
        dir.filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()))
            .sum()
    }
}

/// Adds a process's memory and CPU use over a run to a report under `key`
/// (`broker`, or `client` for the load generator itself).
pub fn add_proc(report: &mut Report, key: &str, before: ProcSample, after: ProcSample) {
    report.set(
        key,
        json!({
            "rss_kib": after.rss_kib,
            "peak_rss_kib": after.hwm_kib,
            "cpu_s": round(after.cpu_s - before.cpu_s, 3),
            "sys_s": round(after.sys_s - before.sys_s, 3),
            "cpu_wait_s": round(after.wait_s - before.wait_s, 3),
        }),
    );
}

/// CPU and memory of the broker (when its PID is known) and of the load
/// generator, sampled at the start and at the end of the measured phase.
pub struct Usage {
    broker: Option<(Proc, ProcSample)>,
    client: ProcSample,
}

impl Usage {
    /// Takes the starting samples.
    pub fn start(broker_pid: Option<u32>) -> Result<Self> {
        let broker = match broker_pid {
            Some(pid) => {
                let p = Proc::new(pid);
                Some((p, p.sample()?))
            }
            None => None,
        };
        Ok(Self { broker, client: Proc::own().sample()? })
    }

    /// Takes the final samples, adds `broker` and `client` to the report and
    /// returns the broker's (start, end) samples.
    pub fn finish(&self, report: &mut Report) -> Result<Option<(ProcSample, ProcSample)>> {
        add_proc(report, "client", self.client, Proc::own().sample()?);
        let Some((p, before)) = self.broker else {
            return Ok(None);
        };
        let after = p.sample()?;
        add_proc(report, "broker", before, after);
        Ok(Some((before, after)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let mut v: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let p = percentiles(&mut v);
        assert_eq!(p["p50"], json!(500.0));
        assert_eq!(p["p99"], json!(990.0));
        assert_eq!(p["p999"], json!(999.0));
        assert_eq!(p["max"], json!(1000.0));
    }

    #[test]
    fn reads_own_process() -> Result<()> {
        let s = Proc::new(std::process::id()).sample()?;
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib && s.wait_s >= 0.0);
        Ok(())
    }
}
