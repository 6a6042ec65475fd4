"""CONNECT / DISCONNECT with each client kind."""

import subprocess

from helpers import MOSQ_PROTO, require_tool


def test_paho_connect_disconnect(paho, proto, uid):
    c = paho(proto, client_id=f"conn-{uid}")
    assert c.connack_rc == 0
    assert c.session_present is False
    c.disconnect()
    assert c.disconnected.is_set()
    assert c.disconnect_rc == 0


def test_paho_empty_client_id_gets_assigned(paho, proto):
    # v3.1.1: an empty id with clean session is accepted; v5 also assigns one.
    c = paho(proto, client_id="")
    assert c.connack_rc == 0
    c.disconnect()


def test_mosquitto_pub_connects(broker, proto, topic):
    res = subprocess.run(
        [require_tool("mosquitto_pub"), "-h", broker.host, "-p", str(broker.port), "-V", MOSQ_PROTO[proto],
         "-t", f"{topic}/hello", "-m", "hi", "-q", "1"],
        capture_output=True, timeout=10, stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stderr


def test_session_takeover(paho, proto, uid):
    """A second connection with the same client id takes the session over."""
    a = paho(proto, client_id=f"take-{uid}")
    b = paho(proto, client_id=f"take-{uid}")
    assert b.connack_rc == 0
    assert a.disconnected.wait(5), "the first connection was not closed on takeover"
