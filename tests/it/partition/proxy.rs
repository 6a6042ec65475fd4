//! A TCP proxy that a test puts between Moat nodes and NATS (or between
//! NATS servers) and then breaks: the faults of a partition, made on
//! 127.0.0.1 without root or network namespaces.
//!
//! Each accepted connection gets one to the upstream and two directions,
//! each a reader and a writer joined by a queue of timed chunks, so a
//! delay holds every chunk for its own time without slowing the stream
//! down. What a fault does:
//! - [`Link::Blackhole`]: nothing is read or written while it lasts, so
//!   the sockets stay open and TCP keeps what was sent (a switch that
//!   drops every packet, short of TCP giving up);
//! - [`Link::Reset`]: every connection is closed with a reset, and new
//!   ones are reset as they come (a host that went away);
//! - [`Link::Delay`]: every chunk is held that long, in order.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the proxy does to the link now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Bytes go through as they come.
    Forward,
    /// Sockets stay open; nothing goes through (nor is read) until the
    /// mode changes, then everything held goes through.
    Blackhole,
    /// Connections are reset, new ones too.
    Reset,
    /// Bytes go through this much later, in order.
    Delay(Duration),
}

/// A proxy on 127.0.0.1 in front of `upstream`, stopped when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    link: watch::Sender<Link>,
    accepting: JoinHandle<()>,
}

/// Bytes read from one side at once.
const CHUNK: usize = 16 * 1024;

impl Proxy {
    /// A proxy forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (link, watching) = watch::channel(Link::Forward);
        let accepting = tokio::spawn(accept(listener, upstream, watching));
        Proxy { addr, link, accepting }
    }

    /// `nats://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Changes what happens to the link, for open connections and new ones.
    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Every direction ends once the sender is gone.
        self.accepting.abort();
        self.link.send_replace(Link::Reset);
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, link: watch::Receiver<Link>) {
    while let Ok((client, _)) = listener.accept().await {
        if *link.borrow() == Link::Reset {
            reset(&client);
            continue;
        }
        let link = link.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                reset(&client);
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            // Closed with a reset when the fault says so: set before the split.
            for socket in [&client, &server] {
                let _ = socket.set_zero_linger();
            }
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(direction(client_read, server_write, link.clone()));
            tokio::spawn(direction(server_read, client_write, link));
        });
    }
}

/// Drops `socket` with a reset rather than a clean close.
fn reset(socket: &TcpStream) {
    let _ = socket.set_zero_linger();
}

/// One direction of a connection: a reader and a writer task, with the
/// chunks in between stamped with when they may go out.
async fn direction(from: OwnedReadHalf, to: OwnedWriteHalf, link: watch::Receiver<Link>) {
    let (chunks, due) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write(to, due, link.clone()));
    read(from, chunks, link).await;
    // The reader ended (EOF, error or reset): the writer sends what it
    // holds unless reset, then ends.
    let _ = writer.await;
}

async fn read(
    mut from: OwnedReadHalf,
    chunks: mpsc::UnboundedSender<(Instant, Vec<u8>)>,
    mut link: watch::Receiver<Link>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let now = *link.borrow_and_update();
        match now {
            Link::Reset => return,
            Link::Blackhole => {
                if link.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Link::Forward | Link::Delay(_) => {}
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = link.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let delay = match now {
            Link::Delay(d) => d,
            _ => Duration::ZERO,
        };
        if chunks.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
            return;
        }
    }
}

async fn write(
    mut to: OwnedWriteHalf,
    mut due: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    mut link: watch::Receiver<Link>,
) {
    loop {
        let next = tokio::select! {
            next = due.recv() => next,
            changed = link.changed() => {
                if changed.is_err() || *link.borrow() == Link::Reset {
                    return;
                }
                continue;
            }
        };
        let Some((at, chunk)) = next else {
            let _ = to.shutdown().await;
            return;
        };
        tokio::time::sleep_until(at).await;
        // Held while the link is blackholed; dropped if it is reset.
        loop {
            let now = *link.borrow_and_update();
            match now {
                Link::Reset => return,
                Link::Blackhole => {
                    if link.changed().await.is_err() {
                        return;
                    }
                }
                Link::Forward | Link::Delay(_) => break,
            }
        }
        if to.write_all(&chunk).await.is_err() {
            return;
        }
    }
}
