//! One loaded plugin: its pre-linked component, its pool of warm instances
//! and the three hook calls with their limits.
//!
//! Each instance owns its `Store`; the pool's lock is held only to take or
//! return an instance, never during a call, and no two plugins share a lock.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use wasmtime::{Engine, Store, Trap};

use super::bindings::{self, HostState, MemoryCapExceeded, PluginPre};
use super::convert::{self, AuthnAnswer, AuthzAnswer, ClientScratch, MessageScratch, TransformAnswer};
use super::engine::EPOCH_TICK;
use super::{CallFailure, Manifest, PluginSettings, PluginStats};
use crate::auth::{Action, ClientInfo, Credentials, PluginMessage};
use crate::codec::QoS;

/// The least time `init` gets: guest languages with a runtime to start
/// (Python, JavaScript) need far more than one hook call's deadline.
const MIN_INIT_TIMEOUT: Duration = Duration::from_secs(1);

/// A warm instance, boxed: it is several hundred bytes (the export handles
/// and the scratch records), and every call moves it out of the pool and
/// back, which unboxed cost four `memcpy`s per call.
type Slot = Box<Warm>;

/// A warm instance: its own store, the typed handle to its exports, and the
/// records last lowered into it, reused by the next call.
struct Warm {
    store: Store<HostState>,
    exports: bindings::Plugin,
    client: ClientScratch,
    message: MessageScratch,
}

/// An instance held out of the pool for one MQTT 5 enhanced-authentication
/// exchange, so every step of the exchange reaches the instance that keeps
/// the conversation's state (a SCRAM nonce, say). Dropping it discards the
/// instance, and with it whatever an abandoned exchange left behind.
pub struct PinnedInstance(Slot);

impl std::fmt::Debug for PinnedInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinnedInstance")
    }
}

/// A plugin ready to be called: compiled, linked, initialised.
pub struct LoadedPlugin {
    name: Arc<str>,
    path: PathBuf,
    settings: PluginSettings,
    manifest: Manifest,
    engine: Engine,
    pre: PluginPre<HostState>,
    idle: Mutex<Vec<Slot>>,
    stats: PluginStats,
    deadline_ticks: u64,
}

impl LoadedPlugin {
    /// Instantiates the first instance, runs `init` and keeps the instance
    /// warm. The error is the message for the operator: the guest's own
    /// `init` error, an invalid manifest, or how the first call failed.
    pub(crate) fn start(
        name: Arc<str>,
        path: PathBuf,
        settings: PluginSettings,
        engine: Engine,
        pre: PluginPre<HostState>,
    ) -> Result<LoadedPlugin, String> {
        let (slot, manifest) = instantiate(&engine, &pre, &name, &settings).map_err(|f| f.to_string())?;
        let manifest = Manifest::from_wit(manifest?)?;
        let deadline_ticks = ticks(settings.limits.timeout);
        Ok(LoadedPlugin {
            name,
            path,
            settings,
            manifest,
            engine,
            pre,
            idle: Mutex::new(vec![slot]),
            stats: PluginStats::default(),
            deadline_ticks,
        })
    }

    /// The plugin's name: its file stem.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The component file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its settings (sidecar or defaults).
    pub fn settings(&self) -> &PluginSettings {
        &self.settings
    }

    /// What `init` declared.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Its counters.
    pub fn stats(&self) -> &PluginStats {
        &self.stats
    }

    /// Calls `authenticate` on `pinned`, or on a pooled instance when there
    /// is none. When the answer is `continue`, the instance is handed back
    /// pinned for the next step instead of returning to the pool. A failure
    /// has been counted and logged already.
    pub(crate) fn authenticate(
        &self,
        client: &ClientInfo,
        creds: &Credentials,
        pinned: Option<PinnedInstance>,
    ) -> Result<(AuthnAnswer, Option<PinnedInstance>), CallFailure> {
        let creds = convert::credentials(creds);
        let limit = self.settings.limits.max_answer_bytes;
        let call = |slot: &mut Slot| {
            let client = slot.client.fill(client);
            slot.exports.moat_plugin_authn().call_authenticate(&mut slot.store, client, &creds)
        };
        let keep = |o: &bindings::authn::AuthOutcome| matches!(o, bindings::authn::AuthOutcome::Continue(_));
        self.call_on(pinned.map(|p| p.0), call, keep)
            .and_then(|(o, slot)| Ok((convert::authn_answer(o, limit)?, slot.map(PinnedInstance))))
            .inspect_err(|f| self.stats.failure(&self.name, f))
    }

    /// Calls `authorize`. A failure has been counted and logged already.
    pub(crate) fn authorize(
        &self,
        client: &ClientInfo,
        action: Action,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> Result<AuthzAnswer, CallFailure> {
        let (action, qos) = (convert::action(action), convert::qos(qos));
        let limit = self.settings.limits.max_answer_bytes;
        self.call(|slot| {
            let client = slot.client.fill(client);
            slot.exports.moat_plugin_authz().call_authorize(&mut slot.store, client, action, topic, qos, retain)
        })
        .and_then(|d| convert::authz_answer(d, limit))
        .inspect_err(|f| self.stats.failure(&self.name, f))
    }

    /// Calls `on-publish`. A failure has been counted and logged already.
    pub(crate) fn on_publish(
        &self,
        client: &ClientInfo,
        message: &PluginMessage,
    ) -> Result<TransformAnswer, CallFailure> {
        let limit = self.settings.limits.max_answer_bytes;
        self.call(|slot| {
            let (client, message) = (slot.client.fill(client), slot.message.fill(message));
            let outcome = slot.exports.moat_plugin_transform().call_on_publish(&mut slot.store, client, message);
            slot.message.release_large();
            outcome
        })
        .and_then(|o| convert::transform_answer(o, limit))
        .inspect_err(|f| self.stats.failure(&self.name, f))
    }

    /// Runs one export on a warm instance under the call deadline. An
    /// instance whose call failed is dropped rather than returned: after a
    /// trap wasmtime refuses to enter it again, and after a timeout its
    /// state is whatever the guest left half-done. An instance near its
    /// memory cap is retired too, and so are instances beyond the number
    /// kept warm (made when more calls ran at once than were idle).
    fn call<R>(&self, f: impl FnOnce(&mut Slot) -> wasmtime::Result<R>) -> Result<R, CallFailure> {
        self.call_on(None, f, |_| false).map(|(answer, _)| answer)
    }

    /// [`LoadedPlugin::call`] on `pinned` if given, keeping the instance out
    /// of the pool when `keep` says so of the answer.
    fn call_on<R>(
        &self,
        pinned: Option<Slot>,
        f: impl FnOnce(&mut Slot) -> wasmtime::Result<R>,
        keep: impl FnOnce(&R) -> bool,
    ) -> Result<(R, Option<Slot>), CallFailure> {
        self.stats.call();
        let started = std::time::Instant::now();
        let result = self.call_timed(pinned, f, keep);
        self.stats.elapsed(started.elapsed());
        result
    }

    fn call_timed<R>(
        &self,
        pinned: Option<Slot>,
        f: impl FnOnce(&mut Slot) -> wasmtime::Result<R>,
        keep: impl FnOnce(&R) -> bool,
    ) -> Result<(R, Option<Slot>), CallFailure> {
        let popped = match pinned {
            Some(slot) => Some(slot),
            None => self.idle.lock().pop(),
        };
        let mut slot = match popped {
            Some(slot) => slot,
            None => self.fresh_instance()?,
        };
        slot.store.set_epoch_deadline(self.deadline_ticks);
        // A host function that panics (a WASI call that cannot run on this
        // thread, a wasmtime bug) unwinds through the guest; it must cost
        // this call and this instance, never the connection task.
        let answer = std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut slot)))
            .map_err(|_| CallFailure::Trap("a host function panicked during the call".into()))?
            .map_err(classify)?;
        if keep(&answer) {
            return Ok((answer, Some(slot)));
        }
        if !slot.store.data().near_memory_cap() {
            let mut idle = self.idle.lock();
            if idle.len() < self.settings.limits.instances {
                idle.push(slot);
            }
        }
        Ok((answer, None))
    }

    /// A new instance for a call that found the pool empty (first call after
    /// a failure, or more concurrent calls than warm instances).
    fn fresh_instance(&self) -> Result<Slot, CallFailure> {
        let (slot, manifest) = instantiate(&self.engine, &self.pre, &self.name, &self.settings)?;
        match manifest {
            Ok(_) => Ok(slot),
            Err(message) => Err(CallFailure::Instantiate(format!("init failed: {message}"))),
        }
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("manifest", &self.manifest)
            .finish_non_exhaustive()
    }
}

/// Creates a store with the plugin's limits, instantiates the pre-linked
/// component and calls `init` with the plugin's config.
///
/// A plugin with file grants reads its files in `init`, and wasmtime-wasi's
/// synchronous file system calls block on a Tokio runtime of their own,
/// which Tokio forbids on a thread that drives async tasks: such an `init`
/// runs outside the async context.
fn instantiate(
    engine: &Engine,
    pre: &PluginPre<HostState>,
    name: &Arc<str>,
    settings: &PluginSettings,
) -> Result<(Slot, Result<bindings::lifecycle::Manifest, String>), CallFailure> {
    let run = || instantiate_here(engine, pre, name, settings);
    if settings.grants.read.is_empty() {
        return run();
    }
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Err(_) => run(),
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
        // A current-thread runtime cannot lend its thread: use another.
        Ok(_) => std::thread::scope(|scope| {
            scope
                .spawn(run)
                .join()
                .unwrap_or_else(|_| Err(CallFailure::Instantiate("init panicked in the host".into())))
        }),
    }
}

fn instantiate_here(
    engine: &Engine,
    pre: &PluginPre<HostState>,
    name: &Arc<str>,
    settings: &PluginSettings,
) -> Result<(Slot, Result<bindings::lifecycle::Manifest, String>), CallFailure> {
    let state = HostState::new(name.clone(), settings.limits.memory_bytes, &settings.grants)
        .map_err(|e| CallFailure::Instantiate(format!("{e:#}")))?;
    let mut store = Store::new(engine, state);
    store.limiter(|state| state);
    store.set_epoch_deadline(ticks(settings.limits.timeout.max(MIN_INIT_TIMEOUT)));
    let exports = pre.instantiate(&mut store).map_err(|e| match classify(e) {
        CallFailure::Malformed(m) => CallFailure::Instantiate(m),
        other => other,
    })?;
    let manifest = exports.moat_plugin_lifecycle().call_init(&mut store, &settings.config_json).map_err(classify)?;
    let (client, message) = (ClientScratch::default(), MessageScratch::default());
    Ok((Box::new(Warm { store, exports, client, message }), manifest))
}

/// Epoch ticks for a deadline: one more than the whole ticks in it, because
/// the current tick may be about to end.
fn ticks(timeout: Duration) -> u64 {
    let per_tick = EPOCH_TICK.as_micros().max(1);
    u64::try_from(timeout.as_micros() / per_tick).unwrap_or(u64::MAX / 2) + 1
}

/// Sorts a failed call into the causes the chain counts and reports.
fn classify(error: wasmtime::Error) -> CallFailure {
    if error.downcast_ref::<MemoryCapExceeded>().is_some() {
        return CallFailure::OutOfMemory;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallFailure::Timeout,
        Some(trap) => CallFailure::Trap(trap.to_string()),
        // Not a trap: the host refused to lift what the guest returned
        // (invalid UTF-8, bad discriminant, out-of-bounds list...).
        None => CallFailure::Malformed(format!("{error:#}")),
    }
}
