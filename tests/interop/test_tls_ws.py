"""TLS, mutual TLS and WebSocket listeners with the clients users have.

The `secure_broker` fixture (conftest.py) generates a throwaway PKI and starts
a broker with five listeners: tcp, tls (server auth only), mtls (client
certificate required, CRL, identity as user name, no anonymous access), ws
and wss.  Every client wait is bounded; refusals must come within TIMEOUT.
"""

from __future__ import annotations

import subprocess

import pytest
from helpers import (
    TIMEOUT,
    Broker,
    MosquittoSub,
    MqttJsSub,
    Paho,
    mosquitto_pub,
    mqttjs_pub,
    MOSQ_PROTO,
    require_tool,
)

#: refused client certificates: id -> certificate stem in the PKI (None: no certificate)
REFUSED = {
    "no-cert": None,
    "wrong-ca": "other-client",
    "expired": "expired-client",
    "revoked": "revoked-client",
}


@pytest.fixture
def clients(secure_broker):
    """Factory: clients(broker, proto, cert=None, connect=True) -> Paho on one of the
    secure broker's listeners; `cert` is a client certificate stem ("client")."""
    made: list[Paho] = []
    pki = secure_broker.pki

    def make(broker: Broker, proto: str, cert: str | None = None, connect: bool = True) -> Paho:
        tls = None
        if broker.scheme in ("mqtts", "wss"):
            tls = {"ca_certs": pki.ca}
            if cert is not None:
                tls.update(certfile=pki.cert(cert), keyfile=pki.key(cert))
        c = Paho(broker, proto, tls=tls)
        made.append(c)
        if connect:
            c.connect()
        return c

    yield make
    for c in made:
        c.close()


def mosq_tls_args(pki, cert: str | None = None) -> list[str]:
    args = ["--cafile", pki.ca]
    if cert is not None:
        args += ["--cert", pki.cert(cert), "--key", pki.key(cert)]
    return args


def js_tls(pki, cert: str | None = None) -> dict:
    t = {"ca_file": pki.ca, "rejectUnauthorized": True}
    if cert is not None:
        t.update(cert_file=pki.cert(cert), key_file=pki.key(cert))
    return t


def assert_only_marker(spy: Paho, topic: str, marker: bytes) -> None:
    """Publish `marker` from `spy` (its own subscriber) and check nothing else came."""
    spy.publish(topic, marker, qos=1)
    got = spy.messages.wait_payload(marker)
    others = [m.payload for m in got if m.payload != marker]
    assert not others, f"a refused client's message was delivered: {others!r}"


# ---------------------------------------------------------------------------
# mosquitto_pub / mosquitto_sub
# ---------------------------------------------------------------------------


def test_mosquitto_tls_pubsub(secure_broker, proto, topic, procs):
    b, pki = secure_broker.tls, secure_broker.pki
    sub = MosquittoSub(b, proto, [topic], count=1, qos=1, extra=mosq_tls_args(pki))
    procs.append(sub)
    sub.wait_subscribed()
    mosquitto_pub(b, proto, topic, b"over-tls", qos=1, extra=mosq_tls_args(pki))
    msgs = sub.results()
    assert [(m.topic, m.payload, m.qos) for m in msgs] == [(topic, b"over-tls", 1)]


def test_mosquitto_mtls_pubsub(secure_broker, proto, topic, procs):
    b, pki = secure_broker.mtls, secure_broker.pki
    sub = MosquittoSub(b, proto, [topic], count=1, qos=1, extra=mosq_tls_args(pki, "client"))
    procs.append(sub)
    sub.wait_subscribed()
    mosquitto_pub(b, proto, topic, b"over-mtls", qos=1, extra=mosq_tls_args(pki, "client"))
    msgs = sub.results()
    assert [(m.topic, m.payload, m.qos) for m in msgs] == [(topic, b"over-mtls", 1)]


@pytest.mark.parametrize("case", list(REFUSED))
def test_mosquitto_mtls_refused(secure_broker, clients, proto, topic, case):
    pki = secure_broker.pki
    spy = clients(secure_broker.tcp, proto)
    spy.subscribe(topic, qos=1)
    b = secure_broker.mtls
    cmd = [
        require_tool("mosquitto_pub"), "-h", b.host, "-p", str(b.port), "-V", MOSQ_PROTO[proto],
        "-t", topic, "-q", "1", "-m", "must-not-arrive", *mosq_tls_args(pki, REFUSED[case]),
    ]
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"mosquitto_pub with {case} was neither accepted nor refused within {TIMEOUT}s")
    assert res.returncode != 0, f"mosquitto_pub with {case} was accepted: {res.stderr.decode(errors='replace')}"
    assert_only_marker(spy, topic, b"marker")


# ---------------------------------------------------------------------------
# paho-mqtt
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["tls", "mtls"])
def test_paho_tls_pubsub(secure_broker, clients, proto, topic, listener):
    b = getattr(secure_broker, listener)
    cert = "client" if listener == "mtls" else None
    sub = clients(b, proto, cert)
    assert sub.subscribe(topic, qos=1) == [1]
    pub = clients(b, proto, cert)
    pub.publish(topic, b"paho-" + listener.encode(), qos=1)
    msgs = sub.messages.wait_count(1)
    assert [(m.topic, m.payload, m.qos) for m in msgs] == [(topic, b"paho-" + listener.encode(), 1)]


@pytest.mark.parametrize("case", list(REFUSED))
def test_paho_mtls_refused(secure_broker, clients, proto, topic, case):
    c = clients(secure_broker.mtls, proto, REFUSED[case], connect=False)
    print("refused:", c.connect_refused())  # how, shown on failure


def test_paho_plain_mqtt_on_tls_listener_refused(secure_broker, proto):
    c = Paho(Broker(secure_broker.tls.host, secure_broker.tls.port), proto)
    try:
        print("refused:", c.connect_refused())  # how, shown on failure
    finally:
        c.close()


@pytest.mark.parametrize("listener", ["ws", "wss"])
def test_paho_websocket_pubsub(secure_broker, clients, proto, topic, listener):
    secure_broker.need_websockets()
    b = getattr(secure_broker, listener)
    sub = clients(b, proto)
    assert sub.subscribe(topic, qos=1) == [1]
    pub = clients(b, proto)
    pub.publish(topic, b"paho-" + listener.encode(), qos=1)
    msgs = sub.messages.wait_count(1)
    assert [(m.topic, m.payload, m.qos) for m in msgs] == [(topic, b"paho-" + listener.encode(), 1)]


def test_paho_websocket_wrong_path_refused(secure_broker, proto):
    secure_broker.need_websockets()
    ws = secure_broker.ws
    c = Paho(Broker(ws.host, ws.port, "ws", "/not-mqtt"), proto)
    try:
        print("refused:", c.connect_refused())  # how, shown on failure
    finally:
        c.close()


# ---------------------------------------------------------------------------
# MQTT.js
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["ws", "wss"])
def test_mqttjs_websocket_pubsub(secure_broker, proto, topic, procs, listener):
    secure_broker.need_websockets()
    b = getattr(secure_broker, listener)
    tls = js_tls(secure_broker.pki) if listener == "wss" else None
    sub = MqttJsSub(b, proto, [{"topic": topic, "qos": 1}], count=1, tls=tls)
    procs.append(sub)
    assert sub.wait_subscribed() == [1]
    mqttjs_pub(b, proto, [{"topic": topic, "payload": b"js-" + listener.encode(), "qos": 1}], tls=tls)
    msgs = sub.results()
    assert [(m.topic, m.payload, m.qos) for m in msgs] == [(topic, b"js-" + listener.encode(), 1)]


def test_mqttjs_mqtts_client_cert(secure_broker, proto, topic, procs):
    b, tls = secure_broker.mtls, js_tls(secure_broker.pki, "client")
    sub = MqttJsSub(b, proto, [{"topic": topic, "qos": 1}], count=1, tls=tls)
    procs.append(sub)
    assert sub.wait_subscribed() == [1]
    mqttjs_pub(b, proto, [{"topic": topic, "payload": b"js-mtls", "qos": 1}], tls=tls)
    msgs = sub.results()
    assert [(m.topic, m.payload, m.qos) for m in msgs] == [(topic, b"js-mtls", 1)]


@pytest.mark.parametrize("case", ["no-cert", "wrong-ca"])
def test_mqttjs_mqtts_refused(secure_broker, proto, topic, case):
    tls = js_tls(secure_broker.pki, REFUSED[case])
    with pytest.raises(AssertionError, match="MQTT.js pub failed") as err:
        mqttjs_pub(secure_broker.mtls, proto, [{"topic": topic, "payload": b"x", "qos": 1}], timeout=TIMEOUT, tls=tls)
    # refused by the broker at once, not the driver's own timeout
    assert "'event': 'error'" in str(err.value) and "'event': 'connack'" not in str(err.value), str(err.value)
    print("refused:", err.value)


# ---------------------------------------------------------------------------
# across transports
# ---------------------------------------------------------------------------


def test_tls_publish_reaches_websocket_and_tcp_subscribers(secure_broker, clients, proto, topic, procs):
    """mosquitto_pub over mTLS -> paho over ws, MQTT.js over wss, paho over plain TCP."""
    secure_broker.need_websockets()
    pki = secure_broker.pki
    ws_sub = clients(secure_broker.ws, proto)
    ws_sub.subscribe(topic, qos=1)
    tcp_sub = clients(secure_broker.tcp, proto)
    tcp_sub.subscribe(topic, qos=1)
    js_sub = MqttJsSub(secure_broker.wss, proto, [{"topic": topic, "qos": 1}], count=1, tls=js_tls(pki))
    procs.append(js_sub)
    js_sub.wait_subscribed()
    mosquitto_pub(secure_broker.mtls, proto, topic, b"cross", qos=1, extra=mosq_tls_args(pki, "client"))
    for c in (ws_sub, tcp_sub):
        msgs = c.messages.wait_count(1)
        assert [(m.topic, m.payload, m.qos) for m in msgs] == [(topic, b"cross", 1)]
    assert [(m.topic, m.payload, m.qos) for m in js_sub.results()] == [(topic, b"cross", 1)]


def test_websocket_publish_reaches_tls_subscribers(secure_broker, clients, proto, topic, procs):
    """MQTT.js over ws and paho over wss -> mosquitto_sub over mTLS and paho over TLS."""
    secure_broker.need_websockets()
    pki = secure_broker.pki
    mosq_sub = MosquittoSub(secure_broker.mtls, proto, [topic], count=2, qos=1, extra=mosq_tls_args(pki, "client"))
    procs.append(mosq_sub)
    mosq_sub.wait_subscribed()
    tls_sub = clients(secure_broker.tls, proto)
    tls_sub.subscribe(topic, qos=1)
    mqttjs_pub(secure_broker.ws, proto, [{"topic": topic, "payload": b"from-ws", "qos": 1}])
    clients(secure_broker.wss, proto).publish(topic, b"from-wss", qos=1)
    want = {b"from-ws", b"from-wss"}
    got = tls_sub.messages.wait_count(2)
    assert {m.payload for m in got} == want
    assert {m.payload for m in mosq_sub.results()} == want


def test_large_payload_across_websocket_and_tls(secure_broker, clients, proto, topic, procs):
    """A 50 kB PUBLISH from MQTT.js over wss (which may split one MQTT packet over
    several WebSocket frames) reaches paho over ws and MQTT.js over mqtts intact."""
    secure_broker.need_websockets()
    pki = secure_broker.pki
    payload = bytes(range(256)) * 195 + b"end"  # 49 923 bytes; hex-encoded on argv
    ws_sub = clients(secure_broker.ws, proto)
    ws_sub.subscribe(topic, qos=1)
    js_sub = MqttJsSub(secure_broker.mtls, proto, [{"topic": topic, "qos": 1}], count=1, tls=js_tls(pki, "client"))
    procs.append(js_sub)
    js_sub.wait_subscribed()
    mqttjs_pub(secure_broker.wss, proto, [{"topic": topic, "payload": payload, "qos": 1}], tls=js_tls(pki))
    (m,) = ws_sub.messages.wait_count(1)
    assert m.payload == payload
    assert [m.payload for m in js_sub.results()] == [payload]
