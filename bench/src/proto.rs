//! Minimal MQTT 3.1.1 / 5.0 packet encoding and decoding.
//!
//! Only what the load generator needs: CONNECT, PUBLISH, PUBACK, SUBSCRIBE,
//! PINGREQ and DISCONNECT out; CONNACK, PUBLISH, PUBACK, SUBACK and PINGRESP
//! in. Encoders append to a caller-owned `Vec<u8>` so that many packets can be
//! batched into one write; decoders borrow from the read buffer.

use anyhow::{Result, bail, ensure};

/// The MQTT protocol version a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl Version {
    /// Maps the command-line value `3` or `5` to a version.
    pub fn from_arg(n: u8) -> Result<Self> {
        match n {
            3 | 4 => Ok(Self::V311),
            5 => Ok(Self::V5),
            _ => bail!("--mqtt must be 3 or 5, got {n}"),
        }
    }

    /// The number printed in results: 3 or 5.
    pub fn number(self) -> u8 {
        match self {
            Self::V311 => 3,
            Self::V5 => 5,
        }
    }

    fn is_v5(self) -> bool {
        self == Self::V5
    }
}

/// Packet type codes (the upper nibble of the first byte).
pub mod kind {
    /// CONNACK.
    pub const CONNACK: u8 = 2;
    /// PUBLISH.
    pub const PUBLISH: u8 = 3;
    /// PUBACK.
    pub const PUBACK: u8 = 4;
    /// SUBACK.
    pub const SUBACK: u8 = 9;
    /// PINGRESP.
    pub const PINGRESP: u8 = 13;
    /// DISCONNECT.
    pub const DISCONNECT: u8 = 14;
}

fn put_varint(buf: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        buf.push(byte);
        if n == 0 {
            break;
        }
    }
}

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
    buf.extend_from_slice(s);
}

/// Appends a CONNECT with no will and no credentials. With
/// `session_expiry` 0 the session is clean (3.1.1) or ends with the
/// connection (5.0); otherwise it is persistent (3.1.1: clean session 0;
/// 5.0: a new session with that Session Expiry Interval), so a broker with
/// a durable store must store what it queues for it.
pub fn connect(buf: &mut Vec<u8>, v: Version, client_id: &str, keep_alive: u16, session_expiry: u32) {
    let props = if !v.is_v5() {
        0
    } else if session_expiry > 0 {
        6
    } else {
        1
    };
    let len = 2 + 4 + 1 + 1 + 2 + props + 2 + client_id.len();
    buf.push(0x10);
    put_varint(buf, len);
    put_str(buf, b"MQTT");
    buf.push(if v.is_v5() { 5 } else { 4 });
    // Clean start (5.0) always: the ids are new. Clean session (3.1.1)
    // only for a non-persistent session.
    buf.push(if v.is_v5() || session_expiry == 0 { 0x02 } else { 0x00 });
    buf.extend_from_slice(&keep_alive.to_be_bytes());
    if v.is_v5() && session_expiry > 0 {
        buf.push(5);
        buf.push(0x11); // Session Expiry Interval
        buf.extend_from_slice(&session_expiry.to_be_bytes());
    } else if v.is_v5() {
        buf.push(0); // no properties
    }
    put_str(buf, client_id.as_bytes());
}

/// Appends the fixed and variable header of a PUBLISH whose payload is
/// `payload_len` bytes; the caller appends the payload itself.
pub fn publish_header(
    buf: &mut Vec<u8>,
    v: Version,
    topic: &[u8],
    qos: u8,
    retain: bool,
    pkid: u16,
    payload_len: usize,
) {
    let id_len = if qos > 0 { 2 } else { 0 };
    let props = usize::from(v.is_v5());
    let len = 2 + topic.len() + id_len + props + payload_len;
    buf.push(0x30 | (qos << 1) | u8::from(retain));
    put_varint(buf, len);
    put_str(buf, topic);
    if qos > 0 {
        buf.extend_from_slice(&pkid.to_be_bytes());
    }
    if v.is_v5() {
        buf.push(0);
    }
}

/// Total encoded size of a PUBLISH, for sizing write batches.
pub fn publish_len(v: Version, topic_len: usize, qos: u8, payload_len: usize) -> usize {
    let id_len = if qos > 0 { 2 } else { 0 };
    let len = 2 + topic_len + id_len + usize::from(v.is_v5()) + payload_len;
    1 + varint_len(len) + len
}

/// Appends a PUBACK (success; valid for both versions).
pub fn puback(buf: &mut Vec<u8>, pkid: u16) {
    buf.extend_from_slice(&[0x40, 2]);
    buf.extend_from_slice(&pkid.to_be_bytes());
}

/// Appends a SUBSCRIBE for one filter at the given maximum QoS.
pub fn subscribe(buf: &mut Vec<u8>, v: Version, pkid: u16, filter: &str, qos: u8) {
    let props = usize::from(v.is_v5());
    let len = 2 + props + 2 + filter.len() + 1;
    buf.push(0x82);
    put_varint(buf, len);
    buf.extend_from_slice(&pkid.to_be_bytes());
    if v.is_v5() {
        buf.push(0);
    }
    put_str(buf, filter.as_bytes());
    buf.push(qos);
}

/// Appends a PINGREQ.
pub fn pingreq(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&[0xC0, 0]);
}

/// Appends a DISCONNECT (normal disconnection in both versions).
pub fn disconnect(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&[0xE0, 0]);
}

/// The location of one complete packet at the front of a buffer.
#[derive(Clone, Copy, Debug)]
pub struct FrameInfo {
    /// The first byte: packet type and flags.
    pub first: u8,
    /// Offset of the body (after the fixed header).
    pub body_start: usize,
    /// Offset just past the packet.
    pub end: usize,
}

/// Locates the first packet in `buf`; `Ok(None)` when it is not complete yet.
pub fn parse_frame(buf: &[u8]) -> Result<Option<FrameInfo>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    let mut shift = 0;
    for i in 1..5 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7F) << shift;
        if b & 0x80 == 0 {
            let end = i + 1 + len;
            if buf.len() < end {
                return Ok(None);
            }
            return Ok(Some(FrameInfo { first, body_start: i + 1, end }));
        }
        shift += 7;
    }
    bail!("malformed remaining length")
}

fn take_u16(body: &[u8], at: usize) -> Result<u16> {
    match body.get(at..at + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => bail!("packet too short"),
    }
}

/// Reads a variable byte integer at `at`; returns (value, bytes used).
fn take_varint(body: &[u8], at: usize) -> Result<(usize, usize)> {
    let mut n = 0usize;
    for i in 0..4 {
        let Some(&b) = body.get(at + i) else {
            bail!("truncated variable byte integer");
        };
        n |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((n, i + 1));
        }
    }
    bail!("malformed variable byte integer")
}

/// A received PUBLISH, borrowing its payload from the read buffer.
#[derive(Debug)]
pub struct Publish<'a> {
    /// Delivery QoS.
    pub qos: u8,
    /// Packet identifier (0 at QoS 0).
    pub pkid: u16,
    /// Application payload.
    pub payload: &'a [u8],
}

/// Decodes a PUBLISH body.
pub fn parse_publish(v: Version, first: u8, body: &[u8]) -> Result<Publish<'_>> {
    let qos = (first >> 1) & 3;
    let topic_len = usize::from(take_u16(body, 0)?);
    let mut at = 2 + topic_len;
    let mut pkid = 0;
    if qos > 0 {
        pkid = take_u16(body, at)?;
        at += 2;
    }
    if v.is_v5() {
        let (plen, used) = take_varint(body, at)?;
        at += used + plen;
    }
    ensure!(at <= body.len(), "PUBLISH shorter than its headers");
    Ok(Publish { qos, pkid, payload: &body[at..] })
}

/// What a CONNACK said.
#[derive(Debug)]
pub struct ConnAck {
    /// Return code (3.1.1) or reason code (5.0); 0 is success.
    pub code: u8,
    /// Session Present: the broker resumed a stored session.
    pub session_present: bool,
    /// The server's Receive Maximum (5.0 only).
    pub receive_max: Option<u16>,
}

/// Decodes a CONNACK body.
pub fn parse_connack(v: Version, body: &[u8]) -> Result<ConnAck> {
    let Some(&code) = body.get(1) else {
        bail!("CONNACK too short");
    };
    let mut receive_max = None;
    if v.is_v5() && body.len() > 2 {
        let (plen, used) = take_varint(body, 2)?;
        let start = 2 + used;
        let Some(props) = body.get(start..start + plen) else {
            bail!("CONNACK properties truncated");
        };
        receive_max = find_receive_max(props)?;
    }
    Ok(ConnAck { code, session_present: body[0] & 1 == 1, receive_max })
}

/// Walks MQTT 5 properties looking for Receive Maximum (0x21).
fn find_receive_max(props: &[u8]) -> Result<Option<u16>> {
    let mut at = 0;
    let mut found = None;
    while at < props.len() {
        let id = props[at];
        at += 1;
        at += match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            0x13 | 0x22 | 0x23 => 2,
            0x21 => {
                found = Some(take_u16(props, at)?);
                2
            }
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            0x0B => take_varint(props, at)?.1,
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => 2 + usize::from(take_u16(props, at)?),
            0x26 => {
                let k = 2 + usize::from(take_u16(props, at)?);
                k + 2 + usize::from(take_u16(props, at + k)?)
            }
            _ => bail!("unknown property 0x{id:02x}"),
        };
    }
    Ok(found)
}

/// Decodes a PUBACK body: (packet id, reason code).
pub fn parse_puback(body: &[u8]) -> Result<(u16, u8)> {
    let pkid = take_u16(body, 0)?;
    Ok((pkid, body.get(2).copied().unwrap_or(0)))
}

/// Decodes a SUBACK body: (packet id, first granted QoS or reason code).
pub fn parse_suback(v: Version, body: &[u8]) -> Result<(u16, u8)> {
    let pkid = take_u16(body, 0)?;
    let mut at = 2;
    if v.is_v5() {
        let (plen, used) = take_varint(body, at)?;
        at += used + plen;
    }
    match body.get(at) {
        Some(&code) => Ok((pkid, code)),
        None => bail!("SUBACK without a return code"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trip() -> Result<()> {
        for v in [Version::V311, Version::V5] {
            for qos in [0, 1] {
                let mut buf = Vec::new();
                let payload = vec![7u8; 300];
                publish_header(&mut buf, v, b"a/b", qos, false, 9, payload.len());
                buf.extend_from_slice(&payload);
                assert_eq!(buf.len(), publish_len(v, 3, qos, payload.len()));
                let f = parse_frame(&buf)?.ok_or_else(|| anyhow::anyhow!("incomplete"))?;
                assert_eq!(f.end, buf.len());
                let p = parse_publish(v, f.first, &buf[f.body_start..f.end])?;
                assert_eq!((p.qos, p.payload.len()), (qos, 300));
                assert_eq!(p.pkid, if qos > 0 { 9 } else { 0 });
            }
        }
        Ok(())
    }

    #[test]
    fn partial_frames_wait_for_more() -> Result<()> {
        let mut buf = Vec::new();
        connect(&mut buf, Version::V5, "x", 60, 0);
        for cut in 0..buf.len() {
            assert!(parse_frame(&buf[..cut])?.is_none());
        }
        assert!(parse_frame(&buf)?.is_some());
        Ok(())
    }

    #[test]
    fn persistent_sessions_in_connect() -> Result<()> {
        // Fixed header (2) + "MQTT" (6) + level (1), then the flags.
        const FLAGS: usize = 9;
        for (v, expiry, flags, tail) in [
            (Version::V5, 0, 0x02, &[0u8, 0, 1, b'x'][..]),
            (Version::V5, 300, 0x02, &[5, 0x11, 0, 0, 1, 44, 0, 1, b'x'][..]),
            (Version::V311, 0, 0x02, &[0, 1, b'x'][..]),
            (Version::V311, 300, 0x00, &[0, 1, b'x'][..]),
        ] {
            let mut buf = Vec::new();
            connect(&mut buf, v, "x", 60, expiry);
            assert_eq!(parse_frame(&buf)?.map(|f| f.end), Some(buf.len()), "{v:?} {expiry}");
            assert_eq!(buf[FLAGS], flags, "{v:?} {expiry}");
            assert!(buf.ends_with(tail), "{v:?} {expiry}: {buf:?}");
        }
        Ok(())
    }

    #[test]
    fn connack_receive_maximum() -> Result<()> {
        // flags, code, props len 8: receive max 20, topic alias max 10, max qos 1
        let body = [0, 0, 8, 0x21, 0, 20, 0x22, 0, 10, 0x24, 1];
        let ack = parse_connack(Version::V5, &body)?;
        assert_eq!((ack.code, ack.receive_max), (0, Some(20)));
        Ok(())
    }
}
