//! Shared subscriptions `$share/{group}/{filter}`.

use rumqttc::v5::mqttbytes::QoS as Q5;

use crate::harness::TestBroker;

#[tokio::test]
async fn mqtt_4_8_2_each_message_to_one_member_per_group() {
    let broker = TestBroker::start().await;
    let mut a = broker.v5("a").await;
    let mut b = broker.v5("b").await;
    let mut other = broker.v5("other-group").await;
    a.subscribe("$share/g/jobs/+", Q5::AtLeastOnce).await;
    b.subscribe("$share/g/jobs/+", Q5::AtLeastOnce).await;
    other.subscribe("$share/h/jobs/+", Q5::AtLeastOnce).await;
    let publisher = broker.v5("p").await;
    for i in 0..10 {
        publisher.client.publish(format!("jobs/{i}"), Q5::AtLeastOnce, false, "w").await.expect("publish");
    }
    let mut got_a = 0;
    let mut got_b = 0;
    for _ in 0..10 {
        other.publish().await;
    }
    while got_a + got_b < 10 {
        tokio::select! {
            _ = a.publish() => got_a += 1,
            _ = b.publish() => got_b += 1,
        }
    }
    a.no_publish().await;
    b.no_publish().await;
    assert!(got_a > 0 && got_b > 0, "both members served: {got_a} / {got_b}");
}

#[tokio::test]
async fn v311_clients_may_use_shared_subscriptions() {
    let broker = TestBroker::start().await;
    let mut sub = broker.v4("legacy").await;
    sub.subscribe("$share/g/t", rumqttc::QoS::AtMostOnce).await;
    let publisher = broker.v4("p").await;
    publisher.client.publish("t", rumqttc::QoS::AtMostOnce, false, "x").await.expect("publish");
    assert_eq!(sub.publish().await.topic, "t");
}
