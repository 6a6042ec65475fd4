//! The one wasmtime `Engine` of a broker, its epoch ticker and the `Linker`
//! every plugin is instantiated against.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use parking_lot::Mutex;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, EngineWeak};
use wasmtime_wasi::cli::{WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
use wasmtime_wasi::p2::bindings as wasi;
use wasmtime_wasi::random::{WasiRandom, WasiRandomView};
use wasmtime_wasi::sockets::{WasiSockets, WasiSocketsView};
use wasmtime_wasi_io::bindings::wasi::io;

use super::LoadError;
use super::bindings::{HostState, Plugin};
use super::cache::DiskCache;

/// How often the ticker bumps the engine's epoch. Deadlines are counted in
/// ticks, so this is their resolution: 1 ms keeps a 10 ms deadline within
/// 10–11 ms at the cost of one wake-up per millisecond.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// WASI interfaces a plugin may import, without version. They are linked to
/// a context that grants nothing beyond a plugin's `grants`: they exist
/// because guest languages' standard libraries import them at start-up
/// (CPython's imports the socket interfaces), not to grant anything. Every
/// socket is refused at run time (`access-denied`): the context allows no
/// TCP, no UDP, no name lookup and no address. Everything else — notably
/// `wasi:http/*` — is refused at load.
pub(crate) const WASI_INTERFACES: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/ip-name-lookup",
];

/// The WASI version family linked above (0.2.x; semver-compatible minors).
pub(crate) const WASI_VERSION_PREFIX: &str = "0.2.";

/// The plugin host: one `Engine` with the component model and epoch
/// interruption, one `Linker` with the host imports, and the epoch ticker.
///
/// Cheap to clone; every clone shares the engine. Create one per broker and
/// load every plugin set (including hot reloads) through it.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<HostInner>,
}

struct HostInner {
    engine: Engine,
    linker: Linker<HostState>,
    compiled: Mutex<CompiledCache>,
    disk: Option<DiskCache>,
    counts: Counts,
}

/// How each component a host loaded was obtained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompileCounts {
    /// Compiled from WebAssembly.
    pub compiled: u64,
    /// Reused from this host's memory (loaded before by this process).
    pub memory: u64,
    /// Read from the on-disk cache of compiled components.
    pub disk: u64,
    /// On-disk entries refused (not authenticated, a link, another owner's,
    /// damaged), deleted and compiled again instead.
    pub refused: u64,
}

/// [`CompileCounts`] as atomics.
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) compiled: AtomicU64,
    pub(crate) memory: AtomicU64,
    pub(crate) disk: AtomicU64,
    pub(crate) refused: AtomicU64,
}

/// Components already compiled by this host, keyed by the SHA-256 of their
/// bytes: a reload recompiles only changed files. Only the digest is kept,
/// not the bytes (an 18 MB CPython component would otherwise stay resident
/// twice). Touched only while loading, never on the call path.
pub(crate) type CompiledCache = HashMap<Digest, Component>;

/// The SHA-256 of a component's bytes.
pub(crate) type Digest = [u8; 32];

/// Most compiled components kept; past this the cache starts over.
pub(crate) const MAX_COMPILED: usize = 64;

impl PluginHost {
    /// Creates the engine, links the host imports and starts the epoch ticker
    /// thread, which stops by itself once the engine is dropped.
    ///
    /// # Errors
    /// [`LoadError::Engine`] if wasmtime rejects the configuration or the
    /// ticker thread cannot be spawned.
    pub fn new() -> Result<PluginHost, LoadError> {
        PluginHost::build(None)
    }

    /// Like [`PluginHost::new`], with compiled components also kept in
    /// `cache_dir` (created owner-only if missing), so another process or
    /// host with the same engine loads them without compiling. A directory
    /// that cannot be used or trusted (it or a parent owned by another user
    /// or writable by others) is logged and the host runs without it: a
    /// cache never keeps the broker from starting.
    ///
    /// # Errors
    /// As [`PluginHost::new`].
    pub fn with_disk_cache(cache_dir: &Path) -> Result<PluginHost, LoadError> {
        PluginHost::build(Some(cache_dir))
    }

    fn build(cache_dir: Option<&Path>) -> Result<PluginHost, LoadError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // Component-model concurrency costs ~3x per call (1.0–1.3 µs instead
        // of 0.4 µs for a warm authorize) and no plugin hook is async. Hooks
        // still run on fibers (`call_async`), which is what lets a guest
        // blocked in WASI be suspended and ended at its deadline.
        config.concurrency_support(false);
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(e.to_string()))?;
        let linker = link(&engine).map_err(|e| LoadError::Engine(e.to_string()))?;
        spawn_ticker(engine.weak())?;
        let compiled = Mutex::new(HashMap::new());
        let disk = cache_dir.and_then(|dir| match DiskCache::open(dir, &engine) {
            Ok(cache) => Some(cache),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), reason = %e, "compiled plugins will not be cached on disk");
                None
            }
        });
        let counts = Counts::default();
        Ok(PluginHost { inner: Arc::new(HostInner { engine, linker, compiled, disk, counts }) })
    }

    /// How many components this host compiled, and how many it found
    /// compiled already (in memory, on disk).
    pub fn compile_counts(&self) -> CompileCounts {
        let c = &self.inner.counts;
        CompileCounts {
            compiled: c.compiled.load(Ordering::Relaxed),
            memory: c.memory.load(Ordering::Relaxed),
            disk: c.disk.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
        }
    }

    /// The directory of compiled components, when the disk cache is on.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.inner.disk.as_ref().map(DiskCache::dir)
    }

    /// The on-disk cache, when on.
    pub(crate) fn disk(&self) -> Option<&DiskCache> {
        self.inner.disk.as_ref()
    }

    /// The compile counters.
    pub(crate) fn counts(&self) -> &Counts {
        &self.inner.counts
    }

    /// The shared engine.
    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The cache of compiled components.
    pub(crate) fn compiled(&self) -> &Mutex<CompiledCache> {
        &self.inner.compiled
    }

    /// The linker with the host imports and the allowed WASI interfaces.
    pub(crate) fn linker(&self) -> &Linker<HostState> {
        &self.inner.linker
    }
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost").finish_non_exhaustive()
    }
}

/// Bumps the epoch every [`EPOCH_TICK`] until the engine is gone. One thread
/// for the whole broker, like every wasmtime embedder that uses epochs.
fn spawn_ticker(engine: EngineWeak) -> Result<(), LoadError> {
    thread::Builder::new()
        .name("moat-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                thread::sleep(EPOCH_TICK);
            }
        })
        .map(drop)
        .map_err(|e| LoadError::Engine(format!("cannot start the epoch ticker: {e}")))
}

/// Links `moat:plugin/host` and, interface by interface, exactly the WASI
/// interfaces of [`WASI_INTERFACES`] — never `add_to_linker_sync`, which
/// would also link the socket interfaces.
fn link(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut l: Linker<HostState> = Linker::new(engine);
    Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut l, |s| s)?;

    let cli = <HostState as WasiCliView>::cli;
    wasi::cli::environment::add_to_linker::<HostState, WasiCli>(&mut l, cli)?;
    wasi::cli::exit::add_to_linker::<HostState, WasiCli>(&mut l, cli)?;
    wasi::cli::stdin::add_to_linker::<HostState, WasiCli>(&mut l, cli)?;
    wasi::cli::stdout::add_to_linker::<HostState, WasiCli>(&mut l, cli)?;
    wasi::cli::stderr::add_to_linker::<HostState, WasiCli>(&mut l, cli)?;
    wasi::cli::terminal_input::add_to_linker::<HostState, WasiCli>(&mut l, cli)?;
    wasi::cli::terminal_output::add_to_linker::<HostState, WasiCli>(&mut l, cli)?;
    wasi::cli::terminal_stdin::add_to_linker::<HostState, WasiCli>(&mut l, cli)?;
    wasi::cli::terminal_stdout::add_to_linker::<HostState, WasiCli>(&mut l, cli)?;
    wasi::cli::terminal_stderr::add_to_linker::<HostState, WasiCli>(&mut l, cli)?;

    let clocks = <HostState as WasiClocksView>::clocks;
    wasi::clocks::wall_clock::add_to_linker::<HostState, WasiClocks>(&mut l, clocks)?;
    wasi::clocks::monotonic_clock::add_to_linker::<HostState, WasiClocks>(&mut l, clocks)?;

    let random = <HostState as WasiRandomView>::random;
    wasi::random::random::add_to_linker::<HostState, WasiRandom>(&mut l, random)?;
    wasi::random::insecure::add_to_linker::<HostState, WasiRandom>(&mut l, random)?;
    wasi::random::insecure_seed::add_to_linker::<HostState, WasiRandom>(&mut l, random)?;

    // The asynchronous bindings throughout: a guest blocked in `poll` (a
    // sleep, a clock subscription) suspends its fiber, where the call's
    // deadline can end it, instead of blocking the thread.
    let table = HostState::table;
    io::error::add_to_linker::<HostState, HasTable>(&mut l, table)?;
    io::poll::add_to_linker::<HostState, HasTable>(&mut l, table)?;
    io::streams::add_to_linker::<HostState, HasTable>(&mut l, table)?;

    let fs = <HostState as WasiFilesystemView>::filesystem;
    wasi::filesystem::types::add_to_linker::<HostState, WasiFilesystem>(&mut l, fs)?;
    wasi::filesystem::preopens::add_to_linker::<HostState, WasiFilesystem>(&mut l, fs)?;

    // Linked so that standard libraries importing them load; the context
    // refuses every use (see `HostState::new`).
    let sockets = <HostState as WasiSocketsView>::sockets;
    let options = wasi::sockets::network::LinkOptions::default();
    wasi::sockets::network::add_to_linker::<HostState, WasiSockets>(&mut l, &options, sockets)?;
    wasi::sockets::instance_network::add_to_linker::<HostState, WasiSockets>(&mut l, sockets)?;
    wasi::sockets::tcp::add_to_linker::<HostState, WasiSockets>(&mut l, sockets)?;
    wasi::sockets::tcp_create_socket::add_to_linker::<HostState, WasiSockets>(&mut l, sockets)?;
    wasi::sockets::udp::add_to_linker::<HostState, WasiSockets>(&mut l, sockets)?;
    wasi::sockets::udp_create_socket::add_to_linker::<HostState, WasiSockets>(&mut l, sockets)?;
    wasi::sockets::ip_name_lookup::add_to_linker::<HostState, WasiSockets>(&mut l, sockets)?;
    Ok(l)
}

/// Projects the resource table out of the host state for the `wasi:io`
/// bindings.
struct HasTable;

impl wasmtime::component::HasData for HasTable {
    type Data<'a> = &'a mut wasmtime::component::ResourceTable;
}
