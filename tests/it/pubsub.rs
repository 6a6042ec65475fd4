//! Publish and subscribe at every QoS on both protocol versions.

use bytes::Bytes;
use rumqttc::QoS as Q4;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5::{Filter, PublishProperties, SubscribeProperties};

use crate::harness::TestBroker;

#[tokio::test]
async fn v311_qos_0_1_2_delivered_with_payload_intact() {
    let broker = TestBroker::start().await;
    let mut sub = broker.v4("sub").await;
    sub.subscribe("a/b", Q4::ExactlyOnce).await;
    let publisher = broker.v4("pub").await;
    let payload: Vec<u8> = (0..=255).collect();
    for qos in [Q4::AtMostOnce, Q4::AtLeastOnce, Q4::ExactlyOnce] {
        publisher.client.publish("a/b", qos, false, payload.clone()).await.expect("publish");
        let got = sub.publish().await;
        assert_eq!(got.qos, qos);
        assert_eq!(&got.topic, "a/b");
        assert_eq!(got.payload.as_ref(), payload.as_slice());
        assert!(!got.retain);
    }
}

#[tokio::test]
async fn v5_qos_0_1_2_delivered() {
    let broker = TestBroker::start().await;
    let mut sub = broker.v5("sub5").await;
    sub.subscribe("x/y", Q5::ExactlyOnce).await;
    let publisher = broker.v5("pub5").await;
    for qos in [Q5::AtMostOnce, Q5::AtLeastOnce, Q5::ExactlyOnce] {
        publisher.client.publish("x/y", qos, false, "hello").await.expect("publish");
        let got = sub.publish().await;
        assert_eq!(got.qos, qos);
        assert_eq!(got.topic, Bytes::from("x/y"));
        assert_eq!(got.payload, Bytes::from("hello"));
    }
}

#[tokio::test]
async fn mqtt_3_8_4_6_qos_downgraded_to_granted() {
    let broker = TestBroker::start().await;
    let mut sub = broker.v4("low").await;
    sub.subscribe("t", Q4::AtMostOnce).await;
    let publisher = broker.v4("high").await;
    publisher.client.publish("t", Q4::ExactlyOnce, false, "m").await.expect("publish");
    assert_eq!(sub.publish().await.qos, Q4::AtMostOnce);
}

#[tokio::test]
async fn mqtt_4_7_wildcards_and_dollar_topics() {
    let broker = TestBroker::start().await;
    let mut hash = broker.v4("hash").await;
    hash.subscribe("sport/#", Q4::AtMostOnce).await;
    let mut plus = broker.v4("plus").await;
    plus.subscribe("+/tennis", Q4::AtMostOnce).await;
    let mut all = broker.v4("all").await;
    all.subscribe("#", Q4::AtMostOnce).await;
    let publisher = broker.v4("p").await;
    publisher.client.publish("sport", Q4::AtMostOnce, false, "1").await.expect("publish");
    assert_eq!(hash.publish().await.topic, "sport");
    assert_eq!(all.publish().await.topic, "sport");
    publisher.client.publish("sport/tennis", Q4::AtMostOnce, false, "2").await.expect("publish");
    assert_eq!(hash.publish().await.topic, "sport/tennis");
    assert_eq!(plus.publish().await.topic, "sport/tennis");
    assert_eq!(all.publish().await.topic, "sport/tennis");
    publisher.client.publish("$SYS/tennis", Q4::AtMostOnce, false, "3").await.expect("publish");
    all.no_publish().await;
    plus.no_publish().await;
}

#[tokio::test]
async fn mqtt_3_3_4_2_overlapping_subscriptions_one_copy_at_max_qos() {
    let broker = TestBroker::start().await;
    let mut sub = broker.v5("overlap").await;
    let props = SubscribeProperties { id: Some(7), user_properties: vec![] };
    sub.client.subscribe_with_properties("a/+", Q5::AtMostOnce, props).await.expect("subscribe");
    sub.suback().await;
    let props = SubscribeProperties { id: Some(9), user_properties: vec![] };
    sub.client.subscribe_with_properties("a/#", Q5::AtLeastOnce, props).await.expect("subscribe");
    sub.suback().await;
    let publisher = broker.v5("p").await;
    publisher.client.publish("a/b", Q5::AtLeastOnce, false, "m").await.expect("publish");
    let got = sub.publish().await;
    assert_eq!(got.qos, Q5::AtLeastOnce);
    let mut ids = got.properties.expect("properties").subscription_identifiers;
    ids.sort_unstable();
    assert_eq!(ids, [7, 9]);
    sub.no_publish().await;
}

#[tokio::test]
async fn mqtt_3_8_3_3_no_local() {
    let broker = TestBroker::start().await;
    let mut me = broker.v5("me").await;
    let mut filter = Filter::new("chat", Q5::AtMostOnce);
    filter.nolocal = true;
    me.client.subscribe_many([filter]).await.expect("subscribe");
    me.suback().await;
    me.client.publish("chat", Q5::AtMostOnce, false, "mine").await.expect("publish");
    me.no_publish().await;
    let other = broker.v5("other").await;
    other.client.publish("chat", Q5::AtMostOnce, false, "theirs").await.expect("publish");
    assert_eq!(me.publish().await.payload, Bytes::from("theirs"));
}

#[tokio::test]
async fn v5_properties_pass_through_and_expiry_counts_down() {
    let broker = TestBroker::start().await;
    let mut sub = broker.v5("props-sub").await;
    sub.subscribe("req", Q5::AtLeastOnce).await;
    let publisher = broker.v5("props-pub").await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(100),
        response_topic: Some("resp/1".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01")),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        content_type: Some("text/plain".into()),
        ..PublishProperties::default()
    };
    publisher.client.publish_with_properties("req", Q5::AtLeastOnce, false, "q", props).await.expect("publish");
    let got = sub.publish().await.properties.expect("properties");
    assert_eq!(got.payload_format_indicator, Some(1));
    assert!(got.message_expiry_interval.is_some_and(|s| (99..=100).contains(&s)));
    assert_eq!(got.response_topic.as_deref(), Some("resp/1"));
    assert_eq!(got.correlation_data, Some(Bytes::from_static(b"\x00\x01")));
    assert_eq!(got.user_properties, [("k".into(), "v".into()), ("k".into(), "w".into())]);
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
}

#[tokio::test]
async fn v5_topic_alias_from_client() {
    let broker = TestBroker::start().await;
    let mut sub = broker.v5("alias-sub").await;
    sub.subscribe("long/topic/name", Q5::AtMostOnce).await;
    let publisher = broker.v5("alias-pub").await;
    let with_alias = PublishProperties { topic_alias: Some(1), ..PublishProperties::default() };
    publisher
        .client
        .publish_with_properties("long/topic/name", Q5::AtMostOnce, false, "1", with_alias.clone())
        .await
        .expect("publish");
    publisher.client.publish_with_properties("", Q5::AtMostOnce, false, "2", with_alias).await.expect("publish");
    assert_eq!(sub.publish().await.payload, Bytes::from("1"));
    let second = sub.publish().await;
    assert_eq!(second.topic, Bytes::from("long/topic/name"));
    assert_eq!(second.payload, Bytes::from("2"));
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let broker = TestBroker::start().await;
    let mut sub = broker.v4("unsub").await;
    sub.subscribe("u/#", Q4::AtMostOnce).await;
    sub.client.unsubscribe("u/#").await.expect("unsubscribe");
    loop {
        if let Some(rumqttc::Packet::UnsubAck(_)) = sub.next().await {
            break;
        }
    }
    let publisher = broker.v4("p").await;
    publisher.client.publish("u/1", Q4::AtMostOnce, false, "x").await.expect("publish");
    sub.no_publish().await;
    assert_eq!(broker.broker.router.subscription_count(), 0);
}
