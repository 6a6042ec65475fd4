//! The `moat` command: parse arguments, load and validate the
//! configuration, start logging, and serve until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use moat::Server;
use moat::config::{Config, ConfigError, ListenerConfig, LogFormat};
use moat::reload::{ConfigSource, LogFilterHook};
use moat::server::ServerError;
use moat::store::{DiskStore, MemoryStore, Store};

#[path = "cli/plugin.rs"]
mod plugin_cli;

/// jemalloc, not the system's malloc: about 10 % fewer bytes per idle
/// connection (no chunk header on each of its small structures), 8-14 %
/// fewer instructions per message, and a background thread that returns
/// freed pages after a reconnect storm (BENCHMARKS.md, "An allocator for
/// fleets").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code for configuration errors (EX_USAGE from sysexits.h).
const EXIT_CONFIG: u8 = 64;

/// Moat: an MQTT broker with sandboxed WebAssembly policy plugins.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Without a command, Moat runs the broker.
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (TOML). Without it, Moat listens on
    /// 127.0.0.1:1883 and admits anonymous clients from loopback only.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Listen on ADDR instead of the configured listeners (repeatable).
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Load policy plugins (`*.wasm` + optional `NAME.toml`) from DIR
    /// instead of `[plugins] dir` (default: `./plugins` if it exists).
    #[arg(long = "plugins", value_name = "DIR")]
    plugins: Option<PathBuf>,
    /// If the store in `storage.dir` cannot be opened or read, rename it
    /// aside (`<dir>.corrupt-<unix seconds>`) and start with an empty one.
    #[arg(long)]
    repair: bool,
}

/// Commands besides running the broker.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Add or update a user in a password file (argon2id, for the
    /// `password-file` plugin; SCRAM-SHA-256 with --scram), or delete one.
    ///
    /// The password is asked twice on a terminal, read as one line from
    /// standard input otherwise, or given with --password.
    Passwd(PasswdArgs),
    /// Tools for plugin authors: check a component, start a new plugin.
    Plugin {
        /// What to do.
        #[command(subcommand)]
        command: plugin_cli::PluginCommand,
    },
}

/// Arguments of `moat passwd`.
#[derive(Debug, clap::Args)]
struct PasswdArgs {
    /// The password file (created 0600 if missing; other lines are kept).
    file: PathBuf,
    /// The user name.
    user: String,
    /// Remove the user instead.
    #[arg(long, conflicts_with_all = ["password", "scram"])]
    delete: bool,
    /// Write SCRAM-SHA-256 credentials (for the `scram` plugin) instead of
    /// an argon2id hash.
    #[arg(long)]
    scram: bool,
    /// SCRAM iteration count.
    #[arg(long, default_value_t = moat::passwd::SCRAM_MIN_ITERATIONS, requires = "scram")]
    iterations: u32,
    /// The password, for scripts (it shows in the process list and shell
    /// history; prefer standard input).
    #[arg(long, value_name = "PW")]
    password: Option<String>,
}

/// Where the configuration comes from: the file and the command-line
/// overrides, applied again on every reload.
struct CliSource {
    config: Option<PathBuf>,
    plugins: Option<PathBuf>,
    listen: Vec<SocketAddr>,
}

impl ConfigSource for CliSource {
    fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(dir) = &self.plugins {
            config.plugins.dir = Some(dir.clone());
        }
        if !self.listen.is_empty() {
            config.listeners = self
                .listen
                .iter()
                .enumerate()
                .map(|(i, addr)| ListenerConfig::tcp(&format!("listen{i}"), *addr))
                .collect();
        }
        Ok(config)
    }

    fn path(&self) -> Option<&std::path::Path> {
        self.config.as_deref()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Passwd(args)) = &cli.command {
        return match passwd(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("moat passwd: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Plugin { command }) = &cli.command {
        // Plugin failures and the plugin's own log lines, at `warn` unless
        // RUST_LOG says otherwise.
        let filter = std::env::var("RUST_LOG")
            .ok()
            .and_then(|env| tracing_subscriber::EnvFilter::try_new(moat::config::log_filter(&env)).ok())
            .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("warn"));
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
        return plugin_cli::run(command);
    }
    let source =
        Arc::new(CliSource { config: cli.config.clone(), plugins: cli.plugins.clone(), listen: cli.listen.clone() });
    let config = match source.load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("moat: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let log_filter = match init_tracing(&config) {
        Ok(hook) => hook,
        Err(e) => {
            eprintln!("moat: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    raise_open_files(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("moat: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, cli.repair, source, log_filter)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let config_error = matches!(
                e.downcast_ref::<ServerError>(),
                Some(ServerError::Tls(_) | ServerError::Plugin(_) | ServerError::AdminToken(_))
            );
            if config_error {
                eprintln!("moat: configuration error: {e:#}");
                return ExitCode::from(EXIT_CONFIG);
            }
            eprintln!("moat: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `moat passwd`: edits a password file.
fn passwd(args: &PasswdArgs) -> anyhow::Result<()> {
    use moat::passwd;
    if args.delete {
        passwd::delete_entry(&args.file, &args.user)?;
        return Ok(());
    }
    let password = match &args.password {
        Some(pw) => pw.clone(),
        None => read_password()?,
    };
    let credential = if args.scram {
        passwd::scram_sha256(password.as_bytes(), args.iterations)?
    } else {
        passwd::argon2id(password.as_bytes())?
    };
    passwd::set_entry(&args.file, &args.user, &credential)?;
    Ok(())
}

/// Asks twice without echo on a terminal; otherwise reads one line.
fn read_password() -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").context("cannot read the password")?;
        let second = rpassword::prompt_password("Password again: ").context("cannot read the password")?;
        anyhow::ensure!(first == second, "the passwords do not match");
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("cannot read the password from standard input")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

async fn run(config: Config, repair: bool, source: Arc<CliSource>, log_filter: LogFilterHook) -> anyhow::Result<()> {
    let disk = open_store(&config, repair)?;
    let store: Arc<dyn Store> = match &disk {
        Some(disk) => disk.clone(),
        None => Arc::new(MemoryStore::default()),
    };
    let server = Server::bind_with_store(config, store).await?;
    server.set_reload_hooks(Some(source), Some(log_filter));
    reload_on_hangup(server.reloader().clone());
    server.run(shutdown_signal()).await;
    if let Some(disk) = disk {
        // Write and sync what is queued even if a connection task is stuck.
        disk.close();
    }
    Ok(())
}

/// Opens the configured on-disk store, if any; with `repair`, a store that
/// cannot be opened or read is moved aside and replaced by an empty one.
fn open_store(config: &Config, repair: bool) -> anyhow::Result<Option<Arc<DiskStore>>> {
    let (Some(dir), Some(durability)) = (&config.storage.dir, config.storage.durability()) else {
        return Ok(None);
    };
    let store = match DiskStore::open(dir, durability) {
        Ok(store) => store,
        Err(e) if repair => {
            let aside =
                DiskStore::quarantine(dir).with_context(|| format!("--repair: cannot move {} aside", dir.display()))?;
            tracing::error!(
                error = %e,
                quarantined = %aside.display(),
                "STORE QUARANTINED (--repair): the old store was moved aside and Moat starts with an EMPTY store; \
                 sessions and retained messages in it are not recovered"
            );
            DiskStore::open(dir, durability)?
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(dir = %dir.display(), ?durability, "store opened");
    Ok(Some(Arc::new(store)))
}

/// Reloads configuration, certificates and plugins on every SIGHUP. The
/// outcome is logged by the broker; a refused reload changes nothing.
fn reload_on_hangup(reloader: Arc<moat::reload::Reloader>) {
    // Registered before the listeners start, so a SIGHUP sent once the
    // broker is up never falls back to the default action (terminate).
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hangups) => {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading configuration, certificates and plugins");
                    let _ = reloader.reload().await;
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP; configuration reload by signal is off"),
    }
    #[cfg(not(unix))]
    drop(reloader);
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Raises the soft open-file limit to the hard one, since every
/// connection is a descriptor and the common default of 1,024 would stop
/// accepting long before `limits.max_connections`; warns when the result
/// is still short of what the configuration needs.
fn raise_open_files(config: &Config) {
    use moat::open_files::{self, OpenFiles};
    let needed = open_files::needed(config);
    let limits = match OpenFiles::raise() {
        Ok(raised) if raised.after != raised.before => {
            tracing::info!(
                from = raised.before.soft,
                to = raised.after.soft,
                hard = raised.after.hard,
                "raised the open file limit (RLIMIT_NOFILE)"
            );
            raised.after
        }
        Ok(raised) => raised.after,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open file limit (RLIMIT_NOFILE)");
            OpenFiles::current()
        }
    };
    if !limits.allows(needed) {
        tracing::warn!(
            limit = limits.soft,
            hard = limits.hard,
            needed,
            max_connections = config.limits.max_connections,
            "the open file limit is below limits.max_connections plus what the broker needs besides \
             connections: clients beyond it are not accepted; raise the hard limit (ulimit -Hn, \
             LimitNOFILE= in a systemd unit) or lower limits.max_connections"
        );
    }
}

/// Starts logging; `RUST_LOG` overrides `[log] level`, and either keeps the
/// plugin compiler's targets at `warn` unless it names them
/// ([`moat::config::log_filter`]). Returns the hook a configuration reload
/// uses to change the filter.
fn init_tracing(config: &Config) -> Result<LogFilterHook, String> {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, fmt, reload};
    let from_env = std::env::var("RUST_LOG").ok();
    let (source, filter) = match &from_env {
        Some(env) => ("RUST_LOG", env.clone()),
        None => ("`log.level`", config.log.level.clone().unwrap_or_else(|| "info".to_owned())),
    };
    let filter = EnvFilter::try_new(moat::config::log_filter(&filter))
        .map_err(|e| format!("{source}: invalid log filter {filter:?}: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    // Colour only for a person at a terminal, never into files or journald.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    match config.log.format {
        LogFormat::Text => registry.with(fmt::layer().with_writer(std::io::stderr).with_ansi(ansi)).init(),
        LogFormat::Json => registry.with(fmt::layer().json().with_writer(std::io::stderr).with_ansi(ansi)).init(),
    }
    let pinned = from_env.is_some();
    Ok(Box::new(move |level: &str| {
        if pinned {
            return Err("RUST_LOG is set and takes precedence over `log.level`".to_owned());
        }
        let filter = EnvFilter::try_new(moat::config::log_filter(level)).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}
