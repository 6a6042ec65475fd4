//! A connection's log of authorization refusals.
//!
//! An operator asking "why was this publish refused?" needs one line naming
//! the client, the action, the topic, the plugin that decided and its
//! reason, at the default level. A client retrying a forbidden publish in a
//! loop must not flood the log with them, so each connection logs at most
//! one such line per [`DenialLog::EVERY`] and the next line says how many
//! went unlogged. Only a plugin's actual answer reaches this: denials are
//! never cached, and an allowed action logs nothing.

use std::time::{Duration, Instant};

use super::{Action, ClientInfo, Denial};
use crate::untrusted::Untrusted;

/// One connection's refusal lines: when it last wrote one, and how many
/// refusals since went unlogged. Owned by the connection task (no lock).
#[derive(Debug, Default)]
pub struct DenialLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl DenialLog {
    /// At most one line per connection in this interval.
    pub const EVERY: Duration = Duration::from_secs(1);

    /// Logs `denial` of `action` on `topic` at `info`, unless this
    /// connection logged one less than [`DenialLog::EVERY`] before `now`
    /// (then it is counted, and the next line says how many were).
    pub fn record(&mut self, now: Instant, client: &ClientInfo, action: Action, topic: &str, denial: &Denial) {
        let Some(unlogged) = self.admit(now) else { return };
        let unlogged = (unlogged > 0).then_some(unlogged);
        let client_id = Untrusted(&client.client_id);
        let username = Untrusted::field(client.username.as_deref());
        // Free text goes quoted (and escaped) as `&str` fields; names and
        // topics through `Untrusted`, unquoted like the broker's other lines.
        let (action, topic) = (action.name(), Untrusted(topic));
        match denial {
            Denial::Denied { plugin, reason } => tracing::info!(
                %client_id, username, %action, %topic, plugin = &**plugin, reason = reason.as_str(), unlogged,
                "not authorized: denied by plugin"
            ),
            Denial::Failed { plugin, failure } => tracing::info!(
                %client_id, username, %action, %topic, plugin = &**plugin, failure = %failure.kind(),
                cause = failure.to_string().as_str(), unlogged,
                "not authorized: the plugin's call failed"
            ),
            Denial::Unanswered => tracing::info!(
                %client_id, username, %action, %topic, unlogged,
                "not authorized: no plugin allowed it (every authorizer ignored it)"
            ),
        }
    }

    /// Whether a line may be written at `now`; if so, how many refusals
    /// went unlogged before it.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if let Some(last) = self.last
            && now.saturating_duration_since(last) < Self::EVERY
        {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_then_the_count_of_the_rest() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut log = DenialLog::default();
        assert_eq!(log.admit(at(0)), Some(0));
        assert_eq!(log.admit(at(1)), None);
        assert_eq!(log.admit(at(999)), None);
        assert_eq!(log.admit(at(1000)), Some(2));
        assert_eq!(log.admit(at(1500)), None);
        assert_eq!(log.admit(at(5000)), Some(1));
        assert_eq!(log.admit(at(6000)), Some(0));
    }
}
