//! A tiny buffered MQTT client over one TCP connection.
//!
//! The socket is split into a [`Reader`] (one large buffer, packets parsed in
//! place, no allocation per packet) and a [`Writer`] (packets are encoded
//! into one buffer and written in batches).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::proto::{self, FrameInfo, Version, kind};

/// Size of each connection's read buffer (it grows for larger packets).
pub const READ_BUF: usize = 256 * 1024;
/// Time allowed for the TCP connect plus CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The read half with its packet buffer.
pub struct Reader {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Reader {
    fn new(rd: OwnedReadHalf, capacity: usize) -> Self {
        Self { rd, buf: vec![0; capacity], start: 0, end: 0 }
    }

    /// Takes the next complete packet off the buffer, if there is one.
    ///
    /// Returns the first byte and the body, borrowed from the buffer.
    pub fn next_packet(&mut self) -> Result<Option<(u8, &[u8])>> {
        let Some(FrameInfo { first, body_start, end }) = proto::parse_frame(&self.buf[self.start..self.end])? else {
            return Ok(None);
        };
        let base = self.start;
        self.start += end;
        Ok(Some((first, &self.buf[base + body_start..base + end])))
    }

    /// Reads more bytes from the socket; `Ok(false)` at end of stream.
    pub async fn fill(&mut self) -> Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < self.buf.len() / 4 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // One packet larger than the buffer: grow it.
            let len = self.buf.len();
            self.buf.resize(len * 2, 0);
        }
        let n = self.rd.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// Waits for the next packet; fails at end of stream.
    pub async fn recv(&mut self) -> Result<(u8, Vec<u8>)> {
        loop {
            if let Some((first, body)) = self.next_packet()? {
                return Ok((first, body.to_vec()));
            }
            if !self.fill().await? {
                bail!("connection closed by the broker");
            }
        }
    }
}

/// The write half with its batch buffer.
pub struct Writer {
    wr: OwnedWriteHalf,
    /// Packets encoded but not yet written.
    pub buf: Vec<u8>,
}

impl Writer {
    /// Writes out everything in the buffer.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.wr.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Sends DISCONNECT and closes the write side; errors are ignored
    /// because the run is over by then.
    pub async fn disconnect(mut self) {
        proto::disconnect(&mut self.buf);
        let _ = self.flush().await;
        let _ = self.wr.shutdown().await;
    }
}

/// A connected MQTT client.
pub struct Client {
    /// Where packets are read.
    pub reader: Reader,
    /// Where packets are written.
    pub writer: Writer,
    /// Protocol version in use.
    pub version: Version,
    /// The broker's Receive Maximum (65535 when it set none).
    pub receive_max: u16,
}

impl Client {
    /// Connects over TCP, sends CONNECT and waits for a successful CONNACK.
    pub async fn connect(addr: SocketAddr, version: Version, client_id: &str) -> Result<Self> {
        Self::connect_with(addr, version, client_id, READ_BUF, 0).await
    }

    /// Like [`Client::connect`] with a chosen read buffer size (small for
    /// the many idle connections of the `conn` scenario) and session expiry
    /// (see [`proto::connect`]).
    pub async fn connect_with(
        addr: SocketAddr,
        version: Version,
        client_id: &str,
        read_buf: usize,
        session_expiry: u32,
    ) -> Result<Self> {
        tokio::time::timeout(CONNECT_TIMEOUT, async {
            let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
            stream.set_nodelay(true)?;
            let (rd, wr) = stream.into_split();
            let mut client = Self {
                reader: Reader::new(rd, read_buf),
                writer: Writer { wr, buf: Vec::with_capacity(256) },
                version,
                receive_max: u16::MAX,
            };
            proto::connect(&mut client.writer.buf, version, client_id, 600, session_expiry);
            client.writer.flush().await?;
            let (first, body) = client.reader.recv().await?;
            ensure!(first >> 4 == kind::CONNACK, "expected CONNACK, got type {}", first >> 4);
            let ack = proto::parse_connack(version, &body)?;
            ensure!(ack.code == 0, "CONNACK refused the connection: code {}", ack.code);
            if let Some(max) = ack.receive_max {
                client.receive_max = max;
            }
            Ok(client)
        })
        .await
        .context("connect timed out")?
    }

    /// Sends one PINGREQ and waits for PINGRESP; see [`ping`].
    pub async fn ping(&mut self) -> Result<()> {
        ping(&mut self.reader, &mut self.writer).await
    }
}

/// Sends one PINGREQ and waits for PINGRESP, skipping anything else.
///
/// Because a broker handles one connection's packets in order, this also
/// proves that everything sent before it has been processed.
pub async fn ping(reader: &mut Reader, writer: &mut Writer) -> Result<()> {
    proto::pingreq(&mut writer.buf);
    writer.flush().await?;
    loop {
        let (first, _) = reader.recv().await?;
        if first >> 4 == kind::PINGRESP {
            return Ok(());
        }
    }
}
