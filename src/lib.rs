//! Moat: an MQTT broker whose policy runs in sandboxed WebAssembly plugins.

pub mod auth;
pub mod codec;
pub mod plugin;
