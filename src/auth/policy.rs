//! The plugin chain behind the broker's questions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Action, AuthnOutcome, ClientInfo, Credentials, Denial, Grant, PluginMessage, TransformOutcome, Verdict};
use crate::codec::QoS;
use crate::codec::topic::filter_matches;
use crate::plugin::{
    AuthnAnswer, AuthzAnswer, CallFailure, Hook, LoadedPlugin, OnError, PinnedInstance, PluginSet, StatsSnapshot,
    TransformAnswer,
};

/// Source of [`Policy::generation`]: every policy built in this process gets
/// a new number, so a cache can tell that the plugin set changed.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

/// The policy pipeline: a loaded plugin set and the chain semantics.
///
/// Cheap to clone (an `Arc`). Hot reload builds a new `Policy` and swaps it
/// in; calls in flight finish on the old one.
#[derive(Clone, Debug)]
pub struct Policy {
    inner: Arc<Inner>,
}

/// The policy in force, read on every publish and CONNECT without a lock
/// (an `ArcSwap`: a reload's swap never blocks a reader, and a reader never
/// blocks a reload).
#[derive(Debug)]
pub struct InForce(arc_swap::ArcSwap<Inner>);

impl InForce {
    /// Puts `policy` in force.
    pub fn new(policy: Policy) -> InForce {
        InForce(arc_swap::ArcSwap::new(policy.inner))
    }

    /// The policy in force now.
    pub fn get(&self) -> Policy {
        Policy { inner: self.0.load_full() }
    }

    /// Puts `policy` in force and returns the one it replaces.
    pub fn replace(&self, policy: Policy) -> Policy {
        Policy { inner: self.0.swap(policy.inner) }
    }
}

#[derive(Debug)]
struct Inner {
    generation: u64,
    set: PluginSet,
    authn: Vec<Arc<LoadedPlugin>>,
    authz: Vec<Arc<LoadedPlugin>>,
    transforms: Vec<Arc<LoadedPlugin>>,
}

impl Policy {
    /// A policy with no plugins: authentication has no opinion (the
    /// listener's `allow_anonymous` decides), everything is authorized, and
    /// no message is transformed.
    pub fn none() -> Policy {
        Policy::new(PluginSet::default())
    }

    /// The policy of a loaded plugin set, in the set's order.
    pub fn new(set: PluginSet) -> Policy {
        let with = |hook| set.plugins().iter().filter(|p| p.manifest().implements(hook)).cloned().collect();
        let inner = Inner {
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            authn: with(Hook::Authenticate),
            authz: with(Hook::Authorize),
            transforms: with(Hook::Transform),
            set,
        };
        Policy { inner: Arc::new(inner) }
    }

    /// Identifies this plugin set; differs between any two policies built in
    /// the same process.
    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// The plugins in chain order.
    pub fn plugins(&self) -> &PluginSet {
        &self.inner.set
    }

    /// Each plugin's counters, in chain order.
    pub fn stats(&self) -> Vec<(Arc<str>, StatsSnapshot)> {
        self.inner.set.plugins().iter().map(|p| (p.name().clone(), p.stats().snapshot())).collect()
    }

    /// Whether any plugin authorizes; without one every action is allowed
    /// and callers can skip the question (and their cache) entirely.
    pub fn authorizes(&self) -> bool {
        !self.inner.authz.is_empty()
    }

    /// Whether any plugin authenticates.
    pub fn authenticates(&self) -> bool {
        !self.inner.authn.is_empty()
    }

    /// Runs the authentication chain: the first `allow`, `deny` or
    /// `continue` wins; a failing plugin denies. An exchange a plugin
    /// continues is not kept: see [`Policy::authenticate_step`].
    pub async fn authenticate(&self, client: &ClientInfo, credentials: &Credentials) -> AuthnOutcome {
        self.authenticate_step(&mut None, client, credentials).await
    }

    /// One step of authentication. Without an exchange in progress, runs the
    /// chain like [`Policy::authenticate`]; when a plugin answers
    /// `continue`, `exchange` keeps that plugin and its instance, and the
    /// next step goes to that same instance alone, so a plugin may keep the
    /// conversation's state in memory. Any other answer ends the exchange
    /// (an `ignore` mid-exchange is [`AuthnOutcome::NoDecision`]).
    ///
    /// Each plugin's call runs on the blocking pool under that plugin's
    /// own permits (a password hash is CPU work), so a slow or stuck
    /// authenticator delays only the clients that reach it.
    pub async fn authenticate_step(
        &self,
        exchange: &mut Option<AuthExchange>,
        client: &ClientInfo,
        credentials: &Credentials,
    ) -> AuthnOutcome {
        if let Some(AuthExchange { plugin, instance }) = exchange.take() {
            let answer = plugin.authenticate(client, credentials, Some(instance)).await;
            return decide(&plugin, answer, exchange).unwrap_or(AuthnOutcome::NoDecision);
        }
        for plugin in &self.inner.authn {
            let answer = plugin.authenticate(client, credentials, None).await;
            if let Some(outcome) = decide(plugin, answer, exchange) {
                return outcome;
            }
        }
        AuthnOutcome::NoDecision
    }

    /// Runs the authorization chain: the first `allow` or `deny` wins, a
    /// failing plugin denies, and when every plugin ignores the answer is
    /// deny. With no authorizing plugin at all, everything is allowed.
    pub async fn authorize(&self, client: &ClientInfo, action: Action, topic: &str, qos: QoS, retain: bool) -> Verdict {
        if self.inner.authz.is_empty() {
            return Verdict::allow(None);
        }
        for plugin in &self.inner.authz {
            match plugin.authorize(client, action, topic, qos, retain).await {
                Ok(AuthzAnswer::Ignore) => continue,
                Ok(AuthzAnswer::Allow(cache_ttl)) => return Verdict::allow(cache_ttl),
                Ok(AuthzAnswer::Deny(reason)) => {
                    plugin.stats().denial();
                    return Verdict::deny(Denial::Denied { plugin: plugin.name().clone(), reason });
                }
                Err(failure) => {
                    plugin.stats().denial();
                    return Verdict::deny(Denial::Failed { plugin: plugin.name().clone(), failure });
                }
            }
        }
        Verdict::deny(Denial::Unanswered)
    }

    /// Whether any transform plugin declared a filter matching `topic`. A
    /// publish for which this is false never enters WebAssembly.
    pub fn wants_transform(&self, topic: &str) -> bool {
        self.inner.transforms.iter().any(|p| wants(p, topic))
    }

    /// Runs every transform plugin whose filters match the message's topic,
    /// in order, each seeing the previous one's result. A `drop` stops the
    /// chain; a failing plugin drops or passes per its `on_error`.
    pub async fn transform(&self, client: &ClientInfo, message: &PluginMessage) -> TransformOutcome {
        let mut current: Option<PluginMessage> = None;
        for plugin in &self.inner.transforms {
            let msg = current.as_ref().unwrap_or(message);
            if !wants(plugin, msg.topic.as_str()) {
                continue;
            }
            match plugin.on_publish(client, msg).await {
                Ok(TransformAnswer::Pass) => {}
                Ok(TransformAnswer::Replace(next)) => current = Some(next),
                Ok(TransformAnswer::Drop(reason)) => {
                    return TransformOutcome::Drop { plugin: plugin.name().clone(), reason };
                }
                Err(failure) => match plugin.settings().on_error {
                    OnError::Pass => {}
                    OnError::Drop => {
                        return TransformOutcome::Drop {
                            plugin: plugin.name().clone(),
                            reason: format!("plugin failed: {failure}"),
                        };
                    }
                },
            }
        }
        current.map_or(TransformOutcome::Pass, TransformOutcome::Replace)
    }
}

/// An MQTT 5 enhanced-authentication exchange in progress: the plugin that
/// answered `continue` and the instance that holds the conversation. Owned
/// by the connection between steps; dropping it abandons the exchange.
#[derive(Debug)]
pub struct AuthExchange {
    plugin: Arc<LoadedPlugin>,
    instance: PinnedInstance,
}

/// The chain's outcome for one authenticator's answer, or `None` for
/// `ignore`. A `continue` stores the pinned instance in `exchange`.
fn decide(
    plugin: &Arc<LoadedPlugin>,
    answer: Result<(AuthnAnswer, Option<PinnedInstance>), CallFailure>,
    exchange: &mut Option<AuthExchange>,
) -> Option<AuthnOutcome> {
    let name = plugin.name().clone();
    match answer {
        Ok((AuthnAnswer::Ignore, _)) => None,
        Ok((AuthnAnswer::Allow { attributes, username_override, auth_data }, _)) => {
            Some(AuthnOutcome::Allow(Grant { plugin: name, attributes, username_override, auth_data }))
        }
        Ok((AuthnAnswer::Continue(data), pinned)) => {
            *exchange = pinned.map(|instance| AuthExchange { plugin: plugin.clone(), instance });
            Some(AuthnOutcome::Continue { plugin: name, data })
        }
        Ok((AuthnAnswer::Deny(reason), _)) => {
            plugin.stats().denial();
            Some(AuthnOutcome::Deny { plugin: name, reason })
        }
        Err(CallFailure::Busy) => Some(AuthnOutcome::Busy { plugin: name }),
        Err(failure) => {
            plugin.stats().denial();
            Some(AuthnOutcome::Deny { plugin: name, reason: format!("plugin failed: {failure}") })
        }
    }
}

fn wants(plugin: &LoadedPlugin, topic: &str) -> bool {
    plugin.manifest().transform_filters.iter().any(|f| filter_matches(f.filter(), topic))
}
