//! The one integration test binary; a module per feature.

mod plugin_chain;
mod plugin_hostile;
mod plugin_support;
