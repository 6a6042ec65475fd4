//! A broker on 127.0.0.1:0 and real clients, so tests read like sentences:
//! `let broker = TestBroker::start().await; let sub = broker.v5("sub").await;`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use moat::Server;
use moat::broker::Broker;
use moat::config::{Config, ListenerConfig};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet as V5Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test waits to be sure something does not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// Waits, bounded by `bound` (real time, `std::time::Instant`), until
/// `done` holds.
pub async fn within(bound: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < bound, "not within {bound:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running broker.
pub struct TestBroker {
    pub addr: SocketAddr,
    pub broker: Arc<Broker>,
    /// Hot reload of `broker` (the server owns it).
    pub reloader: Arc<moat::reload::Reloader>,
    /// The admin listener's address, when the config asked for one.
    pub admin: Option<SocketAddr>,
    /// TLS acceptors of the `tls`/`wss` listeners, by listener name.
    pub tls: Vec<(String, Arc<moat::transport::TlsAcceptor>)>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestBroker {
    /// A broker with the default configuration on an ephemeral port.
    pub async fn start() -> TestBroker {
        TestBroker::with(|_| {}).await
    }

    /// A broker whose configuration `tweak` adjusts first.
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> TestBroker {
        TestBroker::with_store(Arc::new(moat::store::MemoryStore::default()), tweak).await
    }

    /// A broker that recovers from and writes to `store`.
    pub async fn with_store(store: Arc<dyn moat::store::Store>, tweak: impl FnOnce(&mut Config)) -> TestBroker {
        let mut config = Config {
            listeners: vec![ListenerConfig::tcp("test", SocketAddr::from(([127, 0, 0, 1], 0)))],
            ..Config::default()
        };
        // One compile cache for every test broker: the same fixtures and
        // shipped plugins are loaded by dozens of brokers, and compiling them
        // with the debug build's unoptimised cranelift is most of the suite's
        // time. Tests about the cache set their own directory.
        config.plugins.cache_dir = Some(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache"));
        // Quiet connections park after a second (the default is 5): every
        // test with a pause then also runs against parked connections,
        // whose wake-ups (bytes, deliveries, keep alive, kicks, shutdown)
        // must all arrive as a running task's would.
        config.limits.park_after_s = 1;
        tweak(&mut config);
        let server = Server::bind_with_store(config, store).await.expect("bind test broker");
        let addr = server.local_addrs()[0].1;
        let admin = server.admin_addr();
        let broker = server.broker().clone();
        let reloader = server.reloader().clone();
        let tls = server.tls_acceptors();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        TestBroker { addr, broker, reloader, admin, tls, stop: Some(stop), task: Some(task) }
    }

    /// Stops the broker and waits for it to finish draining.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT * 2, task).await.expect("broker stops in time").expect("broker task");
        }
    }

    /// A connected MQTT 3.1.1 client (clean session).
    pub async fn v4(&self, id: &str) -> V4 {
        self.v4_with(id, |_| {}).await
    }

    /// A connected MQTT 3.1.1 client with adjusted options.
    pub async fn v4_with(&self, id: &str, tweak: impl FnOnce(&mut rumqttc::MqttOptions)) -> V4 {
        let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", self.addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        tweak(&mut opts);
        let client = V4::connect(opts).await;
        assert_eq!(client.connack.code, rumqttc::ConnectReturnCode::Success, "v4 connect of {id}");
        client
    }

    /// A connected MQTT 5 client (clean start, no session expiry).
    pub async fn v5(&self, id: &str) -> V5 {
        self.v5_with(id, |_| {}).await
    }

    /// A connected MQTT 5 client with adjusted options.
    pub async fn v5_with(&self, id: &str, tweak: impl FnOnce(&mut rumqttc::v5::MqttOptions)) -> V5 {
        let mut opts = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", self.addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        tweak(&mut opts);
        let client = V5::connect(opts).await;
        assert_eq!(client.connack.code, ConnectReturnCode::Success, "v5 connect of {id}");
        client
    }

    /// A raw TCP connection for hand-made bytes.
    pub async fn raw(&self) -> Raw {
        Raw(TcpStream::connect(self.addr).await.expect("connect raw"))
    }

    /// A raw MQTT 3.1.1 subscriber `id` to `filter` at QoS 1, so the test
    /// decides when it reads and acknowledges; `receive_buffer` makes its
    /// socket's buffer small, so that the broker's writes to a subscriber
    /// that stops reading soon block.
    pub async fn raw_subscriber(&self, id: &str, filter: &str, receive_buffer: Option<u32>) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(size) = receive_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let mut raw = Raw(socket.connect(self.addr).await.expect("connect"));
        raw.send(&connect_v4(id)).await;
        assert_eq!(raw.read_packet().await.0, 0x20, "CONNACK");
        raw.send(&subscribe_v4(1, &[filter])).await;
        assert_eq!(raw.read_packet().await.0, 0x90, "SUBACK");
        raw
    }

    /// A raw MQTT 3.1.1 client `id`, connected (clean session, CONNACK
    /// success read).
    pub async fn raw_v4(&self, id: &str) -> Raw {
        let mut raw = self.raw().await;
        raw.send(&connect_v4(id)).await;
        assert_eq!(raw.read_packet().await, (0x20, vec![0, 0]), "CONNACK success");
        raw
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An MQTT 3.1.1 client whose incoming packets arrive on a channel.
pub struct V4 {
    pub client: rumqttc::AsyncClient,
    pub connack: rumqttc::ConnAck,
    rx: mpsc::UnboundedReceiver<rumqttc::Packet>,
    pump: JoinHandle<()>,
}

impl V4 {
    async fn connect(opts: rumqttc::MqttOptions) -> V4 {
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1000);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let pump = tokio::spawn(async move {
            // Stops at the first error: rumqttc would otherwise reconnect.
            while let Ok(event) = eventloop.poll().await {
                if let rumqttc::Event::Incoming(packet) = event
                    && tx.send(packet).is_err()
                {
                    return;
                }
            }
        });
        let connack = loop {
            match tokio::time::timeout(WAIT, rx.recv()).await.expect("CONNACK in time") {
                Some(rumqttc::Packet::ConnAck(ack)) => break ack,
                Some(_) => {}
                None => panic!("connection closed before CONNACK"),
            }
        };
        V4 { client, connack, rx, pump }
    }

    /// The next incoming PUBLISH.
    pub async fn publish(&mut self) -> rumqttc::Publish {
        loop {
            match self.next().await {
                Some(rumqttc::Packet::Publish(p)) => return p,
                Some(_) => {}
                None => panic!("connection closed while waiting for PUBLISH"),
            }
        }
    }

    /// The next incoming packet, or `None` when the connection ended.
    pub async fn next(&mut self) -> Option<rumqttc::Packet> {
        tokio::time::timeout(WAIT, self.rx.recv()).await.expect("packet in time")
    }

    /// Asserts no PUBLISH arrives for a short while.
    pub async fn no_publish(&mut self) {
        let deadline = tokio::time::Instant::now() + QUIET;
        while let Ok(Some(p)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            assert!(!matches!(p, rumqttc::Packet::Publish(_)), "unexpected {p:?}");
        }
    }

    /// Waits for the SUBACK of the last subscribe.
    pub async fn suback(&mut self) -> rumqttc::SubAck {
        loop {
            match self.next().await {
                Some(rumqttc::Packet::SubAck(s)) => return s,
                Some(_) => {}
                None => panic!("connection closed while waiting for SUBACK"),
            }
        }
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) -> rumqttc::SubAck {
        self.client.subscribe(filter, qos).await.expect("subscribe");
        self.suback().await
    }

    /// Drops the connection without DISCONNECT (an abnormal close).
    pub fn kill(self) {
        self.pump.abort();
    }
}

/// An MQTT 5 client whose incoming packets arrive on a channel.
pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    pub connack: rumqttc::v5::mqttbytes::v5::ConnAck,
    rx: mpsc::UnboundedReceiver<V5Packet>,
    pump: JoinHandle<()>,
}

impl V5 {
    /// Connects with `opts` (any broker address) and waits for CONNACK.
    pub async fn connect(opts: rumqttc::v5::MqttOptions) -> V5 {
        V5::connect_within(opts, WAIT).await
    }

    /// [`V5::connect`], waiting up to `wait` for CONNACK (a broker that
    /// must first hear from a cluster may take longer than usual).
    pub async fn connect_within(opts: rumqttc::v5::MqttOptions, wait: Duration) -> V5 {
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 1000);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let pump = tokio::spawn(async move {
            loop {
                let packet = match eventloop.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(packet)) => packet,
                    Ok(_) => continue,
                    // rumqttc reports a server DISCONNECT as an error; turn it
                    // back into the packet so tests can check the reason.
                    Err(rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect {
                        reason_code,
                        ..
                    })) => V5Packet::Disconnect(rumqttc::v5::mqttbytes::v5::Disconnect::new(reason_code)),
                    Err(_) => return,
                };
                // rumqttc reconnects on the next poll; a test client must
                // not, or two clients with one id would take turns forever.
                let last = matches!(packet, V5Packet::Disconnect(_));
                if tx.send(packet).is_err() || last {
                    return;
                }
            }
        });
        let connack = loop {
            match tokio::time::timeout(wait, rx.recv()).await.expect("CONNACK in time") {
                Some(V5Packet::ConnAck(ack)) => break ack,
                Some(_) => {}
                None => panic!("connection closed before CONNACK"),
            }
        };
        V5 { client, connack, rx, pump }
    }

    /// The next incoming PUBLISH.
    pub async fn publish(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        self.publish_within(WAIT).await
    }

    /// [`V5::publish`], waiting up to `wait` for each packet (a broker that
    /// must first hear from a cluster may take longer than usual).
    pub async fn publish_within(&mut self, wait: Duration) -> rumqttc::v5::mqttbytes::v5::Publish {
        loop {
            match self.next_within(wait).await {
                Some(V5Packet::Publish(p)) => return p,
                Some(_) => {}
                None => panic!("connection closed while waiting for PUBLISH"),
            }
        }
    }

    /// The next incoming packet, or `None` when the connection ended.
    pub async fn next(&mut self) -> Option<V5Packet> {
        self.next_within(WAIT).await
    }

    /// The next PUBLISH within `wait`, or `None` if none came (or the
    /// connection ended), for a test that reports what is missing.
    pub async fn try_publish(&mut self, wait: Duration) -> Option<rumqttc::v5::mqttbytes::v5::Publish> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(V5Packet::Publish(p))) => return Some(p),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// [`V5::next`], waiting up to `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<V5Packet> {
        tokio::time::timeout(wait, self.rx.recv()).await.expect("packet in time")
    }

    /// Asserts no PUBLISH arrives for a short while.
    pub async fn no_publish(&mut self) {
        let deadline = tokio::time::Instant::now() + QUIET;
        while let Ok(Some(p)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            assert!(!matches!(p, V5Packet::Publish(_)), "unexpected {p:?}");
        }
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
    ) -> rumqttc::v5::mqttbytes::v5::SubAck {
        self.client.subscribe(filter, qos).await.expect("subscribe");
        self.suback().await
    }

    /// Waits for the next SUBACK.
    pub async fn suback(&mut self) -> rumqttc::v5::mqttbytes::v5::SubAck {
        loop {
            match self.next().await {
                Some(V5Packet::SubAck(s)) => return s,
                Some(_) => {}
                None => panic!("connection closed while waiting for SUBACK"),
            }
        }
    }

    /// Waits for a DISCONNECT from the server and returns its reason.
    pub async fn disconnect_reason(&mut self) -> rumqttc::v5::mqttbytes::v5::DisconnectReasonCode {
        loop {
            match self.next().await {
                Some(V5Packet::Disconnect(d)) => return d.reason_code,
                Some(_) => {}
                None => panic!("connection closed without DISCONNECT"),
            }
        }
    }

    /// Drops the connection without DISCONNECT (an abnormal close).
    pub fn kill(self) {
        self.pump.abort();
    }
}

/// A raw socket for malformed input.
pub struct Raw(pub TcpStream);

impl Raw {
    /// Sends bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).await.expect("raw write");
    }

    /// Reads until the broker closes the connection; returns what it sent.
    /// Panics if the broker keeps the connection open.
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let read = tokio::time::timeout(WAIT, self.0.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "broker kept the connection open; got {out:02x?}");
        out
    }

    /// Reads exactly `n` bytes.
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut out = vec![0; n];
        tokio::time::timeout(WAIT, self.0.read_exact(&mut out)).await.expect("bytes in time").expect("read");
        out
    }

    /// Reads one packet: its first byte and its body.
    pub async fn read_packet(&mut self) -> (u8, Vec<u8>) {
        let first = self.read_exact(1).await[0];
        let (mut len, mut shift) = (0usize, 0);
        for _ in 0..4 {
            let byte = self.read_exact(1).await[0];
            len |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        (first, self.read_exact(len).await)
    }
}

/// An MQTT 5 CONNECT for `client_id` with clean start, an optional user
/// name and password, and the given CONNECT properties (already encoded).
pub fn connect_v5_with(client_id: &str, username: Option<&str>, password: Option<&[u8]>, properties: &[u8]) -> Vec<u8> {
    let flags = 0x02 | if username.is_some() { 0x80 } else { 0 } | if password.is_some() { 0x40 } else { 0 };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, flags, 0, 30];
    body.extend(varint(properties.len()));
    body.extend(properties);
    for field in [Some(client_id.as_bytes()), username.map(str::as_bytes), password].into_iter().flatten() {
        body.extend((field.len() as u16).to_be_bytes());
        body.extend(field);
    }
    frame(0x10, &body)
}

/// Encoded MQTT 5 Authentication Method (0x15) and Authentication Data
/// (0x16) properties.
pub fn auth_properties(method: &str, data: Option<&[u8]>) -> Vec<u8> {
    let mut out = vec![0x15];
    out.extend((method.len() as u16).to_be_bytes());
    out.extend(method.as_bytes());
    if let Some(data) = data {
        out.push(0x16);
        out.extend((data.len() as u16).to_be_bytes());
        out.extend(data);
    }
    out
}

/// A minimal MQTT 3.1.1 CONNECT for `client_id` with clean session.
pub fn connect_v4(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30];
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    frame(0x10, &body)
}

/// A minimal MQTT 5 CONNECT for `client_id` with clean start.
pub fn connect_v5(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30, 0];
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    frame(0x10, &body)
}

/// A 3.1.1 SUBSCRIBE (packet id `id`) of `filters` at QoS 1.
pub fn subscribe_v4(id: u16, filters: &[&str]) -> Vec<u8> {
    subscribe(id, None, filters)
}

/// A v5 SUBSCRIBE (packet id `id`, no properties) of `filters` at QoS 1.
pub fn subscribe_v5(id: u16, filters: &[&str]) -> Vec<u8> {
    subscribe(id, Some(&[]), filters)
}

/// A SUBSCRIBE of `filters` at QoS 1, with v5 `properties` when given.
fn subscribe(id: u16, properties: Option<&[u8]>, filters: &[&str]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    if let Some(properties) = properties {
        body.extend(varint(properties.len()));
        body.extend(properties);
    }
    for filter in filters {
        body.extend(u16::try_from(filter.len()).expect("short filter").to_be_bytes());
        body.extend(filter.as_bytes());
        body.push(1);
    }
    frame(0x82, &body)
}

/// Prefixes a fixed header (first byte + remaining length) to `body`.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len()));
    out.extend(body);
    out
}

/// A variable byte integer (remaining length, property lengths).
pub fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

/// An MQTT 5 will at QoS 1 with a Will Delay Interval.
pub fn delayed_will(topic: &str, payload: &str, delay_s: u32) -> rumqttc::v5::mqttbytes::v5::LastWill {
    let props = rumqttc::v5::mqttbytes::v5::LastWillProperties {
        delay_interval: Some(delay_s),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
    };
    rumqttc::v5::mqttbytes::v5::LastWill::new(
        topic,
        payload.to_owned(),
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        Some(props),
    )
}
