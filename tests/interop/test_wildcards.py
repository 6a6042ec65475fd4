"""Topic wildcards `+` and `#`, and `$` topics."""

import socket

import pytest

from helpers import V5, MosquittoSub, mosquitto_pub


def _match_all(paho, proto, topic, filters, publish, markers):
    """One subscriber per filter; publish `publish` then the END markers (in
    that order, from one client, QoS 1) and return what each filter saw,
    END markers excluded."""
    subs = {}
    for f in filters:
        s = paho(proto)
        s.subscribe(f"{topic}/{f}", qos=1)
        subs[f] = s
    pub = paho(proto)
    for t in publish:
        pub.publish(f"{topic}/{t}", t.encode(), qos=1)
    for t in markers:
        pub.publish(f"{topic}/{t}", b"END", qos=1)
    seen = {}
    for f, s in subs.items():
        got = s.messages.wait_payload(b"END")
        seen[f] = sorted(m.topic[len(topic) + 1 :] for m in got if m.payload != b"END")
    return seen


def test_plus_and_hash(paho, proto, topic):
    filters = ["a/+/c", "a/#", "a/b/#", "a/+", "+/b/c", "a/+/+", "#"]
    publish = ["a", "a/b", "a/b/c", "a/x/c", "a/b/c/d", "a//c", "z/b/c"]
    # every filter above matches at least one of these markers
    markers = ["a/b/c", "a/b", "z/b/c"]
    seen = _match_all(paho, proto, topic, filters, publish, markers)
    assert seen["a/+/c"] == sorted(["a/b/c", "a/x/c", "a//c"])
    # `a/#` also matches the parent level `a`
    assert seen["a/#"] == sorted(["a", "a/b", "a/b/c", "a/x/c", "a/b/c/d", "a//c"])
    assert seen["a/b/#"] == sorted(["a/b", "a/b/c", "a/b/c/d"])
    assert seen["a/+"] == sorted(["a/b"])
    assert seen["+/b/c"] == sorted(["a/b/c", "z/b/c"])
    assert seen["a/+/+"] == sorted(["a/b/c", "a/x/c", "a//c"])
    assert seen["#"] == sorted(publish)


def test_overlapping_subscriptions_same_client(paho, proto, topic):
    """Overlapping filters on one client: the message arrives (once or once
    per matching subscription, both allowed), at the highest granted QoS."""
    s = paho(proto)
    s.subscribe([(f"{topic}/x/#", 0), (f"{topic}/x/y", 1)])
    pub = paho(proto)
    pub.publish(f"{topic}/x/y", b"both", qos=1)
    pub.publish(f"{topic}/x/end", b"END", qos=1)
    got = [m for m in s.messages.wait_payload(b"END") if m.payload == b"both"]
    assert 1 <= len(got) <= 2
    assert max(m.qos for m in got) == 1


def test_dollar_topics_not_matched_by_wildcards(paho, proto, uid, topic):
    """`#` and `+/...` must not match topics starting with `$` [MQTT-4.7.2-1].

    The broker may also refuse `$` topics from clients altogether; either way
    a wildcard subscriber must never see one.
    """
    dollar = f"$moat-it-{uid}"
    hash_sub = paho(proto)
    hash_sub.subscribe("#", qos=1)
    plus_sub = paho(proto)
    plus_sub.subscribe("+/x", qos=1)
    pub = paho(proto)
    pub.publish(f"{dollar}/x", b"dollar", qos=1)
    pub.publish(f"{topic}/x", b"plain", qos=1)
    pub.publish(f"{uid}/x", b"END", qos=1)
    for s in (hash_sub, plus_sub):
        got = s.messages.wait_payload(b"END")
        leaked = [m.topic for m in got if m.topic.startswith("$")]
        assert leaked == [], f"wildcard subscription received $-topics: {leaked}"
    # `#` saw the plain message published just before the marker.
    assert any(m.topic == f"{topic}/x" for m in hash_sub.messages.items)


def test_wildcards_with_mosquitto_clients(broker, procs, proto, topic):
    sub = MosquittoSub(broker, proto, [f"{topic}/+/temp", f"{topic}/house/#"], count=3, qos=1)
    procs.append(sub)
    sub.wait_subscribed()
    for t in ["kitchen/temp", "house", "house/door/open", "garden/light"]:
        mosquitto_pub(broker, proto, f"{topic}/{t}", t.encode(), qos=1)
    got = sub.results()
    assert sorted(m.topic for m in got) == sorted(f"{topic}/{t}" for t in ["kitchen/temp", "house", "house/door/open"])


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _read_packet(sock: socket.socket) -> tuple[int, bytes] | None:
    """Read one MQTT packet; None when the broker closed the connection."""
    def exact(n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = sock.recv(n - len(buf))
            except (ConnectionResetError, BrokenPipeError):
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    head = exact(1)
    if head is None:
        return None
    length, mult = 0, 1
    while True:
        b = exact(1)
        if b is None:
            return None
        length += (b[0] & 0x7F) * mult
        mult *= 128
        if not b[0] & 0x80:
            break
    body = exact(length) if length else b""
    if body is None:
        return None
    return head[0], body


def raw_subscribe(broker, proto, filters):
    """Send SUBSCRIBE with filters paho would refuse to send.  Returns the
    SUBACK codes, or None if the broker closed the connection instead."""
    v5 = proto == V5
    with socket.create_connection((broker.host, broker.port), timeout=3) as sock:
        connect = _str("MQTT") + bytes([5 if v5 else 4, 0x02]) + (30).to_bytes(2, "big")
        if v5:
            connect += b"\x00"
        connect += _str("")
        sock.sendall(_packet(0x10, connect))
        pkt = _read_packet(sock)
        assert pkt is not None and pkt[0] == 0x20, f"no CONNACK: {pkt!r}"
        body = (1).to_bytes(2, "big") + (b"\x00" if v5 else b"")
        for f, qos in filters:
            body += _str(f) + bytes([qos])
        sock.sendall(_packet(0x82, body))
        pkt = _read_packet(sock)
        if pkt is None or pkt[0] == 0xE0:  # closed, or a v5 DISCONNECT
            return None
        kind, body = pkt
        assert kind == 0x90, f"expected SUBACK, got packet type {kind >> 4}"
        rest = body[2:]
        if v5:
            plen, i, mult = 0, 0, 1
            while True:
                plen += (rest[i] & 0x7F) * mult
                mult *= 128
                i += 1
                if not rest[i - 1] & 0x80:
                    break
            rest = rest[i + plen :]
        return list(rest)


@pytest.mark.parametrize("bad", ["a/#/b", "a/b#", "a+/b"])
def test_invalid_filter_rejected(broker, proto, topic, bad):
    """An invalid filter must not become a subscription: the broker either
    answers with a failure code (0x80 in 3.1.1, >= 0x80 in v5) or closes the
    connection (both are allowed by the specs).  Sent over a raw socket,
    since paho refuses to send invalid filters."""
    codes = raw_subscribe(broker, proto, [(f"{topic}/ok", 1), (f"{topic}/{bad}", 1)])
    if codes is not None:
        assert codes[0] == 1
        assert codes[1] >= 0x80, f"invalid filter {bad!r} was granted {codes[1]}"
