//! The broker's timers on virtual time (`start_paused`): a will waits for
//! its delay, a reconnect cancels it, a session lives until its expiry.
//! Hours pass in no time and no machine load can make them late or early.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::Broker;
use crate::auth::Policy;
use crate::codec::{Properties, QoS, TopicName, Will};
use crate::config::Config;
use crate::store::MemoryStore;

fn broker() -> Arc<Broker> {
    Broker::new(Config::default(), Arc::new(MemoryStore::default()), Default::default(), Policy::none())
}

/// A retained will (so the retained store shows when it was published)
/// delayed by `delay_s`.
fn will(delay_s: u32) -> Will {
    Will {
        topic: TopicName::new("wills/dev").expect("valid topic"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: Properties { will_delay_interval: Some(delay_s), ..Properties::default() },
    }
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_1_3_9_a_delayed_will_waits_for_its_delay_and_the_session_for_its_expiry() {
    let broker = broker();
    let client_id: Arc<str> = Arc::from("dev");
    let attached = broker.attach(&client_id, false).await.expect("attach");
    broker.detach(attached, Some(will(30)), 3600);

    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(broker.router.retained().len(), 0, "the will went before its delay");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(broker.router.retained().len(), 1, "the will is published after its delay");

    tokio::time::sleep(Duration::from_secs(3600 - 32)).await;
    assert!(broker.sessions.get("dev").is_some(), "the session ended before its expiry");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(broker.sessions.get("dev").is_none(), "the session outlived its expiry");
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_1_3_9_a_reconnect_within_the_delay_cancels_the_will() {
    let broker = broker();
    let client_id: Arc<str> = Arc::from("dev");
    let attached = broker.attach(&client_id, false).await.expect("attach");
    broker.detach(attached, Some(will(30)), 3600);

    tokio::time::sleep(Duration::from_secs(10)).await;
    let back = broker.attach(&client_id, false).await.expect("attach again");
    assert!(back.present, "the session was kept");
    tokio::time::sleep(Duration::from_secs(3600 * 2)).await;
    assert_eq!(broker.router.retained().len(), 0, "a reconnect cancels the will [MQTT-3.1.3-9]");
    assert!(broker.sessions.get("dev").is_some(), "an attached session does not expire");
}
