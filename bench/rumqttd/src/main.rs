//! `rumqttd -c FILE`: rumqttd 0.20.0's broker, started the way its own
//! binary starts it (configuration through the `config` crate), without
//! the banner and the console. Logging stays off, like Mosquitto's
//! `log_dest none` in bench/run. Apache-2.0, as rumqttd.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let path = match args.as_slice() {
        [_, flag, path] if flag == "-c" || flag == "--config" => path,
        _ => {
            eprintln!("usage: rumqttd -c FILE");
            return ExitCode::from(64);
        }
    };
    let config = config::Config::builder()
        .add_source(config::File::with_name(path))
        .build()
        .and_then(|c| c.try_deserialize::<rumqttd::Config>());
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("rumqttd: {path}: {e}");
            return ExitCode::from(64);
        }
    };
    let mut broker = rumqttd::Broker::new(config);
    match broker.start() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rumqttd: {e}");
            ExitCode::FAILURE
        }
    }
}
