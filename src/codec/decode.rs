//! Packet decoding. (Being written: see the codec task.)

use bytes::BytesMut;

use super::packet::Packet;
use super::types::{ProtocolVersion, ReasonCode};

/// Why a packet could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Placeholder.
    #[error("malformed packet")]
    Malformed,
    /// Placeholder.
    #[error("unsupported protocol version")]
    UnsupportedProtocolVersion,
}

impl DecodeError {
    /// The reason code a v5 DISCONNECT carries for this error.
    pub fn reason_code(self) -> ReasonCode {
        ReasonCode::MALFORMED_PACKET
    }
}

/// Decodes one packet from the front of `buf`.
///
/// # Errors
/// [`DecodeError`] when the bytes are not a valid packet.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let _ = (buf, version, max_packet_size);
    Err(DecodeError::Malformed)
}
