//! The `moat` command: parse arguments, load and validate the
//! configuration, start logging, and serve until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use moat::Server;
use moat::config::{Config, ConfigError, ListenerConfig, LogFormat};
use moat::server::ServerError;

/// Exit code for configuration errors (EX_USAGE from sysexits.h).
const EXIT_CONFIG: u8 = 64;

/// Moat: an MQTT broker with sandboxed WebAssembly policy plugins.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load_config(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("moat: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = init_tracing(&config) {
        eprintln!("moat: configuration error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("moat: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let config_error =
                matches!(e.downcast_ref::<ServerError>(), Some(ServerError::Tls(_) | ServerError::Plugin(_)));
            if config_error {
                eprintln!("moat: configuration error: {e:#}");
                return ExitCode::from(EXIT_CONFIG);
            }
            eprintln!("moat: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config, ConfigError> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = &cli.plugins {
        config.plugins.dir = Some(dir.clone());
    }
    if !cli.listen.is_empty() {
        config.listeners =
            cli.listen.iter().enumerate().map(|(i, addr)| ListenerConfig::tcp(&format!("listen{i}"), *addr)).collect();
    }
    Ok(config)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let server = Server::bind(config).await?;
    server.run(shutdown_signal()).await;
    Ok(())
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

/// Starts logging; `RUST_LOG` overrides `[log] level`.
fn init_tracing(config: &Config) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let (source, filter) = match std::env::var("RUST_LOG") {
        Ok(env) => ("RUST_LOG", env),
        Err(_) => ("`log.level`", config.log.level.clone().unwrap_or_else(|| "info".to_owned())),
    };
    let filter = EnvFilter::try_new(&filter).map_err(|e| format!("{source}: invalid log filter {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
