//! Moat: an MQTT 3.1.1 and 5.0 broker whose policy runs in sandboxed
//! WebAssembly plugins.
//!
//! Module map (the folder layout is the architecture; ARCHITECTURE.md gives
//! the layer order, which `tests/it/layers.rs` enforces):
//! - [`codec`]: sans-IO packet encoding and decoding.
//! - [`plugin`]: the wasmtime host for policy plugins.
//! - [`auth`]: the policy pipeline: plugin chain, decisions, cache.
//! - [`config`]: TOML configuration, validated.
//! - [`transport`]: listeners (TCP, TLS, WebSocket) and the accept loop.
//! - [`connection`]: one task per client: the protocol state machine.
//! - [`session`]: sessions that outlive connections, and the registry.
//! - [`router`]: subscription trie, retained messages, fan-out.
//! - [`message`]: the routed message and the deliveries made of it.
//! - [`store`]: persistence of sessions and retained messages.
//! - [`reload`]: hot reload of plugins, configuration and certificates
//!   (the server owns the [`reload::Reloader`]).
//! - [`broker`]: the state shared by all of the above, and the
//!   [`broker::Replication`] a cluster plugs in.
//! - `cluster` (feature `cluster`): nodes exchanging publishes over NATS.
//! - [`server`]: binding listeners and running until shutdown.
//! - [`passwd`]: password files for the shipped plugins (`moat passwd`).
//! - [`metrics`]: counters and the gauges' snapshot types.
//! - [`admin`]: the admin HTTP listener (metrics, health, JSON API), the
//!   Prometheus text and the `$SYS` topics.
//! - [`rate`]: the token bucket behind the rate limits.
//! - [`identity`]: who a connection is: its address and certificate.
//! - [`open_files`]: the open-file limit, which caps connections.
//! - [`parking`]: the epoll set quiet connections wait in without a task.
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
pub mod identity;
pub mod message;
pub mod metrics;
pub mod open_files;
pub mod parking;
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
