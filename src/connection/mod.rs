//! One task per client connection.
//!
//! The task owns its socket, its read and write buffers and the
//! connection-scoped protocol state (keep alive, topic aliases, negotiated
//! limits); the session it attaches to holds what outlives it. It is the
//! only place where errors become MQTT reason codes, and it logs a close
//! once, at `debug` when the peer caused it.

mod buffers;
mod close;
mod connect;
mod identity;
mod inbound;
mod outbound;
mod parked;
mod permits;
mod policy;
mod subscribe;
mod withheld;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::{Instrument, debug, field};

use crate::auth::{Action, AuthzCache, ClientInfo};
use crate::broker::Broker;
use crate::codec::{self, Disconnect, Packet, Properties, ProtocolVersion, TopicName, Will};
use crate::config::ListenerConfig;
use crate::identity::Peer;
use crate::metrics::{Limit, LocalCounts};
use crate::session::{Attached, keep_alive, signal, wakes};
use buffers::{WRITE_KEEP, poll_read_some, settle_read_buffer};
pub(crate) use close::Close;
use close::leave_reason;
pub use parked::Park;
pub use permits::{Permit, Permits};
use withheld::Withheld;

/// The connection's state after a successful CONNECT.
struct Connection<S> {
    broker: Arc<Broker>,
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    version: ProtocolVersion,
    attached: Attached,
    /// 1.5 times the negotiated keep alive, in milliseconds; `None` when
    /// keep alive is off ([`Connection::keep_alive`]).
    /// No `last_read` instant of its own: each read moves the deadline
    /// kept in the session ([`Connection::move_keep_alive`]), which is
    /// what the keep-alive check reads (16 bytes less, issue 25).
    keep_alive_ms: Option<std::num::NonZeroU32>,
    /// Boxed: large and seldom set, and this struct lives as long as the
    /// connection.
    will: Option<Box<Will>>,
    /// In a cluster: a SUBSCRIBE or UNSUBSCRIBE changed the session's
    /// subscriptions, so its consumer in JetStream follows before the
    /// acknowledgement goes out (`Cluster::keep`).
    #[cfg(feature = "cluster")]
    subscriptions_changed: bool,
    session_expiry_s: u32,
    /// Whether CONNECT asked for a non-zero session expiry (v5), which a
    /// DISCONNECT may not change from zero [MQTT-3.14.2-2].
    connect_expiry_zero: bool,
    /// The client's Receive Maximum, capped by ours: our outbound window
    /// (16 bits, as the protocol's; with the next field, 8 bytes less and
    /// a 384-byte malloc chunk for `Connection` instead of 400, issue 25).
    send_window: u16,
    /// The client's Maximum Packet Size, if it set one (0 is not one).
    client_max_packet: Option<std::num::NonZeroU32>,
    /// Deliveries may be waiting: the session woke us or the window opened.
    want_drain: bool,
    /// Something happened since the sweep last asked the connection to
    /// park ([`parked`]): a packet other than PINGREQ, or a wake for
    /// deliveries. It parks at the next ask if nothing does.
    stirred: bool,
    /// Who the client is, as plugins see it: client id, the user name in
    /// force (from CONNECT, the certificate or an authenticator's grant),
    /// peer, listener, certificate identity and granted attributes.
    client: Arc<ClientInfo>,
    /// This connection's memory of authorization verdicts, made on the
    /// first verdict to remember: an idle client asks for none (issue 25).
    authz: Option<Box<AuthzCache>>,
    /// What acknowledgements wait for ([`Withheld`]), made when one first
    /// waits and kept from then on (a publisher waits again soon; no
    /// allocation per publish): an idle client has none (issue 25).
    withheld: Option<Box<Withheld>>,
    /// Messages and bytes counted since the last flush into the broker's
    /// metrics (once per loop turn, not per message).
    counts: LocalCounts,
    /// The read buffer holds packets not yet handled: the last turn
    /// stopped at [`INPUT_BATCH`](inbound::INPUT_BATCH) to let other tasks run.
    input_pending: bool,
    /// Deliveries the publishes of this turn were routed to: a turn ends
    /// early at [`ROUTE_BUDGET`](inbound::ROUTE_BUDGET).
    routed: u16,
    /// What most connections never need, made on first use
    /// ([`Connection::rare`]): an idle connection does not carry it.
    rare: Option<Box<Rare>>,
    /// The connection's places in the connection limits, given back when
    /// it ends. Here rather than in the task's future, which they would
    /// push past a size class of tokio's task cells (issue 25).
    _permits: Permits,
}

/// The parts of a connection that most clients never use (issue 25: 170
/// bytes an idle connection would otherwise carry).
#[derive(Default)]
struct Rare {
    /// Inbound topic aliases (v5).
    aliases: HashMap<u16, TopicName>,
    /// This connection's refusal lines, rate-limited.
    denials: crate::auth::DenialLog,
    /// The v5 Authentication Method used at CONNECT; re-authentication
    /// must use the same one.
    auth_method: Option<String>,
    /// A re-authentication exchange under way, pinned to the plugin
    /// instance conducting it.
    reauth: Option<Box<crate::auth::AuthExchange>>,
    /// The client's `limits.max_publish_rate` (following reloads); `None`
    /// when unlimited.
    publish_rate: Option<crate::rate::TokenBucket>,
    /// Retained messages matched by new subscriptions, not yet sent: they
    /// go out ahead of the session's queue as the window allows.
    retained: std::collections::VecDeque<crate::message::Delivery>,
    /// In a cluster: the revision under which the will is registered for
    /// other nodes to publish should this one die (`cluster::wills`).
    #[cfg(feature = "cluster")]
    will_registered: Option<u64>,
}

/// Serves one client connection to the end, over a stream on which any
/// TLS handshake and WebSocket upgrade are done; `peer` carries the
/// verified client certificate, if any. Never panics on peer input; all
/// outcomes are logged here, once.
///
/// Two stages, not one `async fn`: the handshake (CONNECT,
/// authentication) is boxed and dropped once done, and what stays for
/// the client's life is `Connection::run`'s future alone. An `async fn`
/// would keep its arguments' room (and that of every enclosing one) in
/// each idle connection's task (issue 25). The connection holds
/// `permits` until it ends; `name` is the listener's name, shared by its
/// clients' [`ClientInfo`].
pub fn serve<S>(
    broker: Arc<Broker>,
    stream: S,
    peer: Peer,
    (listener, name): (Arc<ListenerConfig>, Arc<String>),
    permits: Permits,
) -> impl Future<Output = ()> + Send
where
    S: Park,
{
    use futures_util::FutureExt;
    use futures_util::future::Either;
    let span = tracing::debug_span!("conn", peer = %peer.addr, listener = %listener.name, client_id = field::Empty);
    // Boxed as it is made, and instrumented outside the box: the
    // handshake's future is large, and each layer around it before the
    // box would be one more copy of it per connect (issue 25).
    // The permits go into the connection (or end with the handshake),
    // not into this future's second stage.
    let handshake = Box::pin(connect::handshake(broker, stream, peer, (listener, name), permits));
    handshake.instrument(span.clone()).then(move |conn| match conn {
        Some(conn) => Either::Left(conn.run().instrument(span)),
        None => Either::Right(std::future::ready(())),
    })
}

impl<S> Connection<S>
where
    S: Park,
{
    /// The connection's life after the handshake: its future is what the
    /// task holds, so the little set up here is done before it, not in an
    /// `async` layer of its own around [`Connection::serve`] (issue 25).
    /// Boxed: moving the connection into the future would otherwise keep
    /// a second copy of it in the task's state.
    fn run(self: Box<Self>) -> impl Future<Output = ()> + Send {
        self.broker.metrics.connection_opened();
        // Nothing in flight to send again (a new or clean session): the
        // main loop's first flush sends CONNACK, without the resume's
        // boxed future (issue 25).
        let resume = !self.attached.session.lock().inflight.is_empty();
        // No timer of its own: the keep-alive sweep signals a deadline
        // passed (`session::keep_alive`). Set here, not where serving
        // starts, which a parked connection's new task does again.
        self.move_keep_alive();
        self.attached.session.can_park(self.stream.parkable());
        self.serve(resume)
    }

    /// Serves packets (after sending again what was in flight, if
    /// `resume`) until the connection ends, or parks it when it has been
    /// quiet ([`parked`]; its task ends, and a new one picks up here when
    /// something wakes it).
    async fn serve(mut self: Box<Self>, mut resume: bool) {
        let close = loop {
            if std::mem::take(&mut resume)
                && let Err(close) = Box::pin(self.resume()).await
            {
                break close;
            }
            match self.serve_packets().await {
                Err(close) => break close,
                Ok(Quiet) => match parked::park(self) {
                    Ok(()) => return,
                    Err(back) => self = back,
                },
            }
        };
        self.broker.metrics.connection_closed();
        Box::pin(self.finish(close)).await;
    }

    /// The main loop: read packets, deliver queued messages, watch keep
    /// alive, takeover and shutdown.
    ///
    /// Its future is most of what an idle connection costs, so what it
    /// holds across the idle wait is small: the keep-alive timer and the
    /// wait itself ([`Connection::poll_event`]). Whatever waits seldom
    /// (a full socket, a held publish, the store) is boxed. Ends with
    /// [`Quiet`] when the connection may be parked.
    async fn serve_packets(&mut self) -> Result<Quiet, Close> {
        if self.broker.shutdown.is_cancelled() {
            // Attached after shutdown signalled every session.
            return Err(Close::Shutdown);
        }
        loop {
            if self.want_drain {
                self.want_drain = false;
                self.drain().await;
                // Room may have opened for what share groups keep waiting.
                self.broker.serve_waiting(&self.attached.session, None);
            }
            #[cfg(feature = "cluster")]
            if std::mem::take(&mut self.subscriptions_changed) {
                // Boxed: rare, and large next to the idle connection.
                Box::pin(self.keep(false)).await;
            }
            if self.withheld.as_ref().is_some_and(|w| w.durable.is_some() || w.replicated.is_some()) {
                Box::pin(self.await_durable()).await?;
            }
            self.flush().await?;
            self.broker.metrics.flush(&mut self.counts);
            if self.held().is_some() {
                Box::pin(self.wait_held()).await?;
                continue;
            }
            if self.input_pending {
                // The subscribers this client's messages went to get to
                // run (and drain their queues) before it goes on.
                tokio::task::yield_now().await;
                Box::pin(wakes::once_per_poll(self.process_input())).await?;
                continue;
            }
            match std::future::poll_fn(|cx| self.poll_event(cx)).await {
                Event::Read(n) => {
                    self.counts.read(n);
                    self.move_keep_alive();
                    // Boxed, once per read: handling a packet may wait
                    // for a plugin, and the states of that wait would
                    // otherwise be kept in every idle connection's task.
                    Box::pin(wakes::once_per_poll(self.process_input())).await?;
                    settle_read_buffer(&mut self.rbuf, n);
                }
                Event::Woken => self.stirred = true,
                Event::Park => return Ok(Quiet),
                Event::Close(close) => return Err(close),
            }
        }
    }

    /// What the idle connection waits for, in this order: being told to
    /// leave (takeover, kick, shutdown), bytes from the client, its keep
    /// alive running out (signalled by the sweep, checked against the
    /// deadline the last read set), deliveries (sets `want_drain`), and
    /// the sweep's ask to park, which it heeds if nothing happened since
    /// the last ask and nothing is under way.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        let (mut woken, mut overdue, mut park) = (false, false, false);
        if let Poll::Ready(bits) = self.attached.session.poll_signals(cx) {
            if let Some(close) = leave_reason(bits, &self.attached.session) {
                return Poll::Ready(Event::Close(close));
            }
            overdue = bits & signal::KEEP_ALIVE != 0;
            woken = bits & signal::WAKE != 0;
            park = bits & signal::PARK != 0;
            self.want_drain |= woken;
        }
        match poll_read_some(&mut self.stream, &mut self.rbuf, cx) {
            Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Event::Close(Close::ConnectionLost)),
            Poll::Ready(Ok(n)) => return Poll::Ready(Event::Read(n)),
            Poll::Pending => {}
        }
        // The sweep may have looked before the last read moved the
        // deadline: the deadline in force now decides.
        if overdue && self.attached.session.keep_alive_overdue() {
            return Poll::Ready(Event::Close(Close::KeepAliveTimeout));
        }
        if woken {
            return Poll::Ready(Event::Woken);
        }
        if park && !std::mem::take(&mut self.stirred) && self.may_park() {
            return Poll::Ready(Event::Park);
        }
        Poll::Pending
    }

    /// Whether nothing is under way that a parked connection could not
    /// take up again from its state alone, and the stream can be parked.
    fn may_park(&self) -> bool {
        #[cfg(feature = "cluster")]
        if self.subscriptions_changed {
            return false;
        }
        self.wbuf.is_empty()
            && self.rbuf.is_empty()
            && !self.want_drain
            && !self.input_pending
            && self.withheld.as_ref().is_none_or(|w| w.durable.is_none() && w.replicated.is_none() && w.held.is_none())
            && self.retained_waiting().is_none()
            && self.rare.as_ref().is_none_or(|r| r.reauth.is_none())
            && !self.broker.shutdown.is_cancelled()
            && self.stream.parkable()
    }

    /// The client was heard from (or, for a held publish, the broker
    /// starts reading again): its keep-alive deadline is 1.5 times its
    /// keep alive from now, a second of the sweep's clock kept in the
    /// session, which the sweep and [`Connection::poll_event`] read.
    fn move_keep_alive(&self) {
        if let Some(ka) = self.keep_alive() {
            self.attached.session.set_keep_alive_due(keep_alive::due(Instant::now() + ka));
        }
    }

    /// 1.5 times the negotiated keep alive; `None` when keep alive is off.
    fn keep_alive(&self) -> Option<Duration> {
        self.keep_alive_ms.map(|ms| Duration::from_millis(u64::from(ms.get())))
    }

    /// The connection's [`Rare`] parts, made now if need be.
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Retained messages of new subscriptions not yet sent.
    fn retained_waiting(&self) -> Option<&std::collections::VecDeque<crate::message::Delivery>> {
        self.rare.as_ref().map(|r| &r.retained).filter(|r| !r.is_empty())
    }

    /// Queues a packet for the next flush.
    fn send(&mut self, packet: &Packet) {
        // Packets we build always fit the encoder's limits; a failure here
        // would be a broker bug, so it is logged rather than sent half-built.
        if let Err(e) = codec::encode(packet, self.version, &mut self.wbuf) {
            tracing::error!(error = %e, "could not encode an outgoing packet");
        }
    }

    /// In a cluster: keeps the session in JetStream, or stops keeping it,
    /// as its expiry and subscriptions now ask (`Cluster::keep`); `first`
    /// when the connection is set up.
    #[cfg(feature = "cluster")]
    async fn keep(&mut self, first: bool) {
        if let Some(cluster) = crate::cluster::Cluster::plugged(self.broker.replication()) {
            cluster.keep(&self.attached.session, usize::from(self.send_window), first).await;
        }
    }

    /// Writes the write buffer out within `limits.write_timeout_ms`; a
    /// kick or shutdown ends the wait at once. Written bytes leave the
    /// buffer as they go, so a goodbye queued after an interrupted flush
    /// follows whole packets.
    async fn flush(&mut self) -> Result<(), Close> {
        let batch = self.wbuf.len();
        if batch == 0 {
            return Ok(());
        }
        // Most batches fit the socket at once: written here, nothing held
        // across an await. Only a client that does not keep up gets the
        // (boxed) wait with its deadline.
        let outcome = match std::future::poll_fn(|cx| Poll::Ready(self.write_now(cx))).await {
            Ok(true) => Ok(()),
            Ok(false) => Box::pin(self.flush_waiting()).await,
            Err(e) => Err(Close::from(e)),
        };
        self.counts.wrote(batch - self.wbuf.len());
        outcome?;
        // A quiet connection gives its buffer back (each idle client would
        // otherwise hold one); a busy one keeps it for the next batch.
        if batch < WRITE_KEEP {
            self.wbuf = BytesMut::new();
        } else {
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Writes (and flushes) as much of the write buffer as the stream
    /// takes without waiting; `Ok(true)` when all of it went.
    fn write_now(&mut self, cx: &mut Context<'_>) -> std::io::Result<bool> {
        let mut stream = Pin::new(&mut self.stream);
        while !self.wbuf.is_empty() {
            match stream.as_mut().poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => bytes::Buf::advance(&mut self.wbuf, n),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(false),
            }
        }
        // A no-op on TCP; TLS and WebSocket streams may hold data back.
        match stream.poll_flush(cx) {
            Poll::Ready(result) => result.map(|()| true),
            Poll::Pending => Ok(false),
        }
    }

    /// The rest of a flush the stream could not take at once, waiting for
    /// the client within `limits.write_timeout_ms`, or until it is told to
    /// leave.
    async fn flush_waiting(&mut self) -> Result<(), Close> {
        let timeout = self.broker.config().limits.write_timeout();
        let session = self.attached.session.clone();
        let (stream, wbuf) = (&mut self.stream, &mut self.wbuf);
        let write = async move {
            stream.write_all_buf(wbuf).await?;
            stream.flush().await
        };
        tokio::select! {
            biased;
            written = tokio::time::timeout(timeout, write) => match written {
                Ok(written) => written.map_err(Close::from),
                Err(_) => {
                    self.broker.metrics.limit_hit(Limit::WriteTimeout);
                    Err(Close::WriteTimeout)
                }
            },
            bits = session.leaving() => Err(leave_reason(bits, &session).unwrap_or(Close::Shutdown)),
        }
    }

    /// The goodbye's flush: best effort, bounded, and not cut short by the
    /// kick or shutdown that may be its reason.
    async fn flush_goodbye(&mut self) {
        if !self.wbuf.is_empty() && self.stream.write_all_buf(&mut self.wbuf).await.is_ok() {
            let _ = self.stream.flush().await;
        }
    }

    /// Says goodbye where the protocol allows, then hands the session back.
    async fn finish(mut self: Box<Self>, close: Close) {
        match close {
            Close::Protocol(code, why) => debug!(reason = %code, why, "closing: protocol error"),
            other => debug!(reason = ?other, "connection closed"),
        }
        // Acknowledgements still waiting for JetStream go unsent: the
        // client resends what they were for, wherever it connects next.
        if let Some(withheld) = &mut self.withheld {
            withheld.replicated = None;
        }
        let close = self.await_durable().await.err().unwrap_or(close);
        if self.version.is_v5()
            && let Some(reason) = close.server_reason()
        {
            self.send(&Packet::Disconnect(Disconnect { reason, properties: Properties::default() }));
        }
        // Best effort: the peer may already be gone; bounded so a client
        // that stopped reading cannot hold the session.
        let unsent = self.wbuf.len();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            self.flush_goodbye().await;
            self.stream.shutdown().await.ok();
        })
        .await;
        self.counts.wrote(unsent.saturating_sub(self.wbuf.len()));
        self.drop_held();
        if self.session_expiry_s > 0 {
            // Still owed to a session that outlives this connection.
            let retained = self.rare.as_mut().map(|r| std::mem::take(&mut r.retained)).unwrap_or_default();
            let owed = retained.into_iter().filter(|d| d.qos != crate::codec::QoS::AtMostOnce);
            self.attached.session.lock().restore_pending(owed);
        }
        let mut will = if close.publishes_will() { self.will.take().map(|w| *w) } else { None };
        if let Some(w) = &will
            && (inbound::is_reserved(w.topic.as_str())
                || !self.allowed(Action::Will, w.topic.as_str(), w.qos, w.retain).await)
        {
            will = None;
        }
        // This node takes care of the will now.
        #[cfg(feature = "cluster")]
        if let (Some(cluster), Some(revision)) = (
            crate::cluster::Cluster::plugged(self.broker.replication()),
            self.rare.as_ref().and_then(|r| r.will_registered),
        ) {
            cluster.unregister_will(&self.client.client_id, revision);
        }
        self.broker.metrics.flush(&mut self.counts);
        let expiry = self.session_expiry_s;
        self.broker.detach(self.attached, will, expiry);
    }
}

/// The size of the boxed connection state every client holds while
/// connected, for a test where the stream type is known (transport).
#[cfg(test)]
pub(crate) const fn size_of_connection<S>() -> usize {
    std::mem::size_of::<Connection<S>>()
}

#[cfg(test)]
pub(crate) use parked::size_of_slot;

/// How [`Connection::serve_packets`] stops when the connection does not
/// end: it has been quiet, and may be parked.
struct Quiet;

/// What woke an idle connection ([`Connection::poll_event`]).
enum Event {
    /// Bytes read from the client.
    Read(usize),
    /// Deliveries may be waiting (`want_drain` is set).
    Woken,
    /// Quiet: the connection may be parked.
    Park,
    /// The connection ends.
    Close(Close),
}

/// The topic limit a topic name or filter breaks, if any: its length in
/// bytes (`limits.max_topic_length`) or its levels (`max_topic_levels`).
fn topic_over_limit(limits: &crate::config::Limits, topic: &str) -> Option<Limit> {
    if topic.len() > limits.max_topic_length {
        Some(Limit::TopicLength)
    } else if topic.bytes().filter(|&b| b == b'/').count() + 1 > limits.max_topic_levels {
        Some(Limit::TopicLevels)
    } else {
        None
    }
}
