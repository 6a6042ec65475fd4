//! Test support: builds the fixture plugins of `plugins/` (a separate cargo
//! workspace) for `wasm32-wasip2`, once per test process, and stages them in
//! throw-away plugin directories. Used by unit tests and by `tests/`.
//!
//! The nested build uses its own target directory (`plugins/target`), so it
//! never waits on the lock of the cargo that runs the tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The built fixture components.
#[derive(Debug)]
pub struct Fixtures {
    dir: PathBuf,
}

/// Builds the fixtures on first use and returns where they are.
///
/// # Errors
/// The build's output when `cargo build` fails (for example when the
/// `wasm32-wasip2` target is not installed).
pub fn fixtures() -> Result<&'static Fixtures, String> {
    static BUILT: OnceLock<Result<Fixtures, String>> = OnceLock::new();
    BUILT.get_or_init(build).as_ref().map_err(Clone::clone)
}

fn build() -> Result<Fixtures, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
    let target = workspace.join("target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--quiet", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(workspace.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        // The outer cargo's jobserver and flags are not meant for this build.
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .map_err(|e| format!("cannot run cargo to build the fixture plugins: {e}"))?;
    if !output.status.success() {
        return Err(format!("building the fixture plugins failed:\n{}", String::from_utf8_lossy(&output.stderr)));
    }
    Ok(Fixtures { dir: target.join("wasm32-wasip2").join("debug") })
}

impl Fixtures {
    /// The component of the fixture crate `name` (e.g. `allow-list`).
    pub fn wasm(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.wasm", name.replace('-', "_")))
    }

    /// A fresh plugin directory holding, for each `(name, fixture, sidecar)`,
    /// the fixture crate `fixture` as `name.wasm` with `sidecar` as
    /// `name.toml` (none when empty). Removed when dropped.
    ///
    /// # Errors
    /// When the directory or a file cannot be written.
    pub fn stage(&self, plugins: &[(&str, &str, &str)]) -> std::io::Result<StagedDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("moat-plugins-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let staged = StagedDir { path: dir };
        for (name, fixture, sidecar) in plugins {
            std::fs::copy(self.wasm(fixture), staged.path.join(format!("{name}.wasm")))?;
            if !sidecar.is_empty() {
                std::fs::write(staged.path.join(format!("{name}.toml")), sidecar)?;
            }
        }
        Ok(staged)
    }
}

/// A temporary plugin directory, removed on drop.
#[derive(Debug)]
pub struct StagedDir {
    path: PathBuf,
}

impl StagedDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        // Best effort: a leftover temp directory is harmless.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
