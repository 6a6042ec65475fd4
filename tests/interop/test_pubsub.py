"""PUBLISH -> SUBSCRIBE across client kinds, QoS 0/1/2, payload integrity."""

import os

import pytest

from helpers import MosquittoSub, MqttJsSub, mosquitto_pub, mqttjs_pub

# 256 byte values, then a non-repeating pseudo-random tail: catches any
# text decoding, NUL truncation or newline mangling on the way.
BINARY = bytes(range(256)) + bytes((i * 131 + 7) % 256 for i in range(1024)) + b"\x00\r\n\x00"

PAIRS = ["paho->paho", "paho->mosquitto_sub", "mosquitto_pub->paho", "mqttjs->paho", "paho->mqttjs"]


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("pair", PAIRS)
def test_publish_subscribe_binary(broker, paho, procs, proto, topic, qos, pair):
    t = f"{topic}/data"
    payloads = [BINARY, b"text payload " + os.urandom(8).hex().encode()]
    sender, receiver = pair.split("->")

    # --- start the receiver and wait until its subscription is acknowledged
    if receiver == "paho":
        sub = paho(proto)
        granted = sub.subscribe(t, qos=qos)
        assert granted == [qos]
    elif receiver == "mosquitto_sub":
        sub = MosquittoSub(broker, proto, [t], count=len(payloads), qos=qos)
        procs.append(sub)
        sub.wait_subscribed()
    else:
        sub = MqttJsSub(broker, proto, [{"topic": t, "qos": qos}], count=len(payloads))
        procs.append(sub)
        assert sub.wait_subscribed() == [qos]

    # --- publish
    if sender == "paho":
        pub = paho(proto)
        for p in payloads:
            pub.publish(t, p, qos=qos)
    elif sender == "mosquitto_pub":
        for p in payloads:
            mosquitto_pub(broker, proto, t, p, qos=qos)
    else:
        mqttjs_pub(broker, proto, [{"topic": t, "payload": p, "qos": qos} for p in payloads])

    # --- check
    if receiver == "paho":
        got = sub.messages.wait_count(len(payloads))
    else:
        got = sub.results()
    assert [m.payload for m in got] == payloads
    assert all(m.topic == t for m in got)
    assert all(m.qos == qos for m in got), [m.qos for m in got]
    assert not any(m.retain for m in got)


@pytest.mark.parametrize("sub_qos,pub_qos", [(0, 2), (1, 2), (2, 0), (1, 0)])
def test_delivery_qos_is_minimum(paho, proto, topic, sub_qos, pub_qos):
    t = f"{topic}/min"
    sub = paho(proto)
    sub.subscribe(t, qos=sub_qos)
    pub = paho(proto)
    pub.publish(t, b"x", qos=pub_qos)
    (m,) = sub.messages.wait_count(1)
    assert m.qos == min(sub_qos, pub_qos)


def test_empty_payload(paho, proto, topic):
    t = f"{topic}/empty"
    sub = paho(proto)
    sub.subscribe(t, qos=1)
    pub = paho(proto)
    pub.publish(t, b"", qos=1)
    (m,) = sub.messages.wait_count(1)
    assert m.payload == b""


def test_large_payload(paho, proto, topic):
    t = f"{topic}/large"
    big = os.urandom(256 * 1024)
    sub = paho(proto)
    sub.subscribe(t, qos=1)
    pub = paho(proto)
    pub.publish(t, big, qos=1)
    (m,) = sub.messages.wait_count(1)
    assert m.payload == big


def test_many_messages_keep_order(paho, proto, topic):
    t = f"{topic}/order"
    sub = paho(proto)
    sub.subscribe(t, qos=1)
    pub = paho(proto)
    n = 200
    for i in range(n):
        pub.c.publish(t, str(i).encode(), qos=1)
    got = sub.messages.wait_count(n, timeout=15)
    assert [int(m.payload) for m in got] == list(range(n))


def test_fan_out_to_many_subscribers(paho, proto, topic):
    t = f"{topic}/fan"
    subs = [paho(proto) for _ in range(5)]
    for s in subs:
        s.subscribe(t, qos=1)
    pub = paho(proto)
    pub.publish(t, b"all", qos=1)
    for s in subs:
        (m,) = s.messages.wait_count(1)
        assert m.payload == b"all"


def test_unsubscribe_stops_delivery(paho, proto, topic):
    t = f"{topic}/unsub"
    sub = paho(proto)
    sub.subscribe(t, qos=1)
    pub = paho(proto)
    pub.publish(t, b"one", qos=1)
    sub.messages.wait_count(1)
    done = sub.c.unsubscribe(t)
    assert done[0] == 0
    # UNSUBACK is observable through a marker subscription made afterwards on
    # the same connection: once its SUBACK is back, the UNSUBSCRIBE was handled.
    sub.subscribe(f"{topic}/marker", qos=1)
    pub.publish(t, b"two", qos=1)
    pub.publish(f"{topic}/marker", b"end", qos=1)
    got = sub.messages.wait_payload(b"end")
    assert [m.payload for m in got] == [b"one", b"end"]
