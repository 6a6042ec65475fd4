//! Transformer: upper-cases the payload of publishes on the topic filters
//! in `config.filters` (default `["upper/#"]`).

use moat_plugin_sdk::*;

/// Stateless: the broker only calls it for the declared filters.
pub struct PayloadUpper;

impl Plugin for PayloadUpper {
    fn init(config: Config) -> Result<(Self, Manifest), String> {
        let mut filters = config.strings("filters")?;
        if filters.is_empty() {
            filters.push("upper/#".into());
        }
        Ok((PayloadUpper, Manifest::new().transform(filters)))
    }

    fn on_publish(&mut self, _client: &ClientInfo, mut message: Message) -> TransformOutcome {
        message.payload.make_ascii_uppercase();
        message.user_properties.push(("transformed-by".into(), "payload-upper".into()));
        TransformOutcome::Replace(message)
    }
}

export_plugin!(PayloadUpper);
