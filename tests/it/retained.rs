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

#[tokio::test]
async fn every_retained_message_reaches_a_new_subscriber_beyond_the_queue_bound() {
    // The queue bound is for live messages arriving faster than a client
    // reads; a `#` subscription owed more retained messages gets them all.
    let broker = TestBroker::with(|c| {
        c.limits.max_queued_messages = 10;
        c.limits.max_inflight = 4;
    })
    .await;
    let mut publisher = broker.v5("p").await;
    const N: usize = 100;
    for i in 0..N {
        let qos = if i % 2 == 0 { Q5::AtMostOnce } else { Q5::AtLeastOnce };
        publisher.client.publish(format!("many/{i:03}"), qos, true, format!("{i}")).await.expect("publish");
    }
    // A round trip through the broker after the last publish: all stored.
    publisher.subscribe("many/099", Q5::AtMostOnce).await;
    assert_eq!(publisher.publish().await.payload, Bytes::from("99"));
    for qos in [Q5::AtMostOnce, Q5::AtLeastOnce] {
        let mut late = broker.v5(&format!("late-{qos:?}")).await;
        late.subscribe("many/#", qos).await;
        let mut got = Vec::with_capacity(N);
        for _ in 0..N {
            let p = late.publish().await;
            assert!(p.retain);
            got.push(String::from_utf8(p.payload.to_vec()).expect("utf-8"));
        }
        got.sort_by_key(|s| s.parse::<usize>().expect("number"));
        assert_eq!(got, (0..N).map(|i| i.to_string()).collect::<Vec<_>>());
        late.no_publish().await;
    }
    assert_eq!(broker.broker.metrics.drops(moat::metrics::DropReason::QueueFull), 0);
}
