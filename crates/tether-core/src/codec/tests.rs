//! Golden bytes (hand-checked against the specs) and codec invariants.

use bytes::Bytes;

use super::*;

fn enc(p: &Packet, v: Version) -> Vec<u8> {
    let mut out = Vec::new();
    encode(p, v, &mut out);
    out
}

fn dec(bytes: &[u8], v: Option<Version>) -> Packet {
    let (p, n) = decode(bytes, v, usize::MAX)
        .unwrap()
        .expect("complete packet");
    assert_eq!(n, bytes.len(), "consumed exactly the packet");
    p
}

fn connect(v: Version, id: &str) -> Packet {
    Packet::Connect(Box::new(Connect {
        version: v,
        clean_start: true,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }))
}

#[test]
fn golden_connect_v311() {
    let bytes = [
        0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'c',
    ];
    assert_eq!(enc(&connect(Version::V311, "c"), Version::V311), bytes);
    assert_eq!(dec(&bytes, None), connect(Version::V311, "c"));
}

#[test]
fn golden_connect_v5_with_will_and_credentials() {
    let mut c = match connect(Version::V5, "id") {
        Packet::Connect(c) => c,
        _ => unreachable!(),
    };
    c.username = Some("u".into());
    c.password = Some(Bytes::from_static(b"p"));
    c.properties.session_expiry_interval = Some(10);
    c.will = Some(Will {
        topic: "w".into(),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties {
            will_delay_interval: Some(5),
            ..Default::default()
        },
    });
    let p = Packet::Connect(c);
    let bytes = [
        0x10,
        0x26,
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        5,
        0b1110_1110,
        0,
        60, // header
        5,
        0x11,
        0,
        0,
        0,
        10, // properties: session expiry 10
        0,
        2,
        b'i',
        b'd', // client id
        5,
        0x18,
        0,
        0,
        0,
        5, // will properties: delay 5
        0,
        1,
        b'w',
        0,
        1,
        b'x', // will topic, payload
        0,
        1,
        b'u',
        0,
        1,
        b'p', // username, password
    ];
    assert_eq!(enc(&p, Version::V5), bytes);
    assert_eq!(dec(&bytes, None), p);
}

#[test]
fn golden_publish() {
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "a/b".into(),
        pkid: 10,
        properties: Properties::default(),
        payload: Bytes::from_static(b"hi"),
    });
    let v3 = [0x32, 0x09, 0, 3, b'a', b'/', b'b', 0, 10, b'h', b'i'];
    let v5 = [0x32, 0x0A, 0, 3, b'a', b'/', b'b', 0, 10, 0, b'h', b'i'];
    assert_eq!(enc(&p, Version::V311), v3);
    assert_eq!(enc(&p, Version::V5), v5);
    assert_eq!(dec(&v3, Some(Version::V311)), p);
    assert_eq!(dec(&v5, Some(Version::V5)), p);
}

#[test]
fn golden_acks_and_small_packets() {
    let cases: Vec<(Packet, Version, Vec<u8>)> = vec![
        (
            Packet::PubAck(Ack::new(1)),
            Version::V5,
            vec![0x40, 2, 0, 1],
        ),
        (
            Packet::PubRec(Ack {
                pkid: 1,
                code: 0x92,
                properties: Properties::default(),
            }),
            Version::V5,
            vec![0x50, 4, 0, 1, 0x92, 0],
        ),
        (
            Packet::PubRel(Ack::new(258)),
            Version::V311,
            vec![0x62, 2, 1, 2],
        ),
        (
            Packet::PubComp(Ack::new(3)),
            Version::V311,
            vec![0x70, 2, 0, 3],
        ),
        (
            Packet::SubAck(SubAck {
                pkid: 1,
                codes: vec![1, 0x80],
                properties: Properties::default(),
            }),
            Version::V311,
            vec![0x90, 4, 0, 1, 1, 0x80],
        ),
        (
            Packet::UnsubAck(UnsubAck {
                pkid: 5,
                codes: vec![],
                properties: Properties::default(),
            }),
            Version::V311,
            vec![0xB0, 2, 0, 5],
        ),
        (
            Packet::UnsubAck(UnsubAck {
                pkid: 5,
                codes: vec![0, 0x11],
                properties: Properties::default(),
            }),
            Version::V5,
            vec![0xB0, 5, 0, 5, 0, 0, 0x11],
        ),
        (Packet::PingReq, Version::V311, vec![0xC0, 0]),
        (Packet::PingResp, Version::V5, vec![0xD0, 0]),
        (
            Packet::Disconnect(ReasonOnly::default()),
            Version::V5,
            vec![0xE0, 0],
        ),
        (
            Packet::Disconnect(ReasonOnly {
                code: 0x8E,
                properties: Properties::default(),
            }),
            Version::V5,
            vec![0xE0, 2, 0x8E, 0],
        ),
        (
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: 0,
                properties: Properties::default(),
            }),
            Version::V5,
            vec![0x20, 3, 1, 0, 0],
        ),
        (
            Packet::ConnAck(ConnAck {
                session_present: false,
                code: reason::BAD_USERNAME_OR_PASSWORD,
                properties: Properties::default(),
            }),
            Version::V311,
            vec![0x20, 2, 0, 4],
        ),
        (
            Packet::Subscribe(Subscribe {
                pkid: 1,
                filters: vec![(
                    "a".into(),
                    SubOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: 2,
                    },
                )],
                properties: Properties::default(),
            }),
            Version::V5,
            vec![0x82, 7, 0, 1, 0, 0, 1, b'a', 0x2D],
        ),
        (
            Packet::Unsubscribe(Unsubscribe {
                pkid: 2,
                filters: vec!["a/#".into()],
                properties: Properties::default(),
            }),
            Version::V311,
            vec![0xA2, 7, 0, 2, 0, 3, b'a', b'/', b'#'],
        ),
    ];
    for (p, v, bytes) in cases {
        assert_eq!(enc(&p, v), bytes, "{p:?}");
        // 3.1.1 CONNACK decodes to the raw return code, not the v5 reason.
        if !matches!(&p, Packet::ConnAck(a) if a.code != 0 && !v.is_v5()) {
            assert_eq!(dec(&bytes, Some(v)), p, "{bytes:?}");
        }
    }
}

#[test]
fn remaining_length_boundaries() {
    for len in [0usize, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
        let payload = vec![0u8; len.saturating_sub(3)];
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            pkid: 0,
            properties: Properties::default(),
            payload: Bytes::from(payload),
        });
        let bytes = enc(&p, Version::V311);
        assert_eq!(dec(&bytes, Some(Version::V311)), p);
        assert_eq!(frame_len(&bytes, usize::MAX), Ok(Some(bytes.len())));
    }
}

#[test]
fn every_prefix_is_incomplete_not_an_error() {
    let p = Packet::Publish(Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: true,
        topic: "x/y".into(),
        pkid: 9,
        properties: Properties {
            user_properties: vec![("k".into(), "v".into())],
            message_expiry_interval: Some(3),
            ..Default::default()
        },
        payload: Bytes::from_static(b"payload"),
    });
    let bytes = enc(&p, Version::V5);
    for cut in 0..bytes.len() {
        assert_eq!(
            decode(&bytes[..cut], Some(Version::V5), usize::MAX),
            Ok(None),
            "prefix {cut}"
        );
    }
    assert_eq!(dec(&bytes, Some(Version::V5)), p);
}

#[test]
fn size_limit_is_checked_from_the_header_alone() {
    // Announces 2,000,000 bytes; only the header has arrived.
    let header = [0x30, 0x80, 0x89, 0x7A];
    assert_eq!(
        decode(&header, Some(Version::V5), 1024),
        Err(DecodeError::TooLarge {
            size: 2_000_004,
            max: 1024
        })
    );
}

#[test]
fn all_properties_round_trip() {
    let props = Properties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(7),
        content_type: Some("ct".into()),
        response_topic: Some("rt".into()),
        correlation_data: Some(Bytes::from_static(b"cd")),
        subscription_identifiers: vec![1, 268_435_455],
        topic_alias: Some(3),
        user_properties: vec![("a".into(), "b".into()), ("a".into(), "c".into())],
        ..Default::default()
    };
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        pkid: 0,
        properties: props,
        payload: Bytes::new(),
    });
    assert_eq!(dec(&enc(&p, Version::V5), Some(Version::V5)), p);

    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        code: 0,
        properties: Properties {
            session_expiry_interval: Some(1),
            assigned_client_identifier: Some("x".into()),
            server_keep_alive: Some(2),
            authentication_method: Some("m".into()),
            authentication_data: Some(Bytes::from_static(b"d")),
            response_information: Some("ri".into()),
            server_reference: Some("sr".into()),
            reason_string: Some("rs".into()),
            receive_maximum: Some(4),
            topic_alias_maximum: Some(5),
            maximum_qos: Some(1),
            retain_available: Some(0),
            maximum_packet_size: Some(6),
            wildcard_subscription_available: Some(1),
            subscription_identifier_available: Some(0),
            shared_subscription_available: Some(1),
            ..Default::default()
        },
    });
    assert_eq!(dec(&enc(&connack, Version::V5), Some(Version::V5)), connack);
}

#[test]
fn the_puback_fast_path_agrees_with_the_decoder_on_every_packet_id() {
    for pkid in 0..=u16::MAX {
        let [hi, lo] = pkid.to_be_bytes();
        let bytes = [0x40, 2, hi, lo];
        for v in [Version::V311, Version::V5] {
            let decoded = decode(&bytes, Some(v), usize::MAX);
            match plain_puback(&bytes) {
                Some(id) => {
                    assert_eq!(id, pkid);
                    assert!(
                        matches!(decoded, Ok(Some((Packet::PubAck(ref a), 4))) if a.pkid == pkid),
                        "{decoded:?}"
                    );
                }
                None => {
                    assert_eq!(pkid, 0, "only packet id 0 is left to the decoder");
                    assert!(decoded.is_err(), "packet identifier 0 is malformed");
                }
            }
        }
    }
    // Anything else goes through the decoder: reserved flags, a reason code
    // or properties (MQTT 5), another packet type, an incomplete packet.
    for other in [
        &[0x41, 2, 0, 1][..],
        &[0x40, 3, 0, 1, 0x10],
        &[0x50, 2, 0, 1],
        &[0x40, 2, 0],
        &[0x40],
    ] {
        assert_eq!(plain_puback(other), None, "{other:?}");
    }
}
