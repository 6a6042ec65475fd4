//! `moat plugin new`: writes a ready-to-build plugin project in Rust, Python
//! or JavaScript.
//!
//! Every project carries the WIT contract this binary was built with (the
//! files of `wit/`, embedded at compile time), so a new plugin always
//! targets the contract the broker speaks; a minimal authorizer that allows
//! a topic prefix; a sidecar `NAME.toml`; test vectors for `moat plugin
//! check`; and a README with the build command. The Rust project depends on
//! `wit-bindgen` directly (not on this repository's SDK), so it builds
//! anywhere with `cargo build --target wasm32-wasip2 --release`.
//!
//! The templates live beside this file in `scaffold/`; `{{name}}`,
//! `{{crate}}`, `{{world}}`, `{{version}}`, the toolchain pins and the
//! limits are filled in. Every project also carries this broker's guide for
//! plugin authors (`docs/plugins.md`), so its README links to the guide of
//! the version it targets, offline.
//!
//! The Python and JavaScript toolchains are pinned where the repository's
//! own examples pin them (`plugins/examples/python/requirements.txt`,
//! `plugins/examples/js/package-lock.json`), so the scaffolds build with
//! exactly the componentize-py and jco that CI builds the examples with:
//! a JavaScript project gets that lockfile under its own name.

use std::path::{Path, PathBuf};

use super::CONTRACT_VERSION;

/// The WIT files of the contract, as `(path in the project, text)`.
pub const WIT_FILES: &[(&str, &str)] = &[("wit/plugin.wit", include_str!("../../wit/plugin.wit"))];

/// The guide for plugin authors, copied into every project.
const GUIDE: &str = include_str!("../../docs/plugins.md");

/// The examples' Python toolchain pin (`componentize-py==X`).
const PY_REQUIREMENTS: &str = include_str!("../../plugins/examples/python/requirements.txt");

/// The examples' npm manifest and lockfile (jco and its dependencies).
const JS_PACKAGE: &str = include_str!("../../plugins/examples/js/package.json");
const JS_LOCK: &str = include_str!("../../plugins/examples/js/package-lock.json");

/// The package name the examples' lockfile carries, replaced by the
/// plugin's.
const JS_LOCK_NAME: &str = "\"name\": \"moat-js-plugin-examples\"";

/// The world every plugin targets.
pub const WORLD: &str = "plugin";

/// The language of a new plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Rust with wit-bindgen.
    Rust,
    /// Python with componentize-py.
    Python,
    /// JavaScript with jco on QuickJS.
    Js,
}

/// Why a project could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The plugin name is not usable.
    #[error("invalid plugin name {name:?}: {why}")]
    Name {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// The target directory exists and is not empty (or is not a directory).
    #[error("{}: {why}; choose another --dir or remove it", path.display())]
    Target {
        /// The directory.
        path: PathBuf,
        /// What is in the way.
        why: String,
    },
    /// A file or directory could not be written.
    #[error("{}: {message}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        message: String,
    },
}

/// A project's files, relative to its directory, with their contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// `(relative path, contents)`, in writing order.
    pub files: Vec<(PathBuf, String)>,
}

/// Checks a plugin name: it becomes the component's file name (the plugin's
/// name in the broker), a cargo package, a Python module's project and an
/// npm package, so only lowercase ASCII letters, digits and single inner
/// dashes, starting with a letter, at most 64 characters.
///
/// # Errors
/// [`ScaffoldError::Name`] saying what is wrong.
pub fn check_name(name: &str) -> Result<(), ScaffoldError> {
    let fail = |why: &str| Err(ScaffoldError::Name { name: name.to_owned(), why: why.to_owned() });
    if name.is_empty() || name.len() > 64 {
        return fail("must be 1 to 64 characters long");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return fail("must start with a lowercase letter");
    }
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return fail("may hold only lowercase letters, digits and dashes");
    }
    if name.ends_with('-') || name.contains("--") {
        return fail("dashes must separate words");
    }
    // Cargo refuses these as package names.
    const RESERVED: &[&str] = &[
        "as",
        "async",
        "await",
        "break",
        "const",
        "continue",
        "crate",
        "dyn",
        "else",
        "enum",
        "extern",
        "false",
        "fn",
        "for",
        "if",
        "impl",
        "in",
        "let",
        "loop",
        "match",
        "mod",
        "move",
        "mut",
        "pub",
        "ref",
        "return",
        "self",
        "static",
        "struct",
        "super",
        "trait",
        "true",
        "type",
        "unsafe",
        "use",
        "where",
        "while",
        "abstract",
        "become",
        "box",
        "do",
        "final",
        "macro",
        "override",
        "priv",
        "typeof",
        "unsized",
        "virtual",
        "yield",
        "try",
        "gen",
        "std",
        "core",
        "alloc",
        "test",
        "proc-macro",
    ];
    if RESERVED.contains(&name) {
        return fail("is a reserved word in Rust or cargo");
    }
    Ok(())
}

/// The files of a new `lang` project named `name`.
///
/// # Errors
/// [`ScaffoldError::Name`] for a bad name.
pub fn project(lang: Lang, name: &str) -> Result<Project, ScaffoldError> {
    check_name(name)?;
    // Interpreted guests carry their runtime: more memory per instance and
    // more time per call than a Rust guest.
    let (memory_mb, timeout_ms) = match lang {
        Lang::Rust => ("32", "10"),
        Lang::Python => ("64", "50"),
        Lang::Js => ("32", "20"),
    };
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{world}}", WORLD)
            .replace("{{version}}", CONTRACT_VERSION)
            .replace("{{memory_mb}}", memory_mb)
            .replace("{{timeout_ms}}", timeout_ms)
            .replace("{{componentize_py}}", &python_pin())
            .replace("{{jco}}", &jco_version())
    };
    let mut files: Vec<(PathBuf, String)> = match lang {
        Lang::Rust => vec![
            ("Cargo.toml".into(), fill(include_str!("scaffold/Cargo.toml.tmpl"))),
            ("src/lib.rs".into(), fill(include_str!("scaffold/lib.rs.tmpl"))),
            ("README.md".into(), fill(include_str!("scaffold/README.rust.md.tmpl"))),
            (".gitignore".into(), "/target\n".into()),
        ],
        Lang::Python => vec![
            ("app.py".into(), fill(include_str!("scaffold/app.py.tmpl"))),
            (
                "requirements.txt".into(),
                fill("# The toolchain: `.venv/bin/pip install -r requirements.txt`.\n{{componentize_py}}\n"),
            ),
            ("README.md".into(), fill(include_str!("scaffold/README.python.md.tmpl"))),
            (".gitignore".into(), "/.venv\n/*.wasm\n__pycache__/\n".into()),
        ],
        Lang::Js => vec![
            ("plugin.js".into(), fill(include_str!("scaffold/plugin.js.tmpl"))),
            ("package.json".into(), fill(include_str!("scaffold/package.json.tmpl"))),
            ("package-lock.json".into(), JS_LOCK.replace(JS_LOCK_NAME, &format!("\"name\": \"{name}\""))),
            ("README.md".into(), fill(include_str!("scaffold/README.js.md.tmpl"))),
            (".gitignore".into(), "/node_modules\n/*.wasm\n".into()),
        ],
    };
    files.push((format!("{name}.toml").into(), fill(include_str!("scaffold/sidecar.toml.tmpl"))));
    files.push(("vectors.toml".into(), fill(include_str!("scaffold/vectors.toml.tmpl"))));
    files.extend(WIT_FILES.iter().map(|(path, text)| (PathBuf::from(path), (*text).to_owned())));
    files.push(("docs/plugins.md".into(), guide()));
    Ok(Project { files })
}

/// The examples' componentize-py requirement line (`componentize-py==X`).
fn python_pin() -> String {
    let pin = PY_REQUIREMENTS.lines().map(str::trim).find(|l| l.starts_with("componentize-py"));
    pin.unwrap_or("componentize-py").to_owned()
}

/// The jco version the examples pin.
fn jco_version() -> String {
    let package: serde_json::Value = serde_json::from_str(JS_PACKAGE).unwrap_or_default();
    let version = package.pointer("/devDependencies/@bytecodealliance~1jco").and_then(|v| v.as_str());
    version.unwrap_or("latest").to_owned()
}

/// The guide, with its links into the repository (`../plugins/...`)
/// turned into text naming the repository path, since the project holds
/// only the guide.
fn guide() -> String {
    let mut out = String::with_capacity(GUIDE.len() + 256);
    let mut rest = GUIDE;
    while let Some(at) = rest.find("](../") {
        let Some(open) = rest[..at].rfind('[') else { break };
        let Some(close) = rest[at..].find(')') else { break };
        let (text, target) = (&rest[open + 1..at], &rest[at + 5..at + close]);
        out.push_str(&rest[..open]);
        out.push_str(&format!("{text} (`{target}` in the Moat repository)"));
        rest = &rest[at + close + 1..];
    }
    out.push_str(rest);
    out
}

/// Writes a new project into `dir`, which must not exist or be empty.
/// Returns the paths written.
///
/// # Errors
/// A bad name, a target in the way, or a file that cannot be written.
pub fn write(lang: Lang, name: &str, dir: &Path) -> Result<Vec<PathBuf>, ScaffoldError> {
    let project = project(lang, name)?;
    let target = |why: String| ScaffoldError::Target { path: dir.to_owned(), why };
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(target("exists and is not empty".into()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if dir.exists() && !dir.is_dir() => return Err(target(format!("exists and is not a directory ({e})"))),
        Err(e) => return Err(target(e.to_string())),
    }
    let mut written = Vec::new();
    for (relative, text) in &project.files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ScaffoldError::Io { path: parent.to_owned(), message: e.to_string() })?;
        }
        std::fs::write(&path, text).map_err(|e| ScaffoldError::Io { path: path.clone(), message: e.to_string() })?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["acl", "my-plugin", "a1", "room-2-auth"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "My", "1st", "-a", "a-", "a--b", "a_b", "a.b", "a/b", "../x", "fn", "test", &"a".repeat(65)] {
            assert!(matches!(check_name(bad), Err(ScaffoldError::Name { .. })), "{bad:?}");
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let p = project(lang, "my-plugin").expect("valid name");
            for (path, text) in &p.files {
                assert!(!text.contains("{{"), "{lang:?} {}: unfilled placeholder", path.display());
            }
            let names: Vec<_> = p.files.iter().map(|(p, _)| p.to_string_lossy().into_owned()).collect();
            for expected in ["README.md", "my-plugin.toml", "vectors.toml", "wit/plugin.wit"] {
                assert!(names.iter().any(|n| n == expected), "{lang:?} lacks {expected}: {names:?}");
            }
        }
        let rust = project(Lang::Rust, "my-plugin").expect("valid name");
        let cargo = &rust.files[0].1;
        assert!(cargo.contains("name = \"my-plugin\"") && cargo.contains("wit-bindgen"), "{cargo}");
        assert!(!cargo.contains("moat-plugin-sdk"), "must build outside this repository");
    }

    #[test]
    fn the_toolchains_are_the_examples_pins() {
        let py = project(Lang::Python, "my-plugin").expect("valid name");
        let requirements = &py.files.iter().find(|(p, _)| p.ends_with("requirements.txt")).expect("requirements").1;
        assert!(requirements.lines().any(|l| l.starts_with("componentize-py==")), "{requirements}");
        let readme = &py.files.iter().find(|(p, _)| p.ends_with("README.md")).expect("README").1;
        assert!(readme.contains("pip install -r requirements.txt"), "{readme}");

        let js = project(Lang::Js, "my-plugin").expect("valid name");
        let file = |name: &str| &js.files.iter().find(|(p, _)| p.ends_with(name)).expect("file").1;
        let package: serde_json::Value = serde_json::from_str(file("package.json")).expect("package.json");
        let lock: serde_json::Value = serde_json::from_str(file("package-lock.json")).expect("package-lock.json");
        assert_eq!(lock["name"], "my-plugin");
        assert_eq!(lock["packages"][""]["name"], "my-plugin");
        assert_eq!(lock["packages"][""]["devDependencies"], package["devDependencies"], "npm ci needs them equal");
        let jco = &package["devDependencies"]["@bytecodealliance/jco"];
        assert_eq!(&lock["packages"]["node_modules/@bytecodealliance/jco"]["version"], jco, "pinned exactly");
        // QuickJS has no console of its own.
        assert!(file("plugin.js").contains("globalThis.console"));
    }

    #[test]
    fn the_guide_travels_without_links_out_of_the_project() {
        let p = project(Lang::Rust, "my-plugin").expect("valid name");
        let guide = &p.files.iter().find(|(p, _)| p.ends_with("docs/plugins.md")).expect("guide").1;
        assert!(guide.starts_with("# Writing Moat plugins"));
        assert!(!guide.contains("](../"), "a link the project cannot follow");
        assert!(guide.contains("plugins/examples/python (`plugins/examples/python/README.md` in the Moat repository)"));
    }

    #[test]
    fn the_sidecar_is_valid() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let p = project(lang, "my-plugin").expect("valid name");
            let (_, sidecar) = p.files.iter().find(|(p, _)| p.ends_with("my-plugin.toml")).expect("sidecar");
            let settings = super::super::PluginSettings::parse(sidecar).expect("sidecar parses");
            assert_eq!(settings.config_json, r#"{"prefix":"my-plugin/"}"#);
            let (_, vectors) = p.files.iter().find(|(p, _)| p.ends_with("vectors.toml")).expect("vectors");
            super::super::vectors::Vectors::parse(vectors).expect("vectors parse");
        }
    }
}
