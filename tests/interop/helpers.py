"""Client wrappers for the interop suite: paho-mqtt 2.x, mosquitto_pub/sub, MQTT.js.

Every wait in here is bounded.  Synchronisation uses events and conditions;
the only timed waits are the negative checks ("nothing arrives within T"),
where there is no event to wait for.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

HERE = Path(__file__).resolve().parent
JS_DIR = HERE / "js"

#: default bound for anything that should happen "now"
TIMEOUT = 5.0
#: bound for negative checks ("this must NOT arrive")
QUIET = 0.7

V311 = "3.1.1"
V5 = "5"
PAHO_PROTO = {V311: mqtt.MQTTv311, V5: mqtt.MQTTv5}
MOSQ_PROTO = {V311: "mqttv311", V5: "mqttv5"}
JS_PROTO = {V311: 4, V5: 5}


@dataclass
class Broker:
    host: str
    port: int
    #: URL scheme for MQTT.js: mqtt, mqtts, ws or wss
    scheme: str = "mqtt"
    #: WebSocket path (ws/wss only)
    path: str = ""

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"

    @property
    def websocket(self) -> bool:
        return self.scheme in ("ws", "wss")


@dataclass
class Msg:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict[str, Any] = field(default_factory=dict)


def props_to_dict(props: Properties | None) -> dict[str, Any]:
    if props is None:
        return {}
    out: dict[str, Any] = {}
    for name in props.names:
        attr = name.replace(" ", "")
        if hasattr(props, attr):
            out[attr] = getattr(props, attr)
    return out


def publish_props(**kw: Any) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def rc_value(rc: Any) -> int:
    return rc.value if isinstance(rc, ReasonCode) else int(rc)


class Collector:
    """Thread-safe list of received messages with bounded waits."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: list[Msg] = []

    def add(self, m: Msg) -> None:
        with self._cond:
            self._items.append(m)
            self._cond.notify_all()

    @property
    def items(self) -> list[Msg]:
        with self._cond:
            return list(self._items)

    def wait_until(self, pred: Callable[[list[Msg]], bool], timeout: float = TIMEOUT) -> list[Msg]:
        with self._cond:
            ok = self._cond.wait_for(lambda: pred(self._items), timeout)
            items = list(self._items)
        if not ok:
            raise AssertionError(
                f"condition not met within {timeout}s; got {len(items)} message(s): "
                + repr([(m.topic, m.payload[:40]) for m in items])
            )
        return items

    def wait_count(self, n: int, timeout: float = TIMEOUT) -> list[Msg]:
        return self.wait_until(lambda items: len(items) >= n, timeout)

    def wait_payload(self, payload: bytes, timeout: float = TIMEOUT) -> list[Msg]:
        return self.wait_until(lambda items: any(m.payload == payload for m in items), timeout)

    def quiet(self, timeout: float = QUIET) -> list[Msg]:
        """Negative check helper: wait `timeout` for *extra* messages, return all."""
        with self._cond:
            start = len(self._items)
            self._cond.wait_for(lambda: len(self._items) > start, timeout)
            return list(self._items)


class Paho:
    """paho-mqtt 2.x client driven by its own network thread.

    The thread calls `loop()` itself instead of `loop_start()` so that a lost
    connection is never silently re-established (a reconnect would cancel a
    delayed will, or hide a broker disconnect).
    """

    def __init__(
        self,
        broker: Broker,
        proto: str,
        client_id: str = "",
        clean: bool = True,
        session_expiry: int | None = None,
        will: tuple[str, bytes, int, bool] | None = None,
        will_properties: Properties | None = None,
        tls: dict[str, Any] | None = None,
        manual_ack: bool = False,
    ) -> None:
        """`tls`: keyword arguments for `tls_set` (ca_certs, certfile, keyfile);
        the transport (TCP or WebSocket) follows `broker.scheme`.  With
        `manual_ack`, received QoS 1/2 messages are never acknowledged."""
        self.broker = broker
        self.proto = proto
        self.v5 = proto == V5
        self.clean = clean
        self.session_expiry = session_expiry
        kwargs: dict[str, Any] = {}
        if not self.v5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=PAHO_PROTO[proto],
            transport="websockets" if broker.websocket else "tcp",
            manual_ack=manual_ack,
            **kwargs,
        )
        # publish(), subscribe() and disconnect() run on the test's thread:
        # without an external-loop hook paho writes the packet from that
        # thread itself, concurrently with the loop thread (two threads in
        # one TLS socket crashed the interpreter in CI). With one, it queues
        # the packet and wakes loop(), which writes it.
        self.c.on_socket_register_write = lambda client, userdata, sock: None
        if broker.websocket:
            self.c.ws_set_options(path=broker.path or "/mqtt")
        if tls is not None:
            self.c.tls_set(**tls)
        if will is not None:
            topic, payload, qos, retain = will
            self.c.will_set(topic, payload, qos, retain, properties=will_properties)
        self.messages = Collector()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack_rc: int | None = None
        self.session_present: bool | None = None
        self.disconnect_rc: int | None = None
        self._subacks: dict[int, tuple[threading.Event, list[int]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message

    # -- callbacks ---------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connack_rc = rc_value(reason_code)
        self.session_present = bool(flags.session_present)
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.disconnect_rc = rc_value(reason_code)
        self.disconnected.set()

    def _on_subscribe(self, client, userdata, mid, reason_code_list, properties) -> None:
        with self._lock:
            ev, codes = self._subacks.setdefault(mid, (threading.Event(), []))
        codes.extend(rc_value(rc) for rc in reason_code_list)
        ev.set()

    def _on_message(self, client, userdata, message) -> None:
        props = props_to_dict(message.properties) if self.v5 else {}
        self.messages.add(Msg(message.topic, bytes(message.payload), message.qos, bool(message.retain), props))

    # -- network thread ------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            rc = self.c.loop(timeout=0.2)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                break
        self.disconnected.set()

    def connect(self, timeout: float = TIMEOUT, expect_rc: int = 0) -> "Paho":
        kwargs: dict[str, Any] = {}
        if self.v5:
            kwargs["clean_start"] = self.clean
            if self.session_expiry is not None:
                p = Properties(PacketTypes.CONNECT)
                p.SessionExpiryInterval = self.session_expiry
                kwargs["properties"] = p
        self.c.connect(self.broker.host, self.broker.port, keepalive=30, **kwargs)
        self._thread = threading.Thread(target=self._run, daemon=True, name="paho-loop")
        self._thread.start()
        if not self.connected.wait(timeout):
            raise AssertionError("no CONNACK within timeout")
        assert self.connack_rc == expect_rc, f"CONNACK reason {self.connack_rc:#x}"
        return self

    def connect_refused(self, timeout: float = TIMEOUT) -> str:
        """Connect and expect the broker to refuse: the TLS handshake fails, or
        the connection is closed, or CONNACK carries an error.  Returns how."""
        try:
            self.c.connect(self.broker.host, self.broker.port, keepalive=30)
        except OSError as e:  # ssl.SSLError, ConnectionResetError, WebSocket errors
            return f"connect raised {type(e).__name__}: {e}"
        self._thread = threading.Thread(target=self._run, daemon=True, name="paho-loop")
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # Both events are set by the loop thread; a CONNACK comes before any close.
            if self.connected.is_set():
                assert self.connack_rc != 0, "the broker accepted the connection (CONNACK 0)"
                return f"CONNACK reason {self.connack_rc:#x}"
            if self.disconnected.wait(0.05) and not self.connected.is_set():
                return "connection closed without CONNACK"
        raise AssertionError(f"connection neither accepted nor refused within {timeout}s")

    def subscribe(
        self,
        filters: Iterable[tuple[str, int | SubscribeOptions]] | str,
        qos: int = 0,
        properties: Properties | None = None,
        timeout: float = TIMEOUT,
    ) -> list[int]:
        """SUBSCRIBE and wait for SUBACK; returns the reason codes / granted QoS."""
        if isinstance(filters, str):
            filters = [(filters, SubscribeOptions(qos=qos) if self.v5 else qos)]
        else:
            filters = [
                (t, SubscribeOptions(qos=o) if (self.v5 and isinstance(o, int)) else o) for t, o in filters
            ]
        # The SUBACK may beat the return value of subscribe().
        # (Both this side and the callback use setdefault, whichever runs first.)
        result, mid = self.c.subscribe(filters, properties=properties)
        assert result == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {result}"
        with self._lock:
            ev, codes = self._subacks.setdefault(mid, (threading.Event(), []))
        if not ev.wait(timeout):
            raise AssertionError(f"no SUBACK within {timeout}s for {filters!r}")
        return list(codes)

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        """Publish and wait until acknowledged (QoS 1/2) or written (QoS 0)."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise AssertionError(f"publish to {topic!r} (qos {qos}) not completed within {timeout}s")

    def disconnect(self, reasoncode: ReasonCode | None = None, timeout: float = TIMEOUT) -> None:
        if self._thread is None:
            return
        if not self.disconnected.is_set():
            self.c.disconnect(reasoncode=reasoncode)
            self.disconnected.wait(timeout)
        self._stop.set()
        self._thread.join(timeout)
        self._thread = None

    def kill(self) -> None:
        """Drop the TCP connection without sending DISCONNECT (abnormal close)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(TIMEOUT)
            self._thread = None
        sock = self.c.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        """Best-effort cleanup used by fixtures."""
        try:
            if self._thread is not None:
                self.disconnect(timeout=1.0)
        except Exception:  # noqa: BLE001 - cleanup must not raise
            self.kill()


# ---------------------------------------------------------------------------
# subprocess-based clients
# ---------------------------------------------------------------------------


class LineReader:
    """Collects a child process's stdout lines on a thread."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        self.seen: list[str] = []
        t = threading.Thread(target=self._pump, daemon=True)
        t.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self.lines.put(None)

    def wait_line(self, pred: Callable[[str], bool], timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"expected output not seen within {timeout}s; saw {self.seen[-10:]!r}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"process exited before expected output; saw {self.seen[-10:]!r}")
            self.seen.append(line)
            if pred(line):
                return line

    def finish(self, timeout: float = TIMEOUT) -> list[str]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
            raise AssertionError(f"process did not exit within {timeout}s; saw {self.seen[-10:]!r}")
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
        return list(self.seen)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                pass


def require_tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        raise AssertionError(f"{name} not found on PATH: run scripts/test (it installs mosquitto-clients)")
    return path


def mosquitto_pub(
    broker: Broker,
    proto: str,
    topic: str,
    payload: bytes,
    qos: int = 0,
    retain: bool = False,
    extra: Iterable[str] = (),
    timeout: float = TIMEOUT,
) -> None:
    with tempfile.NamedTemporaryFile(prefix="moat-it-", suffix=".bin") as f:
        f.write(payload)
        f.flush()
        cmd = [
            require_tool("mosquitto_pub"),
            "-h", broker.host, "-p", str(broker.port),
            "-V", MOSQ_PROTO[proto],
            "-t", topic, "-q", str(qos),
        ]
        if payload:
            cmd += ["-f", f.name]
        else:
            cmd += ["-n"]
        if retain:
            cmd.append("-r")
        cmd += list(extra)
        res = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, f"mosquitto_pub failed ({res.returncode}): {res.stderr.decode(errors='replace')}"


class MosquittoSub:
    """mosquitto_sub -C N -W secs, started in the background.

    `-d` is used only to learn when the SUBACK arrived; message lines are
    printed with a distinctive prefix and the payload in hex, so binary
    payloads survive.
    """

    PREFIX = "MSG\t"

    def __init__(
        self,
        broker: Broker,
        proto: str,
        topics: Iterable[str],
        count: int,
        qos: int = 0,
        wait_secs: int = 8,
        extra: Iterable[str] = (),
    ) -> None:
        # mosquitto_sub block-buffers a piped stdout: stdbuf makes it line-buffered
        # so the SUBACK line is seen at once.
        stdbuf = shutil.which("stdbuf")
        cmd = [stdbuf, "-oL"] if stdbuf else []
        cmd += [
            require_tool("mosquitto_sub"),
            "-h", broker.host, "-p", str(broker.port),
            "-V", MOSQ_PROTO[proto],
            "-q", str(qos),
            "-C", str(count), "-W", str(wait_secs),
            "-d", "-F", self.PREFIX + "%t\t%q\t%r\t%x",
        ]
        for t in topics:
            cmd += ["-t", t]
        cmd += list(extra)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.reader = LineReader(self.proc)

    def wait_subscribed(self, timeout: float = TIMEOUT) -> None:
        self.reader.wait_line(lambda line: line.startswith("Subscribed (mid:"), timeout)

    def results(self, timeout: float = 10.0) -> list[Msg]:
        lines = self.reader.finish(timeout)
        out = []
        for line in lines:
            if line.startswith(self.PREFIX):
                _, topic, qos, retain, hexpayload = line.split("\t", 4)
                out.append(Msg(topic, bytes.fromhex(hexpayload), int(qos), retain == "1"))
        return out

    def stop(self) -> None:
        self.reader.stop()


def _node_cmd(mode: str, args: dict[str, Any]) -> list[str]:
    node = shutil.which("node")
    if node is None:
        raise AssertionError("node not found on PATH")
    if not (JS_DIR / "node_modules" / "mqtt").is_dir():
        raise AssertionError(f"MQTT.js not installed: run scripts/test (or `npm ci` in {JS_DIR})")
    return [node, str(JS_DIR / "mqttjs.js"), mode, json.dumps(args)]


def mqttjs_pub(
    broker: Broker,
    proto: str,
    messages: list[dict[str, Any]],
    timeout: float = 10.0,
    tls: dict[str, Any] | None = None,
) -> list[dict]:
    """messages: [{topic, payload (bytes), qos, retain, properties}]
    tls: {ca_file, cert_file, key_file, rejectUnauthorized} for mqtts:// and wss://"""
    wire = []
    for m in messages:
        w = {k: v for k, v in m.items() if k != "payload"}
        w["payload_hex"] = bytes(m.get("payload", b"")).hex()
        wire.append(w)
    args = {"url": broker.url, "protocolVersion": JS_PROTO[proto], "messages": wire, "timeout_ms": int(timeout * 1000)}
    if tls is not None:
        args["tls"] = tls
    res = subprocess.run(
        _node_cmd("pub", args), capture_output=True, timeout=timeout + 5, cwd=JS_DIR, stdin=subprocess.DEVNULL
    )
    events = [json.loads(line) for line in res.stdout.decode().splitlines() if line.startswith("{")]
    assert res.returncode == 0, f"MQTT.js pub failed ({res.returncode}): {events} {res.stderr.decode(errors='replace')}"
    return events


class MqttJsSub:
    def __init__(
        self,
        broker: Broker,
        proto: str,
        filters: list[dict[str, Any]],
        count: int,
        timeout: float = 10.0,
        **extra: Any,
    ) -> None:
        args = {
            "url": broker.url,
            "protocolVersion": JS_PROTO[proto],
            "filters": filters,
            "count": count,
            "timeout_ms": int(timeout * 1000),
            **extra,
        }
        self.timeout = timeout
        self.proc = subprocess.Popen(
            _node_cmd("sub", args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=JS_DIR,
            stdin=subprocess.DEVNULL,
        )
        self.reader = LineReader(self.proc)
        self.granted: list[int] = []

    def wait_subscribed(self, timeout: float = 10.0) -> list[int]:
        line = self.reader.wait_line(lambda line: '"event":"suback"' in line or '"event":"error"' in line, timeout)
        ev = json.loads(line)
        assert ev["event"] == "suback", f"MQTT.js subscribe failed: {ev}"
        self.granted = ev["granted"]
        return self.granted

    def results(self) -> list[Msg]:
        lines = self.reader.finish(self.timeout + 5)
        out = []
        for line in lines:
            if not line.startswith("{"):
                continue
            ev = json.loads(line)
            if ev["event"] == "message":
                out.append(Msg(ev["topic"], bytes.fromhex(ev["payload_hex"]), ev["qos"], ev["retain"], ev["properties"]))
        assert self.proc.returncode == 0, f"MQTT.js sub exited {self.proc.returncode}: {lines[-5:]}"
        return out

    def stop(self) -> None:
        self.reader.stop()
