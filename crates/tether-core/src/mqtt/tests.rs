//! Packet semantics without sockets: packets fed through [`receive`] to a
//! simulated node (`shard/sim.rs`: cores built by hand, a manual clock, the
//! mesh pumped by the test), and what the client would be sent read from
//! its outbox. The same rules are tested over sockets with independent
//! clients in `tests/it/`; here each rule is one packet away.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{receive, Flow, Violation};
use crate::bridge::outbound::NoOutbound;
use crate::bridge::outbound::{Outbound, OutboundError, OutboundPolicy, Outgoing, Produced};
use crate::bridge::ReplyTo;
use crate::codec::{
    reason, Ack, Connect, Packet, Properties, Publish, QoS, SubOptions, Subscribe, Version, Will,
};
use crate::config::Config;
use crate::id::ConnKey;
use crate::session::{AckKind, Frame};
use crate::shard::sim::{node, node_with, Node};
use crate::store::MemoryStore;

/// A client of the simulated node: its core and connection.
#[derive(Clone, Copy)]
struct Client {
    core: usize,
    key: ConnKey,
}

/// A CONNECT of `version` for `client_id`, clean, keep-alive 60 s.
fn connect_packet(version: Version, client_id: &str) -> Connect {
    Connect {
        version,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

/// Opens a connection on `core` and sends `c`; returns the client and what
/// the CONNECT's handling said.
fn open(n: &Node, core: usize, c: Connect) -> (Client, Result<Flow, Violation>) {
    let (key, _) = n.cores[core].register("127.0.0.1:1".parse().unwrap(), 0);
    let client = Client { core, key };
    let flow = send(n, client, Packet::Connect(Box::new(c)));
    (client, flow)
}

/// An accepted MQTT 5 client (its CONNACK taken from the outbox).
fn accepted(n: &Node, core: usize, client_id: &str) -> Client {
    let (c, flow) = open(n, core, connect_packet(Version::V5, client_id));
    flow.expect("CONNECT accepted");
    assert_eq!(connack(&sent(n, c)), Some(reason::SUCCESS));
    c
}

fn send(n: &Node, c: Client, p: Packet) -> Result<Flow, Violation> {
    receive(&n.cores[c.core], c.key, p)
}

/// Everything queued for the client since the last call.
fn sent(n: &Node, c: Client) -> Vec<Frame> {
    n.frames(c.core, c.key)
}

fn connack(frames: &[Frame]) -> Option<u8> {
    frames.iter().find_map(|f| match f {
        Frame::Control(p) => match &**p {
            Packet::ConnAck(a) => Some(a.code),
            _ => None,
        },
        _ => None,
    })
}

fn acks(frames: &[Frame]) -> Vec<(AckKind, u16, u8)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Ack { kind, pkid, code } => Some((*kind, *pkid, *code)),
            Frame::Control(p) => match &**p {
                Packet::PubAck(a) => Some((AckKind::PubAck, a.pkid, a.code)),
                Packet::PubRec(a) => Some((AckKind::PubRec, a.pkid, a.code)),
                Packet::PubRel(a) => Some((AckKind::PubRel, a.pkid, a.code)),
                Packet::PubComp(a) => Some((AckKind::PubComp, a.pkid, a.code)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The (topic, payload) of each PUBLISH queued.
fn publishes(frames: &[Frame]) -> Vec<(String, Vec<u8>)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Publish { d, .. } => Some((d.msg.topic.to_string(), d.msg.payload.to_vec())),
            _ => None,
        })
        .collect()
}

fn publish(topic: &str, qos: QoS, pkid: u16, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        pkid,
        properties: Properties::default(),
        payload: Bytes::from_static(payload),
    })
}

fn aliased(topic: &str, alias: u16, payload: &'static [u8]) -> Packet {
    let Packet::Publish(mut p) = publish(topic, QoS::AtMostOnce, 0, payload) else {
        unreachable!()
    };
    p.properties.topic_alias = Some(alias);
    Packet::Publish(p)
}

fn subscribe(n: &Node, c: Client, filter: &str, qos: QoS) {
    let s = Subscribe {
        pkid: 1,
        filters: vec![(filter.into(), SubOptions::qos(qos))],
        properties: Properties::default(),
    };
    send(n, c, Packet::Subscribe(s)).expect("SUBSCRIBE accepted");
    let suback = sent(n, c)
        .iter()
        .any(|f| matches!(f, Frame::Control(p) if matches!(&**p, Packet::SubAck(_))));
    assert!(suback, "SUBACK");
}

fn ack(pkid: u16) -> Ack {
    Ack {
        pkid,
        code: reason::SUCCESS,
        properties: Properties::default(),
    }
}

#[test]
fn a_qos2_publish_sent_again_before_its_pubrel_is_acknowledged_but_delivered_once() {
    let n = node(1, Arc::new(MemoryStore::default()));
    let sub = accepted(&n, 0, "sub");
    subscribe(&n, sub, "t", QoS::AtMostOnce);
    let publisher = accepted(&n, 0, "pub");
    send(&n, publisher, publish("t", QoS::ExactlyOnce, 7, b"once")).unwrap();
    assert_eq!(acks(&sent(&n, publisher)), vec![(AckKind::PubRec, 7, 0)]);
    // The client did not see the PUBREC and sends the message again.
    let Packet::Publish(mut again) = publish("t", QoS::ExactlyOnce, 7, b"once") else {
        unreachable!()
    };
    again.dup = true;
    send(&n, publisher, Packet::Publish(again)).unwrap();
    assert_eq!(acks(&sent(&n, publisher)), vec![(AckKind::PubRec, 7, 0)]);
    assert_eq!(
        publishes(&sent(&n, sub)),
        vec![("t".to_string(), b"once".to_vec())],
        "one copy for two PUBLISHes of one packet id"
    );
    send(&n, publisher, Packet::PubRel(ack(7))).unwrap();
    assert_eq!(acks(&sent(&n, publisher)), vec![(AckKind::PubComp, 7, 0)]);
    // Released: the same packet id now starts a new message.
    send(&n, publisher, publish("t", QoS::ExactlyOnce, 7, b"twice")).unwrap();
    assert_eq!(
        publishes(&sent(&n, sub)),
        vec![("t".to_string(), b"twice".to_vec())]
    );
}

#[test]
fn a_pubrel_for_an_unknown_packet_id_is_completed_with_packet_id_not_found() {
    let n = node(1, Arc::new(MemoryStore::default()));
    let c = accepted(&n, 0, "c");
    send(&n, c, Packet::PubRel(ack(9))).unwrap();
    assert_eq!(
        acks(&sent(&n, c)),
        vec![(AckKind::PubComp, 9, reason::PACKET_ID_NOT_FOUND)]
    );
}

#[test]
fn qos2_publishes_beyond_receive_maximum_are_a_violation() {
    let mut cfg = Config::default();
    cfg.mqtt.receive_maximum = 2;
    let n = node_with(
        cfg,
        1,
        Arc::new(MemoryStore::default()),
        Arc::new(NoOutbound),
    );
    let c = accepted(&n, 0, "c");
    send(&n, c, publish("t", QoS::ExactlyOnce, 1, b"1")).unwrap();
    send(&n, c, publish("t", QoS::ExactlyOnce, 2, b"2")).unwrap();
    let err = send(&n, c, publish("t", QoS::ExactlyOnce, 3, b"3")).unwrap_err();
    assert_eq!(err.code, reason::RECEIVE_MAXIMUM_EXCEEDED);
}

#[test]
fn a_topic_alias_names_its_topic_until_it_is_set_again() {
    let n = node(1, Arc::new(MemoryStore::default()));
    let sub = accepted(&n, 0, "sub");
    subscribe(&n, sub, "#", QoS::AtMostOnce);
    let c = accepted(&n, 0, "c");
    send(&n, c, aliased("a/b", 1, b"set")).unwrap();
    send(&n, c, aliased("", 1, b"used")).unwrap();
    send(&n, c, aliased("c/d", 1, b"reset")).unwrap();
    send(&n, c, aliased("", 1, b"used again")).unwrap();
    assert_eq!(
        publishes(&sent(&n, sub)),
        vec![
            ("a/b".to_string(), b"set".to_vec()),
            ("a/b".to_string(), b"used".to_vec()),
            ("c/d".to_string(), b"reset".to_vec()),
            ("c/d".to_string(), b"used again".to_vec()),
        ]
    );
}

#[test]
fn a_topic_alias_out_of_range_or_never_set_is_a_violation() {
    let n = node(1, Arc::new(MemoryStore::default()));
    let max = Config::default().mqtt.topic_alias_maximum;
    let c = accepted(&n, 0, "c");
    let err = send(&n, c, aliased("t", max + 1, b"x")).unwrap_err();
    assert_eq!(err.code, reason::TOPIC_ALIAS_INVALID);
    let err = send(&n, c, aliased("t", 0, b"x")).unwrap_err();
    assert_eq!(
        err.code,
        reason::TOPIC_ALIAS_INVALID,
        "alias 0 is not an alias"
    );
    let d = accepted(&n, 0, "d");
    let err = send(&n, d, aliased("", 1, b"x")).unwrap_err();
    assert_eq!(err.code, reason::PROTOCOL_ERROR, "an alias never set");
}

#[test]
fn a_3_1_1_client_with_an_empty_id_and_a_kept_session_is_refused() {
    let n = node(1, Arc::new(MemoryStore::default()));
    let mut c = connect_packet(Version::V311, "");
    c.clean_start = false;
    let (client, flow) = open(&n, 0, c);
    assert!(flow.is_ok(), "a refusal is a CONNACK, not a violation");
    assert_eq!(
        connack(&sent(&n, client)),
        Some(reason::CLIENT_ID_NOT_VALID),
        "identifier rejected (0x02 on a 3.1.1 wire)"
    );
    let (clean, _) = open(&n, 0, connect_packet(Version::V311, ""));
    assert_eq!(
        connack(&sent(&n, clean)),
        Some(reason::SUCCESS),
        "with a clean session it is fine"
    );
}

#[test]
fn a_will_above_the_maximum_qos_is_refused_at_connect() {
    let mut cfg = Config::default();
    cfg.mqtt.max_qos = 1;
    let n = node_with(
        cfg,
        1,
        Arc::new(MemoryStore::default()),
        Arc::new(NoOutbound),
    );
    let mut c = connect_packet(Version::V5, "w");
    c.will = Some(Will {
        topic: "last/words".into(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: Properties::default(),
    });
    let (client, _) = open(&n, 0, c);
    assert_eq!(connack(&sent(&n, client)), Some(reason::QOS_NOT_SUPPORTED));
}

#[test]
fn a_packet_before_the_connect_or_a_second_connect_is_a_violation() {
    let n = node(1, Arc::new(MemoryStore::default()));
    let (key, _) = n.cores[0].register("127.0.0.1:1".parse().unwrap(), 0);
    let raw = Client { core: 0, key };
    let err = send(&n, raw, publish("t", QoS::AtMostOnce, 0, b"x")).unwrap_err();
    assert_eq!(err.code, reason::PROTOCOL_ERROR, "PUBLISH before CONNECT");
    let c = accepted(&n, 0, "c");
    let err = send(
        &n,
        c,
        Packet::Connect(Box::new(connect_packet(Version::V5, "c"))),
    )
    .unwrap_err();
    assert_eq!(err.code, reason::PROTOCOL_ERROR, "a second CONNECT");
}

/// An outbound seam that confirms what goes to `held/#` only when the test
/// answers, and takes nothing else.
#[derive(Default)]
struct Held {
    waiting: Mutex<Vec<(String, ReplyTo<Produced>)>>,
}

impl Outbound for Held {
    fn policy(&self, topic: &str) -> OutboundPolicy {
        if topic.starts_with("held/") {
            OutboundPolicy::Confirm
        } else {
            OutboundPolicy::Skip
        }
    }

    fn send(&self, out: Outgoing, ack: ReplyTo<Produced>) {
        self.waiting
            .lock()
            .unwrap()
            .push((out.msg.topic.to_string(), ack));
    }
}

impl Held {
    /// Answers the oldest message waiting.
    fn answer(&self, produced: Produced) -> String {
        let (topic, ack) = self.waiting.lock().unwrap().remove(0);
        ack.send(produced);
        topic
    }
}

#[test]
fn an_ack_held_for_the_outbound_seam_holds_the_acks_after_it_in_order() {
    let held = Arc::new(Held::default());
    let n = node_with(
        Config::default(),
        1,
        Arc::new(MemoryStore::default()),
        held.clone(),
    );
    let c = accepted(&n, 0, "c");
    send(&n, c, publish("held/a", QoS::AtLeastOnce, 1, b"1")).unwrap();
    send(&n, c, publish("plain", QoS::AtLeastOnce, 2, b"2")).unwrap();
    send(&n, c, publish("held/b", QoS::AtLeastOnce, 3, b"3")).unwrap();
    assert!(
        acks(&sent(&n, c)).is_empty(),
        "nothing acknowledged before the seam answers"
    );
    assert_eq!(held.answer(Produced::Done), "held/a");
    n.produced();
    assert_eq!(
        acks(&sent(&n, c)),
        vec![(AckKind::PubAck, 1, 0), (AckKind::PubAck, 2, 0)],
        "the first, and the one queued behind it; not the third"
    );
    assert_eq!(
        held.answer(Produced::Failed(OutboundError::TimedOut)),
        "held/b"
    );
    n.produced();
    assert_eq!(
        acks(&sent(&n, c)),
        vec![(AckKind::PubAck, 3, reason::UNSPECIFIED_ERROR)],
        "MQTT 5: a message the seam did not take is refused, not acknowledged"
    );
}

/// The entry lookups `f` makes on this thread.
fn lookups_of<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = crate::shard::lookups();
    let out = f();
    (out, crate::shard::lookups() - before)
}

/// Packet ids of the PUBLISHes queued.
fn pkids(frames: &[Frame]) -> Vec<u16> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Publish { pkid, .. } => Some(*pkid),
            _ => None,
        })
        .collect()
}

#[test]
fn a_packet_finds_its_connection_once_and_a_routed_publish_twice() {
    let n = node(1, Arc::new(MemoryStore::default()));
    let sub = accepted(&n, 0, "sub");
    subscribe(&n, sub, "t", QoS::ExactlyOnce);
    let publisher = accepted(&n, 0, "pub");
    let once = |c: Client, p: Packet, what: &str| {
        let (flow, lookups) = lookups_of(|| send(&n, c, p));
        assert_eq!(flow, Ok(Flow::Continue), "{what}");
        assert_eq!(
            lookups, 1,
            "{what}: one lookup from the phase check to reading on"
        );
    };
    once(publisher, Packet::PingReq, "PINGREQ");
    // To no subscriber: one lookup before the fan-out, one after.
    let (flow, lookups) =
        lookups_of(|| send(&n, publisher, publish("none", QoS::AtLeastOnce, 1, b"x")));
    assert_eq!(flow, Ok(Flow::Continue));
    assert_eq!(lookups, 2, "a routed PUBLISH: before and after its fan-out");
    assert_eq!(acks(&sent(&n, publisher)), vec![(AckKind::PubAck, 1, 0)]);
    // QoS 1 to the subscriber, acknowledged by it.
    send(&n, publisher, publish("t", QoS::AtLeastOnce, 2, b"1")).unwrap();
    let [pkid] = pkids(&sent(&n, sub))[..] else {
        panic!("one delivery")
    };
    once(sub, Packet::PubAck(ack(pkid)), "PUBACK");
    let (flow, lookups) = lookups_of(|| super::receive_puback(&n.cores[0], sub.key, pkid));
    assert_eq!(flow, Ok(Flow::Continue), "a plain PUBACK of a settled id");
    assert_eq!(lookups, 1, "the PUBACK fast path");
    // QoS 2 to the subscriber: PUBREC, then PUBCOMP.
    send(&n, publisher, publish("t", QoS::ExactlyOnce, 3, b"2")).unwrap();
    let [pkid] = pkids(&sent(&n, sub))[..] else {
        panic!("one delivery")
    };
    once(sub, Packet::PubRec(ack(pkid)), "PUBREC");
    assert_eq!(acks(&sent(&n, sub)), vec![(AckKind::PubRel, pkid, 0)]);
    once(sub, Packet::PubComp(ack(pkid)), "PUBCOMP");
    // The publisher's side of QoS 2: PUBREL answered with PUBCOMP.
    once(publisher, Packet::PubRel(ack(3)), "PUBREL");
    assert_eq!(
        acks(&sent(&n, publisher)),
        vec![
            (AckKind::PubAck, 2, 0),
            (AckKind::PubRec, 3, 0),
            (AckKind::PubComp, 3, 0)
        ]
    );
}
