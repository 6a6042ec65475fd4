//! Shared helpers for the plugin tests: one host per test process, fixtures
//! built once, a client to ask about.

use std::sync::OnceLock;

use moat::auth::{ClientInfo, Credentials, Policy};
use moat::codec::ProtocolVersion;
use moat::plugin::fixtures::{Fixtures, StagedDir, fixtures};
use moat::plugin::{LoadError, PluginHost, PluginSet};

/// The fixtures, built on first use; a build failure fails the test.
pub fn built() -> &'static Fixtures {
    match fixtures() {
        Ok(f) => f,
        Err(e) => panic!("{e}"),
    }
}

/// One engine for every test, like one broker.
pub fn host() -> &'static PluginHost {
    static HOST: OnceLock<PluginHost> = OnceLock::new();
    HOST.get_or_init(|| PluginHost::new().expect("the plugin engine starts"))
}

/// Stages `(name, fixture, sidecar)` plugins in a fresh directory.
///
/// A sidecar without `[limits]` gets a 1 s deadline instead of the 10 ms
/// default: the deadline is wall-clock time, and on a loaded 2-core CI
/// machine a descheduled test thread can miss 10 ms while the guest does
/// nothing wrong. Tests about the deadline set their own.
pub fn stage(plugins: &[(&str, &str, &str)]) -> StagedDir {
    let sidecars: Vec<String> = plugins
        .iter()
        .map(
            |(_, _, s)| {
                if s.contains("[limits]") { (*s).to_owned() } else { format!("{s}\n[limits]\ntimeout_ms = 1000\n") }
            },
        )
        .collect();
    let plugins: Vec<(&str, &str, &str)> =
        plugins.iter().zip(&sidecars).map(|((n, f, _), s)| (*n, *f, s.as_str())).collect();
    built().stage(&plugins).expect("staging the plugin directory")
}

/// Loads `(name, fixture, sidecar)` plugins from a fresh directory (see
/// [`stage`] for the deadline they get).
pub fn load(plugins: &[(&str, &str, &str)]) -> Result<PluginSet, LoadError> {
    host().load_dir(stage(plugins).path())
}

/// A policy over `plugins`, which must load.
pub fn policy(plugins: &[(&str, &str, &str)]) -> Policy {
    Policy::new(load(plugins).expect("plugins load"))
}

/// A v5 client with the given user name, verified.
pub fn client(username: Option<&str>) -> ClientInfo {
    ClientInfo {
        client_id: "client-1".into(),
        username: username.map(Into::into),
        claimed_username: username.map(Into::into),
        peer_address: "127.0.0.1:50000".parse().expect("valid address"),
        listener: std::sync::Arc::new("tcp".to_owned()),
        protocol: ProtocolVersion::V5,
        tls: None,
        attributes: Default::default(),
    }
}

/// CONNECT credentials with a user name and password.
pub fn login(username: &str) -> Credentials {
    Credentials {
        username: Some(username.into()),
        password: Some(bytes::Bytes::from_static(b"secret")),
        ..Credentials::default()
    }
}

/// The counters of the plugin named `name`.
pub fn stats(policy: &Policy, name: &str) -> moat::plugin::StatsSnapshot {
    policy.stats().into_iter().find(|(n, _)| &**n == name).map(|(_, s)| s).expect("plugin is in the policy")
}
