//! What a plugin writes to stdout and stderr (`println!`, Python's `print`,
//! JavaScript's `console.log`, a Rust panic message): kept per call by the
//! instance, then written to the broker's log tagged with the plugin and
//! the hook, at the level its settings name, within a per-plugin rate.
//!
//! Writing never blocks and never fails the call: the guest's streams are
//! always ready, and what does not fit the per-call buffer or the rate is
//! counted and dropped. When a call traps, what the guest wrote to stderr
//! (a panic message, a Python traceback's last line) becomes the cause the
//! failure reports instead of a line of its own.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use super::PluginStats;
use crate::untrusted::Untrusted;
use serde::Deserialize;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of each stream one call may leave for the log; the rest is
/// counted as dropped.
const MAX_CALL_BYTES: usize = 16 * 1024;

/// Longest line written to the log; longer lines are cut.
pub(crate) const MAX_LINE: usize = 1024;

/// The level a plugin's output is logged at, from its settings
/// (`[output] level`); `off` discards it (still counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputLevel {
    /// Discard the output.
    Off,
    /// `error`.
    Error,
    /// `warn`.
    Warn,
    /// `info` (the default).
    #[default]
    Info,
    /// `debug`.
    Debug,
    /// `trace`.
    Trace,
}

/// How much of a plugin's output reaches the log: its level and its rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputSettings {
    /// The level lines are logged at.
    pub level: OutputLevel,
    /// Most lines logged per second (output and `host.log` together).
    pub lines_per_s: u32,
    /// Most bytes logged per second.
    pub bytes_per_s: u32,
}

impl Default for OutputSettings {
    fn default() -> OutputSettings {
        OutputSettings { level: OutputLevel::Info, lines_per_s: 20, bytes_per_s: 8192 }
    }
}

/// Which standard stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// What one instance's guest wrote since the last call ended: shared
/// between the instance's WASI streams and the host, which takes it after
/// each call.
#[derive(Debug, Default)]
pub(crate) struct Capture {
    /// Set on every write, so the host looks at the buffers only after a
    /// call that wrote something (one relaxed load per call otherwise).
    any: AtomicBool,
    buffers: Mutex<Written>,
}

/// The bytes of one call, per stream.
#[derive(Debug, Default)]
pub(crate) struct Written {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Bytes beyond [`MAX_CALL_BYTES`], dropped.
    pub dropped: u64,
}

impl Capture {
    fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut written = self.buffers.lock();
        let buffer = match stream {
            Stream::Stdout => &mut written.stdout,
            Stream::Stderr => &mut written.stderr,
        };
        let room = MAX_CALL_BYTES.saturating_sub(buffer.len());
        let kept = bytes.len().min(room);
        buffer.extend_from_slice(&bytes[..kept]);
        written.dropped += (bytes.len() - kept) as u64;
        self.any.store(true, Ordering::Relaxed);
    }

    /// What was written since the last take, if anything.
    pub(crate) fn take(&self) -> Option<Written> {
        if !self.any.swap(false, Ordering::Relaxed) {
            return None;
        }
        Some(std::mem::take(&mut *self.buffers.lock()))
    }
}

/// A guest's stdout or stderr: appends to the instance's [`Capture`].
#[derive(Clone)]
pub(crate) struct GuestPipe {
    capture: Arc<Capture>,
    stream: Stream,
}

impl GuestPipe {
    pub(crate) fn new(capture: Arc<Capture>, stream: Stream) -> GuestPipe {
        GuestPipe { capture, stream }
    }
}

impl IsTerminal for GuestPipe {
    /// A terminal, so guest runtimes that buffer a pipe's output until exit
    /// (CPython's `print`) write each line as it is printed.
    fn is_terminal(&self) -> bool {
        true
    }
}

impl StdoutStream for GuestPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestPipe {
    /// Always ready: writing only appends to memory.
    async fn ready(&mut self) {}
}

impl OutputStream for GuestPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.capture.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_CALL_BYTES)
    }
}

impl tokio::io::AsyncWrite for GuestPipe {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.capture.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One plugin's way to the log: its settings, the rate window shared by
/// all its instances, and the count of what was dropped.
#[derive(Debug)]
pub(crate) struct PluginLog {
    plugin: Arc<str>,
    settings: OutputSettings,
    window: Mutex<Window>,
    /// Where lines logged and dropped are counted.
    stats: Arc<PluginStats>,
}

/// Lines and bytes logged in the current one-second window.
#[derive(Debug)]
struct Window {
    start: Instant,
    lines: u32,
    bytes: u32,
    /// Lines dropped in this window, reported when it ends.
    dropped: u64,
}

impl PluginLog {
    pub(crate) fn new(plugin: Arc<str>, settings: OutputSettings, stats: Arc<PluginStats>) -> PluginLog {
        let window = Window { start: Instant::now(), lines: 0, bytes: 0, dropped: 0 };
        PluginLog { plugin, settings, window: Mutex::new(window), stats }
    }

    /// Logs what a call wrote, line by line, `hook` naming the call. When
    /// `keep_stderr` is set (the call trapped), stderr is returned instead
    /// of logged, for the failure's cause.
    pub(crate) fn emit(&self, hook: &str, written: Written, keep_stderr: bool) -> Option<String> {
        if written.dropped > 0 {
            // Counted in lines, at a typical line's length.
            self.stats.output_dropped(written.dropped.div_ceil(80));
        }
        self.lines_of(hook, Stream::Stdout, &written.stdout);
        if keep_stderr {
            return guest_message(&written.stderr);
        }
        self.lines_of(hook, Stream::Stderr, &written.stderr);
        None
    }

    fn lines_of(&self, hook: &str, stream: Stream, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            self.line(hook, stream.name(), line, self.settings.level);
        }
    }

    /// A line from the `host.log` import, at the level the guest chose.
    pub(crate) fn host_line(&self, level: OutputLevel, line: &str) {
        self.line("log", "host.log", line, level);
    }

    fn line(&self, hook: &str, source: &str, line: &str, level: OutputLevel) {
        if level == OutputLevel::Off || !self.admit(line.len()) {
            self.stats.output_dropped(1);
            return;
        }
        self.stats.output_logged();
        let text = Untrusted(cut(line));
        let plugin = &*self.plugin;
        match level {
            OutputLevel::Off => {}
            OutputLevel::Error => tracing::error!(plugin, hook, source, "{text}"),
            OutputLevel::Warn => tracing::warn!(plugin, hook, source, "{text}"),
            OutputLevel::Info => tracing::info!(plugin, hook, source, "{text}"),
            OutputLevel::Debug => tracing::debug!(plugin, hook, source, "{text}"),
            OutputLevel::Trace => tracing::trace!(plugin, hook, source, "{text}"),
        }
    }

    /// Whether a line of `len` bytes fits this second's budget. The first
    /// line of a new window reports how many the last one dropped.
    fn admit(&self, len: usize) -> bool {
        let mut w = self.window.lock();
        let now = Instant::now();
        if now.duration_since(w.start) >= Duration::from_secs(1) {
            if w.dropped > 0 {
                tracing::warn!(
                    plugin = &*self.plugin,
                    dropped = w.dropped,
                    "plugin output over its rate; lines dropped"
                );
            }
            *w = Window { start: now, lines: 0, bytes: 0, dropped: 0 };
        }
        let len = u32::try_from(len.min(MAX_LINE)).unwrap_or(u32::MAX);
        if w.lines >= self.settings.lines_per_s || w.bytes.saturating_add(len) > self.settings.bytes_per_s {
            w.dropped += 1;
            return false;
        }
        w.lines += 1;
        w.bytes += len;
        true
    }
}

/// What a trapped guest said on stderr, as one line: a Rust panic's
/// location and message, the end of a Python traceback. `None` when it
/// said nothing.
fn guest_message(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let said: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE=1`"))
        .collect();
    // The end of the output says what went wrong (the panic message, the
    // exception); keep as much of it as fits one log line.
    let mut message = String::new();
    for line in said.iter().rev() {
        if message.len() + line.len() + 1 > MAX_LINE / 2 {
            break;
        }
        message = if message.is_empty() { (*line).to_owned() } else { format!("{line} {message}") };
    }
    // Escaped here: the cause is logged and shown by `moat plugin check`.
    let message = Untrusted(message.trim_start_matches("thread '<unnamed>' ")).to_string();
    (!message.is_empty()).then_some(message)
}

/// `line` cut to at most [`MAX_LINE`] bytes, on a character boundary.
fn cut(line: &str) -> &str {
    let mut end = line.len().min(MAX_LINE);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rust_panic_reads_as_its_message() {
        let stderr = b"\nthread '<unnamed>' panicked at src/lib.rs:16:5:\nhostile guest panics on purpose\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            guest_message(stderr).as_deref(),
            Some("panicked at src/lib.rs:16:5: hostile guest panics on purpose")
        );
        assert_eq!(guest_message(b"\n  \n"), None);
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary() {
        assert_eq!(cut(&"x".repeat(5000)).len(), MAX_LINE);
        let wide = "é".repeat(MAX_LINE);
        assert!(cut(&wide).len() <= MAX_LINE && cut(&wide).chars().all(|c| c == 'é'));
    }

    #[test]
    fn the_rate_drops_and_counts_what_is_over() {
        let stats = Arc::new(PluginStats::default());
        let settings = OutputSettings { level: OutputLevel::Info, lines_per_s: 3, bytes_per_s: 1000 };
        let log = PluginLog::new("p".into(), settings, stats.clone());
        let written = Written { stdout: b"a\nb\nc\nd\ne\n".to_vec(), stderr: Vec::new(), dropped: 0 };
        log.emit("authorize", written, false);
        let s = stats.snapshot();
        assert_eq!((s.output_lines, s.output_dropped), (3, 2));
    }

    #[test]
    fn a_call_keeps_at_most_its_share_of_output() {
        let capture = Capture::default();
        capture.write(Stream::Stdout, &vec![b'x'; MAX_CALL_BYTES + 10]);
        let written = capture.take().expect("written");
        assert_eq!((written.stdout.len(), written.dropped), (MAX_CALL_BYTES, 10));
        assert!(capture.take().is_none(), "taken once");
    }
}
