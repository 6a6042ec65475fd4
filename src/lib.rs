//! Moat: an MQTT 3.1.1 and 5.0 broker whose policy runs in sandboxed
//! WebAssembly plugins.
//!
//! Module map (the folder layout is the architecture):
//! - [`codec`]: sans-IO packet encoding and decoding.
//! - [`plugin`]: the wasmtime host for policy plugins.
//! - [`auth`]: the policy pipeline: plugin chain, decisions, cache.
//! - [`config`]: TOML configuration, validated.
//! - [`transport`]: listeners (TCP, TLS, WebSocket) and the accept loop.
//! - [`connection`]: one task per client: the protocol state machine.
//! - [`session`]: sessions that outlive connections, and the registry.
//! - [`router`]: subscription trie, retained messages, fan-out.
//! - [`store`]: persistence of sessions and retained messages.
//! - [`reload`]: hot reload of plugins, configuration and certificates.
//! - [`broker`]: the state shared by all of the above.
//! - `cluster` (feature `cluster`): nodes exchanging publishes over NATS.
//! - [`server`]: binding listeners and running until shutdown.
//! - [`passwd`]: password files for the shipped plugins (`moat passwd`).
//! - [`metrics`]: counters, the Prometheus text and `$SYS` topics.
//! - [`admin`]: the admin HTTP listener (metrics, health, JSON API).
//! - [`rate`]: the token bucket behind the rate limits.
//! - [`open_files`]: the open-file limit, which caps connections.
//! - [`untrusted`]: peer-chosen text (client ids, user names) in the log.

pub mod admin;
pub mod auth;
pub mod broker;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod codec;
pub mod config;
pub mod connection;
#[cfg(fuzzing)]
pub mod fuzzing;
pub mod metrics;
pub mod open_files;
pub mod passwd;
pub mod plugin;
pub mod rate;
pub mod reload;
pub mod router;
pub mod server;
pub mod session;
pub mod store;
pub mod transport;
pub mod untrusted;

pub use server::Server;
