//! The generated `moat:plugin` bindings and the per-instance host state that
//! backs the host imports.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::settings::Grants;

wasmtime::component::bindgen!({
    path: "wit",
    world: "plugin",
});

pub(crate) use self::moat::plugin::types;
pub(crate) use exports::moat::plugin::{authn, authz, lifecycle, transform};

/// Longest log line a plugin may write; longer lines are cut so a plugin
/// cannot flood the broker's log with one call.
const MAX_LOG_LINE: usize = 1024;

/// Most table elements a plugin instance may have; tables hold function
/// references and a guest has no reason for more.
const MAX_TABLE_ELEMENTS: usize = 100_000;

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

/// What one instance's `Store` holds: its WASI context (empty: no files, no
/// network, no environment, no stdio), its resource table and its limits.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    plugin: Arc<str>,
    memory_cap: usize,
    /// Largest linear memory size reached, to retire an instance that has
    /// grown close to its cap before it fails a call.
    memory_high: usize,
}

impl HostState {
    /// A state for plugin `plugin` with a memory cap, granting only the
    /// directories in `grants`, read-only.
    ///
    /// # Errors
    /// When a granted directory cannot be opened (removed since load).
    pub(crate) fn new(plugin: Arc<str>, memory_cap: usize, grants: &Grants) -> Result<HostState> {
        // The builder's defaults are the sandbox: stdio goes nowhere, no
        // environment, no arguments, no preopened directories, and the socket
        // interfaces are not even linked.
        let mut wasi = WasiCtxBuilder::new();
        // Reads of granted files happen inline: they are small and rare
        // (configuration read by `init`), not worth a trip to a thread pool.
        wasi.allow_blocking_current_thread(true);
        for dir in &grants.read {
            let guest = dir.to_str().ok_or_else(|| wasmtime::format_err!("{} is not UTF-8", dir.display()))?;
            wasi.preopened_dir(dir, guest, FsPerms::ReadOnly)?;
        }
        Ok(HostState { wasi: wasi.build(), table: ResourceTable::new(), plugin, memory_cap, memory_high: 0 })
    }
}

impl HostState {
    /// Whether the instance has grown past three quarters of its memory
    /// cap: a guest that leaks would soon fail a call, so retire it first.
    pub(crate) fn near_memory_cap(&self) -> bool {
        self.memory_high > self.memory_cap / 4 * 3
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

impl ResourceLimiter for HostState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        if desired > self.memory_cap {
            // An error (not `Ok(false)`) traps at once with a cause we can
            // recognise, instead of letting the guest's allocator abort later.
            return Err(MemoryCapExceeded { desired, cap: self.memory_cap }.into());
        }
        self.memory_high = self.memory_high.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl self::moat::plugin::host::Host for HostState {
    fn log(&mut self, level: self::moat::plugin::host::Level, message: String) {
        use self::moat::plugin::host::Level;
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut end = MAX_LOG_LINE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let plugin = &*self.plugin;
        // A plugin may echo what a client sent (its id, its user name).
        let message = crate::untrusted::Untrusted(&message);
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

impl self::moat::plugin::types::Host for HostState {}
