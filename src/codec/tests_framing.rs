//! Framing: remaining length boundaries, partial input, several packets in
//! one buffer.

use bytes::{Bytes, BytesMut};

use super::tests::{decode_all, encode_vec, topic};
use super::*;
use ProtocolVersion::{V5, V311};

/// A 3.1.1 QoS 0 PUBLISH to "a" whose remaining length is `remaining`.
fn publish_of_remaining(remaining: usize) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic("a"),
        packet_id: None,
        properties: Properties::default(),
        // calloc'd: the huge cases below never touch these pages.
        payload: Bytes::from(vec![0u8; remaining - 3]),
    })
}

#[test]
fn remaining_length_boundaries() {
    let cases: [(usize, &[u8]); 7] = [
        (127, b"\x7F"),
        (128, b"\x80\x01"),
        (16_383, b"\xFF\x7F"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xFF\xFF\x7F"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xFF\xFF\xFF\x7F"),
    ];
    for (remaining, header) in cases {
        let packet = publish_of_remaining(remaining);
        let total = 1 + header.len() + remaining;
        assert_eq!(encoded_len(&packet, V311), Ok(total));
        // The header alone is a complete fixed header: more bytes needed.
        let mut buf = BytesMut::from(&[&[0x30][..], header].concat()[..]);
        assert_eq!(decode(&mut buf, V311, u32::MAX), Ok(None));
        assert_eq!(buf.len(), 1 + header.len());
        // ... unless it is already too big.
        let limit = u32::try_from(total - 1).expect("fits");
        assert_eq!(decode(&mut buf, V311, limit), Err(DecodeError::PacketTooLarge));
        if remaining <= 2_097_152 {
            let bytes = encode_vec(&packet, V311);
            assert_eq!(&bytes[1..=header.len()], header);
            assert_eq!(decode_all(&bytes, V311), Ok(packet));
        }
    }
    let too_big = publish_of_remaining(268_435_456);
    assert_eq!(encoded_len(&too_big, V311), Err(EncodeError::TooLarge));
}

#[test]
fn remaining_length_of_five_bytes_is_malformed() {
    for bytes in [&b"\x30\xFF\xFF\xFF\xFF\x7F"[..], b"\x30\x80\x80\x80\x80"] {
        let mut buf = BytesMut::from(bytes);
        assert_eq!(decode(&mut buf, V311, u32::MAX), Err(DecodeError::MalformedRemainingLength));
    }
}

#[test]
fn partial_input_needs_more_and_leaves_the_buffer() {
    let bytes = b"\x32\x1B\x00\x03a/b\x00\x0A\x11\x01\x01\x02\x00\x00\x00\x3C\x23\x00\x05\x26\x00\x01k\x00\x01vhi";
    for cut in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..cut]);
        assert_eq!(decode(&mut buf, V5, u32::MAX), Ok(None), "cut at {cut}");
        assert_eq!(&buf[..], &bytes[..cut]);
    }
}

#[test]
fn two_packets_in_one_buffer() {
    let mut buf = BytesMut::from(&b"\xC0\x00\xE0\x00"[..]);
    assert_eq!(decode(&mut buf, V311, u32::MAX), Ok(Some(Packet::PingReq)));
    assert_eq!(decode(&mut buf, V311, u32::MAX), Ok(Some(Packet::Disconnect(Disconnect::default()))));
    assert_eq!(decode(&mut buf, V311, u32::MAX), Ok(None));
}
