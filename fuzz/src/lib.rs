//! Shared helpers for Moat's fuzz targets.

use bytes::BytesMut;
use moat::codec::{self, Packet, ProtocolVersion};
use moat::transport::proxy::{self, Parsed};

/// The packet size cap the decode targets run with (the broker default).
pub const MAX_PACKET: u32 = 1024 * 1024;

/// Decodes packets off `data` until more bytes are needed or an error;
/// every decoded packet must encode, and decode back to itself.
pub fn decode_roundtrip(data: &[u8], version: ProtocolVersion) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(mut packet)) = codec::decode(&mut buf, version, MAX_PACKET) {
        // The encoder clears Session Present on a refusal [MQTT-3.2.2-4],
        // [MQTT-3.2.2-6]; the decoder (only a client would use it for
        // CONNACK; the broker refuses a CONNACK from a client) accepts it.
        if let Packet::ConnAck(ack) = &mut packet
            && !ack.reason.is_success()
        {
            ack.session_present = false;
        }
        let mut out = BytesMut::new();
        if let Err(e) = codec::encode(&packet, version, &mut out) {
            panic!("decoded packet does not encode: {e:?}\n{packet:?}");
        }
        assert_eq!(codec::encoded_len(&packet, version).ok(), Some(out.len()), "encoded_len disagrees");
        let again = codec::decode(&mut out, version, u32::MAX);
        match again {
            Ok(Some(p)) => assert_eq!(p, packet, "re-decoded packet differs"),
            other => panic!("re-encoded packet does not decode: {other:?}\n{packet:?}"),
        }
        assert!(out.is_empty(), "re-encoded packet has {} trailing bytes", out.len());
    }
}

/// Parses `data` as a PROXY header the way the transport reads it, asking
/// for more bytes until it has an answer: the read stops at the header's
/// end, and agrees with parsing the whole of `data` at once.
pub fn proxy_header(data: &[u8]) {
    let (outcome, read) = proxy::parse_incrementally(data);
    assert!(read <= data.len());
    if let Ok(Parsed::Complete { len, .. }) = outcome {
        assert_eq!(len, read, "the header ends where the reading stopped");
    }
    if let Ok(Parsed::Complete { header, len }) = proxy::parse(data) {
        assert_eq!(outcome, Ok(Parsed::Complete { header, len }), "read as asked, the same header");
    }
}
