//! `moat plugin check` and `moat plugin new`: the binary's tools for plugin
//! authors. (A module of `main.rs`, not of the library.)

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use moat::plugin::scaffold::{self, Lang};
use moat::plugin::vectors::Vectors;
use moat::plugin::{CONTRACT_VERSION, ComponentInfo, Hook, LoadedPlugin, OnError, PluginHost, PluginSettings};

/// Exit code when the plugin does not load or an input file is invalid:
/// the broker's own exit code for a plugin that stops start-up.
const EXIT_LOAD: u8 = 64;

/// Exit code when a test vector does not match.
const EXIT_MISMATCH: u8 = 1;

/// Commands for plugin authors.
#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Load a plugin component exactly as the broker would, print its
    /// manifest, contract version, imports and effective limits, and run
    /// optional test vectors. Exits 64 if the plugin does not load, 1 if a
    /// vector fails.
    Check(CheckArgs),
    /// Write a ready-to-build plugin project: the WIT contract, a minimal
    /// authorizer, a sidecar, test vectors and a README.
    New(NewArgs),
}

/// Arguments of `moat plugin check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The component (`*.wasm`). Its plugin name is the file name.
    file: PathBuf,
    /// The plugin's settings (sidecar format: order, on_error, config,
    /// limits, grants). Default: the sidecar beside FILE, if any.
    #[arg(long, short, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// Test vectors to run (see docs/plugins.md, "Test vectors").
    #[arg(long, value_name = "FILE.toml")]
    vectors: Option<PathBuf>,
    /// Keep compiled components in DIR (like `[plugins] cache_dir`), so
    /// checking an unchanged component again skips compiling it. Default:
    /// the broker's default, `$XDG_CACHE_HOME/moat` or `~/.cache/moat`.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Keep no compiled components on disk (like `[plugins] cache = false`).
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
}

/// Arguments of `moat plugin new`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The language of the plugin.
    #[arg(long, value_enum)]
    lang: LangArg,
    /// The plugin's name: lowercase letters, digits and dashes.
    name: String,
    /// Where to write the project (must not exist, or be empty). Default:
    /// ./NAME.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// `--lang` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LangArg {
    Rust,
    Python,
    Js,
}

/// Runs a plugin command and returns the process's exit code.
pub fn run(command: &PluginCommand) -> ExitCode {
    match command {
        PluginCommand::Check(args) => check(args),
        PluginCommand::New(args) => new(args),
    }
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("moat plugin: {message}");
    ExitCode::from(code)
}

fn check(args: &CheckArgs) -> ExitCode {
    // Parse the vectors first: a typo there should not cost a compile.
    let vectors = match &args.vectors {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => match Vectors::parse(&text) {
                Ok(v) => Some((path, v)),
                Err(e) => return fail(EXIT_LOAD, format_args!("{}: {e}", path.display())),
            },
            Err(e) => return fail(EXIT_LOAD, format_args!("{}: {e}", path.display())),
        },
    };
    let started = Instant::now();
    let cache_dir = if args.no_cache { None } else { args.cache_dir.clone().or_else(moat::plugin::default_cache_dir) };
    let host = match &cache_dir {
        Some(dir) => PluginHost::with_disk_cache(dir),
        None => PluginHost::new(),
    };
    let host = match host {
        Ok(host) => host,
        Err(e) => return fail(EXIT_LOAD, e),
    };
    let name = args.file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    println!("plugin     {name} ({})", args.file.display());
    match host.cache_dir() {
        Some(dir) => println!("cache      {}", dir.display()),
        None => println!("cache      none: compiled in memory only"),
    }
    let info = match host.inspect(&args.file) {
        Ok(info) => info,
        Err(e) => return fail(EXIT_LOAD, format_args!("plugin {name} does not load: {e}")),
    };
    print_component(&info);
    let (settings, from) = match &args.config {
        Some(path) => (PluginSettings::from_file(path), format!("{}", path.display())),
        None => {
            let sidecar = args.file.with_extension("toml");
            let from = if sidecar.is_file() { sidecar.display().to_string() } else { "defaults".to_owned() };
            (PluginSettings::for_component(&args.file), from)
        }
    };
    let settings = match settings {
        Ok(settings) => settings,
        Err(e) => return fail(EXIT_LOAD, format_args!("plugin {name} does not load: {e}")),
    };
    print_settings(&settings, &from);
    let plugin = match host.load_one(args.file.clone(), settings) {
        Ok(plugin) => std::sync::Arc::new(plugin),
        Err(e) => return fail(EXIT_LOAD, format_args!("plugin {name} does not load: {e}")),
    };
    print_manifest(&plugin);
    // `inspect` compiled it or found it on disk; `load_one` reused that.
    let how = if host.compile_counts().compiled == 0 { "cached" } else { "compiled" };
    println!("loaded     in {} ms ({how} and initialised)", started.elapsed().as_millis());
    match vectors {
        None => ExitCode::SUCCESS,
        Some((path, vectors)) => run_vectors(&plugin, path, &vectors),
    }
}

fn print_component(info: &ComponentInfo) {
    match &info.contract_version {
        Some(v) => println!("contract   moat:plugin@{v} (this broker speaks moat:plugin@{CONTRACT_VERSION})"),
        None => println!("contract   none: the component names no moat:plugin interface"),
    }
    println!("imports");
    for import in &info.imports {
        let note = if ComponentInfo::import_allowed(import) { "" } else { "   <- not offered by the broker" };
        println!("  {import}{note}");
    }
}

fn print_settings(settings: &PluginSettings, from: &str) {
    let l = &settings.limits;
    println!("settings   {from}");
    println!(
        "limits     memory {} MiB per instance, {} ms per call (init: at least 1000 ms), {}, answers up to {} bytes",
        l.memory_bytes >> 20,
        l.timeout.as_millis(),
        l.instances.map_or_else(|| "warm instances sized from memory".to_owned(), |n| format!("{n} warm instances")),
        l.max_answer_bytes
    );
    let on_error = match settings.on_error {
        OnError::Drop => "drop",
        OnError::Pass => "pass",
    };
    println!("chain      order {}, transform failures: {on_error}", settings.order);
    if settings.grants.read.is_empty() {
        println!("grants     none (no files, no network, no environment)");
    } else {
        let dirs: Vec<String> = settings.grants.read.iter().map(|d| d.display().to_string()).collect();
        println!("grants     read-only: {}", dirs.join(", "));
    }
    // Only the keys: config values may be secrets (a JWT key, say).
    let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&settings.config_json)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    println!("config     {}", if keys.is_empty() { "{}".to_owned() } else { format!("keys: {}", keys.join(", ")) });
}

fn print_manifest(plugin: &LoadedPlugin) {
    println!("warm       {} instances kept", plugin.warm_instances());
    let m = plugin.manifest();
    let hooks: Vec<&str> = m.hooks.iter().map(|h| h.name()).collect();
    println!("hooks      {}", if hooks.is_empty() { "none".to_owned() } else { hooks.join(", ") });
    let filters: Vec<&str> = m.transform_filters.iter().map(|f| f.filter()).collect();
    if m.implements(Hook::Transform) || !filters.is_empty() {
        println!("transforms {}", if filters.is_empty() { "no filters".to_owned() } else { filters.join(", ") });
    }
}

fn run_vectors(plugin: &std::sync::Arc<LoadedPlugin>, path: &Path, vectors: &Vectors) -> ExitCode {
    println!("vectors    {} ({})", path.display(), vectors.len());
    let results = vectors.run(plugin);
    let failed = results.iter().filter(|r| !r.passed()).count();
    for r in &results {
        match &r.mismatch {
            None => println!("  ok    {}: {}", r.name, r.observed),
            Some(why) => println!("  FAIL  {}: {why}", r.name),
        }
    }
    println!("{} passed, {failed} failed", results.len() - failed);
    if failed > 0 {
        return fail(
            EXIT_MISMATCH,
            format_args!("plugin {}: {failed} of {} vectors failed", plugin.name(), results.len()),
        );
    }
    ExitCode::SUCCESS
}

fn new(args: &NewArgs) -> ExitCode {
    let lang = match args.lang {
        LangArg::Rust => Lang::Rust,
        LangArg::Python => Lang::Python,
        LangArg::Js => Lang::Js,
    };
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    match scaffold::write(lang, &args.name, &dir) {
        Ok(files) => {
            println!("wrote {} files in {}:", files.len(), dir.display());
            for f in &files {
                println!("  {}", f.strip_prefix(&dir).unwrap_or(f).display());
            }
            println!("next: see {} for the build and check commands", dir.join("README.md").display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(EXIT_LOAD, e),
    }
}
