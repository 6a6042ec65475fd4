//! Integration tests: a real broker on 127.0.0.1:0 and real clients
//! (rumqttc for MQTT 3.1.1 and 5.0 over TCP, TLS and WebSocket, raw sockets
//! for malformed input; certificates made at run time by `pki`).
//! Test names carry the specification's normative statement ids.

mod acl_plugin;
mod admin_access;
mod attacks;
mod backpressure;
mod bounds;
mod cert_identity_plugin;
mod claimed_names;
mod cli;
#[cfg(feature = "cluster")]
mod cluster;
mod connect;
mod docs;
mod durable;
mod exactly_once;
mod harness;
mod jwt_plugin;
mod layers;
mod limits;
mod log_lines;
mod login_throttle;
mod malformed;
#[cfg(target_os = "linux")]
mod open_files;
mod ops;
#[cfg(target_os = "linux")]
mod parking;
#[cfg(feature = "cluster")]
mod partition;
mod password_file;
mod pki;
mod plugin_cache;
mod plugin_chain;
mod plugin_hostile;
mod plugin_sandbox;
mod plugin_support;
mod plugin_tools;
mod plugins;
mod polyglot;
mod proxy_protocol;
mod pubsub;
mod rbac_plugin;
mod reload;
mod retained;
mod scram_plugin;
mod session;
mod session_owner;
mod shared;
mod slow_readers;
mod soak;
mod tls;
mod will;
mod ws;
mod ws_origin;
