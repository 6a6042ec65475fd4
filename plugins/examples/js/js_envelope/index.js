// js_envelope: wraps payloads in a JSON envelope, written in JavaScript.
//
// A transformer. A publish on the topic filters in `config.filters` (default
// `["ingest/#"]`) is replaced by the same message whose payload is
//   {"topic": ..., "client": ..., "user": ..., "received_ms": ..., "payload": ...}
// with the original payload as a string when it is UTF-8, else as base64 in
// "payload_base64"; the content type becomes `application/json`. The time
// comes from the broker's clock (`host.now-ms`): the guest has no clock.
import host from "moat:plugin/host@0.1.0";

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// QuickJS has no TextEncoder/TextDecoder; the URI functions do UTF-8.
function utf8Encode(text) {
  const binary = unescape(encodeURIComponent(text));
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

// Throws (URIError) when `bytes` is not valid UTF-8.
function utf8Decode(bytes) {
  let escaped = "";
  for (let i = 0; i < bytes.length; i++) escaped += (bytes[i] < 16 ? "%0" : "%") + bytes[i].toString(16);
  return decodeURIComponent(escaped);
}

function base64(bytes) {
  let out = "";
  for (let i = 0; i < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
    out += B64[(n >> 18) & 63] + B64[(n >> 12) & 63];
    out += i + 1 < bytes.length ? B64[(n >> 6) & 63] : "=";
    out += i + 2 < bytes.length ? B64[n & 63] : "=";
  }
  return out;
}

export const lifecycle = {
  init(configJson) {
    const config = JSON.parse(configJson);
    const filters = config.filters ?? ["ingest/#"];
    if (!Array.isArray(filters) || !filters.every((f) => typeof f === "string" && f.length > 0)) {
      throw "filters: must be a list of non-empty strings";
    }
    return { hooks: ["transform"], transformFilters: filters };
  },
};

export const transform = {
  onPublish(client, message) {
    const envelope = {
      topic: message.topic,
      client: client.clientId,
      user: client.username ?? null,
      received_ms: Number(host.nowMs()),
    };
    try {
      envelope.payload = utf8Decode(message.payload);
    } catch {
      envelope.payload_base64 = base64(message.payload);
    }
    return {
      tag: "replace",
      val: { ...message, payload: utf8Encode(JSON.stringify(envelope)), contentType: "application/json" },
    };
  },
};

export const authn = {
  authenticate() {
    return { tag: "ignore" };
  },
};

export const authz = {
  authorize() {
    return { tag: "ignore" };
  },
};
