//! The WebAssembly plugin host: owns wasmtime.
//!
//! - [`PluginHost`]: the one `Engine` (component model, epoch interruption,
//!   an epoch ticker thread), the `Linker` with the host imports and the
//!   capability-free WASI interfaces.
//! - Loading ([`PluginHost::load_dir`]): each `*.wasm` component is compiled
//!   once, checked (contract version, imports), pre-linked, instantiated and
//!   initialised; its sidecar `NAME.toml` ([`PluginSettings`]) gives order,
//!   config and limits. Compiled components are kept in memory and, with
//!   [`PluginHost::with_disk_cache`], in a directory only the broker's user
//!   can write, authenticated by an HMAC (`cache`), so an unchanged plugin
//!   is not compiled again by a reload or a restart.
//! - [`LoadedPlugin`]: a pool of warm instances, each in its own `Store` with
//!   a memory cap and a per-call epoch deadline; a failed instance is
//!   discarded and the next call gets a fresh one.
//!
//! - Tools for plugin authors: [`vectors`] (test vectors run by `moat plugin
//!   check`) and [`scaffold`] (the projects `moat plugin new` writes).
//!
//! The broker does not call plugins directly: [`crate::auth::Policy`] runs
//! the chain over a [`PluginSet`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::codec::TopicFilter;

mod bindings;
mod cache;
mod convert;
mod engine;
pub mod fixtures;
mod instance;
mod loader;
mod output;
mod request;
pub mod scaffold;
mod settings;
pub mod shipped;
mod stats;
pub mod vectors;

pub use cache::default_dir as default_cache_dir;
pub(crate) use convert::{AuthnAnswer, AuthzAnswer, TransformAnswer};
pub use engine::{CompileCounts, PluginHost};
pub use instance::{LoadedPlugin, PinnedInstance, authn_concurrency};
pub use loader::{ComponentInfo, Source, components_in};
pub use output::{OutputLevel, OutputSettings};
pub use request::{
    AUTH_DATA_ATTRIBUTE, Action, Attributes, CLAIMED_USERNAME_ATTRIBUTE, ClientInfo, Credentials, PluginMessage,
    RESERVED_ATTRIBUTE_PREFIX,
};
pub use settings::{Grants, Limits, OnError, PluginSettings, Sidecar, SidecarLimits};
pub use stats::{Decision, PluginStats, StatsSnapshot};

/// The version of the `moat:plugin` WIT package this host implements.
pub const CONTRACT_VERSION: &str = loader::PACKAGE_VERSION;

/// Loads every plugin in `dir` with a new [`PluginHost`]. A broker that
/// reloads should keep one host and call [`PluginHost::load_dir`] instead.
///
/// # Errors
/// See [`LoadError`].
pub fn load_dir(dir: &Path) -> Result<PluginSet, LoadError> {
    PluginHost::new()?.load_dir(dir)
}

/// Why a plugin (and so the whole set) could not be loaded. Each variant
/// names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// wasmtime could not be set up.
    #[error("cannot start the plugin engine: {0}")]
    Engine(String),
    /// A file or directory could not be read.
    #[error("{}: {message}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        message: String,
    },
    /// A sidecar is invalid (the message carries the line for syntax and
    /// type errors).
    #[error("{}: {message}", path.display())]
    Sidecar {
        /// The sidecar file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// Not a valid WebAssembly component.
    #[error("{}: not a valid WebAssembly component: {message}", path.display())]
    Invalid {
        /// The component file.
        path: PathBuf,
        /// wasmtime's error.
        message: String,
    },
    /// Built against another major version of the contract.
    #[error("{}: built for moat:plugin@{found}, but this broker speaks moat:plugin@{supported}; rebuild it against the current SDK", path.display())]
    Version {
        /// The component file.
        path: PathBuf,
        /// The version the component targets.
        found: String,
        /// The version this host implements.
        supported: String,
    },
    /// Imports an interface the host does not offer.
    #[error("{}: imports `{import}`, which this broker does not offer to plugins", path.display())]
    ForbiddenImport {
        /// The component file.
        path: PathBuf,
        /// The import's full name.
        import: String,
    },
    /// Linking failed (for example the plugin lacks an export of the world).
    #[error("{}: does not fit the moat:plugin world: {message}", path.display())]
    Link {
        /// The component file.
        path: PathBuf,
        /// wasmtime's error.
        message: String,
    },
    /// `init` refused its config, failed, or declared an invalid manifest.
    #[error("{}: init failed: {message}", path.display())]
    Init {
        /// The component file.
        path: PathBuf,
        /// The plugin's or the host's message.
        message: String,
    },
}

/// Why one hook call produced no usable answer. Every one of these denies
/// for authentication and authorization.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallFailure {
    /// The call ran past its deadline and was interrupted.
    #[error("deadline exceeded")]
    Timeout,
    /// The instance tried to grow its memory past the cap.
    #[error("memory cap exceeded")]
    OutOfMemory,
    /// The guest trapped (panic, abort, unreachable...).
    #[error("trapped: {0}")]
    Trap(String),
    /// No instance could be made for the call.
    #[error("could not instantiate: {0}")]
    Instantiate(String),
    /// The answer was larger than the plugin's limit.
    #[error("answer of {bytes} bytes exceeds the limit of {limit}")]
    Oversized {
        /// Size of the answer.
        bytes: usize,
        /// The plugin's `max_answer_bytes`.
        limit: usize,
    },
    /// The answer could not be used (invalid topic, invalid encoding...).
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// The plugin holds as many enhanced-authentication exchanges as its
    /// `limits.exchanges` allows; the new one is refused, not queued.
    #[error("too many authentication exchanges in progress")]
    Busy,
}

impl CallFailure {
    /// A short name for the kind of failure, as counted
    /// (`moat_plugin_*_total`) and logged: `timeout`, `out_of_memory`,
    /// `trap`, `bad_answer` or `busy`.
    pub fn kind(&self) -> &'static str {
        match self {
            CallFailure::Timeout => "timeout",
            CallFailure::OutOfMemory => "out_of_memory",
            CallFailure::Trap(_) | CallFailure::Instantiate(_) => "trap",
            CallFailure::Oversized { .. } | CallFailure::Malformed(_) => "bad_answer",
            CallFailure::Busy => "busy",
        }
    }
}

/// Runs a plugin call (a future of this module) to its end from
/// synchronous code: loading, the reload's sweep, `moat plugin check`.
///
/// Calls need a Tokio runtime with a timer (deadlines, and WASI clocks
/// that guests wait on). On a multi-threaded runtime's thread — a worker
/// or the blocking pool — the call runs there; elsewhere, on a small
/// runtime of the plugin host's own. A current-thread runtime cannot lend
/// its only thread, so from one the call runs on another thread.
pub(crate) fn block_on<F>(call: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| handle.block_on(call))
        }
        Ok(_) => std::thread::scope(|scope| match scope.spawn(|| own_runtime().block_on(call)).join() {
            Ok(output) => output,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
        Err(_) => own_runtime().block_on(call),
    }
}

/// The plugin host's own runtime, for calls made outside any runtime.
fn own_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        // Building a runtime fails only when threads cannot be made, and
        // then nothing in the broker could run.
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("moat-plugin-host")
            .enable_time()
            .build()
            .expect("the plugin host's runtime")
    })
}

/// A hook a plugin can implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// `authn.authenticate`.
    Authenticate,
    /// `authz.authorize`.
    Authorize,
    /// `transform.on-publish`.
    Transform,
}

impl Hook {
    /// Every hook, in [`Hook::index`] order.
    pub const ALL: [Hook; 3] = [Hook::Authenticate, Hook::Authorize, Hook::Transform];

    /// The hook's place in [`Hook::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name operators see (admin API, `moat plugin check`).
    pub fn name(self) -> &'static str {
        match self {
            Hook::Authenticate => "authenticate",
            Hook::Authorize => "authorize",
            Hook::Transform => "transform",
        }
    }
}

/// What a plugin declared at `init`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    /// The hooks the chain calls on this plugin.
    pub hooks: Vec<Hook>,
    /// Topic filters whose publishes the plugin transforms.
    pub transform_filters: Vec<TopicFilter>,
}

impl Manifest {
    /// Whether the plugin implements `hook`.
    pub fn implements(&self, hook: Hook) -> bool {
        self.hooks.contains(&hook)
    }

    /// Validates the manifest a guest returned: every filter must be a valid
    /// MQTT topic filter.
    fn from_wit(m: bindings::lifecycle::Manifest) -> Result<Manifest, String> {
        use bindings::lifecycle::Hook as WitHook;
        let hooks = m
            .hooks
            .iter()
            .map(|h| match h {
                WitHook::Authenticate => Hook::Authenticate,
                WitHook::Authorize => Hook::Authorize,
                WitHook::Transform => Hook::Transform,
            })
            .collect();
        let transform_filters = m
            .transform_filters
            .iter()
            .map(|f| TopicFilter::new(f).map_err(|e| format!("transform filter {f:?} is invalid: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Manifest { hooks, transform_filters })
    }
}

/// An ordered, loaded set of plugins: the input of a [`crate::auth::Policy`].
#[derive(Debug, Clone, Default)]
pub struct PluginSet {
    plugins: Vec<Arc<LoadedPlugin>>,
}

impl PluginSet {
    fn new(plugins: Vec<Arc<LoadedPlugin>>) -> PluginSet {
        PluginSet { plugins }
    }

    /// The plugins in chain order.
    pub fn plugins(&self) -> &[Arc<LoadedPlugin>] {
        &self.plugins
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }
}
