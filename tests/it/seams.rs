//! The non-blocking seams, through real sockets: an authenticator, an
//! authorizer and a session store that answer later from threads of their
//! own, and an outbound bridge whose acknowledgements release publishers'
//! PUBACKs. Each test holds an answer back and shows that the waiting
//! client reads nothing meanwhile while the core keeps serving others, then
//! releases it and checks what follows and in which order.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use crate::common::*;
use rumqttc::QoS as RQoS;
use tether::auth::{
    AclRequest, Authenticator, Authorizer, Credentials, Identity, OwnedAclRequest, Permit, Verdict,
};
use tether::bridge::outbound::{Outbound, OutboundError, OutboundPolicy, Outgoing, Produced};
use tether::bridge::ReplyTo;
use tether::codec::{self, reason, Packet, QoS, SubOptions, Version};
use tether::id::Location;
use tether::store::{Claim, ClaimResult, MemoryStore, SessionStore};
use tether::Gateway;

/// Hands every slow-path call to the test.
struct Asked<T>(Mutex<Sender<T>>);

impl<T> Asked<T> {
    fn new() -> (Arc<Asked<T>>, Receiver<T>) {
        let (tx, rx) = mpsc::channel();
        (Arc::new(Asked(Mutex::new(tx))), rx)
    }

    fn put(&self, t: T) {
        let _ = self.0.lock().unwrap().send(t);
    }
}

/// Users named `slow*` are decided by the test, later.
impl Authenticator for Asked<(Identity, ReplyTo<Verdict>)> {
    fn authenticate(&self, who: &Credentials<'_>) -> Verdict {
        match who.username {
            Some(u) if u.starts_with("slow") => Verdict::Ask,
            _ => Verdict::Allow,
        }
    }

    fn ask(&self, who: Identity, reply: ReplyTo<Verdict>) {
        self.put((who, reply));
    }
}

/// Topics and filters under `ask/` are decided by the test, later.
impl Authorizer for Asked<(OwnedAclRequest, ReplyTo<Permit>)> {
    fn check(&self, req: &AclRequest<'_>) -> Permit {
        if req.topic.starts_with("ask/") {
            Permit::Ask
        } else {
            Permit::Allow
        }
    }

    fn ask(&self, req: OwnedAclRequest, reply: ReplyTo<Permit>) {
        self.put((req, reply));
    }
}

/// `out/...` leaves through the bridge and waits for the test's answer.
impl Outbound for Asked<(Outgoing, ReplyTo<Produced>)> {
    fn policy(&self, topic: &str) -> OutboundPolicy {
        if topic.starts_with("out/") {
            OutboundPolicy::Confirm
        } else {
            OutboundPolicy::Skip
        }
    }

    fn send(&self, out: Outgoing, ack: ReplyTo<Produced>) {
        self.put((out, ack));
    }
}

fn next<T>(rx: &Receiver<T>) -> T {
    rx.recv_timeout(WAIT).expect("the seam was asked in time")
}

fn config(cores: usize, tweak: impl FnOnce(&mut tether::Config)) -> tether::Config {
    let mut cfg = tether::Config::default();
    cfg.sys.interval_secs = 0;
    cfg.node.cores = cores;
    cfg.listeners.tcp = "127.0.0.1:0".parse().unwrap();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.websocket.listen = "127.0.0.1:0".parse().unwrap();
    tweak(&mut cfg);
    cfg
}

fn connect_as(gw: &Gateway, id: &str, user: &str, v: Version) -> Raw {
    let mut c = Raw::open(gw.tcp_addr);
    c.version = v;
    c.send(&Packet::Connect(Box::new(codec::Connect {
        username: Some(user.into()),
        ..connect_packet(id, v)
    })));
    c
}

fn subscribe_packet(pkid: u16, filter: &str) -> Packet {
    Packet::Subscribe(codec::Subscribe {
        pkid,
        filters: vec![(filter.into(), SubOptions::qos(QoS::AtLeastOnce))],
        properties: Default::default(),
    })
}

/// A publish/subscribe round trip between two fresh clients: the core is
/// serving.
fn round_trip(gw: &Gateway, tag: &str) {
    let mut sub = Raw::connected(gw.tcp_addr, &format!("{tag}-sub"), Version::V5);
    sub.send(&subscribe_packet(1, &format!("rt/{tag}")));
    assert!(matches!(sub.recv(), Some(Packet::SubAck(_))));
    let mut publ = Raw::connected(gw.tcp_addr, &format!("{tag}-pub"), Version::V5);
    publ.send(&publish_packet(1, &format!("rt/{tag}"), b"ping"));
    assert!(matches!(publ.recv(), Some(Packet::PubAck(_))));
    match sub.recv() {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"ping"),
        other => panic!("expected the round trip's PUBLISH, got {other:?}"),
    }
}

#[test]
fn a_deferred_verdict_parks_only_its_connection_and_its_pipelined_packets_follow() {
    let (auth, asks) = Asked::new();
    let gw = Gateway::builder(config(1, |_| {}))
        .authenticator(auth)
        .start()
        .unwrap();
    let mut slow = connect_as(&gw, "slow-1", "slow", Version::V5);
    // Pipelined behind the CONNECT: processed only once it is accepted.
    slow.send(&subscribe_packet(7, "after/connack"));
    let (who, reply) = next(&asks);
    assert_eq!(
        (who.client_id.as_str(), who.username.as_deref()),
        ("slow-1", Some("slow"))
    );
    // Its core (the only one) serves others while the verdict is out.
    round_trip(&gw, "meanwhile");
    assert_eq!(gw.stats().auth_deferred, 1);
    reply.send(Verdict::Allow);
    match slow.recv() {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, reason::SUCCESS),
        other => panic!("expected CONNACK first, got {other:?}"),
    }
    match slow.recv() {
        Some(Packet::SubAck(a)) => assert_eq!((a.pkid, a.codes[0]), (7, 1)),
        other => panic!("expected the pipelined SUBSCRIBE's SUBACK, got {other:?}"),
    }

    // A later refusal reaches both protocol versions with their codes.
    for (v, code) in [
        (Version::V5, reason::BAD_USERNAME_OR_PASSWORD),
        (Version::V311, 4),
    ] {
        let mut c = connect_as(&gw, "slow-2", "slow", v);
        let (_, reply) = next(&asks);
        reply.send(Verdict::Deny(reason::BAD_USERNAME_OR_PASSWORD));
        match c.until_closed().as_slice() {
            [Packet::ConnAck(a)] => assert_eq!(a.code, code, "{v:?}"),
            other => panic!("expected a lone CONNACK refusal, got {other:?}"),
        }
    }

    // A bridge thread that drops the request: the client is refused with
    // 0x88 (server unavailable) rather than left hanging.
    let mut c = connect_as(&gw, "slow-3", "slow", Version::V5);
    drop(next(&asks));
    match c.until_closed().as_slice() {
        [Packet::ConnAck(a)] => assert_eq!(a.code, reason::SERVER_UNAVAILABLE),
        other => panic!("expected CONNACK 0x88, got {other:?}"),
    }
}

#[test]
fn pending_verdicts_are_bounded_per_core_and_the_excess_is_told_server_busy() {
    let (auth, asks) = Asked::new();
    let cfg = config(1, |c| c.runtime.max_pending_verdicts = 2);
    let gw = Gateway::builder(cfg).authenticator(auth).start().unwrap();
    let mut waiting: Vec<_> = (0..2)
        .map(|i| connect_as(&gw, &format!("slow-{i}"), "slow", Version::V5))
        .collect();
    let replies: Vec<_> = (0..2).map(|_| next(&asks).1).collect();
    let mut third = connect_as(&gw, "slow-x", "slow", Version::V5);
    match third.until_closed().as_slice() {
        [Packet::ConnAck(a)] => assert_eq!(a.code, reason::SERVER_BUSY),
        other => panic!("expected CONNACK 0x89, got {other:?}"),
    }
    assert_eq!(gw.stats().pending_refused, 1);
    for r in replies {
        r.send(Verdict::Allow);
    }
    for c in &mut waiting {
        assert!(matches!(c.recv(), Some(Packet::ConnAck(a)) if a.code == 0));
    }
    // The slots are free again.
    let mut later = connect_as(&gw, "slow-later", "slow", Version::V5);
    next(&asks).1.send(Verdict::Allow);
    assert!(matches!(later.recv(), Some(Packet::ConnAck(a)) if a.code == 0));
}

#[test]
fn a_deferred_permit_holds_the_clients_later_packets_and_keeps_their_order() {
    let (authz, asks) = Asked::new();
    let gw = Gateway::builder(config(2, |_| {}))
        .authorizer(authz)
        .start()
        .unwrap();
    let mut sub = Raw::connected(gw.tcp_addr, "watcher", Version::V5);
    // Not under ask/: these filters are authorized at once.
    for (pkid, filter) in [(1, "+/first"), (2, "+/second")] {
        sub.send(&subscribe_packet(pkid, filter));
        assert!(matches!(sub.recv(), Some(Packet::SubAck(_))));
    }

    let mut publ = Raw::connected(gw.tcp_addr, "publisher", Version::V5);
    publ.send(&publish_packet(1, "ask/first", b"1"));
    publ.send(&publish_packet(2, "plain/second", b"2"));
    let (req, reply) = next(&asks);
    assert_eq!(req.topic, "ask/first");
    assert_eq!(req.client_id.as_deref(), Some("publisher"));
    round_trip(&gw, "meanwhile");
    reply.send(Permit::Allow);
    for want in [1, 2] {
        match publ.recv() {
            Some(Packet::PubAck(a)) => assert_eq!((a.pkid, a.code), (want, 0)),
            other => panic!("expected PUBACK {want}, got {other:?}"),
        }
    }
    for want in [&b"1"[..], b"2"] {
        match sub.recv() {
            Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], want),
            other => panic!("expected the publishes in order, got {other:?}"),
        }
    }

    // Denied later: MQTT 5 gets 0x87 and the message goes nowhere.
    publ.send(&publish_packet(3, "ask/denied", b"no"));
    next(&asks).1.send(Permit::Deny);
    match publ.recv() {
        Some(Packet::PubAck(a)) => assert_eq!((a.pkid, a.code), (3, reason::NOT_AUTHORIZED)),
        other => panic!("expected PUBACK 0x87, got {other:?}"),
    }
    assert_eq!(gw.stats().denied_publishes, 1);

    // A SUBSCRIBE whose second filter is asked: one SUBACK, once answered.
    let mut s = Raw::connected(gw.tcp_addr, "subscriber", Version::V5);
    s.send(&Packet::Subscribe(codec::Subscribe {
        pkid: 9,
        filters: vec![
            ("plain/#".into(), SubOptions::qos(QoS::AtLeastOnce)),
            ("ask/secret".into(), SubOptions::qos(QoS::AtLeastOnce)),
            ("ask/open".into(), SubOptions::qos(QoS::AtMostOnce)),
        ],
        properties: Default::default(),
    }));
    let (req, reply) = next(&asks);
    assert_eq!(req.topic, "ask/secret");
    reply.send(Permit::Deny);
    let (req, reply) = next(&asks);
    assert_eq!(req.topic, "ask/open");
    reply.send(Permit::Allow);
    match s.recv() {
        Some(Packet::SubAck(a)) => {
            assert_eq!(a.pkid, 9);
            assert_eq!(a.codes, vec![1, reason::NOT_AUTHORIZED, 0]);
        }
        other => panic!("expected one SUBACK, got {other:?}"),
    }
    assert_eq!(gw.stats().acl_deferred, 4);
}

/// An API publish with an `Idempotency-Key`, held by the authorizer
/// (`ask/...`) until the test answers.
fn held_publish(addr: std::net::SocketAddr) -> crate::common::web::Reply {
    crate::common::web::http(
        addr,
        "POST",
        "/v1/publish",
        &["Idempotency-Key: held-1"],
        r#"{"topic":"ask/held","payload":"x","qos":1}"#,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_while_its_first_request_waits_is_told_in_flight_then_gets_the_first_answer() {
    let (authz, asks) = Asked::new();
    let gw = Gateway::builder(config(1, |_| {}))
        .authorizer(authz)
        .start()
        .unwrap();
    let addr = gw.http_addr.unwrap();
    let first = std::thread::spawn(move || held_publish(addr));
    // The first request holds its key and waits for its permit.
    let (_, reply) = tokio::task::block_in_place(|| next(&asks));
    let retry = tokio::task::block_in_place(|| held_publish(addr));
    assert_eq!(
        (retry.status, retry.json()["error"]["code"].as_str()),
        (409, Some("idempotency_key_in_flight")),
        "{}",
        retry.body
    );
    reply.send(Permit::Allow);
    let first = tokio::task::block_in_place(|| first.join().unwrap());
    assert_eq!(first.status, 200, "{}", first.body);
    let again = tokio::task::block_in_place(|| held_publish(addr));
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["id"], first.json()["id"], "the first answer");
    assert!(
        again
            .head
            .to_ascii_lowercase()
            .contains("idempotent-replayed: true"),
        "{}",
        again.head
    );
    assert!(
        asks.try_recv().is_err(),
        "the retries never reached the authorizer: nothing published twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_publish_waits_for_a_deferred_permit_too() {
    let (authz, asks) = Asked::new();
    let gw = Gateway::builder(config(1, |_| {}))
        .authorizer(authz)
        .start()
        .unwrap();
    let mut s = v4(&gw, v4_options(&gw, "api-watch", true), None).await;
    // Not under ask/: authorized at once.
    s.subscribe("+/api", RQoS::AtLeastOnce).await;
    let bridge = gw.bridge();
    let req = |payload: &'static str| tether::bridge::PublishRequest {
        topic: "ask/api".into(),
        payload: bytes::Bytes::from_static(payload.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: None,
        receipts: false,
        receipt_id: None,
        receipts_to: None,
    };
    let allowed = bridge.publish(req("allowed")).unwrap();
    let (permit_req, reply) = tokio::task::block_in_place(|| next(&asks));
    assert_eq!(permit_req.source, tether::auth::Source::Api);
    reply.send(Permit::Allow);
    assert!(allowed.await.unwrap().is_ok());
    assert_eq!(&s.publish().await.payload[..], b"allowed");
    let denied = bridge.publish(req("denied")).unwrap();
    tokio::task::block_in_place(|| next(&asks))
        .1
        .send(Permit::Deny);
    assert_eq!(denied.await.unwrap(), Err(tether::bridge::Refusal::Denied));
}

#[test]
fn outbound_acknowledgements_release_pubacks_in_publish_order() {
    let (out, sent) = Asked::new();
    let gw = Gateway::builder(config(1, |_| {}))
        .outbound(out)
        .start()
        .unwrap();
    let mut publ = Raw::connected(gw.tcp_addr, "producer", Version::V5);
    publ.send(&publish_packet(1, "out/a", b"a"));
    publ.send(&publish_packet(2, "out/b", b"b"));
    publ.send(&publish_packet(3, "local/c", b"c"));
    let (first, ack_a) = next(&sent);
    let (second, ack_b) = next(&sent);
    assert_eq!((&*first.msg.topic, &*second.msg.topic), ("out/a", "out/b"));
    assert_eq!(first.client_id.as_deref(), Some("producer"));
    // The later message is confirmed first: its PUBACK still waits.
    ack_b.send(Produced::Done);
    round_trip(&gw, "meanwhile");
    ack_a.send(Produced::Done);
    for want in [1, 2, 3] {
        match publ.recv() {
            Some(Packet::PubAck(a)) => assert_eq!((a.pkid, a.code), (want, 0)),
            other => panic!("expected PUBACK {want} in order, got {other:?}"),
        }
    }

    // A failed hand-off: MQTT 5 is told 0x80 ...
    publ.send(&publish_packet(4, "out/d", b"d"));
    next(&sent)
        .1
        .send(Produced::Failed(OutboundError::TimedOut));
    match publ.recv() {
        Some(Packet::PubAck(a)) => assert_eq!((a.pkid, a.code), (4, reason::UNSPECIFIED_ERROR)),
        other => panic!("expected PUBACK 0x80, got {other:?}"),
    }
    // ... 3.1.1, with no negative ack, is disconnected without a PUBACK.
    let mut old = Raw::connected(gw.tcp_addr, "old-producer", Version::V311);
    old.send(&publish_packet(1, "out/e", b"e"));
    drop(next(&sent));
    assert!(old.until_closed().is_empty(), "no PUBACK before the close");
    assert_eq!(gw.stats().outbound_failed, 2);
    assert_eq!(gw.stats().outbound_sent, 4);
}

#[test]
fn a_full_outbound_bridge_stops_reading_publishers_until_it_drains() {
    let (out, sent) = Asked::new();
    let cfg = config(1, |c| c.runtime.max_outbound_inflight = 2);
    let gw = Gateway::builder(cfg).outbound(out).start().unwrap();
    let mut publ = Raw::connected(gw.tcp_addr, "producer", Version::V5);
    for (pkid, topic) in [(1, "out/1"), (2, "out/2"), (3, "out/3"), (4, "local/4")] {
        publ.send(&publish_packet(pkid, topic, b"x"));
    }
    let acks: Vec<_> = (0..2).map(|_| next(&sent).1).collect();
    // At the bound: the third is not taken yet.
    assert!(
        sent.recv_timeout(std::time::Duration::from_millis(200))
            .is_err(),
        "a third message while two are unacknowledged"
    );
    for a in acks {
        a.send(Produced::Done);
    }
    next(&sent).1.send(Produced::Done);
    for want in 1..=4 {
        match publ.recv() {
            Some(Packet::PubAck(a)) => assert_eq!(a.pkid, want),
            other => panic!("expected PUBACK {want}, got {other:?}"),
        }
    }
}

/// A directory that answers every claim later, from a thread of its own,
/// as a store behind a network would.
struct Remote {
    directory: Arc<MemoryStore>,
    queue: Mutex<Sender<(Claim, ReplyTo<ClaimResult>)>>,
}

impl Remote {
    fn new() -> Arc<Remote> {
        let directory = Arc::new(MemoryStore::default());
        let (tx, rx) = mpsc::channel::<(Claim, ReplyTo<ClaimResult>)>();
        let d = directory.clone();
        std::thread::spawn(move || {
            for (claim, reply) in rx {
                reply.send(d.claim(&claim).expect("memory answers"));
            }
        });
        Arc::new(Remote {
            directory,
            queue: Mutex::new(tx),
        })
    }
}

impl SessionStore for Remote {
    fn claim(&self, _: &Claim) -> Option<ClaimResult> {
        None
    }

    fn claim_later(&self, claim: Claim, reply: ReplyTo<ClaimResult>) {
        let _ = self.queue.lock().unwrap().send((claim, reply));
    }

    fn release(&self, client_id: &str, loc: Location) {
        self.directory.release(client_id, loc)
    }

    fn locate(&self, client_id: &str) -> Option<Location> {
        self.directory.locate(client_id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_queue_and_move_between_cores_with_a_store_that_answers_later() {
    let store = Remote::new();
    let gw = Gateway::builder(config(2, |_| {}))
        .store(store.clone())
        .start()
        .unwrap();
    let mut s = v4(&gw, v4_options(&gw, "roamer", false), Some(0)).await;
    s.subscribe("inbox/roamer", RQoS::AtLeastOnce).await;
    drop(s);
    until("the session to go offline", || gw.stats().connections == 0).await;
    let publ = v4(&gw, v4_options(&gw, "sender", true), None).await;
    publ.client
        .publish("inbox/roamer", RQoS::AtLeastOnce, false, "while away")
        .await
        .unwrap();
    until("the message to be routed", || gw.stats().publishes_in == 1).await;
    // Back on the other core: the claim is answered later, the session
    // comes over with its queued message.
    // Manual acks: a landing attempt on the wrong core must not consume
    // the queue (what it received unacknowledged is resent).
    let mut o = v4_options(&gw, "roamer", false);
    o.set_manual_acks(true);
    let mut back = v4(&gw, o, Some(1)).await;
    assert!(back.session_present);
    let p = back.publish().await;
    assert_eq!(&p.payload[..], b"while away");
    back.client.ack(&p).await.unwrap();
    // A takeover through the deferred store closes the other connection.
    let again = v4(&gw, v4_options(&gw, "roamer", false), Some(0)).await;
    assert!(again.session_present);
    loop {
        let ev = tokio::time::timeout(WAIT, back.events.recv()).await;
        match ev.expect("the old connection closes in time") {
            Some(Err(_)) | None => break,
            Some(Ok(_)) => {}
        }
    }
    assert_eq!(gw.locate("roamer"), Some(0));
}
