//! Integration tests: a real broker on 127.0.0.1:0 and real clients
//! (rumqttc for MQTT 3.1.1 and 5.0, raw sockets for malformed input).
//! Test names carry the specification's normative statement ids.

mod cli;
mod connect;
mod durable;
mod harness;
mod malformed;
mod pubsub;
mod retained;
mod session;
mod shared;
mod will;
