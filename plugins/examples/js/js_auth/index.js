// js_auth: a user name / password authenticator written in JavaScript.
//
// `config.users` maps user names to passwords. A listed user with the right
// password is allowed (and gets the attribute `role` from `config.roles`, if
// any); a listed user with a wrong password, or an unlisted user name, is
// denied; a client without a user name is ignored, so the listener's
// `allow_anonymous` (or a later plugin) decides.
//
// The passwords sit in the sidecar in clear text: this is an example of the
// contract, not a password store. For real deployments use the shipped
// `password-file` plugin (salted PBKDF2 hashes).
import host from "moat:plugin/host@0.1.0";

// QuickJS has no `console`; this one writes to the broker's log through
// `host.log`, tagged with the plugin's name (like a Rust or Python
// plugin's stdout and stderr).
globalThis.console = {
  log: (...args) => host.log("info", args.join(" ")),
  warn: (...args) => host.log("warn", args.join(" ")),
  error: (...args) => host.log("error", args.join(" ")),
};

let users = new Map();
let roles = new Map();

// QuickJS has no TextEncoder/TextDecoder; the URI functions do UTF-8.
function utf8Encode(text) {
  const binary = unescape(encodeURIComponent(text));
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

function table(config, key) {
  const value = config[key] ?? {};
  if (typeof value !== "object" || Array.isArray(value) || value === null) {
    throw `${key}: must be a table of strings`;
  }
  const out = new Map();
  for (const [name, v] of Object.entries(value)) {
    if (typeof v !== "string") throw `${key}.${name}: must be a string`;
    out.set(name, v);
  }
  return out;
}

// Compares every byte, so the time taken does not tell how much matched.
function sameBytes(a, b) {
  let diff = a.length ^ b.length;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ (b[i % (b.length || 1)] ?? 0);
  return diff === 0;
}

export const lifecycle = {
  init(configJson) {
    const config = JSON.parse(configJson);
    const clear = table(config, "users");
    users = new Map([...clear].map(([name, pw]) => [name, utf8Encode(pw)]));
    roles = table(config, "roles");
    // What a plugin prints goes to the broker's log, tagged with its name.
    console.log(`js_auth: ${users.size} users`);
    return { hooks: ["authenticate"], transformFilters: [] };
  },
};

export const authn = {
  authenticate(client, credentials) {
    const name = credentials.username;
    if (name === null || name === undefined) return { tag: "ignore" };
    const expected = users.get(name);
    if (expected === undefined) return { tag: "deny", val: `unknown user ${name}` };
    const given = credentials.password ?? new Uint8Array(0);
    if (!sameBytes(given, expected)) return { tag: "deny", val: `wrong password for ${name}` };
    const role = roles.get(name);
    return { tag: "allow", val: { attributes: role === undefined ? [] : [["role", role]], usernameOverride: null } };
  },
};

export const authz = {
  authorize() {
    return { tag: "ignore" };
  },
};

export const transform = {
  onPublish() {
    return { tag: "pass" };
  },
};
