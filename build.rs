//! Builds the shipped policy plugins (`plugins/NAME`, a separate cargo
//! workspace) for `wasm32-wasip2` in release mode and embeds them in the
//! broker (see `src/plugin/shipped.rs`). Without the default
//! `shipped-plugins` feature nothing is built and none is shipped.
//!
//! The nested build uses the plugins workspace's own target directory
//! (`plugins/target`), so it never waits on the lock of the cargo running
//! this script, and reruns only when a shipped plugin, the SDK or the WIT
//! contract changes.
//!
//! The first command of the README is `cargo run --release`, so a toolchain
//! without the `wasm32-wasip2` target must not stop it: when rustup is
//! there, this script installs the target (and says so); when it is not, or
//! the install fails (offline), the broker is built without the shipped
//! plugins, with a warning saying how to get them, and the build reruns
//! once the target appears.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The shipped plugins: crate directories under `plugins/`. Adding one is
/// one line here; its default limits go in `plugins/NAME/shipped.toml`.
const SHIPPED: &[&str] = &["password-file", "acl", "rbac", "cert-identity", "jwt", "scram"];

/// The target the plugins are built for.
const WASM_TARGET: &str = "wasm32-wasip2";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let generated = out.join("shipped_plugins.rs");
    let absent = out.join("shipped_absent.rs");
    if std::env::var_os("CARGO_FEATURE_SHIPPED_PLUGINS").is_none() {
        write(&generated, "&[]");
        write(&absent, "\"built without the `shipped-plugins` feature\"");
        return;
    }
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = root.join("plugins");
    for path in ["plugins/Cargo.toml", "plugins/Cargo.lock", "plugin-sdk", "wit"] {
        println!("cargo::rerun-if-changed={path}");
    }
    for name in SHIPPED {
        println!("cargo::rerun-if-changed=plugins/{name}");
    }
    if let Err(why) = wasm_target(&workspace) {
        for line in [
            format!("the {WASM_TARGET} target is missing and {why}: building WITHOUT the shipped plugins."),
            format!("`[plugins.NAME]` tables will be refused. To get them: `rustup target add {WASM_TARGET}`"),
            "and build again (or build with `--no-default-features` to leave them out on purpose).".to_owned(),
        ] {
            println!("cargo::warning={line}");
        }
        write(&generated, "&[]");
        write(&absent, &format!("{:?}", format!("built without the {WASM_TARGET} target, and {why}")));
        return;
    }
    write(&absent, "\"\"");
    build(&workspace);

    let release = workspace.join("target").join("wasm32-wasip2").join("release");
    let mut code = String::from("&[\n");
    for name in SHIPPED {
        let built = release.join(format!("{}.wasm", name.replace('-', "_")));
        let embedded = out.join(format!("{name}.wasm"));
        // A copy, so the binary does not change when someone rebuilds the
        // plugins workspace by hand.
        if let Err(e) = std::fs::copy(&built, &embedded) {
            fail(&format!("cannot copy {}: {e}", built.display()));
        }
        let defaults = workspace.join(name).join("shipped.toml");
        let defaults = if defaults.is_file() {
            format!("include_str!({:?})", defaults.display().to_string())
        } else {
            "\"\"".to_owned()
        };
        let _ = writeln!(
            code,
            "    crate::plugin::shipped::Shipped {{ name: {name:?}, wasm: include_bytes!({:?}), defaults: {defaults} }},",
            embedded.display().to_string()
        );
    }
    code.push(']');
    write(&generated, &code);
}

/// Makes sure the toolchain has the wasm32-wasip2 standard library: it
/// does, or rustup installs it now. `Err` says why neither worked.
fn wasm_target(workspace: &Path) -> Result<(), String> {
    let Some(libdir) = target_libdir() else {
        // Without an answer from rustc, let the build itself tell.
        return Ok(());
    };
    if libdir.is_dir() {
        return Ok(());
    }
    // Once the target is installed (by anyone), build again with the
    // plugins: its directory appears under `rustlib`.
    if let Some(rustlib) = libdir.parent().and_then(Path::parent) {
        println!("cargo::rerun-if-changed={}", rustlib.display());
    }
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", WASM_TARGET]).current_dir(workspace);
    // The toolchain this build runs on (rustup sets it for the processes it
    // starts), not whatever the directory would select.
    if let Some(toolchain) = std::env::var_os("RUSTUP_TOOLCHAIN") {
        rustup.arg("--toolchain").arg(toolchain);
    }
    println!("cargo::warning=the {WASM_TARGET} target is missing; installing it: `rustup target add {WASM_TARGET}`");
    match rustup.output() {
        Err(e) => Err(format!("rustup, which would install it, cannot be run ({e})")),
        Ok(out) if !out.status.success() => {
            let said = String::from_utf8_lossy(&out.stderr);
            let said = said.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("no message").trim().to_owned();
            Err(format!("`rustup target add {WASM_TARGET}` failed: {said}"))
        }
        Ok(_) if libdir.is_dir() => {
            println!("cargo::warning=installed the {WASM_TARGET} target; building the shipped plugins");
            Ok(())
        }
        Ok(_) => {
            Err(format!("rustup installed it, but not for this toolchain ({} is still missing)", libdir.display()))
        }
    }
}

/// Where this toolchain keeps the wasm32-wasip2 standard library
/// (`rustc --print target-libdir`), whether or not it is installed.
fn target_libdir() -> Option<PathBuf> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc).args(["--print", "target-libdir", "--target", WASM_TARGET]).output().ok()?;
    let path = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !path.trim().is_empty()).then(|| PathBuf::from(path.trim()))
}

/// `cargo build --release --target wasm32-wasip2 -p NAME...` in `plugins/`.
fn build(workspace: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let jobs = std::env::var("NUM_JOBS").unwrap_or_else(|_| "2".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--target", "wasm32-wasip2", "-j", &jobs, "--manifest-path"])
        .arg(workspace.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", workspace.join("target"))
        // The outer cargo's jobserver, flags and wrappers (clippy's, under
        // `cargo clippy`) are not meant for this build.
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    for name in SHIPPED {
        command.args(["-p", name]);
    }
    let output = match command.output() {
        Ok(output) => output,
        Err(e) => fail(&format!("cannot run cargo: {e}")),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("wasm32-wasip2")
            && (stderr.contains("not installed") || stderr.contains("can't find crate"))
        {
            "the wasm32-wasip2 target is missing: run `rustup target add wasm32-wasip2`"
        } else {
            "see cargo's output above"
        };
        fail(&format!("{stderr}\n{hint}"));
    }
}

fn write(path: &Path, text: &str) {
    if let Err(e) = std::fs::write(path, text) {
        fail(&format!("cannot write {}: {e}", path.display()));
    }
}

fn fail(message: &str) -> ! {
    eprintln!(
        "error: building the shipped plugins (plugins/) for wasm32-wasip2 failed:\n{message}\n\
         (build with `--no-default-features` to leave the shipped plugins out)"
    );
    std::process::exit(1);
}
