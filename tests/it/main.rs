//! Integration tests: a real broker on 127.0.0.1:0 and real clients
//! (rumqttc for MQTT 3.1.1 and 5.0 over TCP, TLS and WebSocket, raw sockets
//! for malformed input; certificates made at run time by `pki`).
//! Test names carry the specification's normative statement ids.

mod attacks;
mod cli;
mod connect;
mod durable;
mod harness;
mod malformed;
mod pki;
mod plugin_chain;
mod plugin_hostile;
mod plugin_support;
mod plugins;
mod pubsub;
mod reload;
mod retained;
mod session;
mod shared;
mod tls;
mod will;
mod ws;
