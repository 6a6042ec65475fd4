"""py_acl: a Mosquitto-style access control list written in Python.

An authorizer. Rules grant `read` (subscribe, receive, retained), `write`
(publish, will), `readwrite`, or `deny` on MQTT topic filters, for one user
name (`user`), for clients without one (`anonymous = true`), or for every
client through a `pattern` in which `%u` is the user name and `%c` the
client id. A matching `deny` rule wins over any grant; with no granting rule
the answer is `no_match` ("deny", the default, or "ignore").

`client.username` is the user name the broker verified (none for a client
that only claimed one), so user rules and `%u` never serve an impostor. A
`deny` pattern whose names cannot be substituted (no user name, or a name
with a wildcard or `/`) still denies, for every name.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import authn, authz, lifecycle, transform
from wit_world.imports import types

ACCESS = {"read": {"read"}, "write": {"write"}, "readwrite": {"read", "write"}, "deny": set()}
WRITE_ACTIONS = (types.Action.PUBLISH, types.Action.WILL)


def valid_filter(topic):
    if not topic or "\0" in topic:
        return False
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i + 1 != len(levels)):
            return False
        if "+" in level and level != "+":
            return False
    return True


def covers(rule, requested):
    """Whether every topic `requested` (a name or a filter) matches is matched by `rule`."""
    if requested.startswith("$") and rule[:1] in ("+", "#"):
        return False
    asked = requested.split("/")
    for i, level in enumerate(rule.split("/")):
        if level == "#":
            return True
        if i >= len(asked):
            return False
        other = asked[i]
        if other == "#" or (other == "+" and level != "+"):
            return False
        if level != "+" and level != other:
            return False
    return len(asked) == len(rule.split("/"))


def safe_name(name):
    # A name with a wildcard or separator would widen or move the rule.
    return bool(name) and not any(c in name for c in "+#/\0")


def substitute(pattern, user, client):
    if "%u" in pattern and not (user is not None and safe_name(user)):
        return None
    if "%c" in pattern and not safe_name(client):
        return None
    out, i = [], 0
    while i < len(pattern):
        two = pattern[i : i + 2]
        if two == "%u":
            out.append(user)
            i += 2
        elif two == "%c":
            out.append(client)
            i += 2
        else:
            out.append(pattern[i])
            i += 1
    return "".join(out)


def widen(pattern):
    """A deny pattern for every name: each level holding a placeholder becomes `+`."""
    return "/".join("+" if ("%u" in level or "%c" in level) else level for level in pattern.split("/"))


class Rule:
    def __init__(self, n, raw):
        if not isinstance(raw, dict):
            raise Err(f"rules[{n}]: must be a table")
        unknown = set(raw) - {"user", "anonymous", "pattern", "topic", "access"}
        if unknown:
            raise Err(f"rules[{n}]: unknown key `{sorted(unknown)[0]}`")
        access = raw.get("access")
        if access not in ACCESS:
            raise Err(f"rules[{n}]: `access` must be read, write, readwrite or deny")
        self.deny = access == "deny"
        self.ops = ACCESS[access]
        self.user = raw.get("user")
        self.anonymous = raw.get("anonymous") is True
        self.pattern = raw.get("pattern")
        self.topic = raw.get("topic")
        if (self.pattern is None) == (self.topic is None):
            raise Err(f"rules[{n}]: needs exactly one of `topic` and `pattern`")
        text = self.topic if self.topic is not None else self.pattern
        if not isinstance(text, str) or not valid_filter(text):
            raise Err(f"rules[{n}]: invalid topic filter {text!r}")
        if self.topic is not None and self.user is None and not self.anonymous:
            raise Err(f"rules[{n}]: a `topic` rule needs `user` or `anonymous = true`")
        self.text = text

    def filter_for(self, user, client):
        """The rule's filter for this client, or None when it does not apply."""
        if self.anonymous and user is not None:
            return None
        if self.user is not None and self.user != user:
            return None
        if self.topic is not None:
            return self.topic
        substituted = substitute(self.pattern, user, client)
        if substituted is None and self.deny:
            # A missing or hostile name must not switch a deny off.
            return widen(self.pattern)
        return substituted


class Lifecycle(exports.Lifecycle):
    def init(self, config_json):
        global RULES, CACHE_MS, IGNORE_NO_MATCH
        config = json.loads(config_json)
        RULES = [Rule(n, r) for n, r in enumerate(config.get("rules", []))]
        CACHE_MS = config.get("cache_ms", 60000)
        if not isinstance(CACHE_MS, int) or not 0 <= CACHE_MS < 2**32:
            raise Err("cache_ms: must be a whole number of milliseconds")
        no_match = config.get("no_match", "deny")
        if no_match not in ("deny", "ignore"):
            raise Err('no_match: must be "deny" or "ignore"')
        IGNORE_NO_MATCH = no_match == "ignore"
        # What a plugin prints goes to the broker's log, tagged with its name.
        print(f"py_acl: {len(RULES)} rules")
        return lifecycle.Manifest(hooks=[lifecycle.Hook.AUTHORIZE], transform_filters=[])


RULES = []
CACHE_MS = 60000
IGNORE_NO_MATCH = False


class Authz(exports.Authz):
    def authorize(self, client, action, topic, qos, retain):
        op = "write" if action in WRITE_ACTIONS else "read"
        if action == types.Action.SUBSCRIBE and topic.startswith("$share/"):
            # Rules speak about the topics a shared subscription receives.
            parts = topic.split("/", 2)
            if len(parts) == 3:
                topic = parts[2]
        granted = False
        for rule in RULES:
            rule_filter = rule.filter_for(client.username, client.client_id)
            if rule_filter is None:
                continue
            if rule.deny:
                # A wider subscription than a deny rule is granted; the denied
                # topics are then withheld message by message (receive).
                if covers(rule_filter, topic):
                    return authz.Decision_Deny(f"{action.name.lower()} on {topic} denied by rule `{rule.text}`")
            elif op in rule.ops and covers(rule_filter, topic):
                granted = True
        if granted:
            return authz.Decision_Allow(CACHE_MS or None)
        if IGNORE_NO_MATCH:
            return authz.Decision_Ignore()
        return authz.Decision_Deny(f"no rule grants {action.name.lower()} on {topic}")


class Authn(exports.Authn):
    def authenticate(self, client, credentials):
        return authn.AuthOutcome_Ignore()


class Transform(exports.Transform):
    def on_publish(self, client, message):
        return transform.TransformOutcome_Pass()
