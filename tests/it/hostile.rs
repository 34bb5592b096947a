//! A corpus of malformed and hostile inputs. Each case runs on its own
//! connection and must get the protocol's answer (a DISCONNECT reason code
//! for MQTT 5, CONNACK for a bad protocol level, or a plain close); the
//! gateway must keep serving everyone else afterwards.

use std::io::Write;
use std::time::Duration;

use crate::common::*;
use tether::codec::{self, reason, Packet, Version};

/// What the server must do with a hostile input.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// MQTT 5 DISCONNECT with this reason code, then close.
    Disconnect(u8),
    /// CONNACK with this (3.1.1) return code, then close.
    ConnAck(u8),
    /// Close without sending anything.
    Close,
}

struct Case {
    name: &'static str,
    /// Complete CONNECT first (with this version) before sending `bytes`.
    after_connect: Option<Version>,
    bytes: Vec<u8>,
    expect: Expect,
}

fn v5(name: &'static str, bytes: &[u8], code: u8) -> Case {
    Case {
        name,
        after_connect: Some(Version::V5),
        bytes: bytes.to_vec(),
        expect: Expect::Disconnect(code),
    }
}

fn corpus() -> Vec<Case> {
    // PUBLISH QoS 0 "a/b" with an empty property block: 30 len 00 03 'a/b' 00 payload
    let mut cases = vec![
        Case {
            name: "PUBLISH before CONNECT",
            after_connect: None,
            bytes: vec![0x30, 0x04, 0, 1, b'a', b'x'],
            expect: Expect::Close,
        },
        Case {
            name: "unknown protocol level",
            after_connect: None,
            bytes: vec![0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 9, 2, 0, 60, 0, 0],
            expect: Expect::ConnAck(1),
        },
        Case {
            name: "CONNECT reserved flag",
            after_connect: None,
            bytes: vec![0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 3, 0, 60, 0, 0],
            expect: Expect::Close,
        },
        Case {
            name: "CONNECT truncated client id",
            after_connect: None,
            bytes: vec![0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 9],
            expect: Expect::Close,
        },
        Case {
            name: "remaining length over 4 bytes",
            after_connect: None,
            bytes: vec![0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            expect: Expect::Close,
        },
        v5(
            "QoS 3 PUBLISH",
            &[0x36, 0x06, 0, 1, b'a', 0, 1, 0],
            reason::MALFORMED_PACKET,
        ),
        v5(
            "wildcard in topic name",
            &[0x30, 0x05, 0, 2, b'a', b'#', 0],
            reason::TOPIC_NAME_INVALID,
        ),
        v5(
            "invalid UTF-8 topic",
            &[0x30, 0x05, 0, 2, 0xC3, 0x28, 0],
            reason::MALFORMED_PACKET,
        ),
        v5(
            "U+0000 in topic",
            &[0x30, 0x05, 0, 2, b'a', 0, 0],
            reason::MALFORMED_PACKET,
        ),
        v5(
            "SUBSCRIBE without filters",
            &[0x82, 0x03, 0, 1, 0],
            reason::PROTOCOL_ERROR,
        ),
        v5(
            "SUBSCRIBE with reserved flags",
            &[0x80, 0x07, 0, 1, 0, 0, 1, b'a', 0],
            reason::MALFORMED_PACKET,
        ),
        v5(
            "PUBREL with wrong flags",
            &[0x60, 0x02, 0, 1],
            reason::MALFORMED_PACKET,
        ),
        v5(
            "unknown property",
            &[0x30, 0x07, 0, 1, b'a', 2, 0x7F, 0, b'x'],
            reason::MALFORMED_PACKET,
        ),
        v5(
            "duplicate property",
            &[0x30, 0x08, 0, 1, b'a', 4, 0x01, 0, 0x01, 0],
            reason::PROTOCOL_ERROR,
        ),
        v5(
            "property not allowed in PUBLISH",
            &[0x30, 0x09, 0, 1, b'a', 5, 0x11, 0, 0, 0, 1],
            reason::PROTOCOL_ERROR,
        ),
        v5(
            "second CONNECT",
            &[
                0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0, 0,
            ],
            reason::PROTOCOL_ERROR,
        ),
        v5(
            "topic alias out of range",
            &[0x30, 0x07, 0, 1, b'a', 3, 0x23, 0x7F, 0xFF],
            reason::TOPIC_ALIAS_INVALID,
        ),
        v5(
            "unknown topic alias",
            &[0x30, 0x06, 0, 0, 3, 0x23, 0, 1],
            reason::PROTOCOL_ERROR,
        ),
        v5(
            "reserved packet type 0",
            &[0x00, 0x00],
            reason::MALFORMED_PACKET,
        ),
        v5(
            "packet id 0",
            &[0x32, 0x06, 0, 1, b'a', 0, 0, 0],
            reason::MALFORMED_PACKET,
        ),
        v5(
            "DUP on QoS 0",
            &[0x38, 0x04, 0, 1, b'a', 0],
            reason::MALFORMED_PACKET,
        ),
        v5(
            "trailing bytes in PINGREQ",
            &[0xC0, 0x01, 0],
            reason::MALFORMED_PACKET,
        ),
        v5(
            "server-only packet",
            &[0x90, 0x03, 0, 1, 0],
            reason::PROTOCOL_ERROR,
        ),
        v5(
            "subscription identifier 0",
            &[0x82, 0x09, 0, 1, 2, 0x0B, 0, 0, 1, b'a', 0],
            reason::PROTOCOL_ERROR,
        ),
        v5(
            "oversize packet (header only)",
            &[0x30, 0x88, 0x27],
            reason::PACKET_TOO_LARGE,
        ),
        v5(
            "non-minimal remaining length",
            &[0xC0, 0x80, 0x00],
            reason::MALFORMED_PACKET,
        ),
        Case {
            name: "3.1.1 malformed packet",
            after_connect: Some(Version::V311),
            bytes: vec![0x36, 0x05, 0, 1, b'a', 0, 1],
            expect: Expect::Close,
        },
        Case {
            name: "3.1.1 AUTH packet",
            after_connect: Some(Version::V311),
            bytes: vec![0xF0, 0x00],
            expect: Expect::Close,
        },
    ];
    // A well-formed QoS 2 PUBLISH flood beyond Receive Maximum (8 here).
    let mut flood = Vec::new();
    for id in 1u16..=9 {
        flood.extend_from_slice(&[0x34, 0x06, 0, 1, b'q']);
        flood.extend_from_slice(&id.to_be_bytes());
        flood.push(0);
    }
    cases.push(Case {
        name: "QoS 2 flood over Receive Maximum",
        after_connect: Some(Version::V5),
        bytes: flood,
        expect: Expect::Disconnect(reason::RECEIVE_MAXIMUM_EXCEEDED),
    });
    cases
}

#[test]
fn every_hostile_input_gets_the_protocol_answer_and_the_gateway_carries_on() {
    let gw = gateway(2, |c| {
        c.mqtt.max_packet_size = 4096;
        c.mqtt.receive_maximum = 8;
    });
    // A bystander connected throughout must keep working.
    let mut bystander = Raw::connected(gw.tcp_addr, "bystander", Version::V311);
    bystander.send(&Packet::Subscribe(codec::Subscribe {
        pkid: 1,
        filters: vec![(
            "alive".into(),
            codec::SubOptions::qos(codec::QoS::AtLeastOnce),
        )],
        properties: Default::default(),
    }));
    assert!(matches!(bystander.recv(), Some(Packet::SubAck(_))));

    let cases = corpus();
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let mut c = match case.after_connect {
            Some(v) => Raw::connected(gw.tcp_addr, &format!("hostile-{i}"), v),
            None => Raw::open(gw.tcp_addr),
        };
        if let Some(v) = case.after_connect {
            c.version = v;
        } else {
            c.version = Version::V311;
        }
        c.send_bytes(&case.bytes);
        let got = c.until_closed();
        let ok = match case.expect {
            // Acks for packets accepted before the bad one may precede it.
            Expect::Disconnect(code) => {
                matches!(got.last(), Some(Packet::Disconnect(d)) if d.code == code)
                    && got[..got.len() - 1]
                        .iter()
                        .all(|p| matches!(p, Packet::PubAck(_) | Packet::PubRec(_)))
            }
            // Decoded as 3.1.1, so `a.code` is the raw return code.
            Expect::ConnAck(code) => {
                matches!(got.as_slice(), [Packet::ConnAck(a)] if a.code == code)
            }
            Expect::Close => got.is_empty(),
        };
        if !ok {
            failures.push(format!(
                "{}: expected {:?}, got {:?}",
                case.name, case.expect, got
            ));
        }
        // The process and the bystander carry on after every case.
        let mut p = Raw::connected(gw.tcp_addr, "probe", Version::V311);
        p.send(&Packet::Publish(codec::Publish {
            dup: false,
            qos: codec::QoS::AtMostOnce,
            retain: false,
            topic: "alive".into(),
            pkid: 0,
            properties: Default::default(),
            payload: bytes::Bytes::from(case.name),
        }));
        match bystander.recv() {
            Some(Packet::Publish(m)) => assert_eq!(&m.payload[..], case.name.as_bytes()),
            other => panic!(
                "bystander stopped receiving after {:?}: {other:?}",
                case.name
            ),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(gw.stats().protocol_errors >= cases.len() as u64);
}

#[test]
fn byte_by_byte_delivery_is_reassembled() {
    let gw = gateway(1, |_| {});
    let mut c = Raw::open(gw.tcp_addr);
    c.version = Version::V5;
    let mut connect = Vec::new();
    codec::encode(
        &Packet::Connect(Box::new(connect_packet("trickle", Version::V5))),
        Version::V5,
        &mut connect,
    );
    connect.extend_from_slice(&[0xC0, 0x00]); // PINGREQ right behind CONNECT
    for b in connect {
        c.send_bytes(&[b]);
    }
    assert!(matches!(c.recv(), Some(Packet::ConnAck(a)) if a.code == 0));
    assert_eq!(c.recv(), Some(Packet::PingResp));
}

#[test]
fn publish_above_maximum_qos_is_refused_with_0x9b() {
    let gw = gateway(1, |c| c.mqtt.max_qos = 1);
    let mut c = Raw::connected(gw.tcp_addr, "qos2-pub", Version::V5);
    c.send_bytes(&[0x34, 0x06, 0, 1, b'a', 0, 1, 0]);
    let got = c.until_closed();
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.code == reason::QOS_NOT_SUPPORTED),
        "{got:?}"
    );
    let Packet::Disconnect(d) = &got[0] else {
        unreachable!()
    };
    let why = d.properties.reason_string.as_deref().unwrap_or_default();
    assert!(
        why.contains("QoS"),
        "a Reason String says what was wrong: {why:?}"
    );
}

#[test]
fn a_connect_storm_is_paced_by_max_accepts_per_sec_and_still_served() {
    let gw = gateway(1, |c| c.listeners.max_accepts_per_sec = 20);
    // 40 at once: the first 20 are the burst, the rest wait their turn in
    // the backlog, and every one is served.
    let clients: Vec<Raw> = (0..40)
        .map(|i| Raw::connected(gw.tcp_addr, &format!("storm-{i}"), Version::V311))
        .collect();
    assert_eq!(clients.len(), 40);
    let paced: f64 = crate::common::web::http(gw.http_addr.unwrap(), "GET", "/metrics", &[], "")
        .body
        .lines()
        .filter(|l| l.starts_with("tether_accepts_paced_total"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(paced >= 19.0, "{paced} accepts waited");
}

/// A client that keeps writing after the server's DISCONNECT (it
/// pipelines) still reads that DISCONNECT and its reason code: the gateway
/// shuts its write side and reads on for a moment instead of closing with
/// unread data, which would send a reset (the client's writes would fail
/// and its kernel would drop the DISCONNECT).
#[test]
fn a_pipelining_client_still_reads_why_it_was_disconnected() {
    let gw = gateway(1, |c| c.mqtt.receive_maximum = 8);
    let mut c = Raw::connected(gw.tcp_addr, "pipeliner", Version::V5);
    let mut flood = Vec::new();
    for id in 1u16..=9 {
        flood.extend_from_slice(&[0x34, 0x06, 0, 1, b'q']);
        flood.extend_from_slice(&id.to_be_bytes());
        flood.push(0);
    }
    c.stream.write_all(&flood).unwrap();
    // The client goes on pipelining PINGREQs for 200 ms, as a client that
    // has not read anything yet would.
    let until = std::time::Instant::now() + Duration::from_millis(200);
    while std::time::Instant::now() < until {
        c.stream
            .write_all(&[0xC0, 0x00])
            .expect("the gateway reads on after its DISCONNECT");
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = c.until_closed();
    assert!(
        matches!(got.last(), Some(Packet::Disconnect(d)) if d.code == reason::RECEIVE_MAXIMUM_EXCEEDED),
        "{got:?}"
    );
}

/// `listeners.max_handshakes_per_core`: sockets that never finish their
/// CONNECT hold the core's handshake slots; the next client waits in the
/// kernel's backlog (accepted by nobody) until one of them closes, and
/// connected clients are not affected.
#[test]
fn half_open_clients_cannot_hold_more_than_the_handshake_cap() {
    let gw = gateway(1, |c| {
        c.listeners.max_handshakes_per_core = 3;
        c.mqtt.connect_timeout_ms = 60_000;
    });
    let mut settled = Raw::connected(gw.tcp_addr, "settled", Version::V5);
    let mut idle: Vec<Raw> = (0..3).map(|_| Raw::open(gw.tcp_addr)).collect();
    until_blocking("three sockets accepted", || gw.stats().accepted >= 4);
    let mut waiting = Raw::open(gw.tcp_addr);
    waiting.version = Version::V5;
    waiting.send(&Packet::Connect(Box::new(connect_packet(
        "waiting",
        Version::V5,
    ))));
    until_blocking("the accept loop stopped at the cap", || {
        gw.stats().accepts_held >= 1
    });
    waiting
        .stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = std::io::Read::read(&mut waiting.stream, &mut byte);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "no CONNACK while three handshakes are in progress: {early:?}"
    );
    assert_eq!(gw.stats().accepted, 4, "the fifth socket is not accepted");
    // A connected client is served meanwhile.
    settled.send(&Packet::PingReq);
    assert!(matches!(settled.recv(), Some(Packet::PingResp)));

    drop(idle.pop());
    waiting.stream.set_read_timeout(Some(WAIT)).unwrap();
    match waiting.recv() {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, 0),
        other => panic!("expected CONNACK once a slot was free, got {other:?}"),
    }
    assert_eq!(gw.stats().accepted, 5);
}
