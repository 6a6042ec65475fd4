"""Retained messages: set, later subscribers get it, replace, clear."""

from helpers import MosquittoSub, MqttJsSub, mosquitto_pub, mqttjs_pub


def absent_retained(sub, topic_filter: str, marker_topic: str) -> list:
    """Subscribe to `topic_filter`, then to `marker_topic` (which holds a
    retained marker) in a second SUBSCRIBE.  Retained messages for the first
    filter are sent before the second SUBACK's retained marker, so once the
    marker arrives everything retained for `topic_filter` has arrived too."""
    sub.subscribe(topic_filter, qos=1)
    sub.subscribe(marker_topic, qos=1)
    got = sub.messages.wait_until(lambda ms: any(m.topic == marker_topic for m in ms))
    return [m for m in got if m.topic != marker_topic]


def test_retained_lifecycle(paho, proto, topic):
    t = f"{topic}/state"
    marker = f"{topic}/marker"
    pub = paho(proto)
    pub.publish(marker, b"M", qos=1, retain=True)

    # set
    pub.publish(t, b"v1", qos=1, retain=True)
    s1 = paho(proto)
    s1.subscribe(t, qos=1)
    (m,) = s1.messages.wait_count(1)
    assert (m.payload, m.retain) == (b"v1", True)

    # live publish with retain to an existing subscriber: retain flag cleared
    # (3.1.1 [MQTT-3.3.1-9]; v5 default Retain As Published = 0)
    pub.publish(t, b"v2", qos=1, retain=True)
    got = s1.messages.wait_count(2)
    assert (got[1].payload, got[1].retain) == (b"v2", False)

    # replace: a new subscriber sees only the latest value
    s2 = paho(proto)
    s2.subscribe(t, qos=1)
    got = s2.messages.wait_count(1)
    assert [(m.payload, m.retain) for m in got] == [(b"v2", True)]

    # clear with an empty retained payload
    pub.publish(t, b"", qos=1, retain=True)
    s3 = paho(proto)
    assert absent_retained(s3, t, marker) == []
    pub.publish(marker, b"", qos=1, retain=True)


def test_retained_delivered_with_min_qos(paho, proto, topic):
    t = f"{topic}/q"
    pub = paho(proto)
    pub.publish(t, b"q2", qos=2, retain=True)
    s = paho(proto)
    s.subscribe(t, qos=1)
    (m,) = s.messages.wait_count(1)
    assert (m.payload, m.qos, m.retain) == (b"q2", 1, True)
    pub.publish(t, b"", qos=1, retain=True)


def test_retained_wildcard_gets_all(paho, proto, topic):
    pub = paho(proto)
    topics = [f"{topic}/r/a", f"{topic}/r/b", f"{topic}/r/c/d"]
    for i, t in enumerate(topics):
        pub.publish(t, str(i).encode(), qos=1, retain=True)
    s = paho(proto)
    s.subscribe(f"{topic}/r/#", qos=1)
    got = s.messages.wait_count(3)
    assert sorted((m.topic, m.payload) for m in got) == sorted((t, str(i).encode()) for i, t in enumerate(topics))
    assert all(m.retain for m in got)
    for t in topics:
        pub.publish(t, b"", qos=1, retain=True)


def test_retained_mosquitto_pub_to_mosquitto_sub(broker, procs, proto, topic):
    t = f"{topic}/mq"
    mosquitto_pub(broker, proto, t, b"\x00retained\xff", qos=1, retain=True)
    sub = MosquittoSub(broker, proto, [t], count=1, qos=1)
    procs.append(sub)
    (m,) = sub.results()
    assert (m.payload, m.retain) == (b"\x00retained\xff", True)
    mosquitto_pub(broker, proto, t, b"", qos=1, retain=True)


def test_retained_mqttjs_to_paho_and_back(broker, paho, procs, proto, topic):
    t = f"{topic}/js"
    mqttjs_pub(broker, proto, [{"topic": t, "payload": b"from-js", "qos": 1, "retain": True}])
    s = paho(proto)
    s.subscribe(t, qos=1)
    (m,) = s.messages.wait_count(1)
    assert (m.payload, m.retain) == (b"from-js", True)

    p = paho(proto)
    p.publish(t, b"from-paho", qos=1, retain=True)
    js = MqttJsSub(broker, proto, [{"topic": t, "qos": 1}], count=1)
    procs.append(js)
    (m,) = js.results()
    assert (m.payload, m.retain) == (b"from-paho", True)
    p.publish(t, b"", qos=1, retain=True)
