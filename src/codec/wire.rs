//! Primitive wire types shared by the decoder and the encoder: integers,
//! variable byte integers, UTF-8 strings and binary data [MQTT-1.5].

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::decode::DecodeError;
use super::encode::EncodeError;

/// The largest value a variable byte integer can carry (four bytes).
pub(crate) const VARINT_MAX: u32 = 268_435_455;

/// A bounds-checked cursor over one packet's body.
///
/// The body is already fully buffered when a reader exists, so running out
/// of bytes means the packet contradicts its own remaining length: that is
/// `Truncated` (malformed), never "need more data".
pub(crate) struct Reader {
    buf: Bytes,
    /// User properties one property list may hold (the caller's limit,
    /// checked while decoding so the surplus is never allocated).
    pub(crate) max_user_properties: usize,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf, max_user_properties: usize::MAX }
    }

    /// A reader over `buf` under the same limits as this one.
    pub(crate) fn nested(&self, buf: Bytes) -> Reader {
        Reader { buf, max_user_properties: self.max_user_properties }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Fails with `TrailingBytes` if anything is left: a packet's fields
    /// must account for its whole remaining length.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() { Ok(()) } else { Err(DecodeError::TrailingBytes) }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    /// A variable byte integer inside a body (property lengths, property
    /// identifiers, subscription identifiers).
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        match parse_varint(&self.buf) {
            VarInt::Value(value, len) => {
                self.buf.advance(len);
                Ok(value)
            }
            VarInt::Incomplete => Err(DecodeError::Truncated),
            VarInt::Invalid => Err(DecodeError::MalformedVariableInteger),
        }
    }

    /// The next `len` bytes as a zero-copy slice of the packet buffer.
    pub(crate) fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        self.need(len)?;
        Ok(self.buf.split_to(len))
    }

    /// Everything left, zero-copy (the PUBLISH payload).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Two-byte length prefixed binary data, zero-copy.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 encoded string: valid UTF-8 and no U+0000 [MQTT-1.5.4-1],
    /// [MQTT-1.5.4-2].
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        let text = std::str::from_utf8(&raw).map_err(|_| DecodeError::InvalidUtf8)?;
        if text.contains('\0') {
            return Err(DecodeError::InvalidUtf8);
        }
        Ok(text.to_owned())
    }

    pub(crate) fn packet_id(&mut self) -> Result<super::types::PacketId, DecodeError> {
        super::types::PacketId::new(self.u16()?).ok_or(DecodeError::ZeroPacketId)
    }

    fn need(&self, len: usize) -> Result<(), DecodeError> {
        if self.buf.len() < len { Err(DecodeError::Truncated) } else { Ok(()) }
    }
}

/// Outcome of parsing a variable byte integer from a prefix of `bytes`.
pub(crate) enum VarInt {
    /// The value and how many bytes it took.
    Value(u32, usize),
    /// The bytes end before the integer does.
    Incomplete,
    /// More than four bytes, or not the minimal encoding [MQTT-1.5.5-1].
    Invalid,
}

pub(crate) fn parse_varint(bytes: &[u8]) -> VarInt {
    let mut value: u32 = 0;
    for (i, &byte) in bytes.iter().enumerate().take(4) {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A zero final byte after a continuation adds nothing: the
            // encoding was longer than it needed to be.
            if i > 0 && byte == 0 {
                return VarInt::Invalid;
            }
            return VarInt::Value(value, i + 1);
        }
    }
    if bytes.len() >= 4 { VarInt::Invalid } else { VarInt::Incomplete }
}

/// Where encoded bytes go. The encoder writes every packet once against
/// this trait: a [`Counter`] sizes it (for the remaining length and
/// `encoded_len`) and a `BytesMut` receives it, so the two can never drift.
pub(crate) trait Sink {
    fn put_u8(&mut self, value: u8);
    fn put_u16(&mut self, value: u16);
    fn put_u32(&mut self, value: u32);
    fn put_slice(&mut self, data: &[u8]);

    /// A variable byte integer; values above [`VARINT_MAX`] do not exist.
    fn put_varint(&mut self, value: usize) -> Result<(), EncodeError> {
        if value > VARINT_MAX as usize {
            return Err(EncodeError::ValueOutOfRange);
        }
        let mut rest = value;
        loop {
            // The low seven bits go out each round; truncation is the point.
            let mut byte = (rest & 0x7F) as u8;
            rest >>= 7;
            if rest > 0 {
                byte |= 0x80;
            }
            self.put_u8(byte);
            if rest == 0 {
                return Ok(());
            }
        }
    }

    /// Two-byte length prefixed binary data or string.
    fn put_binary(&mut self, data: &[u8]) -> Result<(), EncodeError> {
        let len = u16::try_from(data.len()).map_err(|_| EncodeError::StringTooLong)?;
        self.put_u16(len);
        self.put_slice(data);
        Ok(())
    }
}

/// A sink that only counts.
#[derive(Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Sink for Counter {
    fn put_u8(&mut self, _: u8) {
        self.0 += 1;
    }
    fn put_u16(&mut self, _: u16) {
        self.0 += 2;
    }
    fn put_u32(&mut self, _: u32) {
        self.0 += 4;
    }
    fn put_slice(&mut self, data: &[u8]) {
        self.0 += data.len();
    }
}

impl Sink for BytesMut {
    fn put_u8(&mut self, value: u8) {
        BufMut::put_u8(self, value);
    }
    fn put_u16(&mut self, value: u16) {
        BufMut::put_u16(self, value);
    }
    fn put_u32(&mut self, value: u32) {
        BufMut::put_u32(self, value);
    }
    fn put_slice(&mut self, data: &[u8]) {
        BufMut::put_slice(self, data);
    }
}

/// Bytes needed to encode `value` as a variable byte integer.
pub(crate) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}
