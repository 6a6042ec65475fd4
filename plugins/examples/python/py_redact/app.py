"""py_redact: removes sensitive fields from JSON payloads, written in Python.

A transformer. On the topic filters in `config.filters` (default
`["telemetry/#"]`) a payload that is a JSON object loses the keys listed in
`config.fields` (default `["password", "token"]`), at any depth, and the
message gains the user property `redacted-by = py_redact`. Other payloads
(not JSON, not an object, nothing to remove) pass unchanged. Publishes on
other topics never reach the plugin: the broker routes by the manifest.
"""

import json
from dataclasses import replace

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import authn, authz, lifecycle, transform

FIELDS = frozenset()


def strings(config, key, default):
    value = config.get(key, default)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise Err(f"{key}: must be a list of non-empty strings")
    return value


def redact(value):
    """`value` without the configured keys, and whether anything was removed."""
    if isinstance(value, dict):
        changed = False
        out = {}
        for key, inner in value.items():
            if key in FIELDS:
                changed = True
                continue
            out[key], inner_changed = redact(inner)
            changed = changed or inner_changed
        return out, changed
    if isinstance(value, list):
        pairs = [redact(v) for v in value]
        return [v for v, _ in pairs], any(c for _, c in pairs)
    return value, False


class Lifecycle(exports.Lifecycle):
    def init(self, config_json):
        global FIELDS
        config = json.loads(config_json)
        filters = strings(config, "filters", ["telemetry/#"])
        FIELDS = frozenset(strings(config, "fields", ["password", "token"]))
        return lifecycle.Manifest(hooks=[lifecycle.Hook.TRANSFORM], transform_filters=filters)


class Transform(exports.Transform):
    def on_publish(self, client, message):
        try:
            document = json.loads(message.payload)
        except ValueError:
            return transform.TransformOutcome_Pass()
        if not isinstance(document, dict):
            return transform.TransformOutcome_Pass()
        cleaned, changed = redact(document)
        if not changed:
            return transform.TransformOutcome_Pass()
        payload = json.dumps(cleaned, separators=(",", ":")).encode()
        properties = message.user_properties + [("redacted-by", "py_redact")]
        return transform.TransformOutcome_Replace(replace(message, payload=payload, user_properties=properties))


class Authn(exports.Authn):
    def authenticate(self, client, credentials):
        return authn.AuthOutcome_Ignore()


class Authz(exports.Authz):
    def authorize(self, client, action, topic, qos, retain):
        return authz.Decision_Ignore()
