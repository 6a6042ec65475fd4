"""MQTT 5 specifics: properties pass-through, expiry, subscription options."""

import threading
import time

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from helpers import V5, V311, MqttJsSub, mqttjs_pub, publish_props


def test_suback_codes(paho, proto, topic):
    """SUBACK carries one code per filter: the granted QoS (v3.1.1 and v5)."""
    s = paho(proto)
    codes = s.subscribe([(f"{topic}/q0", 0), (f"{topic}/q1", 1), (f"{topic}/q2", 2), (f"{topic}/w/#", 2)])
    assert codes == [0, 1, 2, 2]


def test_unsuback_reason_codes_v5(paho, topic):
    s = paho(V5)
    s.subscribe(f"{topic}/a", qos=1)
    done = threading.Event()
    codes = []

    def on_unsubscribe(client, userdata, mid, reason_code_list, properties):
        codes.extend(rc.value for rc in reason_code_list)
        done.set()

    s.c.on_unsubscribe = on_unsubscribe
    s.c.unsubscribe([f"{topic}/a", f"{topic}/never"])
    assert done.wait(5), "no UNSUBACK"
    assert codes[0] == 0x00
    # 0x11 'No subscription existed' is the precise answer; 0x00 is tolerated.
    assert codes[1] in (0x00, 0x11)


def test_properties_pass_through_paho(paho, topic):
    t = f"{topic}/props"
    sub = paho(V5)
    sub.subscribe(t, qos=1)
    pub = paho(V5)
    props = publish_props(
        UserProperty=[("trace", "abc-123"), ("trace", "dup-key-ok"), ("unicode", "héllo ✓")],
        ContentType="application/json",
        ResponseTopic=f"{topic}/reply",
        CorrelationData=b"\x00\x01corr\xff",
        PayloadFormatIndicator=1,
    )
    pub.publish(t, b'{"a":1}', qos=1, properties=props)
    (m,) = sub.messages.wait_count(1)
    p = m.properties
    # user properties: order and duplicates preserved [MQTT-3.3.2-18]
    assert p["UserProperty"] == [("trace", "abc-123"), ("trace", "dup-key-ok"), ("unicode", "héllo ✓")]
    assert p["ContentType"] == "application/json"
    assert p["ResponseTopic"] == f"{topic}/reply"
    assert p["CorrelationData"] == b"\x00\x01corr\xff"
    assert p["PayloadFormatIndicator"] == 1


def test_request_response(paho, topic):
    """A responder answers on the request's response topic with its correlation data."""
    req_t, resp_t = f"{topic}/req", f"{topic}/resp"
    responder = paho(V5)

    def on_request(client, userdata, message):
        rp = message.properties
        client.publish(
            rp.ResponseTopic, b"pong:" + message.payload, qos=1, properties=publish_props(CorrelationData=rp.CorrelationData)
        )

    responder.c.message_callback_add(req_t, on_request)
    responder.subscribe(req_t, qos=1)
    requester = paho(V5)
    requester.subscribe(resp_t, qos=1)
    requester.publish(req_t, b"ping", qos=1, properties=publish_props(ResponseTopic=resp_t, CorrelationData=b"id-42"))
    (m,) = requester.messages.wait_count(1)
    assert m.payload == b"pong:ping"
    assert m.properties["CorrelationData"] == b"id-42"


def test_properties_pass_through_mqttjs(broker, paho, procs, topic):
    """MQTT.js -> paho and paho -> MQTT.js keep v5 properties."""
    t = f"{topic}/jsprops"
    sub = paho(V5)
    sub.subscribe(t, qos=1)
    mqttjs_pub(
        broker,
        V5,
        [{
            "topic": t, "payload": b"x", "qos": 1,
            "properties": {"userProperties": {"k": "v"}, "contentType": "text/plain",
                           "responseTopic": f"{topic}/r", "correlation_hex": "00ff10"},
        }],
    )
    (m,) = sub.messages.wait_count(1)
    assert ("k", "v") in m.properties["UserProperty"]
    assert m.properties["ContentType"] == "text/plain"
    assert m.properties["ResponseTopic"] == f"{topic}/r"
    assert m.properties["CorrelationData"] == b"\x00\xff\x10"

    js = MqttJsSub(broker, V5, [{"topic": t, "qos": 1}], count=1)
    procs.append(js)
    js.wait_subscribed()
    pub = paho(V5)
    pub.publish(t, b"y", qos=1, properties=publish_props(
        UserProperty=[("a", "1")], ContentType="ct", ResponseTopic=f"{topic}/r2", CorrelationData=b"\x01\x02"))
    (jm,) = js.results()
    jp = jm.properties
    assert jp["userProperties"] == {"a": "1"}
    assert jp["contentType"] == "ct"
    assert jp["responseTopic"] == f"{topic}/r2"
    assert jp["correlationData"] == {"hex": "0102"}


def test_message_expiry_retained_and_queued(paho, topic, uid):
    """Message Expiry Interval: an expired retained message is not delivered,
    an expired queued message is not delivered, a live one carries the
    remaining lifetime."""
    t_ret, t_q = f"{topic}/exp-ret", f"{topic}/exp-q"
    cid = f"exp-{uid}"
    offline = paho(V5, client_id=cid, clean=True, session_expiry=300)
    offline.subscribe(t_q, qos=1)
    offline.disconnect()

    pub = paho(V5)
    pub.publish(t_ret, b"short", qos=1, retain=True, properties=publish_props(MessageExpiryInterval=1))
    pub.publish(t_q, b"short", qos=1, properties=publish_props(MessageExpiryInterval=1))
    pub.publish(f"{topic}/exp-long", b"long", qos=1, retain=True, properties=publish_props(MessageExpiryInterval=100))
    time.sleep(2.5)  # the passage of time is what is under test
    pub.publish(t_q, b"fresh", qos=1)

    s = paho(V5)
    s.subscribe(t_ret, qos=1)
    s.subscribe(f"{topic}/exp-long", qos=1)  # its retained message is the marker
    got = s.messages.wait_until(lambda ms: any(m.payload == b"long" for m in ms))
    assert [m.payload for m in got] == [b"long"], "expired retained message was delivered"
    remaining = got[0].properties.get("MessageExpiryInterval")
    assert remaining is not None and remaining <= 98, f"expiry not decremented: {remaining}"

    back = paho(V5, client_id=cid, clean=False, session_expiry=0)
    got = back.messages.wait_payload(b"fresh")
    assert [m.payload for m in got] == [b"fresh"], "expired queued message was delivered"
    pub.publish(f"{topic}/exp-long", b"", qos=1, retain=True)


def test_subscription_identifier(paho, topic):
    t = f"{topic}/sid"
    s = paho(V5)
    sp = Properties(PacketTypes.SUBSCRIBE)
    sp.SubscriptionIdentifier = 42
    s.subscribe([(f"{topic}/+", 1)], properties=sp)
    sp2 = Properties(PacketTypes.SUBSCRIBE)
    sp2.SubscriptionIdentifier = 7
    s.subscribe([(f"{topic}/other", 1)], properties=sp2)
    pub = paho(V5)
    pub.publish(t, b"x", qos=1)
    (m,) = s.messages.wait_count(1)
    assert m.properties.get("SubscriptionIdentifier") == [42]


def test_no_local(paho, topic):
    t, marker = f"{topic}/nl", f"{topic}/marker"
    c = paho(V5)
    c.subscribe([(t, SubscribeOptions(qos=1, noLocal=True)), (marker, SubscribeOptions(qos=1))])
    c.publish(t, b"own", qos=1)
    c.publish(marker, b"END", qos=1)
    got = c.messages.wait_payload(b"END")
    assert [m.payload for m in got] == [b"END"], "no-local subscription got the client's own message"
    other = paho(V5)
    other.publish(t, b"foreign", qos=1)
    c.messages.wait_payload(b"foreign")


def test_retain_as_published(paho, topic):
    t = f"{topic}/rap"
    rap = paho(V5)
    rap.subscribe([(t, SubscribeOptions(qos=1, retainAsPublished=True))])
    plain = paho(V5)
    plain.subscribe([(t, SubscribeOptions(qos=1, retainAsPublished=False))])
    pub = paho(V5)
    pub.publish(t, b"r", qos=1, retain=True)
    pub.publish(t, b"n", qos=1, retain=False)
    got_rap = rap.messages.wait_count(2)
    got_plain = plain.messages.wait_count(2)
    assert [(m.payload, m.retain) for m in got_rap] == [(b"r", True), (b"n", False)]
    assert [(m.payload, m.retain) for m in got_plain] == [(b"r", False), (b"n", False)]
    pub.publish(t, b"", qos=1, retain=True)


def test_retain_handling(paho, topic):
    """Retain Handling 2: no retained messages on subscribe; 1: only when new."""
    t, marker = f"{topic}/rh", f"{topic}/rh-marker"
    pub = paho(V5)
    pub.publish(t, b"kept", qos=1, retain=True)
    pub.publish(marker, b"END", qos=1, retain=True)
    s = paho(V5)
    s.subscribe([(t, SubscribeOptions(qos=1, retainHandling=2))])
    s.subscribe(marker, qos=1)
    got = s.messages.wait_payload(b"END")
    assert [m.payload for m in got] == [b"END"]

    s2 = paho(V5)
    s2.subscribe([(t, SubscribeOptions(qos=1, retainHandling=1))])
    s2.messages.wait_payload(b"kept")
    s2.subscribe([(t, SubscribeOptions(qos=1, retainHandling=1))])  # already exists: no resend
    s2.subscribe(marker, qos=1)
    got = s2.messages.wait_payload(b"END")
    assert [m.payload for m in got] == [b"kept", b"END"]
    pub.publish(t, b"", qos=1, retain=True)
    pub.publish(marker, b"", qos=1, retain=True)


def test_v311_client_receives_from_v5_publisher(paho, topic):
    """Mixed versions on one topic: properties are dropped for the 3.1.1 side."""
    t = f"{topic}/mixed"
    old = paho(V311)
    old.subscribe(t, qos=1)
    new = paho(V5)
    new.subscribe(t, qos=1)
    pub = paho(V5)
    pub.publish(t, b"both", qos=1, properties=publish_props(UserProperty=[("k", "v")]))
    (m_old,) = old.messages.wait_count(1)
    (m_new,) = new.messages.wait_count(1)
    assert m_old.payload == m_new.payload == b"both"
    assert m_new.properties["UserProperty"] == [("k", "v")]
