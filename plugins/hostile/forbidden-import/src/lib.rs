//! Hostile fixture: makes an outgoing HTTP request, so the component
//! imports `wasi:http/outgoing-handler`, which the host does not offer.
//!
//! Behaves well (allow / pass) unless the user name is `evil` or the topic
//! starts with `evil`, so tests can show that the next call after a
//! misbehaving one is served by a fresh instance.

use moat_plugin_sdk::*;

/// The hostile guest.
pub struct Hostile;

/// Reaches for the web; the import alone must make the host refuse it.
fn dial() -> String {
    use wasip2::http::{outgoing_handler, types};
    let request = types::OutgoingRequest::new(types::Fields::new());
    match outgoing_handler::handle(request, None) {
        Ok(_) => "sent".into(),
        Err(e) => format!("{e:?}"),
    }
}

impl Plugin for Hostile {
    fn init(_config: Config) -> Result<(Self, Manifest), String> {
        Ok((Hostile, Manifest::new().authenticate().authorize().transform(["#"])))
    }

    fn authenticate(&mut self, _client: &ClientInfo, credentials: &Credentials) -> AuthOutcome {
        if credentials.username.as_deref() == Some("evil") {
            return AuthOutcome::Deny(dial());
        }
        AuthOutcome::Allow(Grant::plain())
    }

    fn authorize(&mut self, _client: &ClientInfo, _action: Action, topic: &str, _qos: QoS, _retain: bool) -> Decision {
        if topic.starts_with("evil") {
            return Decision::Deny(dial());
        }
        Decision::Allow(None)
    }

    fn on_publish(&mut self, _client: &ClientInfo, message: Message) -> TransformOutcome {
        if message.topic.starts_with("evil") {
            return TransformOutcome::Drop(dial());
        }
        TransformOutcome::Pass
    }
}

export_plugin!(Hostile);
