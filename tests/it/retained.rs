//! Retained messages: store, replace, delete, and v5 retain options.

use bytes::Bytes;
use rumqttc::QoS as Q4;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5::{Filter, RetainForwardRule};

use crate::harness::TestBroker;

#[tokio::test]
async fn mqtt_3_3_1_retained_store_replace_delete() {
    let broker = TestBroker::start().await;
    let publisher = broker.v4("pub").await;
    publisher.client.publish("r/1", Q4::AtLeastOnce, true, "first").await.expect("publish");
    publisher.client.publish("r/1", Q4::AtLeastOnce, true, "second").await.expect("publish");
    publisher.client.publish("r/2", Q4::AtLeastOnce, true, "other").await.expect("publish");
    let mut late = broker.v4("late").await;
    late.subscribe("r/1", Q4::AtLeastOnce).await;
    let got = late.publish().await;
    assert!(got.retain, "[MQTT-3.3.1-8] retained messages are sent with RETAIN set");
    assert_eq!(got.payload.as_ref(), b"second");
    late.no_publish().await;

    // A live message is forwarded with RETAIN cleared [MQTT-3.3.1-9].
    publisher.client.publish("r/1", Q4::AtLeastOnce, true, "third").await.expect("publish");
    let live = late.publish().await;
    assert!(!live.retain);

    // An empty retained payload deletes [MQTT-3.3.1-10].
    publisher.client.publish("r/1", Q4::AtLeastOnce, true, "").await.expect("publish");
    late.publish().await;
    let mut later = broker.v4("later").await;
    later.subscribe("r/#", Q4::AtLeastOnce).await;
    assert_eq!(later.publish().await.payload.as_ref(), b"other");
    later.no_publish().await;
}

#[tokio::test]
async fn mqtt_3_3_1_12_retain_as_published() {
    let broker = TestBroker::start().await;
    let mut rap = broker.v5("rap").await;
    let mut filter = Filter::new("k", Q5::AtMostOnce);
    filter.preserve_retain = true;
    rap.client.subscribe_many([filter]).await.expect("subscribe");
    rap.suback().await;
    let publisher = broker.v5("p").await;
    publisher.client.publish("k", Q5::AtMostOnce, true, "v").await.expect("publish");
    assert!(rap.publish().await.retain);
}

#[tokio::test]
async fn mqtt_3_8_4_retain_handling() {
    let broker = TestBroker::start().await;
    let publisher = broker.v5("p").await;
    publisher.client.publish("h", Q5::AtLeastOnce, true, "kept").await.expect("publish");
    // Wait until the broker has stored it.
    let mut probe = broker.v5("probe").await;
    probe.subscribe("h", Q5::AtMostOnce).await;
    assert_eq!(probe.publish().await.payload, Bytes::from("kept"));

    let mut never = broker.v5("never").await;
    let mut f = Filter::new("h", Q5::AtMostOnce);
    f.retain_forward_rule = RetainForwardRule::Never;
    never.client.subscribe_many([f]).await.expect("subscribe");
    never.suback().await;
    never.no_publish().await;

    let mut if_new = broker.v5("if-new").await;
    let mut f = Filter::new("h", Q5::AtMostOnce);
    f.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
    if_new.client.subscribe_many([f.clone()]).await.expect("subscribe");
    if_new.suback().await;
    assert_eq!(if_new.publish().await.payload, Bytes::from("kept"));
    if_new.client.subscribe_many([f]).await.expect("subscribe again");
    if_new.suback().await;
    if_new.no_publish().await;
}
