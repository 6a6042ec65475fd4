//! Hostile fixture: built against `moat:plugin@1.0.0`, a major version the
//! host does not speak. Otherwise a well-behaved allow-everything plugin, so
//! only the version check can refuse it.

#[allow(missing_docs, reason = "generated code")]
mod bindings {
    wit_bindgen::generate!({ path: "wit", world: "plugin" });
}

use bindings::exports::moat::plugin::{authn, authz, lifecycle, transform};
use bindings::moat::plugin::types::{Action, ClientInfo, Message, Qos};

/// The guest.
pub struct FutureGuest;

impl lifecycle::Guest for FutureGuest {
    fn init(_config_json: String) -> Result<lifecycle::Manifest, String> {
        Ok(lifecycle::Manifest { hooks: vec![lifecycle::Hook::Authorize], transform_filters: vec![] })
    }
}

impl authn::Guest for FutureGuest {
    fn authenticate(_client: ClientInfo, _credentials: authn::Credentials) -> authn::AuthOutcome {
        authn::AuthOutcome::Ignore
    }
}

impl authz::Guest for FutureGuest {
    fn authorize(_client: ClientInfo, _action: Action, _topic: String, _qos: Qos, _retain: bool) -> authz::Decision {
        authz::Decision::Allow(None)
    }
}

impl transform::Guest for FutureGuest {
    fn on_publish(_client: ClientInfo, _message: Message) -> transform::TransformOutcome {
        transform::TransformOutcome::Pass
    }
}

// Natively the export symbol names would break a cdylib's export list.
#[cfg(target_arch = "wasm32")]
bindings::export!(FutureGuest with_types_in bindings);
