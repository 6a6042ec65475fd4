//! Hostile fixture: makes the WASI calls a sandbox must contain. It blocks
//! in WASI calls, where no epoch is checked (only the host's deadline on a
//! suspended call can stop it), prints, and dials out.
//!
//! Behaves well (allow / pass) unless the user name (else the client id)
//! up to its first `-`, or the topic's first level, names a behaviour:
//! - `sleep`: `std::thread::sleep` for an hour (a clock subscription);
//! - `poll`: `wasi:io/poll.poll` on a pollable that is never ready;
//! - `stdin`: reads stdin to its end;
//! - `print`: writes a line to stdout and one to stderr, then answers;
//! - `dial`: connects to 127.0.0.1 on the port of the topic's second
//!   level (`dial/1883`) and denies with what happened.
//!
//! With `{"init": "sleep"}` (or `"poll"`, `"print"`) as its config, `init`
//! does the same.

use std::io::Read;
use std::time::Duration;

use moat_plugin_sdk::*;

/// The hostile guest.
pub struct Hostile;

/// Does what `what` names; returns for the behaviours that end.
fn behave(what: &str) {
    match what {
        "sleep" => std::thread::sleep(Duration::from_secs(3600)),
        "poll" => {
            // An instant that never comes: the poll never returns.
            let never = wasip2::clocks::monotonic_clock::subscribe_instant(u64::MAX);
            wasip2::io::poll::poll(&[&never]);
        }
        "stdin" => {
            let mut all = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut all);
        }
        "print" => {
            println!("hello from the guest's stdout");
            eprintln!("and from its stderr");
        }
        _ => {}
    }
}

/// Connects to 127.0.0.1:`port`; says what happened.
fn dial(port: &str) -> String {
    match std::net::TcpStream::connect(format!("127.0.0.1:{port}")) {
        Ok(_) => "connected".into(),
        Err(e) => format!("could not connect: {e}"),
    }
}

/// The behaviour a topic names: its first level.
fn first_level(topic: &str) -> &str {
    topic.split('/').next().unwrap_or("")
}

/// The behaviour a client names: its user name, else its client id, up to
/// the first `-` (so clients `sleep-1`, `sleep-2` all sleep).
fn named_by(client: &ClientInfo, credentials: &Credentials) -> String {
    let name = credentials.username.as_deref().unwrap_or(&client.client_id);
    name.split('-').next().unwrap_or("").to_owned()
}

impl Plugin for Hostile {
    fn init(config: Config) -> Result<(Self, Manifest), String> {
        if let Some(what) = config.str("init") {
            behave(what);
        }
        Ok((Hostile, Manifest::new().authenticate().authorize().transform(["#"])))
    }

    fn authenticate(&mut self, client: &ClientInfo, credentials: &Credentials) -> AuthOutcome {
        behave(&named_by(client, credentials));
        AuthOutcome::Allow(Grant::plain())
    }

    fn authorize(&mut self, _client: &ClientInfo, _action: Action, topic: &str, _qos: QoS, _retain: bool) -> Decision {
        if let Some(port) = topic.strip_prefix("dial/") {
            return Decision::Deny(dial(port));
        }
        behave(first_level(topic));
        Decision::Allow(None)
    }

    fn on_publish(&mut self, _client: &ClientInfo, message: Message) -> TransformOutcome {
        behave(first_level(&message.topic));
        TransformOutcome::Pass
    }
}

export_plugin!(Hostile);
