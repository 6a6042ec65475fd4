//! The layer order of ARCHITECTURE.md holds: every `crate::` path in
//! `src/` (a `use` line or a path in code) points from a top-level module
//! to one on a lower line of the order, so no import cycle between
//! top-level modules can form. Comments are not read (a doc link is no
//! dependency); `main.rs` and `cli/` are the binary, above everything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Imports that still run against the order, each with the step of issue
/// 24 that removes it. The test fails when one of them no longer occurs, so
/// the list only shrinks.
const KNOWN: &[(&str, &str)] = &[];

/// The order: the fenced ```` ```layers ```` block of ARCHITECTURE.md, top
/// line first. Modules on one line are peers and import nothing of each
/// other. Returns each module's rank (higher imports lower).
fn order() -> BTreeMap<String, usize> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md");
    let text = std::fs::read_to_string(&path).expect("ARCHITECTURE.md is readable");
    let block = text
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("ARCHITECTURE.md has a ```layers block");
    let lines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut rank = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        for module in line.split_whitespace() {
            let previous = rank.insert(module.to_owned(), lines.len() - i);
            assert!(previous.is_none(), "{module} appears twice in the layers block");
        }
    }
    rank
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).expect("src is readable").flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments: whole comment lines go, and
/// a trailing `//` outside a string literal.
fn code(text: &str) -> Vec<&str> {
    text.lines()
        .map(|line| {
            if line.trim_start().starts_with("//") {
                return "";
            }
            match line.find("//") {
                Some(at) if line[..at].matches('"').count() % 2 == 0 => &line[..at],
                _ => line,
            }
        })
        .collect()
}

/// The top-level modules a piece of code names after `crate::`, with the
/// byte offset of each path: the first segment, or each top-level item of
/// a `crate::{a, b::c}` group (which may span lines).
fn named(code: &str) -> Vec<(String, usize)> {
    let mut names = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c == '$' || c == '_' || c.is_alphanumeric()) {
            continue;
        }
        let after = &code[at + "crate::".len()..];
        let Some(group) = after.strip_prefix('{') else {
            names.extend(ident(after).map(|name| (name, at)));
            continue;
        };
        let mut depth = 0usize;
        let mut item = String::new();
        let mut items = Vec::new();
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                _ if depth == 0 => item.push(c),
                _ => {}
            }
        }
        items.push(item);
        names.extend(items.iter().filter_map(|i| ident(i.trim())).map(|name| (name, at)));
    }
    names
}

/// The identifier `text` starts with.
fn ident(text: &str) -> Option<String> {
    let name: String = text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    (!name.is_empty()).then_some(name)
}

/// Every import between top-level modules: (from, to) with the places.
fn imports(src: &Path) -> BTreeMap<(String, String), Vec<String>> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src).expect("under src").to_string_lossy().replace('\\', "/");
        let top = relative.split('/').next().unwrap_or_default().trim_end_matches(".rs").to_owned();
        if ["main", "cli", "lib"].contains(&top.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("source is readable");
        let code = code(&text).join("\n");
        for (name, at) in named(&code) {
            if name != top {
                let line = code[..at].matches('\n').count() + 1;
                edges.entry((top.clone(), name)).or_default().push(format!("src/{relative}:{line}"));
            }
        }
    }
    edges
}

/// The top-level modules of `src/`.
fn modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .expect("src is readable")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let name = name.strip_suffix(".rs").map(str::to_owned).unwrap_or(name);
            (!["lib", "main", "cli"].contains(&name.as_str())).then_some(name)
        })
        .collect()
}

#[test]
fn every_module_has_a_place_in_the_layer_order() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rank = order();
    let modules = modules(&src);
    let unplaced: Vec<&String> = modules.iter().filter(|m| !rank.contains_key(*m)).collect();
    assert!(unplaced.is_empty(), "modules missing from ARCHITECTURE.md's layers block: {unplaced:?}");
    let gone: Vec<&String> = rank.keys().filter(|m| !modules.contains(*m)).collect();
    assert!(gone.is_empty(), "the layers block names modules src/ does not have: {gone:?}");
}

#[test]
fn imports_follow_the_layer_order() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rank = order();
    let edges = imports(&src);
    let mut against = Vec::new();
    for ((from, to), places) in &edges {
        let (Some(a), Some(b)) = (rank.get(from), rank.get(to)) else { continue };
        if a <= b && !KNOWN.contains(&(from.as_str(), to.as_str())) {
            against.push(format!("{from} -> {to}: {}", places.join(", ")));
        }
    }
    assert!(against.is_empty(), "imports against the layer order of ARCHITECTURE.md:\n{}", against.join("\n"));
    let fixed: Vec<&(&str, &str)> =
        KNOWN.iter().filter(|(from, to)| !edges.contains_key(&((*from).to_owned(), (*to).to_owned()))).collect();
    assert!(fixed.is_empty(), "no longer imported, remove from KNOWN: {fixed:?}");
}

/// What the cluster may name of the broker: the node handle and the
/// replication interface the broker defines (issue 24).
const CLUSTER_SEES_OF_BROKER: &[&str] = &["Node", "WeakNode", "Replication", "Claim", "Forwarded", "BoxFuture"];

/// What a piece of code names of the broker beyond
/// [`CLUSTER_SEES_OF_BROKER`]: items after `crate::broker::` (plain or
/// grouped), and the type `Broker` however it was imported.
fn broker_reached(code: &str) -> Vec<String> {
    let mut reached = Vec::new();
    for (at, _) in code.match_indices("crate::broker::") {
        let after = &code[at + "crate::broker::".len()..];
        let items: Vec<String> = match after.strip_prefix('{') {
            Some(group) => {
                group.split('}').next().unwrap_or_default().split(',').filter_map(|i| ident(i.trim())).collect()
            }
            None => ident(after).into_iter().collect(),
        };
        reached.extend(items.into_iter().filter(|i| !CLUSTER_SEES_OF_BROKER.contains(&i.as_str())));
    }
    for (at, _) in code.match_indices("Broker") {
        let before = code[..at].chars().next_back();
        let after = code[at + "Broker".len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c == '_' || c.is_alphanumeric());
        if !word(before) && !word(after) {
            reached.push("Broker".to_owned());
        }
    }
    reached
}

#[test]
fn the_cluster_reaches_the_broker_only_through_its_node_handle() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cluster");
    let mut files = Vec::new();
    sources(&dir, &mut files);
    assert!(!files.is_empty(), "src/cluster has sources");
    let mut reached = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source is readable");
        for (n, line) in code(&text).iter().enumerate() {
            for name in broker_reached(line) {
                reached.push(format!("{}:{}: {name}", file.display(), n + 1));
            }
        }
    }
    assert!(
        reached.is_empty(),
        "cluster/ reaches the broker past broker::Node and the Replication interface:\n{}",
        reached.join("\n")
    );
}

#[test]
fn reaching_the_broker_is_seen() {
    assert_eq!(broker_reached("use crate::broker::{Node, Broker};"), ["Broker", "Broker"]);
    assert_eq!(broker_reached("fn f(b: &Arc<Broker>) {}"), ["Broker"]);
    assert_eq!(broker_reached("let m = crate::broker::Refused::RetainedFull;"), ["Refused"]);
    assert!(broker_reached("use crate::broker::{Claim, Node}; struct BrokerError; let broker_x = 1;").is_empty());
}

#[test]
fn grouped_and_plain_paths_are_read() {
    let code = "use crate::{a::{B, C},\n    d, e::F};\nlet x = crate::g::h(); $crate::no; pub(crate) fn f()";
    let names: Vec<String> = named(code).into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["a", "d", "e", "g"]);
}

/// Most lines of code (neither blank nor comment) in one function of
/// `src/`, from its `fn` line to its closing brace.
const MAX_FUNCTION_LINES: usize = 100;
/// Most lines in one file of `src/`, its inline test module aside.
const MAX_FILE_LINES: usize = 600;
/// Functions and files allowed past those bounds, as `path:name` or
/// `path`, each with its reason. Empty: keep it so.
const LONG_ALLOWED: &[&str] = &[];

/// `text` with comments, string and character literals blanked (newlines
/// kept), so that what is left of each line is code and its braces count.
fn blank(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let keep_lines = |out: &mut String, from: &[char]| {
        out.extend(from.iter().map(|&c| if c == '\n' { '\n' } else { ' ' }));
    };
    while i < chars.len() {
        let rest = &chars[i..];
        let after_word = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        let end = if rest.starts_with(&['/', '/']) {
            i + rest.iter().position(|&c| c == '\n').unwrap_or(rest.len())
        } else if rest.starts_with(&['/', '*']) {
            i + 2 + rest[2..].windows(2).position(|w| w == ['*', '/']).map_or(rest.len() - 2, |at| at + 2)
        } else if !after_word && (rest.starts_with(&['r', '#']) || rest.starts_with(&['r', '"'])) {
            let hashes = rest[1..].iter().take_while(|&&c| c == '#').count();
            let close: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            let body = 2 + hashes;
            i + body
                + rest[body..].windows(close.len()).position(|w| w == close.as_slice()).map_or(0, |at| at)
                + close.len()
        } else if rest[0] == '"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != '"' {
                j += if rest[j] == '\\' { 2 } else { 1 };
            }
            i + j + 1
        } else if rest[0] == '\'' && rest.get(1) == Some(&'\\') {
            i + 2 + rest[2..].iter().position(|&c| c == '\'').map_or(0, |at| at + 1)
        } else if rest[0] == '\'' && rest.get(2) == Some(&'\'') {
            i + 3
        } else {
            out.push(rest[0]);
            i += 1;
            continue;
        };
        let end = end.min(chars.len());
        keep_lines(&mut out, &chars[i..end]);
        i = end;
    }
    out
}

/// The name of the function whose `fn` line `line` is, if it is one.
fn function_name(line: &str) -> Option<String> {
    let mut rest = line.trim_start();
    loop {
        let before = rest;
        if let Some(after) = rest.strip_prefix("pub") {
            rest = match after.trim_start().strip_prefix('(') {
                Some(scope) => scope.split_once(')').map_or("", |(_, r)| r),
                None => after,
            };
        }
        for qualifier in ["const ", "async ", "unsafe ", "extern "] {
            rest = rest.trim_start().strip_prefix(qualifier).unwrap_or(rest);
        }
        rest = rest.trim_start();
        if rest == before {
            break;
        }
    }
    ident(rest.strip_prefix("fn ")?.trim_start())
}

/// Each function of `code` (blanked) with its first line (from 1) and its
/// lines of code, `fn` line to closing brace.
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let Some(name) = function_name(line) else { continue };
        // The body opens at the first `{` outside the parameters (a `;`
        // first: a declaration without a body).
        let (mut depth, mut open) = (0i32, None);
        'signature: for (n, text) in lines.iter().enumerate().skip(start) {
            for c in text.chars() {
                match c {
                    '(' | '[' => depth += 1,
                    ')' | ']' => depth -= 1,
                    ';' if depth <= 0 => break 'signature,
                    '{' if depth <= 0 => {
                        open = Some(n);
                        break 'signature;
                    }
                    _ => {}
                }
            }
        }
        let Some(open) = open else { continue };
        let mut braces = 0i32;
        let mut seen = false;
        for (n, text) in lines.iter().enumerate().skip(open) {
            let text = if n == open { &text[text.find('{').unwrap_or(0)..] } else { text };
            for c in text.chars() {
                braces += i32::from(c == '{') - i32::from(c == '}');
                seen |= c == '{';
            }
            if seen && braces <= 0 {
                let length = lines[start..=n].iter().filter(|l| !l.trim().is_empty()).count();
                found.push((name.clone(), start + 1, length));
                break;
            }
        }
    }
    found
}

/// Lines of a file, its first inline test module (`#[cfg(test)]` then
/// `mod`, at the top level) and what follows it aside.
fn file_lines(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    lines.windows(2).position(|w| w[0] == "#[cfg(test)]" && w[1].starts_with("mod ")).unwrap_or(lines.len())
}

#[test]
fn no_function_over_100_lines_and_no_file_over_600() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut long = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src").to_string_lossy().replace('\\', "/");
        let name = relative.rsplit('/').next().unwrap_or_default();
        if name == "tests.rs" || name.starts_with("tests_") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("source is readable");
        let lines = file_lines(&text);
        let path = format!("src/{relative}");
        if lines > MAX_FILE_LINES && !LONG_ALLOWED.contains(&path.as_str()) {
            long.push(format!("{path}: {lines} lines (most {MAX_FILE_LINES})"));
        }
        for (function, line, length) in functions(&blank(&text)) {
            let id = format!("{path}:{function}");
            if length > MAX_FUNCTION_LINES && !LONG_ALLOWED.contains(&id.as_str()) {
                long.push(format!("{path}:{line}: fn {function}, {length} lines (most {MAX_FUNCTION_LINES})"));
            }
        }
    }
    assert!(long.is_empty(), "split these into named steps (issue 24):\n{}", long.join("\n"));
}

#[test]
fn functions_are_measured_in_lines_of_code() {
    let text = r#####"
/// Doc { not counted.
pub(crate) async fn a(x: [u8; 2]) -> Result<(), ()> {
    let s = "}}}";
    // a comment }
    let c = '}';
    let r = r#"}"#;

    Ok(())
}
fn b<T>(t: T) where T: Copy;
pub(in crate::x) const fn c() {}
"#####;
    let found = functions(&blank(text));
    assert_eq!(found, [("a".to_owned(), 3, 6), ("c".to_owned(), 12, 1)]);
    let with_tests = "fn a() {}\n\n#[cfg(test)]\nmod tests {\n    fn t() {}\n}\n";
    assert_eq!(file_lines(with_tests), 2);
}
