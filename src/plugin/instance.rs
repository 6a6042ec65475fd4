//! One loaded plugin: its pre-linked component, its pool of warm instances
//! and the three hook calls with their limits.
//!
//! Each instance owns its `Store`; the pool's lock is held only to take or
//! return an instance, never during a call, and no two plugins share a lock.
//!
//! Every call runs on a wasmtime fiber (`call_async`) under two bounds that
//! end at the same instant: the epoch deadline traps a guest that computes
//! past it, and [`bounded`] drops a call whose guest is suspended in an
//! asynchronous WASI call (a sleep, `poll` on something never ready) when
//! the deadline passes. A call whose guest never waits completes in its
//! first poll, with no timer armed.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use wasmtime::{Engine, Store, Trap};

use super::bindings::{self, HostState, MemoryCapExceeded, PluginPre};
use super::convert::{self, AuthnAnswer, AuthzAnswer, ClientScratch, MessageScratch, TransformAnswer};
use super::engine::{Digest, EPOCH_TICK};
use super::output::PluginLog;
use super::request::{Action, ClientInfo, Credentials, PluginMessage};
use super::{CallFailure, Hook, Manifest, PluginSettings, PluginStats};
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
/// instance, and with it whatever an abandoned exchange left behind, and
/// frees its place under the plugin's cap on exchanges.
pub struct PinnedInstance {
    slot: Slot,
    _place: ExchangePlace,
}

/// One place under a plugin's cap on exchanges, given back when dropped.
struct ExchangePlace(Arc<AtomicUsize>);

impl ExchangePlace {
    /// A place if fewer than `cap` are taken.
    fn take(held: &Arc<AtomicUsize>, cap: usize) -> Option<ExchangePlace> {
        let place = ExchangePlace(held.clone());
        (held.fetch_add(1, Ordering::Relaxed) < cap).then_some(place)
    }
}

impl Drop for ExchangePlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for PinnedInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinnedInstance")
    }
}

/// How many authentication calls of one plugin run at once: one per core
/// (at least two), since a password hash is CPU-bound work. Asked once
/// per process: `available_parallelism` reads the cgroup files under
/// `/proc` and `/sys` on every call, some twenty system calls, which every
/// CONNECT paid (issue 25).
pub fn authn_concurrency() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get()).max(2))
}

/// A plugin ready to be called: compiled, linked, initialised.
pub struct LoadedPlugin {
    name: Arc<str>,
    path: PathBuf,
    /// The SHA-256 of its component: what the host's compiled cache knows
    /// it by.
    digest: Digest,
    settings: PluginSettings,
    manifest: Manifest,
    engine: Engine,
    pre: PluginPre<HostState>,
    idle: Mutex<Vec<Slot>>,
    stats: Arc<PluginStats>,
    log: Arc<PluginLog>,
    deadline_ticks: u64,
    /// Authentication calls in progress, each on the blocking pool: a flood
    /// of logins against this plugin's slow password hash queues here,
    /// under each client's connect deadline, and never takes the threads
    /// or permits other plugins' clients need.
    authn_permits: Arc<Semaphore>,
    /// Warm instances kept ([`super::Limits::warm_instances`]).
    keep_warm: usize,
    /// Instances pinned by enhanced-authentication exchanges now; beyond
    /// `limits.exchanges` a new exchange is refused, not queued.
    exchanges: Arc<AtomicUsize>,
}

impl LoadedPlugin {
    /// Instantiates the first instance, runs `init` and keeps the instance
    /// warm. The error is the message for the operator: the guest's own
    /// `init` error, an invalid manifest, or how the first call failed.
    pub(crate) fn start(
        name: Arc<str>,
        path: PathBuf,
        digest: Digest,
        settings: PluginSettings,
        engine: Engine,
        pre: PluginPre<HostState>,
    ) -> Result<LoadedPlugin, String> {
        let stats = Arc::new(PluginStats::default());
        let log = Arc::new(PluginLog::new(name.clone(), settings.output, stats.clone()));
        let (slot, manifest) =
            super::block_on(instantiate(&engine, &pre, &log, &settings)).map_err(|f| f.to_string())?;
        let manifest = Manifest::from_wit(manifest?)?;
        let deadline_ticks = ticks(settings.limits.timeout);
        let keep_warm = settings.limits.warm_instances(slot.store.data().memory_bytes());
        Ok(LoadedPlugin {
            name,
            path,
            digest,
            manifest,
            engine,
            pre,
            idle: Mutex::new(vec![slot]),
            stats,
            log,
            deadline_ticks,
            keep_warm,
            authn_permits: Arc::new(Semaphore::new(authn_concurrency())),
            exchanges: Arc::new(AtomicUsize::new(0)),
            settings,
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

    /// The SHA-256 of its component.
    pub(crate) fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Its settings (sidecar or defaults).
    pub fn settings(&self) -> &PluginSettings {
        &self.settings
    }

    /// What `init` declared.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// How many instances it keeps warm.
    pub fn warm_instances(&self) -> usize {
        self.keep_warm
    }

    /// Its counters.
    pub fn stats(&self) -> &PluginStats {
        &self.stats
    }

    /// Calls `authenticate` on `pinned`, or on a pooled instance when there
    /// is none, on the blocking pool under this plugin's permits. When the
    /// answer is `continue`, the instance is handed back pinned for the
    /// next step instead of returning to the pool. A failure has been
    /// counted and logged already.
    pub(crate) async fn authenticate(
        self: &Arc<Self>,
        client: &ClientInfo,
        creds: &Credentials,
        pinned: Option<PinnedInstance>,
    ) -> Result<(AuthnAnswer, Option<PinnedInstance>), CallFailure> {
        // The semaphore is never closed.
        let Ok(permit) = self.authn_permits.clone().acquire_owned().await else {
            return Err(CallFailure::Instantiate("no authentication permit".into()));
        };
        let (me, client, creds) = (self.clone(), client.clone(), convert::credentials(creds));
        // The permit moves into the call: a client whose connect deadline
        // expires meanwhile does not free a place while its hash still runs.
        let call = move || {
            let answer = super::block_on(me.authenticate_here(&client, &creds, pinned));
            drop(permit);
            answer
        };
        match tokio::task::spawn_blocking(call).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::error!(plugin = &*self.name, error = %e, "authentication task failed");
                Err(CallFailure::Trap("the authentication task failed".into()))
            }
        }
    }

    async fn authenticate_here(
        &self,
        client: &ClientInfo,
        creds: &bindings::authn::Credentials,
        pinned: Option<PinnedInstance>,
    ) -> Result<(AuthnAnswer, Option<PinnedInstance>), CallFailure> {
        let limit = self.settings.limits.max_answer_bytes;
        let (mut slot, deadline) = self.begin(Hook::Authenticate, pinned.map(|p| p.slot)).await?;
        let result = {
            let w = &mut *slot;
            let client = w.client.fill(client);
            bounded(deadline, w.exports.moat_plugin_authn().call_authenticate(&mut w.store, client, creds)).await
        };
        let keep = matches!(result, Ok(bindings::authn::AuthOutcome::Continue(_)));
        let (outcome, kept) = self.end(Hook::Authenticate, slot, deadline, result, keep)?;
        let pinned = match kept {
            Some(slot) => Some(self.pin(slot)?),
            None => None,
        };
        let answer = convert::authn_answer(outcome, limit).inspect_err(|f| self.failed(Hook::Authenticate, f))?;
        self.stats.decided(Hook::Authenticate, answer.decision());
        Ok((answer, pinned))
    }

    /// Holds `slot` out of the pool for an exchange, if the plugin's cap on
    /// exchanges allows one more.
    fn pin(&self, slot: Slot) -> Result<PinnedInstance, CallFailure> {
        match ExchangePlace::take(&self.exchanges, self.settings.limits.exchanges) {
            Some(place) => Ok(PinnedInstance { slot, _place: place }),
            None => Err(CallFailure::Busy),
        }
    }

    /// Calls `authorize`. A failure has been counted and logged already.
    pub(crate) async fn authorize(
        &self,
        client: &ClientInfo,
        action: Action,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> Result<AuthzAnswer, CallFailure> {
        let (action, qos) = (convert::action(action), convert::qos(qos));
        let limit = self.settings.limits.max_answer_bytes;
        let (mut slot, deadline) = self.begin(Hook::Authorize, None).await?;
        let result = {
            let w = &mut *slot;
            let client = w.client.fill(client);
            let call = w.exports.moat_plugin_authz().call_authorize(&mut w.store, client, action, topic, qos, retain);
            bounded(deadline, call).await
        };
        let (decision, _) = self.end(Hook::Authorize, slot, deadline, result, false)?;
        let answer = convert::authz_answer(decision, limit).inspect_err(|f| self.failed(Hook::Authorize, f))?;
        self.stats.decided(Hook::Authorize, answer.decision());
        Ok(answer)
    }

    /// Calls `on-publish`. A failure has been counted and logged already.
    pub(crate) async fn on_publish(
        &self,
        client: &ClientInfo,
        message: &PluginMessage,
    ) -> Result<TransformAnswer, CallFailure> {
        let limit = self.settings.limits.max_answer_bytes;
        let (mut slot, deadline) = self.begin(Hook::Transform, None).await?;
        let result = {
            let w = &mut *slot;
            let (client, message) = (w.client.fill(client), w.message.fill(message));
            let outcome =
                bounded(deadline, w.exports.moat_plugin_transform().call_on_publish(&mut w.store, client, message))
                    .await;
            w.message.release_large();
            outcome
        };
        let (outcome, _) = self.end(Hook::Transform, slot, deadline, result, false)?;
        let answer = convert::transform_answer(outcome, limit).inspect_err(|f| self.failed(Hook::Transform, f))?;
        self.stats.decided(Hook::Transform, answer.decision());
        Ok(answer)
    }

    /// Takes an instance for a call: `pinned` if given, else a warm one,
    /// else a fresh one. Returns it with the call's deadline.
    async fn begin(&self, hook: Hook, pinned: Option<Slot>) -> Result<(Slot, Instant), CallFailure> {
        self.stats.call();
        let popped = match pinned {
            Some(slot) => Some(slot),
            None => self.idle.lock().pop(),
        };
        let mut slot = match popped {
            Some(slot) => slot,
            None => self.fresh_instance().await.inspect_err(|f| self.failed(hook, f))?,
        };
        slot.store.set_epoch_deadline(self.deadline_ticks);
        Ok((slot, Instant::now() + self.settings.limits.timeout))
    }

    /// Ends a call: records its time, logs what the guest wrote (on a trap,
    /// what it wrote to stderr becomes the cause), and returns the
    /// instance to the pool or keeps it (`keep`, for an exchange).
    ///
    /// An instance whose call failed is dropped rather than returned: after
    /// a trap wasmtime refuses to enter it again, and after a timeout its
    /// state is whatever the guest left half-done. An instance near its
    /// memory cap is retired too, and so are instances beyond the number
    /// kept warm (made when more calls ran at once than were idle).
    fn end<R>(
        &self,
        hook: Hook,
        slot: Slot,
        deadline: Instant,
        result: Result<R, CallFailure>,
        keep: bool,
    ) -> Result<(R, Option<Slot>), CallFailure> {
        let started = deadline.checked_sub(self.settings.limits.timeout).unwrap_or(deadline);
        self.stats.elapsed(started.elapsed());
        let result = match (result, slot.store.data().take_output()) {
            (result, None) => result,
            (Err(CallFailure::Trap(trap)), Some(written)) => {
                Err(CallFailure::Trap(match self.log.emit(hook.name(), written, true) {
                    Some(said) => format!("{said} ({trap})"),
                    None => trap,
                }))
            }
            (result, Some(written)) => {
                self.log.emit(hook.name(), written, false);
                result
            }
        };
        let answer = result.inspect_err(|f| self.failed(hook, f))?;
        if keep {
            return Ok((answer, Some(slot)));
        }
        if !slot.store.data().near_memory_cap() {
            let mut idle = self.idle.lock();
            if idle.len() < self.keep_warm {
                idle.push(slot);
            }
        }
        Ok((answer, None))
    }

    /// Counts and logs a failed call of `hook`.
    fn failed(&self, hook: Hook, failure: &CallFailure) {
        self.stats.failure(&self.name, hook, failure);
    }

    /// A new instance for a call that found the pool empty (first call after
    /// a failure, or more concurrent calls than warm instances).
    async fn fresh_instance(&self) -> Result<Slot, CallFailure> {
        let (slot, manifest) = instantiate(&self.engine, &self.pre, &self.log, &self.settings).await?;
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
/// component and calls `init` with the plugin's config, under the init
/// deadline. What `init` writes is logged like a hook's output.
async fn instantiate(
    engine: &Engine,
    pre: &PluginPre<HostState>,
    log: &Arc<PluginLog>,
    settings: &PluginSettings,
) -> Result<(Slot, Result<bindings::lifecycle::Manifest, String>), CallFailure> {
    let state = HostState::new(log.clone(), settings.limits.memory_bytes, &settings.grants)
        .map_err(|e| CallFailure::Instantiate(format!("{e:#}")))?;
    let mut store = Store::new(engine, state);
    store.limiter(|state| state);
    let timeout = settings.limits.timeout.max(MIN_INIT_TIMEOUT);
    store.set_epoch_deadline(ticks(timeout));
    let deadline = Instant::now() + timeout;
    let exports = bounded(deadline, pre.instantiate_async(&mut store)).await.map_err(|f| match f {
        CallFailure::Malformed(m) => CallFailure::Instantiate(m),
        other => other,
    })?;
    let manifest =
        bounded(deadline, exports.moat_plugin_lifecycle().call_init(&mut store, &settings.config_json)).await;
    let manifest = match (manifest, store.data().take_output()) {
        (manifest, None) => manifest,
        (Err(CallFailure::Trap(trap)), Some(written)) => {
            Err(CallFailure::Trap(match log.emit("init", written, true) {
                Some(said) => format!("{said} ({trap})"),
                None => trap,
            }))
        }
        (manifest, Some(written)) => {
            log.emit("init", written, false);
            manifest
        }
    }?;
    let (client, message) = (ClientScratch::default(), MessageScratch::default());
    Ok((Box::new(Warm { store, exports, client, message }), manifest))
}

/// Drives a guest call to its end or its deadline. The call is polled
/// first with no timer: a guest that does not wait (nearly every call)
/// finishes in that poll, or traps at the epoch deadline. Only a guest
/// suspended in an asynchronous WASI call arms a timer, and when it fires
/// the call is dropped, which unwinds the guest's fiber. A host function
/// that panics costs this call and this instance, never the caller.
async fn bounded<R>(deadline: Instant, call: impl Future<Output = wasmtime::Result<R>>) -> Result<R, CallFailure> {
    let mut call = pin!(call);
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| call.as_mut().poll(cx))) {
            Err(_) => return Poll::Ready(Err(CallFailure::Trap("a host function panicked during the call".into()))),
            Ok(Poll::Ready(result)) => return Poll::Ready(result.map_err(classify)),
            Ok(Poll::Pending) => {}
        }
        let timer =
            timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(deadline))));
        timer.as_mut().poll(cx).map(|()| Err(CallFailure::Timeout))
    })
    .await
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
