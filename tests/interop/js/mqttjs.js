#!/usr/bin/env node
// Small MQTT.js driver used by the Python interop suite (tests/interop).
//
//   node mqttjs.js pub '<json>'   connect, publish every message, disconnect
//   node mqttjs.js sub '<json>'   connect, subscribe, print messages, exit
//
// Every line printed on stdout is one JSON object with an "event" field:
//   {"event":"connack","sessionPresent":bool}
//   {"event":"suback","granted":[qos-or-reason,...]}
//   {"event":"message","topic":...,"payload_hex":...,"qos":n,"retain":bool,"properties":{...}}
//   {"event":"published","index":n}
//   {"event":"done"} | {"event":"timeout"} | {"event":"error","message":...}
// The whole run is bounded by `timeout_ms` (default 10 s): nothing here can hang.
//
// For mqtts:// and wss:// URLs, `tls` may give {ca_file, cert_file, key_file,
// rejectUnauthorized (default true)}; the files are PEM.
'use strict';

const fs = require('fs');
const mqtt = require('mqtt');

const [mode, rawArgs] = process.argv.slice(2);
const args = JSON.parse(rawArgs || '{}');
const timeoutMs = args.timeout_ms ?? 10000;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function finish(code) {
  // Give stdout a chance to flush before leaving.
  process.stdout.write('', () => process.exit(code));
}

const guard = setTimeout(() => {
  emit({ event: 'timeout' });
  finish(3);
}, timeoutMs);
guard.unref();

function pubProperties(p) {
  if (!p) return undefined;
  const out = {};
  if (p.userProperties) out.userProperties = p.userProperties;
  if (p.contentType !== undefined) out.contentType = p.contentType;
  if (p.responseTopic !== undefined) out.responseTopic = p.responseTopic;
  if (p.correlation_hex !== undefined) out.correlationData = Buffer.from(p.correlation_hex, 'hex');
  if (p.messageExpiryInterval !== undefined) out.messageExpiryInterval = p.messageExpiryInterval;
  if (p.payloadFormatIndicator !== undefined) out.payloadFormatIndicator = p.payloadFormatIndicator;
  return out;
}

function recvProperties(p) {
  if (!p) return {};
  const out = {};
  for (const [k, v] of Object.entries(p)) {
    out[k] = Buffer.isBuffer(v) ? { hex: v.toString('hex') } : v;
  }
  return out;
}

function tlsOptions(t) {
  if (!t) return {};
  const out = { rejectUnauthorized: t.rejectUnauthorized ?? true };
  if (t.ca_file) out.ca = fs.readFileSync(t.ca_file);
  if (t.cert_file) out.cert = fs.readFileSync(t.cert_file);
  if (t.key_file) out.key = fs.readFileSync(t.key_file);
  return out;
}

const client = mqtt.connect(args.url, {
  ...tlsOptions(args.tls),
  protocolVersion: args.protocolVersion ?? 4,
  clientId: args.clientId ?? `mqttjs-${process.pid}-${Date.now()}`,
  clean: args.clean ?? true,
  keepalive: 30,
  connectTimeout: Math.min(timeoutMs, 5000),
  reconnectPeriod: 0,
  properties: args.connectProperties,
});

let ending = false;

// Disconnect cleanly, then exit 0. Errors raised while closing are ignored.
function endAndExit() {
  if (ending) return;
  ending = true;
  setImmediate(() =>
    client.end(false, {}, () => {
      emit({ event: 'done' });
      finish(0);
    }),
  );
}

client.on('error', (err) => {
  if (ending) return;
  emit({ event: 'error', message: String(err && err.message ? err.message : err) });
  finish(1);
});

client.on('connect', (connack) => {
  emit({ event: 'connack', sessionPresent: !!connack.sessionPresent });
  if (mode === 'pub') runPub();
  else if (mode === 'sub') runSub();
  else {
    emit({ event: 'error', message: `unknown mode ${mode}` });
    finish(2);
  }
});

function runPub() {
  const messages = args.messages || [];
  let i = 0;
  const next = () => {
    if (i >= messages.length) {
      endAndExit();
      return;
    }
    const m = messages[i];
    const opts = { qos: m.qos ?? 0, retain: !!m.retain };
    const props = pubProperties(m.properties);
    if (props) opts.properties = props;
    client.publish(m.topic, Buffer.from(m.payload_hex || '', 'hex'), opts, (err) => {
      if (err) {
        emit({ event: 'error', message: String(err.message || err) });
        finish(1);
        return;
      }
      emit({ event: 'published', index: i });
      i += 1;
      next();
    });
  };
  next();
}

function runSub() {
  const want = args.count ?? 1;
  let got = 0;
  client.on('message', (topic, payload, packet) => {
    emit({
      event: 'message',
      topic,
      payload_hex: payload.toString('hex'),
      qos: packet.qos,
      retain: !!packet.retain,
      properties: recvProperties(packet.properties),
    });
    got += 1;
    if (got >= want) endAndExit();
  });
  const filters = {};
  for (const f of args.filters || []) {
    filters[f.topic] = { qos: f.qos ?? 0, nl: !!f.nl, rap: !!f.rap, rh: f.rh ?? 0 };
  }
  client.subscribe(filters, (err, granted) => {
    if (err) {
      emit({ event: 'error', message: String(err.message || err) });
      finish(1);
      return;
    }
    emit({ event: 'suback', granted: granted.map((g) => g.qos) });
    if (want === 0) endAndExit();
  });
}
