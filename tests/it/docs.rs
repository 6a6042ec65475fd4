//! The configuration snippets of the documentation parse, the way
//! `moat.example.toml` is checked: every ```` ```toml ```` block of
//! README.md, docs/plugins.md and the plugins' READMEs is a broker config,
//! a plugin sidecar or a test-vectors file that this broker accepts. A block
//! whose info string says more than `toml` (```` ```toml rbac ````: a
//! plugin's own file; ```` ```toml partial ````: a fragment) is only
//! checked to be TOML.

use std::path::{Path, PathBuf};

use moat::config::Config;
use moat::plugin::PluginSettings;
use moat::plugin::vectors::Vectors;

/// A ```` ```toml ```` block: where it starts and what it holds.
struct Snippet {
    file: PathBuf,
    line: usize,
    info: String,
    text: String,
}

/// The documents whose snippets are checked: the top README, the guide,
/// and every README of `plugins/` and of its subdirectories.
fn documents() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md"), root.join("docs/plugins.md")];
    let subdirectories = |dir: &Path| -> Vec<PathBuf> {
        let entries: Vec<PathBuf> =
            std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        let skip = |p: &PathBuf| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.starts_with('.') || name == "target" || name == "node_modules" || !p.is_dir()
        };
        entries.into_iter().filter(|p| !skip(p)).collect::<Vec<PathBuf>>()
    };
    for plugin in subdirectories(&root.join("plugins")) {
        files.push(plugin.join("README.md"));
        files.extend(subdirectories(&plugin).into_iter().map(|d| d.join("README.md")));
    }
    files.retain(|f| f.is_file());
    files.sort();
    files
}

fn snippets(file: &Path) -> Vec<Snippet> {
    let text = std::fs::read_to_string(file).expect("readable document");
    let mut out = Vec::new();
    let mut open: Option<Snippet> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start();
        if let Some(snippet) = &mut open {
            if fence.starts_with("```") {
                out.extend(open.take());
            } else {
                snippet.text.push_str(line);
                snippet.text.push('\n');
            }
        } else if let Some(info) = fence.strip_prefix("```toml") {
            let info = info.trim().to_owned();
            open = Some(Snippet { file: file.to_owned(), line: i + 1, info, text: String::new() });
        }
    }
    assert!(open.is_none(), "{}: a ```toml block is not closed", file.display());
    out
}

/// Why `snippet` is not acceptable, if it is not.
fn check(snippet: &Snippet) -> Result<&'static str, String> {
    if !snippet.info.is_empty() {
        return toml::from_str::<toml::Table>(&snippet.text).map(|_| "TOML").map_err(|e| e.to_string());
    }
    let config = match Config::parse(&snippet.text, Path::new("moat.toml")) {
        Ok(_) => return Ok("config"),
        Err(e) => e.to_string(),
    };
    let sidecar = match PluginSettings::parse(&snippet.text) {
        Ok(_) => return Ok("sidecar"),
        Err(e) => e,
    };
    let vectors = match Vectors::parse(&snippet.text) {
        Ok(_) => return Ok("vectors"),
        Err(e) => e,
    };
    Err(format!("as a broker config: {config}\n  as a sidecar: {sidecar}\n  as test vectors: {vectors}"))
}

#[test]
fn every_toml_snippet_of_the_documentation_parses() {
    let files = documents();
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for file in &files {
        for snippet in snippets(file) {
            let at = format!("{}:{}", snippet.file.display(), snippet.line);
            match check(&snippet) {
                Ok(kind) => checked.push((at, kind)),
                Err(why) => failures.push(format!("{at}:\n  {why}")),
            }
        }
    }
    assert!(failures.is_empty(), "snippets that do not parse:\n{}", failures.join("\n"));
    // The check covers what it claims to: each kind occurs.
    for kind in ["config", "sidecar", "vectors"] {
        assert!(checked.iter().any(|(_, k)| *k == kind), "no {kind} snippet checked: {checked:#?}");
    }
    assert!(files.iter().any(|f| f.ends_with("plugins/acl/README.md")), "{files:?}");
}

#[test]
fn a_snippet_with_a_wrong_key_is_caught() {
    let snippet = |text: &str| Snippet { file: "x.md".into(), line: 1, info: String::new(), text: text.to_owned() };
    assert!(check(&snippet("[plugins.password-file]\nordr = 10\n")).is_err());
    assert!(check(&snippet("order = 10\n[limits]\nmemory = 3\n")).is_err());
    assert_eq!(check(&snippet("[plugins.password-file]\norder = 10\n")), Ok("config"));
}
