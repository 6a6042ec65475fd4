//! The PROXY protocol (HAProxy's, versions 1 and 2), sans-IO: the header a
//! proxy (HAProxy, nginx, stunnel, a load balancer) sends before the
//! client's bytes to say whose connection it forwards.
//!
//! [`parse`] looks at the start of what was read and either returns the
//! header and its length, or how many more bytes it needs at least. Those
//! bytes always belong to the header when it is valid, so a reader that
//! reads exactly that many never consumes the TLS, HTTP or MQTT bytes that
//! follow it (version 1 ends with CRLF, so it is read two bytes at a time
//! near its end; version 2 states its length).
//!
//! Specification: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A version 1 header's largest size, CRLF included (spec, 2.1).
pub const V1_MAX: usize = 107;
/// A version 2 header's largest accepted size: the addresses and the TLVs
/// proxies add (ALPN, authority, TLS details, unique ids) fit easily.
pub const V2_MAX: usize = 4096;
/// The smallest header: `PROXY UNKNOWN\r\n`.
const MIN: usize = 15;
const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What a header says about the connection it precedes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A client's connection: its address, and the address it connected
    /// to, as the proxy saw them.
    Proxied {
        /// The client.
        source: SocketAddr,
        /// Where the client connected (the proxy's listener).
        destination: SocketAddr,
    },
    /// The proxy's own connection (v2 `LOCAL`, e.g. a health check), or a
    /// client it cannot describe (v1 `UNKNOWN`, v2 unspecified or Unix
    /// socket addresses): the socket's own addresses stand.
    Local,
}

/// How far [`parse`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A complete header of `len` bytes at the start of the input.
    Complete {
        /// The header.
        header: Header,
        /// Its length in bytes.
        len: usize,
    },
    /// At least `more` more bytes are needed, all part of the header.
    Incomplete {
        /// Bytes to read before parsing again.
        more: usize,
    },
}

/// Not a valid PROXY header: the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The bytes start with neither signature.
    #[error("no PROXY protocol header")]
    Missing,
    /// A version 1 line that does not follow the grammar.
    #[error("malformed PROXY v1 header")]
    V1Malformed,
    /// A version 1 line without CRLF within 107 bytes.
    #[error("PROXY v1 header longer than 107 bytes")]
    V1TooLong,
    /// A version 2 header of another version, command, family or
    /// transport than the specification defines.
    #[error("unsupported PROXY v2 version, command or address family")]
    V2Unsupported,
    /// A version 2 address block shorter than its family needs.
    #[error("PROXY v2 address block too short")]
    V2Truncated,
    /// A version 2 header larger than [`V2_MAX`].
    #[error("PROXY v2 header larger than 4096 bytes")]
    V2TooLong,
}

/// Parses the header at the start of `buf`.
///
/// # Errors
/// [`ProxyError`] as soon as the bytes cannot be a valid header.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let starts = |signature: &[u8]| buf.iter().zip(signature).all(|(a, b)| a == b);
    if buf.is_empty() {
        Ok(Parsed::Incomplete { more: MIN })
    } else if starts(V2_SIGNATURE) {
        parse_v2(buf)
    } else if starts(V1_PREFIX) {
        parse_v1(buf)
    } else {
        Err(ProxyError::Missing)
    }
}

/// `PROXY TCP4|TCP6 <source> <destination> <source port> <destination port>\r\n`,
/// or `PROXY UNKNOWN ...\r\n`.
fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        // Printable ASCII up to a final CR; anything else cannot become valid.
        let body = window.strip_suffix(b"\r").unwrap_or(window);
        if !body.iter().all(|b| (0x20..0x7f).contains(b)) {
            return Err(ProxyError::V1Malformed);
        }
        if buf.len() >= V1_MAX {
            return Err(ProxyError::V1TooLong);
        }
        let more = if buf.ends_with(b"\r") { 1 } else { 2 };
        return Ok(Parsed::Incomplete { more: more.max(MIN.saturating_sub(buf.len())) });
    };
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| ProxyError::V1Malformed)?;
    let header = v1_fields(line).ok_or(ProxyError::V1Malformed)?;
    Ok(Parsed::Complete { header, len: end + 2 })
}

/// The fields after `PROXY `, single spaces between them.
fn v1_fields(line: &str) -> Option<Header> {
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        // The rest, if any, is to be ignored (spec, 2.1).
        return line.bytes().all(|b| (0x20..0x7f).contains(&b)).then_some(Header::Local);
    }
    let mut fields = line.split(' ');
    let (family, source, destination, source_port, destination_port) =
        (fields.next()?, fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    if fields.next().is_some() {
        return None;
    }
    let (source, destination): (IpAddr, IpAddr) = match family {
        "TCP4" => (source.parse::<Ipv4Addr>().ok()?.into(), destination.parse::<Ipv4Addr>().ok()?.into()),
        "TCP6" => (source.parse::<Ipv6Addr>().ok()?.into(), destination.parse::<Ipv6Addr>().ok()?.into()),
        _ => return None,
    };
    Some(Header::Proxied {
        source: SocketAddr::new(source, port(source_port)?),
        destination: SocketAddr::new(destination, port(destination_port)?),
    })
}

/// A decimal port, digits only (no sign, no spaces).
fn port(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The 12-byte signature, version and command, family and transport, the
/// length of what follows, then the addresses (and TLVs, skipped).
fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    const FIXED: usize = 16;
    if buf.len() < FIXED {
        return Ok(Parsed::Incomplete { more: FIXED - buf.len() });
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    let (family, transport) = (buf[13] >> 4, buf[13] & 0x0f);
    if version != 2 || command > 1 || family > 3 || transport > 2 {
        return Err(ProxyError::V2Unsupported);
    }
    let len = FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX {
        return Err(ProxyError::V2TooLong);
    }
    if buf.len() < len {
        return Ok(Parsed::Incomplete { more: len - buf.len() });
    }
    let addresses = &buf[FIXED..len];
    let header = match (command, family) {
        // LOCAL: the proxy's own connection; the address block is ignored.
        (0, _) | (1, 0 | 3) => Header::Local,
        (_, 1) => {
            let a = addresses.get(..12).ok_or(ProxyError::V2Truncated)?;
            let ip = |at: usize| IpAddr::from([a[at], a[at + 1], a[at + 2], a[at + 3]]);
            proxied(ip(0), ip(4), &a[8..12])
        }
        _ => {
            let a = addresses.get(..36).ok_or(ProxyError::V2Truncated)?;
            let ip = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&a[at..at + 16]).unwrap_or([0; 16]));
            proxied(ip(0), ip(16), &a[32..36])
        }
    };
    Ok(Parsed::Complete { header, len })
}

fn proxied(source: IpAddr, destination: IpAddr, ports: &[u8]) -> Header {
    let port = |at: usize| u16::from_be_bytes([ports[at], ports[at + 1]]);
    Header::Proxied { source: SocketAddr::new(source, port(0)), destination: SocketAddr::new(destination, port(2)) }
}

/// Drives [`parse`] as a reader does: from nothing, reading as much more
/// as it asks each time, out of `input`. Returns the outcome and how many
/// bytes were read; for tests and fuzzing.
pub fn parse_incrementally(input: &[u8]) -> (Result<Parsed, ProxyError>, usize) {
    let mut have = 0;
    loop {
        match parse(&input[..have]) {
            Ok(Parsed::Incomplete { more }) if have + more <= input.len() => have += more,
            outcome => return (outcome, have),
        }
    }
}

#[cfg(test)]
mod tests;
