#!/usr/bin/env bash
# Run the interop suite against Mosquitto instead of Moat, to check the tests
# themselves. Extra arguments go to pytest (e.g. -k retained -x).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
# {tmp} is a private directory the fixture creates; the config gives Mosquitto
# 2.x an explicit loopback listener with anonymous access.
# The TLS/WebSocket tests get a Mosquitto-format config with the same listeners
# (WebSocket tests skip when this Mosquitto lacks libwebsockets, as Debian's does).
export MOAT_TLS_BROKER_CMD="$MOSQUITTO -c {config}"
export MOAT_BROKER_CMD="sh -c 'printf \"listener {port} 127.0.0.1\\nallow_anonymous true\\n\" > {tmp}/mosquitto.conf && exec $MOSQUITTO -c {tmp}/mosquitto.conf'"
exec .venv/bin/python -m pytest tests/interop -q "$@"
