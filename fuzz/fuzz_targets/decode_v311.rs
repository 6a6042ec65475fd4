//! Arbitrary bytes through the MQTT 3.1.1 decoder: no panic, and every
//! packet it accepts survives encode -> decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat::codec::ProtocolVersion;

fuzz_target!(|data: &[u8]| moat_fuzz::decode_roundtrip(data, ProtocolVersion::V311));
