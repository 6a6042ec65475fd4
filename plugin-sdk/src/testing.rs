//! Helpers to unit test a plugin natively with `cargo test`: build the
//! records the broker would pass, then call the [`Plugin`](crate::Plugin)
//! methods directly.
//!
//! ```
//! use moat_plugin_sdk::{testing, AuthOutcome, Config, Plugin};
//! # struct Open;
//! # impl Plugin for Open {
//! #     fn init(_: Config) -> Result<(Self, moat_plugin_sdk::Manifest), String> {
//! #         Ok((Open, moat_plugin_sdk::Manifest::new().authenticate()))
//! #     }
//! # }
//! let (mut plugin, _manifest) = Open::init(testing::config("{}")).expect("init");
//! let outcome = plugin.authenticate(&testing::client(Some("alice")), &testing::login("alice", b"pw"));
//! assert!(matches!(outcome, AuthOutcome::Ignore));
//! ```

use crate::{CLAIMED_USERNAME_ATTRIBUTE, ClientInfo, Config, Credentials, Message, QoS};

/// A configuration parsed from JSON text; panics on invalid JSON, which is
/// a bug in the test.
pub fn config(json: &str) -> Config {
    match Config::parse(json) {
        Ok(config) => config,
        Err(e) => panic!("test config: {e}"),
    }
}

/// An MQTT 5 client on listener `tcp` with the given verified user name.
pub fn client(username: Option<&str>) -> ClientInfo {
    ClientInfo {
        client_id: "test-client".into(),
        username: username.map(str::to_owned),
        peer_address: "127.0.0.1:50000".into(),
        listener: "tcp".into(),
        protocol_version: 5,
        tls: None,
        attributes: Vec::new(),
    }
}

/// A client that claimed `username` in CONNECT and that nobody verified
/// (admitted anonymously, or by a certificate alone), as the broker passes
/// it: no `username`, the claim in [`CLAIMED_USERNAME_ATTRIBUTE`].
pub fn claiming(username: &str) -> ClientInfo {
    let mut client = client(None);
    client.attributes.push((CLAIMED_USERNAME_ATTRIBUTE.to_owned(), username.to_owned()));
    client
}

/// CONNECT credentials with a user name and password.
pub fn login(username: &str, password: &[u8]) -> Credentials {
    Credentials {
        username: Some(username.to_owned()),
        password: Some(password.to_vec()),
        auth_method: None,
        auth_data: None,
    }
}

/// MQTT 5 enhanced-authentication credentials: an Authentication Method
/// and this step's Authentication Data, no user name or password.
pub fn enhanced(method: &str, data: &[u8]) -> Credentials {
    Credentials { username: None, password: None, auth_method: Some(method.to_owned()), auth_data: Some(data.to_vec()) }
}

/// A QoS 0, non-retained message with no properties.
pub fn message(topic: &str, payload: &[u8]) -> Message {
    Message {
        topic: topic.to_owned(),
        payload: payload.to_vec(),
        qos: QoS::AtMostOnce,
        retain: false,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
        message_expiry: None,
    }
}
