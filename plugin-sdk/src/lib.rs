//! Write [Moat](https://example.invalid/moat) broker plugins in Rust.
//!
//! A plugin is a type implementing [`Plugin`], exported with
//! [`export_plugin!`] and built with `cargo build --target wasm32-wasip2`
//! (crate type `cdylib`). The broker loads the resulting `.wasm` component
//! from its plugin directory. Hooks you do not override answer "no opinion"
//! (`ignore` / `pass`); list the hooks you do implement in the [`Manifest`]
//! returned by [`Plugin::init`], because the broker only calls those.
//!
//! A complete authorizer that lets clients publish only under their user name:
//!
//! ```
//! use moat_plugin_sdk::*;
//!
//! struct OwnTopics;
//!
//! impl Plugin for OwnTopics {
//!     fn init(_config: Config) -> Result<(Self, Manifest), String> {
//!         Ok((OwnTopics, Manifest::new().authorize()))
//!     }
//!
//!     fn authorize(&mut self, client: &ClientInfo, action: Action, topic: &str,
//!                  _qos: QoS, _retain: bool) -> Decision {
//!         let Some(user) = &client.username else { return Decision::Deny("anonymous".into()) };
//!         match action {
//!             Action::Publish if topic.starts_with(&format!("users/{user}/")) => {
//!                 Decision::Allow(Some(60_000))
//!             }
//!             Action::Publish => Decision::Deny(format!("{user} may not publish to {topic}")),
//!             _ => Decision::Ignore,
//!         }
//!     }
//! }
//!
//! export_plugin!(OwnTopics);
//! # fn main() {}
//! ```
//!
//! `client.username` is the *verified* user name: the one an authenticator
//! accepted (or granted as an override), or a certificate named. A client
//! that nobody verified has none, whatever it typed in CONNECT, unless the
//! operator set `trust_claimed_username` on its listener; so rules keyed on
//! `username` (and `%u`) never give a user's rights to an impostor. The
//! name it claimed is in [`ClientInfo::claimed_username`]: fine for a log
//! line, never for a right.
//!
//! Plugin methods are plain Rust, so a plugin is unit tested natively with
//! `cargo test`: call [`Plugin::init`] and the hooks directly, with the
//! records built by [`testing`]. The host imports ([`log`], [`now_ms`]) fall
//! back to stderr and the system clock outside WebAssembly.
//!
//! Hooks run under limits the broker's operator sets per plugin: a deadline
//! per call (10 ms by default), a memory cap (32 MiB), a maximum answer size
//! (64 KiB). A plugin that panics, loops or exceeds a limit denies (for
//! authentication and authorization) and its instance is replaced.
#![deny(missing_docs)]

use std::any::Any;
use std::cell::RefCell;

#[cfg(any(test, all(feature = "allocator", target_arch = "wasm32", not(target_feature = "atomics"))))]
mod alloc;
mod config;
mod export;
mod files;
mod host;
pub mod testing;

#[doc(hidden)]
pub use export::Export;

pub use config::Config;
pub use files::{describe as describe_io_error, read_file};
pub use host::{Level, log, now_ms};

/// The bindings generated from the `moat:plugin` WIT package.
///
/// Prefer the re-exports at the crate root; these are here for plugins that
/// need a generated type the SDK does not wrap.
#[allow(missing_docs, reason = "generated code; the WIT carries the documentation")]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_bindings",
        default_bindings_module: "moat_plugin_sdk::bindings",
    });
}

pub use bindings::exports::moat::plugin::authn::{AuthOutcome, Credentials, Grant};
pub use bindings::exports::moat::plugin::authz::Decision;
pub use bindings::exports::moat::plugin::lifecycle::Hook;
pub use bindings::exports::moat::plugin::transform::TransformOutcome;
pub use bindings::moat::plugin::types::{Action, ClientInfo, Message, Qos as QoS, TlsIdentity};

/// Which hooks a plugin implements and which topics it transforms.
pub use bindings::exports::moat::plugin::lifecycle::Manifest;

impl Action {
    /// The action's name as the broker logs it: `publish`, `subscribe`,
    /// `receive`, `retained` or `will`.
    ///
    /// ```
    /// assert_eq!(moat_plugin_sdk::Action::Retained.name(), "retained");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Receive => "receive",
            Action::Retained => "retained",
            Action::Will => "will",
        }
    }

    /// The action in words for a `deny` reason, to be followed by the
    /// topic: the broker logs reasons as the plugin wrote them, so they
    /// should read as sentences.
    ///
    /// ```
    /// use moat_plugin_sdk::Action;
    /// let reason = format!("no rule allows {} {}", Action::Publish.doing(), "sensors/1");
    /// assert_eq!(reason, "no rule allows publishing to sensors/1");
    /// ```
    pub fn doing(self) -> &'static str {
        match self {
            Action::Publish => "publishing to",
            Action::Subscribe => "subscribing to",
            Action::Receive => "receiving messages of",
            Action::Retained => "receiving the retained message of",
            Action::Will => "a will message to",
        }
    }
}

impl Manifest {
    /// A manifest that implements no hook yet.
    pub fn new() -> Manifest {
        Manifest { hooks: Vec::new(), transform_filters: Vec::new() }
    }

    /// The broker should call [`Plugin::authenticate`].
    pub fn authenticate(mut self) -> Manifest {
        self.hooks.push(Hook::Authenticate);
        self
    }

    /// The broker should call [`Plugin::authorize`].
    pub fn authorize(mut self) -> Manifest {
        self.hooks.push(Hook::Authorize);
        self
    }

    /// The broker should call [`Plugin::on_publish`] for publishes whose topic
    /// matches one of `filters` (MQTT filters, `+` and `#` allowed).
    pub fn transform<I, S>(mut self, filters: I) -> Manifest
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hooks.push(Hook::Transform);
        self.transform_filters.extend(filters.into_iter().map(Into::into));
        self
    }
}

impl Default for Manifest {
    fn default() -> Manifest {
        Manifest::new()
    }
}

/// The attribute by which the broker passes the user name a client claimed
/// in CONNECT, verified or not; see [`ClientInfo::claimed_username`]. The
/// broker drops `moat.*` attributes from grants, so no plugin can forge it.
pub const CLAIMED_USERNAME_ATTRIBUTE: &str = "moat.claimed-username";

impl ClientInfo {
    /// The verified user name (`username`): what authorization may trust.
    /// `None` for a client nobody verified, whatever name it claimed.
    pub fn verified_username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// The user name the client sent in CONNECT, verified or not: for
    /// logs and comparisons, never for rights.
    ///
    /// ```
    /// use moat_plugin_sdk::testing;
    /// let impostor = testing::claiming("admin");
    /// assert_eq!((impostor.verified_username(), impostor.claimed_username()), (None, Some("admin")));
    /// ```
    pub fn claimed_username(&self) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == CLAIMED_USERNAME_ATTRIBUTE).map(|(_, v)| v.as_str())
    }
}

/// The attribute by which a grant carries Authentication Data for the
/// packet that ends an MQTT 5 exchange; see [`Grant::with_auth_data`].
pub const AUTH_DATA_ATTRIBUTE: &str = "moat.auth-data";

impl Grant {
    /// A grant with no attributes and the user name unchanged.
    pub fn plain() -> Grant {
        Grant { attributes: Vec::new(), username_override: None }
    }

    /// Sends `data` to the client with this `allow`: as the Authentication
    /// Data of the CONNACK (or of the AUTH success that ends a
    /// re-authentication), e.g. SCRAM's server-final message. The WIT
    /// `grant` has no field for it, so it travels as the attribute
    /// [`AUTH_DATA_ATTRIBUTE`] in lowercase hex, which the broker removes:
    /// later hooks never see it.
    ///
    /// ```
    /// let grant = moat_plugin_sdk::Grant::plain().with_auth_data(b"v=ok");
    /// assert_eq!(grant.attributes, [("moat.auth-data".to_owned(), "763d6f6b".to_owned())]);
    /// ```
    pub fn with_auth_data(mut self, data: &[u8]) -> Grant {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let hex = data.iter().flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]).map(char::from);
        self.attributes.push((AUTH_DATA_ATTRIBUTE.to_owned(), hex.collect()));
        self
    }
}

/// A Moat plugin: one method per hook, each with a "no opinion" default.
///
/// The broker keeps several warm instances of a plugin, each initialised with
/// its own call to [`Plugin::init`], so state in `self` is per instance.
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its sidecar `config` table. An error refuses the
    /// plugin at load and is shown to the operator.
    fn init(config: Config) -> Result<(Self, Manifest), String>;

    /// Decides whether a client may connect. Default: [`AuthOutcome::Ignore`].
    ///
    /// ```
    /// use moat_plugin_sdk::*;
    ///
    /// struct OnlyAdmin;
    /// impl Plugin for OnlyAdmin {
    ///     fn init(_: Config) -> Result<(Self, Manifest), String> {
    ///         Ok((OnlyAdmin, Manifest::new().authenticate()))
    ///     }
    ///     fn authenticate(&mut self, _: &ClientInfo, c: &Credentials) -> AuthOutcome {
    ///         match c.username.as_deref() {
    ///             Some("admin") => AuthOutcome::Allow(Grant::plain()),
    ///             Some(_) => AuthOutcome::Deny("not admin".into()),
    ///             None => AuthOutcome::Ignore,
    ///         }
    ///     }
    /// }
    ///
    /// let (mut p, _) = OnlyAdmin::init(testing::config("{}")).expect("init");
    /// let out = p.authenticate(&testing::client(None), &testing::login("eve", b"pw"));
    /// assert!(matches!(out, AuthOutcome::Deny(_)));
    /// ```
    fn authenticate(&mut self, client: &ClientInfo, credentials: &Credentials) -> AuthOutcome {
        let _ = (client, credentials);
        AuthOutcome::Ignore
    }

    /// Decides whether a client may act on a topic. Default: [`Decision::Ignore`].
    fn authorize(&mut self, client: &ClientInfo, action: Action, topic: &str, qos: QoS, retain: bool) -> Decision {
        let _ = (client, action, topic, qos, retain);
        Decision::Ignore
    }

    /// Rewrites or drops a publish on a declared topic. Default:
    /// [`TransformOutcome::Pass`].
    ///
    /// ```
    /// use moat_plugin_sdk::*;
    ///
    /// struct Tag;
    /// impl Plugin for Tag {
    ///     fn init(_: Config) -> Result<(Self, Manifest), String> {
    ///         Ok((Tag, Manifest::new().transform(["sensors/#"])))
    ///     }
    ///     fn on_publish(&mut self, client: &ClientInfo, mut m: Message) -> TransformOutcome {
    ///         m.user_properties.push(("from".into(), client.client_id.clone()));
    ///         TransformOutcome::Replace(m)
    ///     }
    /// }
    ///
    /// let (mut p, _) = Tag::init(testing::config("{}")).expect("init");
    /// let out = p.on_publish(&testing::client(None), testing::message("sensors/1", b"21.5"));
    /// assert!(matches!(out, TransformOutcome::Replace(m) if m.user_properties.len() == 1));
    /// ```
    fn on_publish(&mut self, client: &ClientInfo, message: Message) -> TransformOutcome {
        let _ = (client, message);
        TransformOutcome::Pass
    }
}

thread_local! {
    /// The instance built by `init`. A WebAssembly instance is single
    /// threaded, so a thread-local cell is the whole of the plugin's state.
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Marks plugin code running (see `alloc::hook_started`); a no-op without
/// the SDK's allocator.
#[inline]
fn hook_started() {
    #[cfg(all(feature = "allocator", target_arch = "wasm32", not(target_feature = "atomics")))]
    alloc::hook_started();
}

/// Marks plugin code done until the next hook (see `alloc::hook_finished`).
#[inline]
fn hook_finished() {
    #[cfg(all(feature = "allocator", target_arch = "wasm32", not(target_feature = "atomics")))]
    alloc::hook_finished();
}

/// Runs `f` on the plugin instance, or returns `None` before `init`.
fn with_instance<P: Plugin, R>(f: impl FnOnce(&mut P) -> R) -> Option<R> {
    INSTANCE.with(|cell| {
        let mut slot = cell.borrow_mut();
        slot.as_mut().and_then(|any| any.downcast_mut::<P>()).map(f)
    })
}

/// Exports a [`Plugin`] type as the component's implementation of the
/// `moat:plugin` world. Use it once per plugin crate.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        // Only WebAssembly builds export the hooks: natively (for `cargo test`
        // of a plugin crate) the symbol names, which hold `:` and `@`, would
        // break the linker's export list of a `cdylib`.
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        type __MoatPluginExport = $crate::Export<$plugin>;
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_plugin_bindings!(
            __MoatPluginExport with_types_in $crate::bindings
        );
    };
}
