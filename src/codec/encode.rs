//! Packet encoding. (Being written: see the codec task.)

use bytes::BytesMut;

use super::packet::Packet;
use super::types::ProtocolVersion;

/// Why a packet could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Placeholder.
    #[error("packet too large")]
    TooLarge,
}

/// Appends `packet` to `buf`.
///
/// # Errors
/// [`EncodeError`] when the packet cannot be represented.
pub fn encode(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let _ = (packet, version, buf);
    Err(EncodeError::TooLarge)
}

/// The number of bytes `encode` would append.
///
/// # Errors
/// [`EncodeError`] when the packet cannot be represented.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let _ = (packet, version);
    Err(EncodeError::TooLarge)
}
