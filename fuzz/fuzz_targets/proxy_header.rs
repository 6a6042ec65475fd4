//! Arbitrary bytes as a PROXY protocol header, read the way the transport
//! reads it: no panic, never a byte past the header, and the same answer
//! as parsing the whole input at once.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| moat_fuzz::proxy_header(data));
