//! Hostile fixture: panics, which traps the instance.
//!
//! Behaves well (allow / pass) unless the user name is `evil` or the topic
//! starts with `evil`, so tests can show that the next call after a
//! misbehaving one is served by a fresh instance.

use moat_plugin_sdk::*;

/// The hostile guest.
pub struct Hostile;

/// Panics: a trapped instance is dead and the host must replace it.
fn boom() -> ! {
    panic!("hostile guest panics on purpose")
}

impl Plugin for Hostile {
    fn init(_config: Config) -> Result<(Self, Manifest), String> {
        Ok((Hostile, Manifest::new().authenticate().authorize().transform(["#"])))
    }

    fn authenticate(&mut self, _client: &ClientInfo, credentials: &Credentials) -> AuthOutcome {
        if credentials.username.as_deref() == Some("evil") {
            boom()
        }
        AuthOutcome::Allow(Grant::plain())
    }

    fn authorize(&mut self, _client: &ClientInfo, _action: Action, topic: &str, _qos: QoS, _retain: bool) -> Decision {
        if topic.starts_with("evil") {
            boom()
        }
        Decision::Allow(None)
    }

    fn on_publish(&mut self, _client: &ClientInfo, message: Message) -> TransformOutcome {
        if message.topic.starts_with("evil") {
            boom()
        }
        TransformOutcome::Pass
    }
}

export_plugin!(Hostile);
