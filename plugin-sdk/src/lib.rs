//! The Rust SDK for Moat plugins (built by the plugin host work).
