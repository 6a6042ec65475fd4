//! Sans-IO MQTT 3.1.1 and 5.0 codec over [`bytes::BytesMut`].
//!
//! No tokio and no logging here: the connection task feeds bytes in and gets
//! packets out, and errors come back as small `Copy` values that the
//! connection maps to reason codes.
//!
//! - [`decode`] takes one packet off the front of a buffer, or returns
//!   `Ok(None)` when more bytes are needed. It checks the remaining length
//!   against the caller's maximum from the fixed header alone, before the
//!   body is buffered.
//! - [`encode`] appends one packet to a buffer.

mod decode;
mod decode_body;
mod encode;
pub mod packet;
mod properties;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_errors;
#[cfg(test)]
mod tests_prop;
pub mod topic;
pub mod types;
mod wire;

pub use decode::{DecodeError, decode};
pub use encode::{EncodeError, encode, encoded_len, v311_connack_return_code};
pub use packet::*;
pub use topic::{TopicError, TopicFilter, TopicName};
pub use types::{PacketId, ProtocolVersion, QoS, ReasonCode};
