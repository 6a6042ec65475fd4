//! Property tests: encode/decode round trips for every packet in both
//! versions, no panics on arbitrary input, and chunked input.

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;

use super::tests_strategies::{version, versioned_packet};
use super::*;

fn encoded(version: ProtocolVersion, packet: &Packet) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).expect("generated packets are encodable");
    buf
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_decode_is_identity((version, packet) in versioned_packet()) {
        let mut buf = encoded(version, &packet);
        prop_assert_eq!(encoded_len(&packet, version), Ok(buf.len()));
        prop_assert_eq!(decode(&mut buf, version, u32::MAX), Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..64), version in version(), max in any::<u32>()) {
        check_arbitrary(&bytes, version, max)?;
    }

    #[test]
    fn mutated_packets_never_panic(
        (version, packet) in versioned_packet(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encoded(version, &packet).to_vec();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let len = cut.index(bytes.len() + 1);
        check_arbitrary(&bytes[..len], version, u32::MAX)?;
        check_arbitrary(&bytes, version, u32::MAX)?;
    }

    #[test]
    fn chunked_input_gives_the_same_packet(
        (version, packet) in versioned_packet(),
        cuts in vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let bytes = encoded(version, &packet);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len())).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut buf = BytesMut::new();
        let mut start = 0;
        let mut decoded = None;
        for end in cuts {
            buf.extend_from_slice(&bytes[start..end]);
            start = end;
            let result = decode(&mut buf, version, u32::MAX);
            if end < bytes.len() {
                prop_assert_eq!(result, Ok(None));
                prop_assert_eq!(buf.len(), end);
            } else {
                decoded = result.ok().flatten();
            }
        }
        prop_assert_eq!(decoded, Some(packet));
        prop_assert!(buf.is_empty());
    }
}

/// Decodes packets off `bytes` until it needs more or fails; `Ok(None)`
/// must leave the buffer as it was.
fn check_arbitrary(bytes: &[u8], version: ProtocolVersion, max: u32) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    loop {
        let before = buf.clone();
        match decode(&mut buf, version, max) {
            Ok(Some(_)) => prop_assert!(buf.len() < before.len()),
            Ok(None) => {
                prop_assert_eq!(buf, before);
                return Ok(());
            }
            Err(_) => return Ok(()),
        }
    }
}
