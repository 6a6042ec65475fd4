//! Measures what the Python and JavaScript example plugins of
//! `plugins/examples` cost against their Rust equivalents: component size,
//! first compile, a load from the disk cache, instantiation (+ `init`), the
//! smallest memory limit that runs them, and warm calls through `Policy`.
//!
//! Run `plugins/examples/build`, build the Rust fixtures in release
//! (`cargo build --release --target wasm32-wasip2 --manifest-path
//! plugins/Cargo.toml -p acl -p allow-list -p payload-upper`, with
//! `CARGO_TARGET_DIR=plugins/target`), then
//! `cargo run --release --example polyglot_cost [RUST_DIR]` (default
//! `plugins/target/wasm32-wasip2/release`). Not a test: it prints figures.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moat::auth::{Action, ClientInfo, Credentials, PluginMessage, Policy};
use moat::codec::{ProtocolVersion, QoS, TopicName};
use moat::plugin::{PluginHost, PluginSettings};

const ITERATIONS: u32 = 20_000;

/// What a plugin is asked in the per-call loop.
#[derive(Clone, Copy)]
enum Hook {
    Authorize,
    Authenticate,
    Transform(&'static str),
}

struct Case {
    name: &'static str,
    path: PathBuf,
    sidecar: &'static str,
    hook: Hook,
}

const ACL_RULES: &str = r#"
[limits]
timeout_ms = 1000
[config]
cache_ms = 0
[[config.rules]]
user = "alice"
access = "readwrite"
topic = "sensors/#"
[[config.rules]]
user = "alice"
access = "deny"
topic = "sensors/secret"
[[config.rules]]
pattern = "devices/%c/#"
access = "readwrite"
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let examples = root.join("plugins/examples/target");
    let rust =
        std::env::args_os().nth(1).map_or_else(|| root.join("plugins/target/wasm32-wasip2/release"), PathBuf::from);
    let cases = [
        Case { name: "py_acl", path: examples.join("py_acl.wasm"), sidecar: ACL_RULES, hook: Hook::Authorize },
        Case { name: "acl (Rust)", path: rust.join("acl.wasm"), sidecar: ACL_RULES, hook: Hook::Authorize },
        Case {
            name: "js_auth",
            path: examples.join("js_auth.wasm"),
            sidecar: "[limits]\ntimeout_ms = 1000\n[config]\nusers = { alice = \"wonderland\" }\n",
            hook: Hook::Authenticate,
        },
        Case {
            name: "allow-list (Rust)",
            path: rust.join("allow_list.wasm"),
            sidecar: "[limits]\ntimeout_ms = 1000\n[config]\nusers = [\"alice\"]\n",
            hook: Hook::Authenticate,
        },
        Case {
            name: "py_redact",
            path: examples.join("py_redact.wasm"),
            sidecar: "[limits]\ntimeout_ms = 1000\n[config]\nfilters = [\"t/#\"]\n",
            hook: Hook::Transform(r#"{"temp":21.5,"unit":"C","password":"hunter2","id":"sensor-0001"}"#),
        },
        Case {
            name: "js_envelope",
            path: examples.join("js_envelope.wasm"),
            sidecar: "[limits]\ntimeout_ms = 1000\n[config]\nfilters = [\"t/#\"]\n",
            hook: Hook::Transform(r#"{"temp":21.5,"unit":"C","password":"hunter2","id":"sensor-0001"}"#),
        },
        Case {
            name: "payload-upper (Rust)",
            path: rust.join("payload_upper.wasm"),
            sidecar: "[limits]\ntimeout_ms = 1000\n[config]\nfilters = [\"t/#\"]\n",
            hook: Hook::Transform(r#"{"temp":21.5,"unit":"C","password":"hunter2","id":"sensor-0001"}"#),
        },
    ];
    println!(
        "{:<22} {:>9} {:>13} {:>11} {:>12} {:>9} {:>10}",
        "plugin", "size KiB", "compile ms", "disk ms", "instance ms", "min MiB", "ns/call"
    );
    for case in &cases {
        measure_case(case)?;
    }
    Ok(())
}

fn measure_case(case: &Case) -> Result<(), Box<dyn std::error::Error>> {
    let size = std::fs::metadata(&case.path).map_err(|e| format!("{}: {e}", case.path.display()))?.len();
    let settings = PluginSettings::parse(case.sidecar)?;
    let cache = tempfile::tempdir()?;

    // First load: compiles (and writes the disk cache).
    let host = PluginHost::with_disk_cache(cache.path())?;
    let started = Instant::now();
    host.load(vec![(case.path.clone(), settings.clone())])?;
    let compile = started.elapsed();

    // A new host (as after a restart) finds the compiled code on disk.
    let host = PluginHost::with_disk_cache(cache.path())?;
    let started = Instant::now();
    host.load(vec![(case.path.clone(), settings.clone())])?;
    let disk = started.elapsed();
    assert_eq!(host.compile_counts().disk, 1, "{}: loaded from the disk cache", case.name);

    // Loading again on the same host reuses the compiled component: what is
    // left is instantiation and `init`.
    let loads = 20;
    let started = Instant::now();
    for _ in 0..loads {
        black_box(host.load(vec![(case.path.clone(), settings.clone())])?);
    }
    let instance = started.elapsed() / loads;

    let min_mib = smallest_memory(&host, case, &settings)?;

    let policy = Policy::new(host.load(vec![(case.path.clone(), settings)])?);
    let per_call = calls(&policy, case.hook)?;
    let stats = policy.stats();
    let failures: u64 = stats.iter().map(|(_, s)| s.traps + s.timeouts + s.out_of_memory + s.bad_answers).sum();
    println!(
        "{:<22} {:>9} {:>13.0} {:>11.1} {:>12.2} {:>9} {:>10.0}{}",
        case.name,
        size / 1024,
        ms(compile),
        ms(disk),
        ms(instance),
        min_mib,
        per_call,
        if failures > 0 { format!("  ({failures} failed calls!)") } else { String::new() }
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The smallest `memory_mb` under which the plugin loads and answers a
/// thousand calls without running out of memory: its linear memory per
/// instance, rounded up to a MiB.
fn smallest_memory(
    host: &PluginHost,
    case: &Case,
    settings: &PluginSettings,
) -> Result<u32, Box<dyn std::error::Error>> {
    let works = |mib: u32| -> bool {
        let mut s = settings.clone();
        s.limits.memory_bytes = (mib as usize) << 20;
        let Ok(set) = host.load(vec![(case.path.clone(), s)]) else {
            return false;
        };
        let policy = Policy::new(set);
        let _ = calls_n(&policy, case.hook, 1000);
        policy.stats().iter().all(|(_, s)| s.out_of_memory == 0 && s.traps == 0)
    };
    let (mut low, mut high) = (0u32, 256u32);
    if !works(high) {
        return Err(format!("{} does not run in {high} MiB", case.name).into());
    }
    while high - low > 1 {
        let mid = (low + high) / 2;
        if works(mid) { high = mid } else { low = mid }
    }
    Ok(high)
}

/// Mean nanoseconds per warm call, after a warm-up.
fn calls(policy: &Policy, hook: Hook) -> Result<f64, Box<dyn std::error::Error>> {
    calls_n(policy, hook, ITERATIONS / 10)?;
    let started = Instant::now();
    calls_n(policy, hook, ITERATIONS)?;
    Ok(started.elapsed().as_nanos() as f64 / f64::from(ITERATIONS))
}

fn calls_n(policy: &Policy, hook: Hook, n: u32) -> Result<(), Box<dyn std::error::Error>> {
    let client = ClientInfo {
        client_id: "bench-client".into(),
        username: Some("alice".into()),
        claimed_username: Some("alice".into()),
        peer_address: "127.0.0.1:40000".parse()?,
        listener: std::sync::Arc::new("tcp".to_owned()),
        protocol: ProtocolVersion::V5,
        tls: None,
        attributes: Default::default(),
    };
    let credentials = Credentials {
        username: Some("alice".into()),
        password: Some(Bytes::from_static(b"wonderland")),
        ..Credentials::default()
    };
    // Each call awaited on a current-thread runtime, as a connection task
    // awaits its own.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    let message = match hook {
        Hook::Transform(payload) => Some(PluginMessage::new(
            TopicName::new("t/kitchen")?,
            Bytes::from_static(payload.as_bytes()),
            QoS::AtMostOnce,
            false,
        )),
        _ => None,
    };
    runtime.block_on(async {
        for _ in 0..n {
            match (hook, &message) {
                (Hook::Authorize, _) => {
                    let topic = black_box("sensors/kitchen/temp");
                    black_box(policy.authorize(&client, Action::Publish, topic, QoS::AtMostOnce, false).await);
                }
                (Hook::Authenticate, _) => {
                    black_box(policy.authenticate(&client, black_box(&credentials)).await);
                }
                (Hook::Transform(_), Some(message)) => {
                    black_box(policy.transform(&client, black_box(message)).await);
                }
                (Hook::Transform(_), None) => {}
            }
        }
    });
    Ok(())
}
