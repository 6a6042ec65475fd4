//! Hostile fixture: answers with far more bytes than the host accepts.
//!
//! Behaves well (allow / pass) unless the user name is `evil` or the topic
//! starts with `evil`, so tests can show that the next call after a
//! misbehaving one is served by a fresh instance.

use moat_plugin_sdk::*;

/// The hostile guest.
pub struct Hostile;

/// 256 KiB of text, four times the default 64 KiB answer cap (and small
/// enough to build well within the call deadline).
fn huge() -> String {
    "x".repeat(256 << 10)
}

impl Plugin for Hostile {
    fn init(_config: Config) -> Result<(Self, Manifest), String> {
        Ok((Hostile, Manifest::new().authenticate().authorize().transform(["#"])))
    }

    fn authenticate(&mut self, _client: &ClientInfo, credentials: &Credentials) -> AuthOutcome {
        if credentials.username.as_deref() == Some("evil") {
            return AuthOutcome::Deny(huge());
        }
        AuthOutcome::Allow(Grant::plain())
    }

    fn authorize(&mut self, _client: &ClientInfo, _action: Action, topic: &str, _qos: QoS, _retain: bool) -> Decision {
        if topic.starts_with("evil") {
            return Decision::Deny(huge());
        }
        Decision::Allow(None)
    }

    fn on_publish(&mut self, _client: &ClientInfo, message: Message) -> TransformOutcome {
        if message.topic.starts_with("evil") {
            return TransformOutcome::Replace(Message { payload: huge().into_bytes(), ..message });
        }
        TransformOutcome::Pass
    }
}

export_plugin!(Hostile);
