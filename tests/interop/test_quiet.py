"""Clients that stay quiet longer than Moat's `limits.park_after_s` (5 s by
default: after 5 to 10 s of quiet a plain-TCP connection is parked, its
task ended and its socket in an epoll set) are served as before: a
mosquitto_sub pinging every 5 s gets its PINGRESPs and stays connected,
and every subscriber gets what is published after the quiet."""

import time

from helpers import MosquittoSub, MqttJsSub, mosquitto_pub

# Longer than the two park periods after which an idle connection is parked.
QUIET_FOR = 12.0


def test_quiet_subscribers_are_served_after_the_quiet(broker, paho, procs, proto, topic):
    t = f"{topic}/cmd"
    pinger = MosquittoSub(broker, proto, [t], count=1, qos=1, wait_secs=30, extra=["-k", "5"])
    procs.append(pinger)
    pinger.wait_subscribed()
    js = MqttJsSub(broker, proto, [{"topic": t, "qos": 1}], count=1, timeout=30.0)
    procs.append(js)
    assert js.wait_subscribed() == [1]
    sub = paho(proto)
    assert sub.subscribe(t, qos=1) == [1]

    time.sleep(QUIET_FOR)
    mosquitto_pub(broker, proto, t, b"wake up", qos=1)

    assert [m.payload for m in sub.messages.wait_count(1)] == [b"wake up"]
    assert [m.payload for m in pinger.results()] == [b"wake up"]
    assert [m.payload for m in js.results()] == [b"wake up"]
