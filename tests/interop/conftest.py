"""Fixtures for the interop suite.

One broker per test session, on a free 127.0.0.1 port.  The command comes
from MOAT_BROKER_CMD, a template where `{port}` is replaced by the port and
`{tmp}` by a private temporary directory, e.g.

    MOAT_BROKER_CMD='target/debug/moat --listen 127.0.0.1:{port}'   (default)
    MOAT_BROKER_CMD='mosquitto -p {port}'                           (reference run)

The command runs from the repository root, so `./plugins` resolves as it does
for `cargo run`.

The TLS / mTLS / WebSocket tests (test_tls_ws.py) use a second broker, started
on first use with a generated throwaway PKI and a config file with five
listeners (tcp, tls, mtls, ws, wss).  MOAT_TLS_BROKER_CMD is its command, a
template where `{config}` is replaced by the config file's path and `{tmp}` by
its directory:

    MOAT_TLS_BROKER_CMD='target/debug/moat --config {config}'        (default)
    MOAT_TLS_BROKER_CMD='/usr/sbin/mosquitto -c {config}'            (reference run)

When the program is `mosquitto`, the config is written in Mosquitto's format
(without WebSocket listeners if it lacks libwebsockets; those tests then skip).
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import V5, V311, Broker, Paho  # noqa: E402
from secure_setup import Ports, make_pki, moat_config, mosquitto_config, mosquitto_has_websockets  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 10.0

_broker_log: Path | None = None
_broker_died: str | None = None
_secure_log: Path | None = None
_secure_died: str | None = None


def default_broker_cmd() -> str:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    return f"{shlex.quote(str(target / 'debug' / 'moat'))} --listen 127.0.0.1:{{port}}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return "(no broker log)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(broker log is empty)"


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _wait_port(proc: subprocess.Popen, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with code {proc.returncode} before accepting connections")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # polling a port: there is no event to wait for
    raise RuntimeError(f"broker did not accept connections on 127.0.0.1:{port} within {timeout}s")


@pytest.fixture(scope="session")
def broker() -> Broker:
    global _broker_log
    template = os.environ.get("MOAT_BROKER_CMD") or default_broker_cmd()
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="moat-interop-"))
    cmd = template.replace("{port}", str(port)).replace("{tmp}", str(tmp))
    _broker_log = tmp / "broker.log"
    log = open(_broker_log, "wb")
    argv = shlex.split(cmd)
    try:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except OSError as e:
        log.close()
        pytest.exit(f"could not start broker `{cmd}`: {e} (build it with `cargo build --bin moat`)", 3)
    try:
        _wait_port(proc, port, STARTUP_TIMEOUT)
    except Exception as e:
        proc.kill()
        proc.wait(5)
        log.close()
        pytest.exit(f"could not start broker `{cmd}`: {e}\n--- broker output (tail) ---\n{log_tail(_broker_log)}", 3)
    b = Broker("127.0.0.1", port)
    b.proc = proc  # type: ignore[attr-defined]
    b.cmd = cmd  # type: ignore[attr-defined]
    yield b
    _stop(proc)
    log.close()


class SecureBroker:
    """The broker with tcp, tls, mtls, ws and wss listeners, and its PKI."""

    def __init__(self, proc: subprocess.Popen, cmd: str, kind: str, ports: Ports, pki, websockets: bool) -> None:
        self.proc = proc
        self.cmd = cmd
        self.kind = kind  # "moat" or "mosquitto"
        self.pki = pki
        self.websockets = websockets
        self.tcp = Broker("127.0.0.1", ports.tcp, "mqtt")
        self.tls = Broker("127.0.0.1", ports.tls, "mqtts")
        self.mtls = Broker("127.0.0.1", ports.mtls, "mqtts")
        self.ws = Broker("127.0.0.1", ports.ws, "ws", "/mqtt")
        self.wss = Broker("127.0.0.1", ports.wss, "wss", "/mqtt")

    def need_websockets(self) -> None:
        if not self.websockets:
            pytest.skip(f"{self.kind} here has no WebSocket support (Debian's mosquitto lacks libwebsockets)")


@pytest.fixture(scope="session")
def secure_broker() -> SecureBroker:
    global _secure_log
    tmp = Path(tempfile.mkdtemp(prefix="moat-interop-tls-"))
    try:
        pki = make_pki(tmp / "pki")
    except Exception as e:  # noqa: BLE001 - reported as a setup error below
        pytest.fail(f"could not generate the test PKI: {e}")
    ports = Ports(*(free_port() for _ in range(5)))
    template = os.environ.get("MOAT_TLS_BROKER_CMD")
    if not template:
        moat = shlex.split(default_broker_cmd())[0]
        if os.environ.get("MOAT_BROKER_CMD") and not os.path.exists(moat):
            pytest.skip("MOAT_BROKER_CMD is set but not MOAT_TLS_BROKER_CMD, and moat is not built")
        template = f"{shlex.quote(moat)} --config {{config}}"
    config = tmp / "broker.conf"
    cmd = template.replace("{config}", shlex.quote(str(config))).replace("{tmp}", shlex.quote(str(tmp)))
    argv = shlex.split(cmd)
    kind = "mosquitto" if Path(argv[0]).name == "mosquitto" else "moat"
    websockets = True
    if kind == "mosquitto":
        websockets = mosquitto_has_websockets(shutil.which(argv[0]) or argv[0])
        # Started as root, Mosquitto drops to the `mosquitto` user before it
        # reads the certificates: let it read these throwaway files.
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        config.write_text(mosquitto_config(pki, ports, websockets))
    else:
        config.write_text(moat_config(pki, ports))
    _secure_log = tmp / "broker.log"
    log = open(_secure_log, "wb")
    try:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except OSError as e:
        log.close()
        pytest.fail(f"could not start broker `{cmd}`: {e} (build it with `cargo build --bin moat`)")
    try:
        wanted = [ports.tcp, ports.tls, ports.mtls] + ([ports.ws, ports.wss] if websockets else [])
        for port in wanted:
            _wait_port(proc, port, STARTUP_TIMEOUT)
    except Exception as e:  # noqa: BLE001
        _stop(proc)
        log.close()
        pytest.fail(f"could not start broker `{cmd}`: {e}\n--- broker output (tail) ---\n{log_tail(_secure_log)}")
    yield SecureBroker(proc, cmd, kind, ports, pki, websockets)
    _stop(proc)
    log.close()
    shutil.rmtree(pki.dir, ignore_errors=True)  # keep the log, drop the keys


@pytest.fixture(autouse=True)
def _broker_alive(request):
    """After each test, fail loudly if a broker died during it."""
    global _broker_died, _secure_died
    yield
    if "broker" in request.fixturenames:
        b = request.getfixturevalue("broker")
        code = b.proc.poll()
        if code is not None and _broker_died is None:
            _broker_died = request.node.nodeid
            pytest.fail(f"broker exited with code {code} during this test\n{log_tail(_broker_log)}")
    if "secure_broker" in request.fixturenames:
        b = request.getfixturevalue("secure_broker")
        code = b.proc.poll()
        if code is not None and _secure_died is None:
            _secure_died = request.node.nodeid
            pytest.fail(f"TLS broker exited with code {code} during this test\n{log_tail(_secure_log)}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if exitstatus != 0 and _broker_log is not None:
        terminalreporter.section("broker output (tail)")
        terminalreporter.write_line(log_tail(_broker_log))
    if exitstatus != 0 and _secure_log is not None:
        terminalreporter.section("TLS broker output (tail)")
        terminalreporter.write_line(log_tail(_secure_log))


@pytest.fixture(params=[V311, V5], ids=["v311", "v5"])
def proto(request) -> str:
    return request.param


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def topic(uid) -> str:
    """A unique topic prefix for one test (the broker is shared by all tests)."""
    return f"moat-it/{uid}"


@pytest.fixture
def paho(broker):
    """Factory: paho(proto, **kw) -> connected Paho client, cleaned up after the test."""
    made: list[Paho] = []

    def make(proto: str, connect: bool = True, **kw) -> Paho:
        c = Paho(broker, proto, **kw)
        made.append(c)
        if connect:
            c.connect()
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def procs():
    """Register background subprocess clients so they are always stopped."""
    running: list = []
    yield running
    for p in running:
        p.stop()
