//! `$SYS/broker/...`: the counters Mosquitto users know, published by the
//! broker as retained messages every `[sys] interval_s`.
//!
//! They go through the normal router, so whoever may read them is decided
//! by the same authorization as any topic: a subscription to `$SYS/#` needs
//! the policy's `subscribe` (and `receive`) permission. Clients cannot
//! publish under `$SYS` themselves (see `connection::inbound`). The values come from the broker's
//! counters and [`Broker::gauges`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::broker::Broker;
use crate::codec::{Properties, QoS, TopicName};
use crate::message::Message;

/// The broker's version, as `$SYS/broker/version` says it.
pub const VERSION: &str = concat!("moat ", env!("CARGO_PKG_VERSION"));

/// Publishes the `$SYS` topics every `interval` until the broker shuts down.
pub async fn run(broker: Arc<Broker>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => publish(&broker),
            () = broker.shutdown.cancelled() => return,
        }
    }
}

/// The topics and values now.
pub fn topics(broker: &Broker) -> Vec<(&'static str, String)> {
    let s = broker.metrics.snapshot();
    let gauges = broker.gauges();
    let mut topics = vec![
        ("$SYS/broker/version", VERSION.to_owned()),
        ("$SYS/broker/uptime", format!("{} seconds", s.uptime_s)),
        ("$SYS/broker/clients/connected", s.connections_current.to_string()),
        ("$SYS/broker/clients/total", gauges.sessions.to_string()),
        ("$SYS/broker/clients/maximum", broker.config().limits.max_connections.to_string()),
        ("$SYS/broker/messages/received", s.received_total().to_string()),
        ("$SYS/broker/messages/sent", s.sent_total().to_string()),
        ("$SYS/broker/publish/messages/received", s.received_total().to_string()),
        ("$SYS/broker/publish/messages/sent", s.sent_total().to_string()),
        ("$SYS/broker/publish/messages/dropped", s.dropped.iter().sum::<u64>().to_string()),
        ("$SYS/broker/bytes/received", s.bytes_received.to_string()),
        ("$SYS/broker/bytes/sent", s.bytes_sent.to_string()),
        ("$SYS/broker/retained messages/count", gauges.retained.to_string()),
        ("$SYS/broker/subscriptions/count", gauges.subscriptions.to_string()),
        ("$SYS/broker/clients/refused", s.refused.iter().sum::<u64>().to_string()),
    ];
    for (limit, n) in crate::metrics::Limit::ALL.iter().zip(s.limit_hits) {
        topics.push((limit.sys_topic(), n.to_string()));
    }
    topics
}

/// Publishes every `$SYS` topic once, retained.
pub fn publish(broker: &Broker) {
    for (topic, value) in topics(broker) {
        // The names above are constants and valid topic names; a failure
        // would be a typo caught by the tests, not a runtime condition.
        let Ok(topic) = TopicName::new(topic) else { continue };
        let message = Message::new(topic, Bytes::from(value), QoS::AtMostOnce, true, &Properties::default());
        broker.publish_system(message);
    }
}
