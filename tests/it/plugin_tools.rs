//! The plugin author's tools: `moat plugin check` (load, report, test
//! vectors) and `moat plugin new` (project scaffolding), run as the binary,
//! and the check that docs/plugins.md covers the WIT contract.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::plugin_support::built;

fn moat() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moat"))
}

/// `moat plugin check` with a compiled-component cache shared by the tests,
/// so each fixture is compiled once, not once per test.
fn moat_check() -> Command {
    let mut cmd = moat();
    cmd.args(["plugin", "check", "--cache-dir"]).arg(Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-check-cache"));
    cmd
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `moat plugin check` on the fixture `fixture` with `sidecar` as its
/// `--config` and `vectors` (when not empty) as its `--vectors`.
fn check(fixture: &str, sidecar: &str, vectors: &str) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("settings.toml");
    std::fs::write(&config, sidecar).expect("write sidecar");
    let mut cmd = moat_check();
    cmd.arg(built().wasm(fixture)).arg("--config").arg(&config);
    if !vectors.is_empty() {
        let path = dir.path().join("vectors.toml");
        std::fs::write(&path, vectors).expect("write vectors");
        cmd.arg("--vectors").arg(path);
    }
    cmd.output().expect("run moat plugin check")
}

const PREFIX_SIDECAR: &str =
    "[config]\nprefix = \"public/\"\ndeny_prefix = \"public/secret/\"\n[limits]\nmemory_mb = 16\ntimeout_ms = 1000\n";

#[test]
fn check_reports_manifest_imports_limits_and_runs_passing_vectors() {
    let vectors = r#"
[client]
username = "alice"

[[vector]]
name = "public publish"
hook = "authorize"
action = "publish"
topic = "public/a"
qos = 1
expect = "allow"

[[vector]]
name = "secret is denied"
hook = "authorize"
action = "subscribe"
topic = "public/secret/x"
expect = "deny"
expect_reason = "public/secret/"

[[vector]]
name = "elsewhere is ignored"
hook = "authorize"
action = "receive"
topic = "private/a"
expect = "ignore"
"#;
    let out = check("topic-prefix", PREFIX_SIDECAR, vectors);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("contract   moat:plugin@0.1.0"), "{stdout}");
    assert!(stdout.contains("moat:plugin/types@0.1.0"), "imports listed: {stdout}");
    assert!(stdout.contains("memory 16 MiB") && stdout.contains("1000 ms per call"), "limits: {stdout}");
    assert!(stdout.contains("config     keys: deny_prefix, prefix"), "config keys only: {stdout}");
    assert!(stdout.contains("hooks      authorize"), "manifest: {stdout}");
    assert!(stdout.contains("ok    public publish: allow (cache 60000 ms)"), "{stdout}");
    assert!(stdout.contains("ok    secret is denied: deny"), "{stdout}");
    assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");
}

#[test]
fn check_runs_authenticate_and_transform_vectors() {
    let authn = r#"
[[vector]]
hook = "authenticate"
username = "alice"
password = "pw"
expect = "allow"
expect_attributes = { role = "listed" }

[[vector]]
hook = "authenticate"
username = "mallory"
expect = "deny"
expect_reason = "mallory"

[[vector]]
hook = "authenticate"
expect = "ignore"

[[vector]]
name = "undeclared hook"
hook = "authorize"
action = "publish"
topic = "a"
expect = "ignore"
"#;
    let out = check("allow-list", "[config]\nusers = [\"alice\"]\n[limits]\ntimeout_ms = 1000\n", authn);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "the undeclared hook fails: {stdout}");
    assert!(stdout.contains("3 passed, 1 failed"), "{stdout}");
    assert!(stdout.contains("FAIL  undeclared hook: the manifest does not declare Authorize"), "{stdout}");

    let transform = r#"
[[vector]]
hook = "transform"
topic = "upper/a"
payload = "hi"
expect = "replace"
expect_topic = "upper/a"
expect_payload = "HI"

[[vector]]
name = "outside the filters"
hook = "transform"
topic = "lower/a"
payload = "hi"
expect = "pass"
"#;
    let out = check("payload-upper", "[limits]\ntimeout_ms = 1000\n", transform);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("transforms upper/#"), "{stdout}");
    assert!(stdout.contains("not called"), "{stdout}");
}

#[test]
fn check_exits_1_on_a_mismatch_naming_the_plugin() {
    let vectors = "[[vector]]\nname = \"wrong\"\nhook = \"authorize\"\naction = \"publish\"\ntopic = \"public/a\"\nexpect = \"deny\"\n";
    let out = check("topic-prefix", PREFIX_SIDECAR, vectors);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("FAIL  wrong: expected deny, got allow"), "{stdout}");
    assert!(stderr.contains("plugin topic_prefix: 1 of 1 vectors failed"), "{stderr}");
}

#[test]
fn check_refuses_what_the_broker_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"\0asm but not really").expect("write");
    let out = moat_check().arg(&broken).output().expect("run");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("plugin broken does not load") && stderr.contains("broken.wasm"), "{stderr}");
    assert!(stderr.contains("not a valid WebAssembly component"), "{stderr}");

    let out = moat_check().arg(built().wasm("wrong-version")).output().expect("run");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stdout.contains("contract   moat:plugin@1.0.0"), "{stdout}");
    assert!(stderr.contains("plugin wrong_version does not load") && stderr.contains("moat:plugin@1.0.0"), "{stderr}");

    let out = moat_check().arg(built().wasm("forbidden-import")).output().expect("run");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stdout.contains("<- not offered by the broker"), "{stdout}");
    assert!(stderr.contains("which this broker does not offer"), "{stderr}");

    // init refusing its config is a load failure too.
    let out = check("topic-prefix", "[config]\ncache_ms = 99999999999\n", "");
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("init failed"), "{}", text(&out.stderr));
}

#[test]
fn check_refuses_invalid_vectors_and_sidecars_naming_the_file() {
    let out = check("topic-prefix", "", "[[vector]]\nhook = \"authorize\"\nexpct = \"allow\"\n");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("vectors.toml") && stderr.contains("expct"), "{stderr}");

    let out = check("topic-prefix", "[limits]\ninstances = 0\n", "");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("settings.toml") && stderr.contains("limits.instances"), "{stderr}");
}

#[test]
fn check_says_cached_for_a_component_found_compiled() {
    let home = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let out = moat()
            .args(["plugin", "check"])
            .arg(built().wasm("topic-prefix"))
            .args(args)
            .env("HOME", home.path())
            .env_remove("XDG_CACHE_HOME")
            .output()
            .expect("run moat plugin check");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    // By default, the broker's default cache (here ~/.cache/moat).
    let cache = home.path().join(".cache").join("moat");
    let first = run(&[]);
    assert!(first.contains(&format!("cache      {}", cache.display())), "{first}");
    assert!(first.contains("(compiled and initialised)"), "{first}");
    let second = run(&[]);
    assert!(second.contains("(cached and initialised)"), "{second}");
    let moved = home.path().join("elsewhere");
    assert!(run(&["--cache-dir", &moved.display().to_string()]).contains("(compiled and initialised)"));
    assert!(run(&["--cache-dir", &moved.display().to_string()]).contains("(cached and initialised)"));
    let off = run(&["--no-cache"]);
    assert!(off.contains("cache      none") && off.contains("(compiled and initialised)"), "{off}");
}

/// Every file under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).expect("under dir").to_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn new_writes_a_project_with_the_brokers_wit() {
    for (lang, source) in [("rust", "src/lib.rs"), ("python", "app.py"), ("js", "plugin.js")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let project = dir.path().join("proj");
        let out =
            moat().args(["plugin", "new", "--lang", lang, "room-auth", "--dir"]).arg(&project).output().expect("run");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let files = files_under(&project);
        for expected in [source, "README.md", "room-auth.toml", "vectors.toml"] {
            assert!(files.contains(&PathBuf::from(expected)), "{lang}: {expected} missing in {files:?}");
        }
        // The contract is exactly wit/, file for file.
        let wit = repo().join("wit");
        let ours = files_under(&wit);
        let theirs = files_under(&project.join("wit"));
        assert_eq!(ours, theirs, "{lang}: the project's wit/ lists other files than wit/");
        for f in &ours {
            let a = std::fs::read(wit.join(f)).expect("read wit");
            let b = std::fs::read(project.join("wit").join(f)).expect("read project wit");
            assert!(a == b, "{lang}: wit/{} differs", f.display());
        }
        let readme = std::fs::read_to_string(project.join("README.md")).expect("readme");
        assert!(readme.contains("moat plugin check"), "{lang}: {readme}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = moat().args(["plugin", "new", "--lang", "rust", "edge"]).current_dir(dir.path()).output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let cargo = std::fs::read_to_string(dir.path().join("edge/Cargo.toml")).expect("default dir is ./NAME");
    assert!(cargo.contains("wit-bindgen") && !cargo.contains("path ="), "{cargo}");
}

#[test]
fn new_refuses_a_bad_name_or_a_used_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out =
        moat().args(["plugin", "new", "--lang", "rust", "Bad_Name"]).current_dir(dir.path()).output().expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("invalid plugin name \"Bad_Name\""), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_dir(dir.path()).expect("read").count(), 0, "nothing written");

    std::fs::create_dir(dir.path().join("taken")).expect("mkdir");
    std::fs::write(dir.path().join("taken/keep.txt"), "mine").expect("write");
    let out =
        moat().args(["plugin", "new", "--lang", "python", "taken"]).current_dir(dir.path()).output().expect("run");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("taken: exists and is not empty"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path().join("taken")).expect("read").count(), 1, "nothing added");

    // An empty directory is fine.
    std::fs::create_dir(dir.path().join("empty")).expect("mkdir");
    let out = moat()
        .args(["plugin", "new", "--lang", "js", "fresh", "--dir", "empty"])
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(dir.path().join("empty/plugin.js").is_file());
}

/// The names a WIT file defines that a reader of the docs must find:
/// interfaces, worlds, functions, types, record fields and cases.
fn wit_names(wit: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in wit.lines().map(str::trim) {
        if line.starts_with("//") || line.starts_with("package") || line.starts_with("use ") {
            continue;
        }
        let word =
            |s: &str| s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).next().unwrap_or("").to_owned();
        for kw in ["interface ", "world ", "record ", "variant ", "enum "] {
            if let Some(rest) = line.strip_prefix(kw) {
                names.push(word(rest));
            }
        }
        if let Some((name, _)) = line.split_once(": func") {
            names.push(name.trim().to_owned());
        } else if let Some((field, _)) = line.split_once(':') {
            // A record field.
            names.push(word(field));
        } else if line.ends_with(',') {
            // A case of an enum or a variant.
            names.push(word(line));
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

#[test]
fn docs_cover_the_wit_contract() {
    let doc = std::fs::read_to_string(repo().join("docs/plugins.md")).expect("docs/plugins.md exists");
    let mut missing = Vec::new();
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("wit")).expect("wit/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "wit") {
            let wit = std::fs::read_to_string(&path).expect("read wit");
            for name in wit_names(&wit) {
                seen += 1;
                if !doc.contains(&format!("`{name}`")) && !doc.contains(&format!("`{name}(")) {
                    missing.push(name);
                }
            }
        }
    }
    assert!(seen > 40, "the WIT parser found only {seen} names");
    assert!(missing.is_empty(), "docs/plugins.md does not mention (in backticks) {missing:?}");
    assert!(
        doc.contains("moat:plugin@0.1.0") || doc.contains(&format!("moat:plugin@{}", moat::plugin::CONTRACT_VERSION))
    );
}
