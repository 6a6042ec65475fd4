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
//! - [`encode`] appends one packet to a buffer; [`encoded_len`] sizes it.
//!
//! What the codec checks and what it leaves to the connection:
//!
//! - The codec enforces everything visible in one packet: flags, lengths,
//!   UTF-8, packet ids, which v5 properties a packet may carry, duplicates and
//!   value ranges, reason codes defined for the packet type, topic name and
//!   filter syntax.
//! - The connection enforces state and direction: CONNECT first and once,
//!   topic alias against the negotiated maximum, no subscription identifier
//!   on a client's PUBLISH [MQTT-3.3.4-6], packet size against what the peer
//!   announced, and so on.
//! - A v5 PUBLISH that uses a topic alias alone has an empty [`TopicName`]
//!   (`topic.is_empty()`) and `properties.topic_alias` set; the decoder
//!   refuses an empty topic without an alias, and always in 3.1.1.
//! - 3.1.1 packets decode with default properties and success reason codes,
//!   except CONNACK and SUBACK whose return codes map to reason codes (see
//!   [`v311_connack_return_code`]); UNSUBACK has no reason codes there.
//! - A CONNECT that fails to decode is answered in its own version: peek
//!   at it with [`connect_version`] before decoding the first packet.
//!
//! Files: `decode.rs` (fixed header, [`DecodeError`]), `decode_body.rs`
//! (packet bodies), `encode.rs`, `properties.rs` (v5 properties both ways),
//! `wire.rs` (integers and strings), and the tests.

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
mod tests_framing;
#[cfg(test)]
mod tests_interop;
#[cfg(test)]
mod tests_prop;
#[cfg(test)]
mod tests_strategies;
#[cfg(test)]
mod tests_subscribe;
pub mod topic;
pub mod types;
mod wire;

pub use decode::{DecodeError, DecodeLimits, connect_version, decode, decode_with};
pub use encode::{EncodeError, encode, encode_qos0, encoded_len, v311_connack_return_code};
pub use packet::*;
pub use topic::{TopicError, TopicFilter, TopicName};
pub use types::{PacketId, ProtocolVersion, QoS, ReasonCode};
