//! Functions the broker offers to plugins, with native fallbacks so plugins
//! can be unit tested with `cargo test` outside WebAssembly.

pub use crate::bindings::moat::plugin::host::Level;

/// Writes a line to the broker's log, tagged with the plugin's name. Never
/// log passwords or payloads: the broker's log is not a secret store.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::moat::plugin::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Milliseconds since the Unix epoch, from the broker's clock.
pub fn now_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::moat::plugin::host::now_ms();
    #[cfg(not(target_arch = "wasm32"))]
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
