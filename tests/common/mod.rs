//! Helpers shared by the integration tests: an in-process gateway, rumqttc
//! clients pinned to a chosen core, and a raw socket client for hostile input.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tether::codec::{self, Packet, QoS, SubOptions, Subscribe, Version};
use tether::{Config, Gateway};
use tokio::sync::mpsc;

/// Upper bound for any single wait in the tests.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a rumqttc client waits for its CONNACK (rumqttc's own default
/// is 5 s): a takeover from a node that died or hangs waits for that
/// node's Redis lease, up to `presence.node_lease_secs` plus 5 s.
pub const CONNACK_TIMEOUT: Duration = Duration::from_secs(20);

/// A gateway on a free port with `cores` executors. `$SYS` statistics are
/// off (they are retained messages and would disturb retained counts);
/// tests of `$SYS` turn them on.
pub fn gateway(cores: usize, tweak: impl FnOnce(&mut Config)) -> Gateway {
    let mut cfg = Config::default();
    cfg.sys.interval_secs = 0;
    cfg.node.cores = cores;
    cfg.listeners.tcp = "127.0.0.1:0".parse().unwrap();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.websocket.listen = "127.0.0.1:0".parse().unwrap();
    tweak(&mut cfg);
    Gateway::start(cfg).expect("gateway starts")
}

/// Events of one rumqttc v3.1.1 client, pumped by a background task.
pub struct V4 {
    pub client: rumqttc::AsyncClient,
    pub events: mpsc::UnboundedReceiver<Result<rumqttc::Event, String>>,
    pub session_present: bool,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for V4 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The next packet a [`pump`]ed client received, within [`WAIT`]; panics
/// on the connection's end.
pub async fn next_packet(
    events: &mut mpsc::UnboundedReceiver<Result<rumqttc::Event, String>>,
) -> rumqttc::Packet {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("in time")
        {
            Some(Ok(rumqttc::Event::Incoming(p))) => return p,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// A rumqttc v3.1.1 client whose event loop runs in a task and feeds a
/// channel: every event, then the error that ended it.
pub fn pump(
    opts: rumqttc::MqttOptions,
) -> (
    rumqttc::AsyncClient,
    mpsc::UnboundedReceiver<Result<rumqttc::Event, String>>,
    tokio::task::JoinHandle<()>,
) {
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 1000);
    el.network_options
        .set_connection_timeout(CONNACK_TIMEOUT.as_secs());
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let ev = el.poll().await;
            let stop = ev.is_err();
            if tx.send(ev.map_err(|e| e.to_string())).is_err() || stop {
                return;
            }
        }
    });
    (client, rx, task)
}

pub fn v4_options(gw: &Gateway, id: &str, clean: bool) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", gw.tcp_addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(clean);
    o
}

/// Connects a v3.1.1 client; with `core`, reconnects until the kernel's
/// SO_REUSEPORT hash lands it on that core.
pub async fn v4(gw: &Gateway, opts: rumqttc::MqttOptions, core: Option<usize>) -> V4 {
    let id = opts.client_id();
    for _ in 0..64 {
        let (client, mut rx, task) = pump(opts.clone());
        let session_present = loop {
            match tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("CONNACK in time")
            {
                Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)))) => {
                    assert_eq!(a.code, rumqttc::ConnectReturnCode::Success);
                    break a.session_present;
                }
                Some(Ok(_)) => {}
                other => panic!("connect failed: {other:?}"),
            }
        };
        let c = V4 {
            client,
            events: rx,
            session_present,
            task,
        };
        match core {
            Some(want) if gw.locate(&id) != Some(want) => {
                c.task.abort();
                continue;
            }
            _ => return c,
        }
    }
    panic!("could not land {id} on core {core:?}");
}

impl V4 {
    /// Next incoming PUBLISH (other events skipped).
    pub async fn publish(&mut self) -> rumqttc::Publish {
        loop {
            let ev = tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("PUBLISH in time");
            match ev {
                Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => return p,
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            }
        }
    }

    /// Waits for an incoming packet matching `pred`.
    pub async fn incoming(&mut self, pred: impl Fn(&rumqttc::Packet) -> bool) -> rumqttc::Packet {
        loop {
            let ev = tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("packet in time");
            match ev {
                Some(Ok(rumqttc::Event::Incoming(p))) if pred(&p) => return p,
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) {
        self.client.subscribe(filter, qos).await.unwrap();
        self.incoming(|p| matches!(p, rumqttc::Packet::SubAck(_)))
            .await;
    }
}

/// Events of one rumqttc MQTT 5 client.
pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    pub events: mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, String>>,
    pub connack: rumqttc::v5::mqttbytes::v5::ConnAck,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for V5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn v5_options(gw: &Gateway, id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", gw.tcp_addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

pub async fn v5(gw: &Gateway, opts: rumqttc::v5::MqttOptions, core: Option<usize>) -> V5 {
    use rumqttc::v5::{mqttbytes::v5::Packet, Event};
    let id = opts.client_id();
    for _ in 0..64 {
        let (client, mut el) = rumqttc::v5::AsyncClient::new(opts.clone(), 1000);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let ev = el.poll().await;
                let stop = ev.is_err();
                if tx.send(ev.map_err(|e| format!("{e:?}"))).is_err() || stop {
                    return;
                }
            }
        });
        let connack = loop {
            match tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("CONNACK in time")
            {
                Some(Ok(Event::Incoming(Packet::ConnAck(a)))) => break a,
                Some(Ok(_)) => {}
                other => panic!("connect failed: {other:?}"),
            }
        };
        let c = V5 {
            client,
            events: rx,
            connack,
            task,
        };
        match core {
            Some(want) if gw.locate(&id) != Some(want) => {
                c.task.abort();
                continue;
            }
            _ => return c,
        }
    }
    panic!("could not land {id} on core {core:?}");
}

impl V5 {
    pub async fn incoming(
        &mut self,
        pred: impl Fn(&rumqttc::v5::mqttbytes::v5::Packet) -> bool,
    ) -> rumqttc::v5::mqttbytes::v5::Packet {
        loop {
            let ev = tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("packet in time");
            match ev {
                Some(Ok(rumqttc::v5::Event::Incoming(p))) if pred(&p) => return p,
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            }
        }
    }

    pub async fn publish(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        use rumqttc::v5::mqttbytes::v5::Packet;
        match self.incoming(|p| matches!(p, Packet::Publish(_))).await {
            Packet::Publish(p) => p,
            _ => unreachable!(),
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::v5::mqttbytes::QoS) {
        use rumqttc::v5::mqttbytes::v5::Packet;
        self.client.subscribe(filter, qos).await.unwrap();
        self.incoming(|p| matches!(p, Packet::SubAck(_))).await;
    }
}

/// A CONNECT with Clean Start, keep-alive 60 s, no will and no
/// credentials; tests adjust the fields they care about.
pub fn connect_packet(id: &str, version: Version) -> codec::Connect {
    codec::Connect {
        version,
        clean_start: true,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }
}

/// A QoS 1 PUBLISH, for [`Raw`] clients.
pub fn publish_packet(pkid: u16, topic: &str, payload: &'static [u8]) -> Packet {
    Packet::Publish(codec::Publish {
        dup: false,
        qos: codec::QoS::AtLeastOnce,
        retain: false,
        topic: topic.into(),
        pkid,
        properties: Default::default(),
        payload: bytes::Bytes::from_static(payload),
    })
}

/// A bare TCP client speaking through Tether's own codec, for byte-exact and
/// hostile input. Every read is bounded by [`WAIT`].
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub version: Version,
}

impl Raw {
    pub fn open(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("tcp connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
            version: Version::V5,
        }
    }

    /// Opens a connection and completes CONNECT for `version`.
    pub fn connected(addr: SocketAddr, id: &str, version: Version) -> Raw {
        let mut r = Raw::open(addr);
        r.version = version;
        r.send(&Packet::Connect(Box::new(connect_packet(id, version))));
        match r.recv() {
            Some(Packet::ConnAck(a)) => assert_eq!(a.code, 0, "CONNACK for {id}"),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        r
    }

    pub fn send(&mut self, p: &Packet) {
        let mut out = Vec::new();
        codec::encode(p, self.version, &mut out);
        self.send_bytes(&out);
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        // The server may already have closed on an earlier packet.
        let _ = self.stream.write_all(bytes);
    }

    /// Next packet from the server, or `None` at EOF / reset.
    pub fn recv(&mut self) -> Option<Packet> {
        loop {
            match codec::decode(&self.buf, Some(self.version), usize::MAX) {
                Ok(Some((p, n))) => {
                    self.buf.drain(..n);
                    return Some(p);
                }
                Ok(None) => {}
                Err(e) => panic!("server sent an undecodable packet: {e}"),
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    panic!("no packet from the server within {WAIT:?}")
                }
                Err(_) => return None,
            }
        }
    }

    /// Reads until the server closes; returns what it sent before.
    pub fn until_closed(&mut self) -> Vec<Packet> {
        let mut got = Vec::new();
        while let Some(p) = self.recv() {
            got.push(p);
        }
        got
    }
}

/// Waits (polling, bounded by [`WAIT`]) until `cond` holds: for state the
/// gateway exposes only through counters, such as "the connection is gone".
pub async fn until(what: &str, cond: impl FnMut() -> bool) {
    until_within(what, WAIT, cond).await;
}

/// [`until`], bounded by `wait`.
pub async fn until_within(what: &str, wait: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + wait;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Blocking twin of [`until`] for tests without a runtime.
pub fn until_blocking(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SUBSCRIBE one filter; the SUBACK's code.
pub fn suback(r: &mut Raw, pkid: u16, filter: &str) -> u8 {
    r.send(&Packet::Subscribe(Subscribe {
        pkid,
        filters: vec![(filter.into(), SubOptions::qos(QoS::AtLeastOnce))],
        properties: Default::default(),
    }));
    match r.recv() {
        Some(Packet::SubAck(a)) => {
            assert_eq!(a.pkid, pkid);
            a.codes[0]
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// QoS 1 PUBLISH; the PUBACK's reason code (MQTT 5). PUBLISHes that
/// arrive first (the client's own, delivered before its ack) are kept in
/// `early`.
pub fn puback_seeing(r: &mut Raw, pkid: u16, topic: &str, early: &mut Vec<codec::Publish>) -> u8 {
    r.send(&publish_packet(pkid, topic, b"x"));
    loop {
        match r.recv() {
            Some(Packet::PubAck(a)) => return a.code,
            Some(Packet::Publish(p)) => early.push(p),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

/// [`puback_seeing`] where no PUBLISH may come first.
pub fn puback(r: &mut Raw, pkid: u16, topic: &str) -> u8 {
    let mut early = Vec::new();
    let code = puback_seeing(r, pkid, topic, &mut early);
    assert!(early.is_empty(), "unexpected {early:?}");
    code
}

/// The next PUBLISH: one seen early, or the next from the server.
pub fn next_publish(r: &mut Raw, early: &mut Vec<codec::Publish>) -> codec::Publish {
    if !early.is_empty() {
        return early.remove(0);
    }
    match r.recv() {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

pub mod cluster;
pub mod curl;
pub mod kafka;
pub mod pki;
pub mod relay;
pub mod web;
