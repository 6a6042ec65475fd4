//! The PROXY header parser: the specification's examples, malformed
//! headers, and properties (headers round-trip; reading as it asks never
//! takes a byte past the header; no input panics).

use proptest::prelude::*;

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// A v1 header for a TCP connection from `source` to `destination`.
fn v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    let (s, d) = (source, destination);
    format!("PROXY {family} {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port()).into_bytes()
}

/// A v2 PROXY header for a TCP connection, with `tlv` after the addresses.
fn v2(source: SocketAddr, destination: SocketAddr, tlv: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    let family = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            block.extend(s.octets());
            block.extend(d.octets());
            0x11
        }
        (s, d) => {
            block.extend(to_v6(s).octets());
            block.extend(to_v6(d).octets());
            0x21
        }
    };
    block.extend(source.port().to_be_bytes());
    block.extend(destination.port().to_be_bytes());
    block.extend(tlv);
    let mut out = V2_SIGNATURE.to_vec();
    out.extend([0x21, family]);
    out.extend(u16::try_from(block.len()).expect("short").to_be_bytes());
    out.extend(block);
    out
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn complete(buf: &[u8]) -> (Header, usize) {
    match parse(buf) {
        Ok(Parsed::Complete { header, len }) => (header, len),
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
    }
}

#[test]
fn v1_examples_from_the_specification() {
    let (header, len) = complete(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n");
    assert_eq!(header, Header::Proxied { source: addr("192.168.0.1:56324"), destination: addr("192.168.0.11:443") });
    assert_eq!(len, 47);
    let (header, _) = complete(b"PROXY TCP6 2001:db8::1 ::1 4000 1883\r\n");
    assert_eq!(header, Header::Proxied { source: addr("[2001:db8::1]:4000"), destination: addr("[::1]:1883") });
    assert_eq!(complete(b"PROXY UNKNOWN\r\n"), (Header::Local, 15));
    let unknown = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
    assert_eq!(complete(unknown), (Header::Local, unknown.len()));
}

#[test]
fn v1_malformed_headers_are_refused() {
    for bad in [
        &b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n"[..],
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 extra\r\n",
        b"PROXY TCP4 192.168.0.1  192.168.0.11 56324 443\r\n",
        b"PROXY TCP4 2001:db8::1 192.168.0.11 56324 443\r\n",
        b"PROXY TCP6 192.168.0.1 ::1 56324 443\r\n",
        b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",
        b"PROXY TCP4 192.168.0.1 192.168.0.11 +5 443\r\n",
        b"PROXY UDP4 192.168.0.1 192.168.0.11 1 2\r\n",
        b"PROXY UNKNOWNX\r\n",
        b"PROXY TCP4 \xff\r\n",
        b"PROXY TCP4 1.2.3.4\n",
    ] {
        assert_eq!(parse(bad), Err(ProxyError::V1Malformed), "{:?}", String::from_utf8_lossy(bad));
    }
    let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(100));
    assert_eq!(parse(long.as_bytes()), Err(ProxyError::V1TooLong));
    assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::Missing));
    assert_eq!(parse(&[0x10, 0x20]), Err(ProxyError::Missing), "an MQTT CONNECT");
    assert_eq!(parse(&[0x16, 0x03, 0x01]), Err(ProxyError::Missing), "a TLS ClientHello");
}

#[test]
fn v1_is_read_without_passing_its_end() {
    assert_eq!(parse(b""), Ok(Parsed::Incomplete { more: 15 }));
    assert_eq!(parse(b"PROXY"), Ok(Parsed::Incomplete { more: 10 }));
    assert_eq!(parse(b"PROXY UNKNOWN\r"), Ok(Parsed::Incomplete { more: 1 }));
    assert_eq!(parse(b"PROXY TCP4 192.168.0.1"), Ok(Parsed::Incomplete { more: 2 }));
    let header = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
    let mut stream = header.to_vec();
    stream.extend(b"\x10\x0c\x00\x04MQTT");
    assert_eq!(parse_incrementally(&stream).1, header.len());
}

#[test]
fn v2_headers() {
    let source = addr("192.0.2.7:51000");
    let destination = addr("10.0.0.1:8883");
    let ipv4 = v2(source, destination, &[]);
    assert_eq!(complete(&ipv4), (Header::Proxied { source, destination }, 28));
    // TLVs (here PP2_TYPE_AUTHORITY, "moat") are skipped.
    let with_tlv = v2(source, destination, &[0x02, 0x00, 0x04, b'm', b'o', b'a', b't']);
    assert_eq!(complete(&with_tlv), (Header::Proxied { source, destination }, 35));
    let v6 = v2(addr("[2001:db8::7]:1"), addr("[::1]:2"), &[]);
    assert_eq!(complete(&v6).0, Header::Proxied { source: addr("[2001:db8::7]:1"), destination: addr("[::1]:2") });
    let mut local = V2_SIGNATURE.to_vec();
    local.extend([0x20, 0x00, 0x00, 0x00]);
    assert_eq!(complete(&local), (Header::Local, 16));
    let mut unix = V2_SIGNATURE.to_vec();
    unix.extend([0x21, 0x31, 0x00, 0xd8]);
    unix.extend([b'/'; 216]);
    assert_eq!(complete(&unix), (Header::Local, 232));
}

#[test]
fn v2_malformed_headers_are_refused() {
    let good = v2(addr("192.0.2.7:51000"), addr("10.0.0.1:8883"), &[]);
    let with = |at: usize, byte: u8| {
        let mut bad = good.clone();
        bad[at] = byte;
        bad
    };
    assert_eq!(parse(&with(12, 0x11)), Err(ProxyError::V2Unsupported), "version 1 in v2 form");
    assert_eq!(parse(&with(12, 0x22)), Err(ProxyError::V2Unsupported), "command 2");
    assert_eq!(parse(&with(13, 0x41)), Err(ProxyError::V2Unsupported), "family 4");
    assert_eq!(parse(&with(13, 0x13)), Err(ProxyError::V2Unsupported), "transport 3");
    let mut short = with(15, 4);
    short.truncate(20);
    assert_eq!(parse(&short), Err(ProxyError::V2Truncated), "IPv4 in 4 bytes");
    let mut huge = good[..14].to_vec();
    huge.extend(5000u16.to_be_bytes());
    assert_eq!(parse(&huge), Err(ProxyError::V2TooLong));
    assert_eq!(parse(&with(5, b'X')), Err(ProxyError::Missing), "a broken signature");
    assert_eq!(parse(&good[..10]), Ok(Parsed::Incomplete { more: 6 }));
    assert_eq!(parse(&good[..20]), Ok(Parsed::Incomplete { more: 8 }));
}

fn socket_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    prop_oneof![
        (any::<std::net::SocketAddrV4>(), any::<std::net::SocketAddrV4>())
            .prop_map(|(s, d)| (SocketAddr::V4(s), SocketAddr::V4(d))),
        (any::<Ipv6Addr>(), any::<u16>(), any::<Ipv6Addr>(), any::<u16>())
            .prop_map(|(s, sp, d, dp)| (SocketAddr::new(s.into(), sp), SocketAddr::new(d.into(), dp))),
    ]
}

proptest! {
    /// A header, followed by anything, parses back to its addresses, and a
    /// reader that reads what the parser asks for stops at its end.
    #[test]
    fn headers_round_trip_and_are_read_exactly(
        (source, destination) in socket_pair(),
        version_2 in any::<bool>(),
        tlv in proptest::collection::vec(any::<u8>(), 0..64),
        rest in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let header = if version_2 { v2(source, destination, &tlv) } else { v1(source, destination) };
        let mut input = header.clone();
        input.extend(&rest);
        let expected = if version_2 {
            // IPv4 in an IPv6 header stays mapped, as the proxy wrote it.
            let canonical = |a: SocketAddr| match (source, destination) {
                (SocketAddr::V4(_), SocketAddr::V4(_)) => a,
                _ => SocketAddr::new(to_v6(a.ip()).into(), a.port()),
            };
            Header::Proxied { source: canonical(source), destination: canonical(destination) }
        } else {
            Header::Proxied { source, destination }
        };
        prop_assert_eq!(parse(&input), Ok(Parsed::Complete { header: expected, len: header.len() }));
        prop_assert_eq!(parse_incrementally(&input), (Ok(Parsed::Complete { header: expected, len: header.len() }), header.len()));
    }

    /// No input panics; reading as asked never passes the end of a header
    /// the whole input holds, and agrees with parsing it at once.
    #[test]
    fn any_input_is_read_safely(input in proptest::collection::vec(any::<u8>(), 0..300), v2_start in any::<bool>()) {
        let input = if v2_start { [&V2_SIGNATURE[..], &input].concat() } else { input };
        let (outcome, read) = parse_incrementally(&input);
        prop_assert!(read <= input.len());
        if let Ok(Parsed::Complete { header, len }) = parse(&input) {
            prop_assert_eq!(outcome, Ok(Parsed::Complete { header, len }));
            prop_assert_eq!(read, len);
        }
        if let Ok(Parsed::Complete { len, .. }) = outcome {
            prop_assert_eq!(len, read);
        }
    }
}
