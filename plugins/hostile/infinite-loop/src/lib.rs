//! Hostile fixture: spins forever, so only the host's epoch deadline stops it.
//!
//! Behaves well (allow / pass) unless the user name is `evil` or the topic
//! starts with `evil`, so tests can show that the next call after a
//! misbehaving one is served by a fresh instance.

use moat_plugin_sdk::*;

/// The hostile guest.
pub struct Hostile;

/// Never returns: the host must interrupt it.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

impl Plugin for Hostile {
    fn init(_config: Config) -> Result<(Self, Manifest), String> {
        Ok((Hostile, Manifest::new().authenticate().authorize().transform(["#"])))
    }

    fn authenticate(&mut self, _client: &ClientInfo, credentials: &Credentials) -> AuthOutcome {
        if credentials.username.as_deref() == Some("evil") {
            spin()
        }
        AuthOutcome::Allow(Grant::plain())
    }

    fn authorize(&mut self, _client: &ClientInfo, _action: Action, topic: &str, _qos: QoS, _retain: bool) -> Decision {
        if topic.starts_with("evil") {
            spin()
        }
        Decision::Allow(None)
    }

    fn on_publish(&mut self, _client: &ClientInfo, message: Message) -> TransformOutcome {
        if message.topic.starts_with("evil") {
            spin()
        }
        TransformOutcome::Pass
    }
}

export_plugin!(Hostile);
