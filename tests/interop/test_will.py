"""Will messages: sent on abnormal close, not on normal DISCONNECT, v5 delay."""

import shutil
import signal
import subprocess
import time

from helpers import MOSQ_PROTO, QUIET, V5, LineReader, require_tool
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


def test_will_on_socket_drop(paho, proto, topic, uid):
    wt = f"{topic}/will"
    watcher = paho(proto)
    watcher.subscribe(wt, qos=1)
    dying = paho(proto, client_id=f"will-{uid}", will=(wt, b"gone:\x00\xff", 1, False))
    dying.kill()  # no DISCONNECT, just a closed TCP connection
    (m,) = watcher.messages.wait_count(1)
    assert (m.topic, m.payload, m.qos) == (wt, b"gone:\x00\xff", 1)


def test_will_on_process_kill(broker, paho, proto, topic, uid):
    """mosquitto_sub with a will, killed with SIGKILL."""
    wt = f"{topic}/will"
    watcher = paho(proto)
    watcher.subscribe(wt, qos=1)
    stdbuf = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
    proc = subprocess.Popen(
        stdbuf + [require_tool("mosquitto_sub"), "-h", broker.host, "-p", str(broker.port), "-V", MOSQ_PROTO[proto],
                  "-i", f"willproc-{uid}", "-t", f"{topic}/nothing", "-d", "-W", "20",
                  "--will-topic", wt, "--will-payload", "killed", "--will-qos", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        reader = LineReader(proc)
        reader.wait_line(lambda line: line.startswith("Subscribed (mid:"))
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        (m,) = watcher.messages.wait_count(1)
        assert m.payload == b"killed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_no_will_on_normal_disconnect(paho, proto, topic, uid):
    wt = f"{topic}/will"
    watcher = paho(proto)
    watcher.subscribe(wt, qos=1)
    c = paho(proto, client_id=f"nowill-{uid}", will=(wt, b"should-not-arrive", 1, False))
    c.disconnect()
    assert watcher.messages.quiet(QUIET * 2) == []


def test_retained_will(paho, proto, topic, uid):
    wt = f"{topic}/will"
    dying = paho(proto, client_id=f"rwill-{uid}", will=(wt, b"offline", 1, True))
    dying.kill()
    # The will is retained: a subscriber that arrives afterwards gets it,
    # whether the broker published it before or after this SUBSCRIBE.
    watcher = paho(proto)
    watcher.subscribe(wt, qos=1)
    got = watcher.messages.wait_count(1)
    assert got[0].payload == b"offline"
    cleaner = paho(proto)
    cleaner.publish(wt, b"", qos=1, retain=True)


# ---------------------------------------------------------------- v5 only


def _delayed_will_client(paho, topic, uid, delay: int, name: str):
    wp = Properties(PacketTypes.WILLMESSAGE)
    wp.WillDelayInterval = delay
    return paho(
        V5,
        client_id=f"{name}-{uid}",
        will=(f"{topic}/will", b"late", 1, False),
        will_properties=wp,
        clean=True,
        session_expiry=60,
    )


def test_v5_will_delay_interval(paho, topic, uid):
    watcher = paho(V5)
    watcher.subscribe(f"{topic}/will", qos=1)
    delay = 2
    c = _delayed_will_client(paho, topic, uid, delay, "delay")
    t0 = time.monotonic()
    c.kill()
    # Not before the delay...
    assert watcher.messages.quiet(delay - 0.8) == []
    # ...but soon after it.
    (m,) = watcher.messages.wait_count(1, timeout=delay + 5)
    elapsed = time.monotonic() - t0
    assert m.payload == b"late"
    assert elapsed >= delay - 0.8, f"will arrived after {elapsed:.2f}s, delay was {delay}s"


def test_v5_will_delay_cancelled_by_reconnect(paho, topic, uid):
    watcher = paho(V5)
    watcher.subscribe(f"{topic}/will", qos=1)
    c = _delayed_will_client(paho, topic, uid, 2, "cancel")
    c.kill()
    # Reconnect with the same client id and clean_start=False before the delay.
    back = paho(V5, client_id=f"cancel-{uid}", clean=False, session_expiry=60)
    assert back.session_present is True
    assert watcher.messages.quiet(3.0) == []
    back.disconnect()


def test_v5_disconnect_with_will_message(paho, topic, uid):
    """DISCONNECT reason 0x04 'Disconnect with Will Message' publishes the will."""
    watcher = paho(V5)
    watcher.subscribe(f"{topic}/will", qos=1)
    wp = Properties(PacketTypes.WILLMESSAGE)
    c = paho(V5, client_id=f"dww-{uid}", will=(f"{topic}/will", b"asked", 1, False), will_properties=wp)
    c.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
    (m,) = watcher.messages.wait_count(1)
    assert m.payload == b"asked"


def test_v5_will_properties_passed_through(paho, topic, uid):
    watcher = paho(V5)
    watcher.subscribe(f"{topic}/will", qos=1)
    wp = Properties(PacketTypes.WILLMESSAGE)
    wp.ContentType = "text/plain"
    wp.UserProperty = [("k", "v")]
    c = paho(V5, client_id=f"wprops-{uid}", will=(f"{topic}/will", b"bye", 1, False), will_properties=wp)
    c.kill()
    (m,) = watcher.messages.wait_count(1)
    assert m.properties.get("ContentType") == "text/plain"
    assert ("k", "v") in m.properties.get("UserProperty", [])
