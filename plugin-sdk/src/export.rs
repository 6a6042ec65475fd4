//! The glue between the generated export traits and [`Plugin`].

use std::marker::PhantomData;

use crate::bindings::exports::moat::plugin::{authn, authz, lifecycle, transform};
use crate::bindings::moat::plugin::types::{Action, ClientInfo, Message, Qos};
use crate::{Config, INSTANCE, Plugin, hook_finished, hook_started, with_instance};

/// Implements the generated export traits for a [`Plugin`]; named only by
/// [`export_plugin!`](crate::export_plugin).
pub struct Export<P>(PhantomData<P>);

impl<P: Plugin> lifecycle::Guest for Export<P> {
    fn init(config_json: String) -> Result<lifecycle::Manifest, String> {
        hook_started();
        let answer = Config::parse(&config_json).and_then(P::init).map(|(plugin, manifest)| {
            INSTANCE.with(|cell| *cell.borrow_mut() = Some(Box::new(plugin)));
            manifest
        });
        hook_finished();
        answer
    }
}

impl<P: Plugin> authn::Guest for Export<P> {
    fn authenticate(client: ClientInfo, credentials: authn::Credentials) -> authn::AuthOutcome {
        hook_started();
        let answer = with_instance(|p: &mut P| p.authenticate(&client, &credentials))
            .unwrap_or_else(|| authn::AuthOutcome::Deny(NOT_INITIALISED.into()));
        hook_finished();
        answer
    }
}

impl<P: Plugin> authz::Guest for Export<P> {
    fn authorize(client: ClientInfo, action: Action, topic: String, qos: Qos, retain: bool) -> authz::Decision {
        hook_started();
        let answer = with_instance(|p: &mut P| p.authorize(&client, action, &topic, qos, retain))
            .unwrap_or_else(|| authz::Decision::Deny(NOT_INITIALISED.into()));
        hook_finished();
        answer
    }
}

impl<P: Plugin> transform::Guest for Export<P> {
    fn on_publish(client: ClientInfo, message: Message) -> transform::TransformOutcome {
        hook_started();
        let answer = with_instance(|p: &mut P| p.on_publish(&client, message))
            .unwrap_or_else(|| transform::TransformOutcome::Drop(NOT_INITIALISED.into()));
        hook_finished();
        answer
    }
}

/// Answer to a hook called before `init`: the host never does this, but a
/// plugin must still fail closed if it happens.
const NOT_INITIALISED: &str = "plugin called before init";
