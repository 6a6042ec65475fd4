//! Moat: an MQTT broker whose policy runs in sandboxed WebAssembly plugins.

pub mod codec;
