//! The generated `moat:plugin` bindings and the per-instance host state that
//! backs the host imports.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::output::{Capture, GuestPipe, OutputLevel, PluginLog, Stream, Written};
use super::settings::Grants;

wasmtime::component::bindgen!({
    path: "wit",
    world: "plugin",
    // Hooks run on a fiber so that a guest blocked in an asynchronous WASI
    // call (a clock subscription, `poll`) suspends instead of blocking the
    // thread, and its deadline can end it.
    exports: { default: async },
});

pub(crate) use self::moat::plugin::types;
pub(crate) use exports::moat::plugin::{authn, authz, lifecycle, transform};

/// Most table elements a plugin instance may have in all its tables
/// together; tables hold function references and a guest has no reason for
/// more.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Most core instances, linear memories and tables one component instance
/// may create. The largest plugins we know (CPython built by
/// componentize-py) create a few dozen instances and a handful of memories
/// and tables; the caps only stop a component built to exhaust the host.
const MAX_INSTANCES: usize = 256;
const MAX_MEMORIES: usize = 32;
const MAX_TABLES: usize = 256;

/// The error an instance traps with when it tries to grow its memory past
/// its cap: a distinct type so the caller can count it as out-of-memory.
#[derive(Debug, thiserror::Error)]
#[error("plugin memory would grow to {desired} bytes, over its cap of {cap} bytes")]
pub(crate) struct MemoryCapExceeded {
    /// Requested linear memory size in bytes.
    pub desired: usize,
    /// The configured cap in bytes.
    pub cap: usize,
}

/// What one instance's `Store` holds: its WASI context (no files beyond
/// its grants, no network, no environment; stdout and stderr kept for the
/// log), its resource table and its limits.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    log: Arc<PluginLog>,
    /// What the guest wrote to stdout and stderr during the current call.
    capture: Arc<Capture>,
    /// Cap on the instance's linear memories together.
    memory_cap: usize,
    /// Bytes of linear memory the instance holds now, all memories summed.
    memory_now: usize,
    /// Table elements the instance holds now, all tables summed.
    table_elements: usize,
}

impl HostState {
    /// A state for an instance of the plugin that logs through `log`, with
    /// a memory cap, granting only the directories in `grants`, read-only.
    ///
    /// # Errors
    /// When a granted directory cannot be opened (removed since load).
    pub(crate) fn new(log: Arc<PluginLog>, memory_cap: usize, grants: &Grants) -> Result<HostState> {
        // The builder's defaults are the sandbox: no environment, no
        // arguments, no preopened directories, empty stdin, no network.
        // Output goes to the log.
        let mut wasi = WasiCtxBuilder::new();
        // The defaults already; said again because every socket a guest
        // opens must be refused whatever a later wasmtime defaults to.
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(std::future::ready(false)));
        let capture = Arc::new(Capture::default());
        wasi.stdout(GuestPipe::new(capture.clone(), Stream::Stdout));
        wasi.stderr(GuestPipe::new(capture.clone(), Stream::Stderr));
        // Reads of granted files happen inline: they are small and rare
        // (configuration read by `init`), not worth a trip to a thread pool.
        wasi.allow_blocking_current_thread(true);
        for dir in &grants.read {
            let guest = dir.to_str().ok_or_else(|| wasmtime::format_err!("{} is not UTF-8", dir.display()))?;
            wasi.preopened_dir(dir, guest, FsPerms::ReadOnly)?;
        }
        Ok(HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            log,
            capture,
            memory_cap,
            memory_now: 0,
            table_elements: 0,
        })
    }
}

impl HostState {
    /// Whether the instance has grown past three quarters of its memory
    /// cap: a guest that leaks would soon fail a call, so retire it first.
    pub(crate) fn near_memory_cap(&self) -> bool {
        self.memory_now > self.memory_cap / 4 * 3
    }

    /// Linear memory the instance holds, all memories summed.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.memory_now
    }

    /// What the guest wrote since the last call, if anything.
    pub(crate) fn take_output(&self) -> Option<Written> {
        self.capture.take()
    }

    /// The resource table, for the `wasi:io` bindings.
    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The caps hold for the instance as a whole: a component made of many
/// core modules cannot multiply its memory by creating more memories.
/// wasmtime asks here when a memory or table is created (from zero) and
/// each time one grows.
impl ResourceLimiter for HostState {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        let total = self.memory_now.saturating_sub(current).saturating_add(desired);
        if total > self.memory_cap {
            // An error (not `Ok(false)`) traps at once with a cause we can
            // recognise, instead of letting the guest's allocator abort later.
            return Err(MemoryCapExceeded { desired: total, cap: self.memory_cap }.into());
        }
        self.memory_now = total;
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        let total = self.table_elements.saturating_sub(current).saturating_add(desired);
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

impl self::moat::plugin::host::Host for HostState {
    /// Logs at the level the guest chose, within the plugin's output rate.
    fn log(&mut self, level: self::moat::plugin::host::Level, message: String) {
        use self::moat::plugin::host::Level;
        let level = match level {
            Level::Trace => OutputLevel::Trace,
            Level::Debug => OutputLevel::Debug,
            Level::Info => OutputLevel::Info,
            Level::Warn => OutputLevel::Warn,
            Level::Error => OutputLevel::Error,
        };
        self.log.host_line(level, &message);
    }

    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

impl self::moat::plugin::types::Host for HostState {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::OutputSettings;

    fn state(memory_cap: usize) -> HostState {
        let log = Arc::new(PluginLog::new("p".into(), OutputSettings::default(), Arc::default()));
        HostState::new(log, memory_cap, &Grants::default()).expect("a host state")
    }

    #[test]
    fn the_memory_cap_holds_for_all_memories_together() {
        let mut s = state(10 << 20);
        assert!(s.memory_growing(0, 6 << 20, None).expect("a first memory of 6 MiB"));
        assert!(s.memory_growing(0, 6 << 20, None).is_err(), "a second of 6 MiB makes 12 together");
        assert!(s.memory_growing(0, 4 << 20, None).expect("a second of 4 MiB fits"));
        assert!(s.memory_growing(6 << 20, 7 << 20, None).is_err(), "growing the first counts its growth");
        assert!(s.near_memory_cap(), "10 MiB of 10 is near the cap");
    }

    #[test]
    fn table_elements_count_across_tables() {
        let mut s = state(10 << 20);
        assert!(s.table_growing(0, MAX_TABLE_ELEMENTS - 10, None).expect("one table"));
        assert!(!s.table_growing(0, 11, None).expect("a second table past the total"));
        assert!(s.table_growing(0, 10, None).expect("one that fits"));
        assert_eq!((s.instances(), s.memories(), s.tables()), (MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES));
    }
}
